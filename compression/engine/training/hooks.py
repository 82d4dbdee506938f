"""How a training loop reports per-epoch progress, hears cancellation and sees its deadline.

In process, callers wrap the work in ``training_hooks(progress=..., should_stop=...,
deadline=...)``. Across the sandbox boundary (the search runs each recipe in a
child process) the same three travel as environment variables: epochs are
appended as JSON lines to ``EDGEFLEET_TRAIN_EVENTS``, the parent creates the
file ``EDGEFLEET_TRAIN_STOP`` to cancel, and ``EDGEFLEET_TRAIN_DEADLINE`` is a
Unix time after which training stops at the next batch and keeps its best state.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

EVENTS_ENV = "EDGEFLEET_TRAIN_EVENTS"
STOP_ENV = "EDGEFLEET_TRAIN_STOP"
DEADLINE_ENV = "EDGEFLEET_TRAIN_DEADLINE"


@dataclass
class Hooks:
    progress: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] | None = None
    deadline: float | None = None  # time.time() value


_current = Hooks()


@contextlib.contextmanager
def training_hooks(
    *, progress=None, should_stop=None, deadline: float | None = None
) -> Iterator[Hooks]:
    global _current
    previous, _current = _current, Hooks(progress, should_stop, deadline)
    try:
        yield _current
    finally:
        _current = previous


def emit(event: dict) -> None:
    """One epoch record (``{"pass", "epoch", "epochs", "loss", "metric", ...}``)."""
    if _current.progress is not None:
        _current.progress(event)
    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(event) + "\n")


def stop_requested() -> bool:
    if _current.should_stop is not None and _current.should_stop():
        return True
    path = os.environ.get(STOP_ENV)
    return bool(path) and Path(path).exists()


def deadline(budget_s: float | None) -> float | None:
    """The earliest of the hooks' deadline, the environment's and ``now + budget_s``."""
    options = [_current.deadline]
    if os.environ.get(DEADLINE_ENV):
        options.append(float(os.environ[DEADLINE_ENV]))
    if budget_s:
        options.append(time.time() + float(budget_s))
    options = [d for d in options if d is not None]
    return min(options) if options else None


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Complete JSON lines appended to ``path`` after byte ``offset``; the new offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events, offset + end
