"""Exceptions raised by the compression engine.

Every engine error can cross the sandbox boundary: the child process sends
its class name and constructor arguments as JSON and the parent rebuilds it
(see ``sandbox.py``), so callers catch the same types whether or not the work
ran isolated.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a problem the engine reports with a human sentence."""

    def to_args(self) -> list:
        return [str(a) for a in self.args]


class ModelRejected(EngineError):
    """The uploaded file is not a model we are willing to store or run."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class SandboxCrashed(EngineError):
    """The isolated child died: signal, out of memory, non-zero exit."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SandboxTimeout(SandboxCrashed):
    """The isolated child ran past its wall-clock limit and was killed."""


class RemoteError(EngineError):
    """An unexpected exception inside the child (not an engine error)."""

    def __init__(self, exc_type: str, message: str):
        super().__init__(exc_type, message)
        self.exc_type = exc_type
        self.message = message

    def __str__(self) -> str:
        return f"{self.exc_type}: {self.message}"


class DatasetError(EngineError):
    """A dataset .npz does not fit the model (names, shapes, dtypes, labels)."""


class PassConfigError(EngineError):
    """A pass or recipe configuration is invalid (unknown key, bad value)."""


class PassRefused(EngineError):
    """A pass cannot be applied safely to this graph; nothing was written."""


class Cancelled(EngineError):
    """A long operation was asked to stop between two steps."""


ERROR_TYPES: dict[str, type[EngineError]] = {
    cls.__name__: cls
    for cls in (
        EngineError,
        ModelRejected,
        SandboxCrashed,
        SandboxTimeout,
        RemoteError,
        DatasetError,
        PassConfigError,
        PassRefused,
        Cancelled,
    )
}
