"""The header contract's identity headers (ARCHITECTURE.md) and the key fingerprint.

ext_authz sets the headers (and removes every client-sent header with the prefix); the translator reads them;
logs everywhere carry the fingerprint, never the key."""

from __future__ import annotations

import hashlib

AUTHZ_PREFIX = "x-authz-"
KEY_ID_HEADER = AUTHZ_PREFIX + "key-id"
TENANT_HEADER = AUTHZ_PREFIX + "tenant"
CREDENTIAL_HEADER = AUTHZ_PREFIX + "credential"

# x-authz-key-id is the first KEY_ID_LENGTH hex characters (64 bits) of sha256(key): enough to tell keys apart
# in logs and quotas, far too short to help anyone guess a key.
KEY_ID_LENGTH = 16


def key_digest(key: str) -> str:
    """SHA-256 hex digest of the key's UTF-8 bytes (what a policy's allowlist/revoked entries hold)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id(key: str) -> str:
    """The fingerprint for logs and x-authz-key-id."""
    return key_digest(key)[:KEY_ID_LENGTH]
