"""The embedded broker under concurrent producers and consumers (short soak;
benchmarks/broker_soak.py runs it for minutes, and a real worker with beat)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet import broker

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "broker_soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("broker_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_concurrent_producers_and_consumers_lose_nothing_and_nobody_dies():
    out = subprocess.run(
        [sys.executable, str(SOAK), "kombu", "--seconds", "8"],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout
    result = json.loads(out[out.index("{") :])
    assert result["errors"] == [] and result["consumer_deaths"] == 0
    assert result["producer_errors"] == []
    assert result["sent"] > 100
    assert result["consumed"] == result["unique"] == result["sent"]
    assert result["left_in_queue"] == 0


def _channel(tmp_path):
    soak = _soak_module()
    for sub in ("queue", "processed", "control"):
        (tmp_path / sub).mkdir()
    return soak._connection(tmp_path, "fleet")


def test_half_written_and_unreadable_messages_never_reach_the_consumer(tmp_path):
    with _channel(tmp_path) as conn:
        queue = conn.SimpleQueue("q")
        (tmp_path / "queue" / f"{broker.TMP_PREFIX}1_x.q.msg.part").write_text('{"bo')
        (tmp_path / "queue" / "0_bad.q.msg").write_text("")  # e.g. a stock kombu writer
        queue.put({"n": 1})
        assert queue.get(timeout=1).payload == {"n": 1}
        assert [p.name for p in (tmp_path / "bad").iterdir()] == ["0_bad.q.msg"]
        assert queue.qsize() == 0  # the .part file is not a message


def test_exchange_table_survives_an_empty_file(tmp_path):
    with _channel(tmp_path) as conn:
        (tmp_path / "control").mkdir(exist_ok=True)
        # (a queue name of its own: kombu keeps bindings per process, across folders)
        (tmp_path / "control" / "q2.exchange").write_text("")  # a writer killed mid-write
        queue = conn.SimpleQueue("q2")
        queue.put({"n": 2})
        assert queue.get(timeout=1).payload == {"n": 2}
