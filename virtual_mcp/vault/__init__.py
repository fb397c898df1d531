"""The vault: envelope encryption, master keys, and the stores. The only package that touches the database."""

from virtual_mcp.vault.crypto import Envelope, KeyProvider, RecordContext, open_envelope, rewrap, seal
from virtual_mcp.vault.db import Database
from virtual_mcp.vault.errors import DatabaseError, DecryptError, MasterKeyError, SecretNotFound, VaultError
from virtual_mcp.vault.keys import LocalKeyProvider, generate_master_key_b64
from virtual_mcp.vault.secrets import SecretStore, secret_context
from virtual_mcp.vault.tokens import TokenInfo, TokenStore

__all__ = [
    "Database",
    "DatabaseError",
    "DecryptError",
    "Envelope",
    "KeyProvider",
    "LocalKeyProvider",
    "MasterKeyError",
    "RecordContext",
    "SecretNotFound",
    "SecretStore",
    "TokenInfo",
    "TokenStore",
    "VaultError",
    "generate_master_key_b64",
    "open_envelope",
    "rewrap",
    "seal",
    "secret_context",
]
