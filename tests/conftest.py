"""Shared fixtures: personas, API clients, tiny ONNX models, backing services.

Services: with EDGEFLEET_REQUIRE_SERVICES=1 (set by .ci/run) a test that needs
a missing service fails; otherwise it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def pytest_configure(config):
    """The .mo is a build artefact: build it when the .po is newer (pytest without make)."""
    from fleet.translations import compile_catalogs

    compile_catalogs()


REQUIRE_SERVICES = os.environ.get("EDGEFLEET_REQUIRE_SERVICES", "") in {"1", "true", "yes"}
FIXTURES = Path(__file__).resolve().parent.parent / "compression" / "fixtures"


def need_service(name: str, reason: str) -> None:
    """Skip (locally) or fail (CI) a test whose backing service is missing."""
    message = f"{name} unavailable: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (EDGEFLEET_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def service_url(name: str, env: str, default: str, default_port: int) -> str:
    """The URL of a backing service from env, after checking its port answers."""
    url = os.environ.get(env, default)
    parsed = urlparse(url)
    if not port_open(parsed.hostname or "127.0.0.1", parsed.port or default_port):
        need_service(name, url)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return service_url("Redis", "REDIS_URL", "redis://127.0.0.1:6379/15", 6379)


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    return service_url("MQTT broker", "MQTT_URL", "mqtt://127.0.0.1:1883", 1883)


@pytest.fixture(scope="session", autouse=True)
def _repo_root_stays_clean():
    """Nothing a test runs (engine passes, workers, brokers) may litter the checkout."""
    root = FIXTURES.parent.parent
    allowed = {"var", ".venv", ".pytest_cache", ".ruff_cache", "edgefleet.egg-info", "__pycache__"}
    before = {p.name for p in root.iterdir()}
    yield
    stray = sorted({p.name for p in root.iterdir()} - before - allowed)
    assert not stray, f"tests left files in the repository root: {stray}"


# --- storage -------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _s3_bucket():
    """In CI the whole suite runs on S3: make sure the bucket exists."""
    from django.conf import settings

    if settings.AWS_STORAGE_BUCKET_NAME:
        from fleet.storage import ensure_bucket

        ensure_bucket()


@pytest.fixture(autouse=True)
def _isolated_local_storage(settings, tmp_path, monkeypatch):
    """Storage per test (a directory, or a key prefix in the S3 bucket), so a test
    can prove storage stayed clean; worker subprocesses inherit the prefix via env."""
    if settings.STORAGES["default"]["BACKEND"].endswith("S3Storage"):
        import uuid

        prefix = f"t-{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("AWS_LOCATION", prefix)
        options = {**settings.STORAGES["default"]["OPTIONS"], "location": prefix}
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {**settings.STORAGES["default"], "OPTIONS": options},
        }
    if settings.STORAGES["default"]["BACKEND"].endswith("FileSystemStorage"):
        media = tmp_path / "media"
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {**settings.STORAGES["default"], "OPTIONS": {"location": str(media)}},
        }
    uploads = tmp_path / "upload-tmp"
    uploads.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(uploads)


@pytest.fixture(autouse=True)
def _fresh_cache_namespace(settings):
    """A key prefix per test: throttles and counters never leak between tests.

    (cache.clear() would FLUSHDB the Redis that the Celery broker may share.)
    """
    import uuid

    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": uuid.uuid4().hex[:12]},
    }


def stored_names(prefix: str) -> set[str]:
    from django.core.files.storage import default_storage

    try:
        return {f"{prefix}/{name}" for name in default_storage.listdir(prefix)[1]}
    except FileNotFoundError:
        return set()


# --- personas ------------------------------------------------------------------
def _make_user(django_user_model, username: str, role: str):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user(username=username, password="pw-" + username)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    if role == "admin":
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return user


@pytest.fixture
def admin_user(db, django_user_model):
    return _make_user(django_user_model, "alice-admin", "admin")


@pytest.fixture
def operator_user(db, django_user_model):
    return _make_user(django_user_model, "oscar-operator", "operator")


@pytest.fixture
def viewer_user(db, django_user_model):
    return _make_user(django_user_model, "vera-viewer", "viewer")


def token_client(user):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def operator_api(operator_user):
    return token_client(operator_user)


@pytest.fixture
def viewer_api(viewer_user):
    return token_client(viewer_user)


@pytest.fixture
def admin_api(admin_user):
    return token_client(admin_user)


@pytest.fixture
def anon_api():
    from rest_framework.test import APIClient

    return APIClient()


# --- devices ---------------------------------------------------------------------
def bearer(token: str):
    """An API client that speaks as the device holding `token`."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def seed_hardware_profiles() -> None:
    """The profiles migration 0002 seeds (a transactional test's flush removes them)."""
    import importlib

    from django.apps import apps

    importlib.import_module("devices.migrations.0002_seed_hardware_profiles").seed(apps, None)


@pytest.fixture
def group(db):
    from devices.models import DeviceGroup

    return DeviceGroup.objects.get_or_create(name="line-3")[0]


@pytest.fixture
def enrollment(group, admin_user):
    """(token row, plaintext) of a token that enrolls into `group` with tag `cam`."""
    from devices import services

    return services.create_enrollment_token(
        name="batch", actor=admin_user, group=group, tags=["cam"]
    )


# --- ONNX models ---------------------------------------------------------------
def tiny_model_bytes(seed: int = 0, *, hidden: int = 8, opset: int = 17) -> bytes:
    """A valid 4 → hidden → 3 MLP with a dynamic batch axis; `seed` changes the bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((4, hidden)).astype("float32"), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 3)).astype("float32"), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w1, w2],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgefleet-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_model_bytes())
    return path


@pytest.fixture
def demo_model_path(tmp_path) -> Path:
    """The bundled digits CNN (or the tiny model while the fixture is not generated)."""
    path = FIXTURES / "digits_cnn.onnx"
    if path.exists():
        return path
    fallback = tmp_path / "digits_cnn.onnx"
    fallback.write_bytes(tiny_model_bytes())
    return fallback


@pytest.fixture
def leftover_uploads(settings):
    """Call to list files left in the upload temp dir (must be none after a request)."""

    def _list() -> list[str]:
        root = Path(settings.FILE_UPLOAD_TEMP_DIR)
        return [str(p) for p in root.rglob("*")] if root.exists() else []

    return _list


def copy_fixture(name: str, dst: Path) -> Path:
    shutil.copyfile(FIXTURES / name, dst)
    return dst
