from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtual_mcp.errors import GatewayError
from virtual_mcp.vault import DecryptError, Envelope, LocalKeyProvider, RecordContext, open_envelope, rewrap, seal
from virtual_mcp.vault.keys import key_id_for

CTX = RecordContext(tenant="acme", user="alice@x", server="github", kind="oauth")
SECRET = b"the plaintext that must never leak"


def provider(*keys: bytes) -> LocalKeyProvider:
    ks = keys or (os.urandom(32),)
    return LocalKeyProvider({key_id_for(k): k for k in ks}, key_id_for(ks[-1]))


KEYS = provider()


def flip(data: bytes, i: int = -1) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


def test_roundtrip_and_fresh_data_key_per_record() -> None:
    a, b = seal(SECRET, CTX, KEYS), seal(SECRET, CTX, KEYS)
    assert open_envelope(a, CTX, KEYS) == SECRET
    assert a.kek_id == KEYS.current_key_id()
    assert len(a.nonce) == 12
    assert a.wrapped_key != b.wrapped_key and a.ciphertext != b.ciphertext
    assert SECRET not in a.to_bytes()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda e: replace(e, ciphertext=flip(e.ciphertext)), id="ciphertext"),
        pytest.param(lambda e: replace(e, ciphertext=flip(e.ciphertext, 0)), id="ciphertext-start"),
        pytest.param(lambda e: replace(e, nonce=flip(e.nonce)), id="nonce"),
        pytest.param(lambda e: replace(e, wrapped_key=flip(e.wrapped_key)), id="wrapped_key"),
        pytest.param(lambda e: replace(e, wrapped_key=e.wrapped_key[:-1]), id="wrapped_key-truncated"),
    ],
)
def test_tampering_fails(tamper: Callable[[Envelope], Envelope]) -> None:
    tampered = tamper(seal(SECRET, CTX, KEYS))
    with pytest.raises(DecryptError) as info:
        open_envelope(tampered, CTX, KEYS)
    assert isinstance(info.value, GatewayError)
    assert SECRET.decode() not in str(info.value)


@pytest.mark.parametrize(
    "other",
    [
        replace(CTX, tenant="other"),
        replace(CTX, user="bob@x"),
        replace(CTX, server="gitlab"),
        replace(CTX, kind="secret"),
        # Field boundaries are part of the AAD: shifting characters between fields is a different record.
        RecordContext(tenant="acmealice@x", user="", server="github", kind="oauth"),
    ],
)
def test_envelope_is_bound_to_its_record(other: RecordContext) -> None:
    env = seal(SECRET, CTX, KEYS)
    with pytest.raises(DecryptError):
        open_envelope(env, other, KEYS)


def test_unknown_or_wrong_master_key() -> None:
    env = seal(SECRET, CTX, KEYS)
    stranger = provider()
    with pytest.raises(DecryptError, match="sealed with master key"):
        open_envelope(env, CTX, stranger)
    # Same key id, different key bytes (a damaged key store): still a clean DecryptError.
    impostor = LocalKeyProvider({env.kek_id: os.urandom(32)}, env.kek_id)
    with pytest.raises(DecryptError) as info:
        open_envelope(env, CTX, impostor)
    assert "authentication failed" in str(info.value)


def test_envelope_bytes_roundtrip_and_malformed_input() -> None:
    env = seal(SECRET, CTX, KEYS)
    data = env.to_bytes()
    assert Envelope.from_bytes(data) == env
    for bad in (b"", b"VMCE", b"XXXX\x01" + data[5:], data[:4] + b"\x09" + data[5:], data[:-1], data + b"\x00"):
        with pytest.raises(DecryptError):
            Envelope.from_bytes(bad)


def test_rewrap_changes_only_the_wrapped_key() -> None:
    old = os.urandom(32)
    before = provider(old)
    env = seal(SECRET, CTX, before)
    after = provider(old, os.urandom(32))
    new = rewrap(env, CTX, after)
    assert new.kek_id == after.current_key_id() != env.kek_id
    assert (new.nonce, new.ciphertext) == (env.nonce, env.ciphertext)
    assert open_envelope(new, CTX, provider(os.urandom(32), after._keys[new.kek_id])) == SECRET
    with pytest.raises(DecryptError):
        rewrap(env, replace(CTX, user="mallory"), after)


@settings(max_examples=40, deadline=None)
@given(
    plaintext=st.binary(max_size=512),
    fields=st.tuples(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8)),
)
def test_property_seal_open(plaintext: bytes, fields: tuple[str, str, str, str]) -> None:
    ctx = RecordContext(*fields)
    env = Envelope.from_bytes(seal(plaintext, ctx, KEYS).to_bytes())
    assert open_envelope(env, ctx, KEYS) == plaintext
    with pytest.raises(DecryptError):
        open_envelope(env, replace(ctx, kind=ctx.kind + "x"), KEYS)
