"""The agent's state directory: every file written atomically, mode 0600.

Layout (one directory, default `/var/lib/edgefleet-agent`):

    config.json               server URL, device uid, agent settings
    credential.json           device token (shown once by the server)
    keys.json                 pinned server public keys, oldest first
    slots/<slot>.json         last trusted manifest version, pending manifest, ETag
    models/<slot>/<sha>.onnx  installed artifacts (content addressed)
    models/<slot>/current     pointer: active manifest + variants + the previous pointer
    downloads/<sha>.part      downloads in progress (resumable)
    buffer.sqlite3            offline buffer for telemetry, logs and status reports

A crash at any point leaves each file either old or new: the only way a file
changes is `atomic_write` (temp file, fsync, rename, fsync directory).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import manifest as mf

DEFAULT_DIR = "/var/lib/edgefleet-agent"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    fsync_dir(path.parent)


def write_json(path: Path, value) -> None:
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8"))


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return default


class State:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def ensure(self) -> State:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("slots", "models", "downloads"):
            (self.root / sub).mkdir(exist_ok=True, mode=0o700)
        return self

    # --- config and credential ----------------------------------------------------------
    @property
    def config(self) -> dict:
        return read_json(self.root / "config.json", {})

    def save_config(self, config: dict) -> None:
        write_json(self.root / "config.json", config)

    def update_config(self, **changes) -> dict:
        config = {**self.config, **changes}
        self.save_config(config)
        return config

    @property
    def token(self) -> str | None:
        return (read_json(self.root / "credential.json", {}) or {}).get("token")

    def save_credential(self, uid: str, token: str) -> None:
        write_json(self.root / "credential.json", {"uid": uid, "token": token})

    @property
    def uid(self) -> str | None:
        return (read_json(self.root / "credential.json", {}) or {}).get("uid")

    @property
    def enrolled(self) -> bool:
        return bool(self.uid and self.token and self.pinned_keys())

    # --- pinned keys (U1, U6) ----------------------------------------------------------
    def pinned_keys(self) -> list[dict]:
        return (read_json(self.root / "keys.json", {}) or {}).get("keys", [])

    def pin_key(self, public_b64: str) -> str:
        """Pin a server key (enrollment, or `next_key` of a verified manifest)."""
        raw = base64.b64decode(public_b64, validate=True)
        Ed25519PublicKey.from_public_bytes(raw)  # refuse anything but a raw key
        kid = mf.key_id(raw)
        keys = [k for k in self.pinned_keys() if k["key_id"] != kid]
        keys.append({"key_id": kid, "public_key": public_b64})
        write_json(self.root / "keys.json", {"keys": keys})
        return kid

    def retire_keys_before(self, kid: str) -> None:
        """A manifest verified with `kid`: keys pinned before it are rotated out."""
        keys = self.pinned_keys()
        ids = [k["key_id"] for k in keys]
        if kid in ids and ids.index(kid) > 0:
            write_json(self.root / "keys.json", {"keys": keys[ids.index(kid) :]})

    def trusted_keys(self) -> dict:
        """key id -> public key; also under the full sha256 fingerprint, which some
        servers put in `key_id`."""
        trusted = {}
        for item in self.pinned_keys():
            raw = base64.b64decode(item["public_key"])
            public = Ed25519PublicKey.from_public_bytes(raw)
            trusted[item["key_id"]] = public
            trusted[hashlib.sha256(raw).hexdigest()] = public
        return trusted

    def key_for(self, envelope_key_id: str) -> str | None:
        """The pinned key id (16 hex) an envelope's key id refers to."""
        for item in self.pinned_keys():
            raw = base64.b64decode(item["public_key"])
            if envelope_key_id in (item["key_id"], hashlib.sha256(raw).hexdigest()):
                return item["key_id"]
        return None

    # --- slots --------------------------------------------------------------------------
    def slot(self, name: str) -> dict:
        return read_json(self.root / "slots" / f"{safe(name)}.json", {}) or {}

    def save_slot(self, name: str, data: dict) -> None:
        write_json(self.root / "slots" / f"{safe(name)}.json", data)

    def update_slot(self, name: str, **changes) -> dict:
        data = {**self.slot(name), **changes}
        self.save_slot(name, data)
        return data

    def slot_names(self) -> list[str]:
        names = {p.stem for p in (self.root / "slots").glob("*.json")}
        names |= {p.parent.name for p in (self.root / "models").glob("*/current")}
        return sorted(names)

    def model_dir(self, slot: str) -> Path:
        return self.root / "models" / safe(slot)

    def pointer(self, slot: str) -> dict | None:
        return read_json(self.model_dir(slot) / "current")

    def set_pointer(self, slot: str, pointer: dict | None) -> None:
        path = self.model_dir(slot) / "current"
        if pointer is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fsync_dir(path.parent)
        else:
            write_json(path, pointer)

    def download_path(self, sha256: str) -> Path:
        return self.root / "downloads" / f"{safe(sha256)}.part"

    @property
    def etag(self) -> str | None:
        return self.config.get("etag")


def safe(name: str) -> str:
    """A slot or hash as a file name: no separators, no dot files."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
    if not cleaned:
        raise ValueError(f"unusable name {name!r}")
    return cleaned
