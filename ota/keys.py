"""The server's Ed25519 key pair: generated on first use, kept in `ServerKey`.

Devices pin the public key at enrollment; OTA signs manifests with `active_key()`.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import IntegrityError, transaction

from ota.models import ServerKey


def _new_key() -> ServerKey:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    return ServerKey(private_key_pem=pem, public_key_b64=base64.b64encode(raw).decode(),
                     fingerprint=hashlib.sha256(raw).hexdigest())


def active_key() -> ServerKey:
    key = ServerKey.objects.filter(active=True).first()
    if key is not None:
        return key
    try:
        with transaction.atomic():
            key = _new_key()
            key.save()
            return key
    except IntegrityError:
        # Two processes raced to create the first key: the partial unique index
        # lets one win; everyone uses that one.
        return ServerKey.objects.get(active=True)


def public_key_b64() -> str:
    return active_key().public_key_b64


def private_key(key: ServerKey | None = None) -> Ed25519PrivateKey:
    key = key or active_key()
    loaded = serialization.load_pem_private_key(key.private_key_pem.encode(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    return loaded


def sign(data: bytes, key: ServerKey | None = None) -> bytes:
    return private_key(key).sign(data)
