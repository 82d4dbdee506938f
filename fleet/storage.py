"""Content-addressed object storage on whatever backend STORAGES names.

Objects are stored at `<prefix>/<sha256><ext>`: the same bytes uploaded twice
are one object (docs/reliability.md O5) and a redelivered task that writes the same
output is harmless.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage

CHUNK = 1024 * 1024


def sha256_file(path: str | Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def content_name(prefix: str, sha256: str, ext: str) -> str:
    return f"{prefix}/{sha256}{ext}"


def put_file(path: str | Path, name: str) -> bool:
    """Store a local file under `name` unless it is already there. True if written."""
    if default_storage.exists(name):
        return False
    with open(path, "rb") as fh:
        saved = default_storage.save(name, File(fh, name=Path(name).name))
    if saved != name:  # a backend that renames instead of overwriting: undo, fail loudly
        default_storage.delete(saved)
        raise RuntimeError(f"storage renamed {name} to {saved}")
    return True


def delete_quietly(name: str) -> None:
    if name and default_storage.exists(name):
        default_storage.delete(name)


def ensure_bucket() -> None:
    """Create the S3 bucket when it is missing (moto/MinIO in tests and compose)."""
    bucket = getattr(default_storage, "bucket", None)
    if bucket is None:
        return
    client = default_storage.connection.meta.client
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket.name not in existing:
        client.create_bucket(Bucket=bucket.name)
