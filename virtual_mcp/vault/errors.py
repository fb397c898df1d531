"""Errors of the vault. Messages name records and files, never key material, plaintext or tokens."""

from __future__ import annotations

from virtual_mcp.config.secrets import SecretRef
from virtual_mcp.errors import GatewayError


class VaultError(GatewayError):
    """Base of the vault's errors."""


class DecryptError(VaultError):
    """A record cannot be decrypted: wrong or missing master key, tampered bytes, or a record moved to another row."""


class MasterKeyError(VaultError):
    """The master key (key file or `VIRTUAL_MCP_MASTER_KEY`) is missing, malformed or unsafe."""

    exit_code = 2


class DatabaseError(VaultError):
    """The database could not be opened, migrated or written."""


class SecretNotFound(VaultError):
    """No value is stored for a secret reference."""

    exit_code = 2

    def __init__(self, ref: SecretRef) -> None:
        super().__init__(f"secret not found: {ref.uri}")
        self.ref = ref
