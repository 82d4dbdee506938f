"""Signed manifests: canonical JSON + Ed25519, shared by server and agent.

No Django, no project imports: the agent ships this file, and the server's
`ota` app imports it so both sides agree byte for byte (docs/manifest.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SCHEMA = 1
SIGNALS = {"battery_pct", "cpu_pct", "temp_c", "on_ac", "mem_free_mb"}
OPERATORS = {"lt", "le", "gt", "ge", "eq"}


class ManifestError(Exception):
    """A manifest the agent must refuse; `code` is reported to the server."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def load_public_key(public_b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))


def sign(payload: dict, private_key: Ed25519PrivateKey) -> dict:
    """The envelope the server sends: payload, signature, key id."""
    return {
        "manifest": payload,
        "signature": b64(private_key.sign(canonical(payload))),
        "key_id": key_id(raw_public_key(private_key.public_key())),
    }


def parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise ManifestError("malformed", f"bad timestamp {value!r}") from None
    if parsed.tzinfo is None:
        raise ManifestError("malformed", f"timestamp without timezone {value!r}")
    return parsed


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verified:
    payload: dict
    no_op: bool  # same version as the last trusted one: nothing to do


def verify(
    envelope: dict,
    *,
    trusted_keys: dict[str, Ed25519PublicKey],
    device_uid: str,
    last_version: int,
    now: datetime,
    schema: int | str | None = None,
) -> Verified:
    """Check an envelope in the order of docs/manifest.md; raise ManifestError on refusal.

    `trusted_keys` maps key id -> pinned public key; `now` is the start of this check-in.
    `schema` tells the kinds of signed documents apart (a benchmark request is never
    a manifest, nor the reverse).
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("manifest"), dict):
        raise ManifestError("malformed", "envelope has no manifest object")
    payload = envelope["manifest"]
    key = trusted_keys.get(str(envelope.get("key_id", "")))
    if key is None:
        raise ManifestError("bad_signature", "manifest signed by an unknown key")
    try:
        key.verify(
            base64.b64decode(envelope.get("signature", ""), validate=True), canonical(payload)
        )
    except (InvalidSignature, ValueError, TypeError):
        raise ManifestError("bad_signature", "signature does not verify") from None
    if payload.get("schema") != (SCHEMA if schema is None else schema):
        raise ManifestError("malformed", f"unsupported manifest schema {payload.get('schema')!r}")
    if payload.get("device") != device_uid:
        raise ManifestError("wrong_device", "manifest is for another device")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError("malformed", "manifest version is not an integer")
    if version < last_version:
        raise ManifestError("rollback", f"manifest version {version} < trusted {last_version}")
    if parse_time(str(payload.get("expires_at"))) <= now:
        raise ManifestError("expired", f"manifest expired at {payload.get('expires_at')}")
    check_artifacts(payload)
    check_policy(payload.get("policy") or {}, {a["name"] for a in payload["artifacts"]})
    return Verified(payload=payload, no_op=version == last_version)


def check_artifacts(payload: dict) -> None:
    artifacts = payload.get("artifacts")
    if not isinstance(artifacts, list) or not artifacts:
        raise ManifestError("malformed", "manifest names no artifact")
    for item in artifacts:
        sha = str(item.get("sha256", ""))
        size = item.get("size")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ManifestError("malformed", "artifact sha256 is not 64 hex digits")
        if not isinstance(size, int) or size <= 0:
            raise ManifestError("malformed", "artifact size must be a positive integer")
        if not item.get("name") or not item.get("url"):
            raise ManifestError("malformed", "artifact needs a name and a url")
    if payload.get("default") not in {a["name"] for a in artifacts}:
        raise ManifestError("malformed", "default names no artifact")


def check_policy(policy: dict, names: set[str]) -> None:
    """Validate a switching policy (server side before signing; agent after verifying)."""
    if not policy:
        return
    rules = policy.get("rules", [])
    if not isinstance(rules, list):
        raise ManifestError("bad_policy", "policy rules must be a list")
    for rule in rules:
        when = rule.get("when") if isinstance(rule, dict) else None
        if not isinstance(when, dict) or not when:
            raise ManifestError("bad_policy", "each rule needs a non-empty 'when'")
        for signal, condition in when.items():
            if signal not in SIGNALS:
                raise ManifestError("bad_policy", f"unknown signal {signal!r}")
            if not isinstance(condition, dict) or not set(condition) <= OPERATORS:
                raise ManifestError("bad_policy", f"bad condition for {signal!r}")
        if rule.get("use") not in names:
            raise ManifestError("bad_policy", f"rule uses unknown variant {rule.get('use')!r}")
    if policy.get("default") is not None and policy["default"] not in names:
        raise ManifestError("bad_policy", "policy default names no artifact")


def choose_variant(payload: dict, signals: dict) -> str:
    """The artifact name to run given local signals (first matching rule wins)."""
    policy = payload.get("policy") or {}
    for rule in policy.get("rules", []):
        if all(_holds(signals.get(sig), cond) for sig, cond in rule["when"].items()):
            return rule["use"]
    return policy.get("default") or payload["default"]


def _holds(value, condition: dict) -> bool:
    if value is None:
        return False
    checks = {
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "eq": lambda a, b: a == b,
    }
    try:
        return all(checks[op](value, target) for op, target in condition.items())
    except TypeError:
        return False


# --- signed timestamp statements (docs/manifest.md, "Freshness") ----------------------
TIMESTAMP_HEADER = "X-Signed-Timestamp"
STATEMENT_MAX = 8 * 1024  # bytes of the header value


def sign_statement(payload: dict, private_key: Ed25519PrivateKey) -> str:
    """The `X-Signed-Timestamp` header value: base64 of the canonical signed envelope."""
    envelope = {
        "statement": payload,
        "signature": b64(private_key.sign(canonical(payload))),
        "key_id": key_id(raw_public_key(private_key.public_key())),
    }
    return b64(canonical(envelope))


def verify_statement(
    value: str | None, *, trusted_keys: dict[str, Ed25519PublicKey], device_uid: str, now: datetime
) -> tuple[dict, str]:
    """(payload, key id) of a timestamp statement; ManifestError when it must be ignored."""
    if not value:
        raise ManifestError("no_timestamp", "answer carries no signed timestamp")
    if len(value) > STATEMENT_MAX:
        raise ManifestError("malformed", "signed timestamp too long")
    try:
        envelope = json.loads(base64.b64decode(value, validate=True))
    except (ValueError, TypeError, RecursionError):
        raise ManifestError("malformed", "signed timestamp is not base64 JSON") from None
    payload = envelope.get("statement") if isinstance(envelope, dict) else None
    if not isinstance(payload, dict):
        raise ManifestError("malformed", "signed timestamp has no statement")
    kid = str(envelope.get("key_id", ""))
    key = trusted_keys.get(kid)
    if key is None:
        raise ManifestError("bad_signature", "timestamp signed by an unknown key")
    try:
        key.verify(
            base64.b64decode(envelope.get("signature", ""), validate=True), canonical(payload)
        )
    except (InvalidSignature, ValueError, TypeError):
        raise ManifestError("bad_signature", "timestamp signature does not verify") from None
    if payload.get("schema") != SCHEMA or payload.get("type") != "timestamp":
        raise ManifestError("malformed", "not a timestamp statement")
    if payload.get("device") != device_uid:
        raise ManifestError("wrong_device", "timestamp is for another device")
    if parse_time(str(payload.get("expires_at"))) <= now:
        raise ManifestError("expired", f"timestamp expired at {payload.get('expires_at')}")
    parse_time(str(payload.get("issued_at")))
    if not isinstance(payload.get("updates"), dict):
        raise ManifestError("malformed", "timestamp names no update state")
    return payload, kid
