"""Test hooks: make the agent stop at a named point so a test can SIGKILL it.

`EDGEFLEET_AGENT_TEST_PAUSE=download:4096` sleeps once 4096 bytes of an
artifact are on disk; `verify`, `install`, `switch` or `health` sleep at that
stage.
Before sleeping the hook writes the point's name to the file named by
`EDGEFLEET_AGENT_TEST_MARKER`. Unset (always, in production) it does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def pause(point: str, amount: int | None = None, *, flush=None) -> None:
    spec = os.environ.get("EDGEFLEET_AGENT_TEST_PAUSE")
    if not spec:
        return
    name, _, threshold = spec.partition(":")
    if name != point:
        return
    if amount is not None and threshold and amount < int(threshold):
        return
    if flush is not None:
        flush.flush()
        os.fsync(flush.fileno())
    marker = os.environ.get("EDGEFLEET_AGENT_TEST_MARKER")
    if marker:
        Path(marker).write_text(f"{point}:{amount if amount is not None else ''}")
    time.sleep(float(os.environ.get("EDGEFLEET_AGENT_TEST_PAUSE_S", "3600")))
