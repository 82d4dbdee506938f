"""The server's Ed25519 key pair: generated on first use, kept in `ServerKey`.

Devices pin the public key at enrollment; OTA signs manifests with `active_key()`.
The private key is stored encrypted (PKCS#8, `SERVER_KEY_PASSPHRASE`), never in
clear in a row, and decrypted once per process. Rotation: `ota.rotation`.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.db import IntegrityError, transaction

from ota.models import ServerKey

_loaded: dict[str, Ed25519PrivateKey] = {}  # fingerprint -> decrypted key


def encrypt_pem(private: Ed25519PrivateKey, passphrase: bytes | None = None) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(
            passphrase or settings.SERVER_KEY_PASSPHRASE.encode()
        ),
    ).decode()


def is_encrypted(pem: str) -> bool:
    return "BEGIN ENCRYPTED PRIVATE KEY" in pem


def load_pem(pem: str, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """A stored key: encrypted PKCS#8, or a plaintext one written before encryption."""
    password = (
        (passphrase or settings.SERVER_KEY_PASSPHRASE.encode()) if is_encrypted(pem) else None
    )
    loaded = serialization.load_pem_private_key(pem.encode(), password=password)
    assert isinstance(loaded, Ed25519PrivateKey)
    return loaded


def _new_key(*, active: bool = True) -> ServerKey:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return ServerKey(
        private_key_pem=encrypt_pem(private),
        active=active,
        public_key_b64=base64.b64encode(raw).decode(),
        fingerprint=hashlib.sha256(raw).hexdigest(),
    )


new_key = _new_key


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
    if key.fingerprint not in _loaded:
        if not key.private_key_pem:
            raise ValueError(f"server key {key} is retired: its private half was erased")
        _loaded[key.fingerprint] = load_pem(key.private_key_pem)
        if not is_encrypted(key.private_key_pem):
            encrypt_stored(key)
    return _loaded[key.fingerprint]


def encrypt_stored(key: ServerKey) -> bool:
    """A row written in clear (before keys were encrypted) gets encrypted in place; the
    first use of such a key does it, and `rotate_server_key encrypt` for all of them."""
    plain = key.private_key_pem
    if not plain or is_encrypted(plain):
        return False
    key.private_key_pem = encrypt_pem(load_pem(plain))
    # conditional: two processes migrating the same row write one ciphertext
    return bool(
        ServerKey.objects.filter(pk=key.pk, private_key_pem=plain).update(
            private_key_pem=key.private_key_pem
        )
    )


def sign(data: bytes, key: ServerKey | None = None) -> bytes:
    return private_key(key).sign(data)
