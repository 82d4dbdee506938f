"""EdgeFleet compression engine: a plain library with no Django import.

onnxruntime 1.32 looks up a vendor telemetry host shortly after a session
opens unless this variable is set before it loads (docs/reliability.md N1), so it is
set here, before any engine module can import onnxruntime.
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# the imports below must follow the env setup above (ruff knows os.environ is exempt)
from compression.engine.errors import (
    Cancelled,
    DatasetError,
    EngineError,
    ModelRejected,
    PassConfigError,
    PassRefused,
    RemoteError,
    SandboxCrashed,
    SandboxTimeout,
)
from compression.engine.inspect import inspect_model
from compression.engine.sandbox import run_isolated
from compression.engine.validate import check_file, validate_model

__all__ = [
    "Cancelled",
    "DatasetError",
    "EngineError",
    "ModelRejected",
    "PassConfigError",
    "PassRefused",
    "RemoteError",
    "SandboxCrashed",
    "SandboxTimeout",
    "check_file",
    "inspect_model",
    "run_isolated",
    "validate_model",
]
