"""High-entropy bearer secrets: shown once, stored as sha256, found by prefix.

A 32-byte random token needs no slow KDF: nobody can brute-force 256 bits, so
a plain sha256 is enough and keeps authentication one indexed lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LEN = 16
DEVICE = "efd_"
ENROLLMENT = "efe_"


def new_token(kind: str) -> tuple[str, str, str]:
    """(plaintext, prefix, sha256 hex)."""
    value = kind + secrets.token_urlsafe(32)
    return value, value[:PREFIX_LEN], digest(value)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def lookup_key(value: str) -> tuple[str, str] | None:
    """(prefix, sha256) to look a token up by, or None for a value that cannot be one."""
    if not isinstance(value, str) or len(value) < PREFIX_LEN + 8 or len(value) > 200:
        return None
    return value[:PREFIX_LEN], digest(value)


def find(queryset, value: str):
    """The row of `queryset` whose hash matches `value`, or None."""
    key = lookup_key(value)
    if key is None:
        return None
    prefix, wanted = key
    for row in queryset.filter(prefix=prefix):
        if hmac.compare_digest(row.token_hash, wanted):
            return row
    return None
