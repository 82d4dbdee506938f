"""Live training progress of a job: epochs from the sandboxed engine to the job's log.

The engine runs each recipe in a child process; a training recipe appends one
JSON line per epoch to the file named by ``EDGEFLEET_TRAIN_EVENTS`` and stops
between batches once the file ``EDGEFLEET_TRAIN_STOP`` exists. ``relay`` sets
both (and the job's deadline) for the duration of a search, and a thread turns
new epochs into log lines and a cancel request into the stop file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from django.db import connection

from compression.engine.training import hooks
from compression.progress import EPOCH

log = logging.getLogger(__name__)
POLL_S = 1.0


def epoch_line(event: dict) -> str:
    metric = event.get("metric") or ""
    value = event.get(metric)
    return EPOCH % {
        "p": event.get("pass", "?"),
        "e": event.get("epoch"),
        "n": event.get("epochs"),
        "l": f"{event.get('loss') or 0.0:.4f}",
        "m": metric,
        "v": f"{value:.4f}" if isinstance(value, int | float) else "-",
    }


@contextlib.contextmanager
def relay(job, workdir: Path, reporter):
    events, stop = workdir / "train-events.jsonl", workdir / "train-stop"
    saved = {k: os.environ.get(k) for k in (hooks.EVENTS_ENV, hooks.STOP_ENV, hooks.DEADLINE_ENV)}
    os.environ[hooks.EVENTS_ENV] = str(events)
    os.environ[hooks.STOP_ENV] = str(stop)
    os.environ[hooks.DEADLINE_ENV] = str(time.time() + job.time_budget_s)
    done = threading.Event()

    # SQLite allows one writer: there the lines wait for the search's next own write
    live = connection.vendor != "sqlite"

    def pump() -> None:
        offset = 0
        try:
            while True:
                finished = done.wait(POLL_S)
                new, offset = hooks.read_events(events, offset)
                for event in new:
                    if live:
                        reporter.note(epoch_line(event))  # also the job's heartbeat
                    else:
                        reporter.lines.append(epoch_line(event))
                if finished:
                    return
                if live and reporter.should_stop():
                    stop.touch()
        except Exception:  # progress is best effort; the search itself reports failures
            log.exception("training progress relay of job %s failed", job.pk)
        finally:
            connection.close()

    thread = threading.Thread(target=pump, name=f"train-relay-{job.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def curves(steps: list[dict]) -> dict:
    """``{"training": [{"pass", "metric", "history"}]}`` from a candidate's steps, or {}."""
    found = [
        {
            "pass": s.get("pass"),
            "metric": (s.get("metrics") or {}).get("metric"),
            "history": s["metrics"]["history"],
        }
        for s in steps
        if (s.get("metrics") or {}).get("history")
    ]
    return {"training": found} if found else {}
