"""Throttled progress of a running job: one small object the engine calls back.

The engine reports after every step; writing each call would turn a fast
search into a stream of UPDATEs. The reporter writes at most every
`min_interval_s` (always on a new step and at the end) and keeps the log tail
in memory, so the job row is the single source the UI polls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.utils import timezone
from django.utils.translation import gettext_noop

from compression.models import LOG_LINES_KEPT, CompressionJob

log = logging.getLogger(__name__)

# What a running job writes into its row (log lines, errors): stored in English for
# the API, shown in the reader's language by `compression.display`.
ATTEMPT = gettext_noop("attempt %(n)s on %(h)s")
MEASURING = gettext_noop("measuring with %(t)s thread(s) on %(p)s (server-side estimate)")
REGISTERING = gettext_noop("registering %(r)s")
EPOCH = gettext_noop("%(p)s epoch %(e)s/%(n)s: loss %(l)s, %(m)s %(v)s")
SOFT_TIMEOUT = gettext_noop("timeout: the job ran past its time limit of %(s)s s")
HARD_TIMEOUT = gettext_noop("timeout: killed at the hard time limit of %(s)s s")
CRASHED = gettext_noop(
    "crashed: the worker died %(n)s times while running this job (last on %(h)s)"
)
TEXTS = (ATTEMPT, MEASURING, REGISTERING, EPOCH, SOFT_TIMEOUT, HARD_TIMEOUT, CRASHED)


class ProgressReporter:
    def __init__(
        self,
        job: CompressionJob,
        *,
        min_interval_s: float = 0.5,
        cancel_check_s: float = 1.0,
        scale: tuple[float, float] = (0.0, 1.0),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.job = job
        self.min_interval_s = min_interval_s
        self.cancel_check_s = cancel_check_s
        self.scale = scale
        self.clock = clock
        self.lines: list[str] = list(job.log or [])[-LOG_LINES_KEPT:]
        self.fraction = 0.0
        self.step = ""
        self.writes = 0
        self._last_write = float("-inf")
        self._last_cancel_check = float("-inf")
        self._cancelled = False

    def __call__(self, fraction: float, step: str) -> None:
        """The engine's `progress(fraction, step)` callback, mapped into `scale`."""
        low, high = self.scale
        fraction = low + (high - low) * max(0.0, min(1.0, fraction))
        new_step = step != self.step
        self.fraction, self.step = fraction, step
        if new_step:
            self.lines.append(f"{timezone.now():%H:%M:%S} {step}")
        self._maybe_write(force=new_step)

    def note(self, line: str) -> None:
        self.lines.append(f"{timezone.now():%H:%M:%S} {line}")
        self._maybe_write(force=True)

    def should_stop(self) -> bool:
        """The engine's `should_stop()`: True once someone asked to cancel (checked ≤ 1/s)."""
        now = self.clock()
        if not self._cancelled and now - self._last_cancel_check >= self.cancel_check_s:
            self._last_cancel_check = now
            self._cancelled = self.job.cancel_was_requested()
        return self._cancelled

    def flush(self) -> None:
        self._maybe_write(force=True)

    def _maybe_write(self, *, force: bool) -> None:
        now = self.clock()
        if not force and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        self.lines = self.lines[-LOG_LINES_KEPT:]
        self.job.report(progress=round(self.fraction, 4), step=self.step, log=self.lines)
        self.writes += 1
