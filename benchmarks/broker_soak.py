"""Soak the embedded (filesystem) broker: concurrent producers and consumers.

Two levels:

- `kombu`: P producer and C consumer processes on one queue folder for N
  seconds; every message must be consumed exactly once, no consumer may die.
  Run it on kombu's stock transport too (`--transport stock`) to see the
  upstream race (celery/kombu#1551) this project's transport removes.
- `celery`: a real `celery -A fleet worker -B` (beat every second: the worker
  heartbeat) on the embedded broker while P producer processes submit tasks;
  the worker must stay alive, drain the queue and keep its heartbeat fresh.

    .venv/bin/python benchmarks/broker_soak.py kombu --seconds 300
    .venv/bin/python benchmarks/broker_soak.py celery --seconds 300
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402 - after the sys.path fix above
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from queue import Empty  # noqa: E402

ROOT = _HERE.parent
TRANSPORTS = {"fleet": "fleet.broker:Transport", "stock": "kombu.transport.filesystem:Transport"}


def _connection(folder: Path, transport: str):
    from kombu import Connection

    return Connection(
        "filesystem://",
        transport=TRANSPORTS[transport],
        transport_options={
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        },
    )


def _produce(folder, transport, index, seconds, out):
    sent, error = 0, ""
    try:
        with _connection(folder, transport) as conn:
            queue = conn.SimpleQueue("soak")
            # the clock starts once this producer is up: on a loaded machine spawning and
            # importing kombu can take longer than a short soak
            deadline = time.time() + seconds
            while time.time() < deadline:
                queue.put({"p": index, "n": sent, "pad": "x" * 2000})
                sent += 1
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    out.put(("sent", index, sent, error))


def _consume(folder, transport, index, stop, out):
    got, error = [], ""
    try:
        with _connection(folder, transport) as conn:
            queue = conn.SimpleQueue("soak")
            while True:
                try:
                    message = queue.get(block=True, timeout=0.05)
                except Empty:
                    if stop.is_set():
                        break
                    continue
                got.append((message.payload["p"], message.payload["n"]))
                message.ack()
    except Exception as exc:  # what kills a Celery consumer kills this one
        error = f"{type(exc).__name__}: {exc}"
    out.put(("got", index, got, error))


def kombu_soak(
    seconds: float,
    producers: int = 3,
    consumers: int = 3,
    transport: str = "fleet",
    folder: Path | None = None,
) -> dict:
    folder = Path(folder or tempfile.mkdtemp(prefix="edgefleet-soak-"))
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_produce, args=(folder, transport, i, seconds, out))
        for i in range(producers)
    ]
    procs += [
        ctx.Process(target=_consume, args=(folder, transport, i, stop, out))
        for i in range(consumers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 300) for _ in range(producers)]
    stop.set()
    results += [out.get(timeout=120) for _ in range(consumers)]
    for p in procs:
        p.join(timeout=30)
    sent = sum(r[2] for r in results if r[0] == "sent")
    got = [m for r in results if r[0] == "got" for m in r[2]]
    errors = [r[3] for r in results if r[0] == "got" and r[3]]
    producer_errors = [r[3] for r in results if r[0] == "sent" and r[3]]
    return {
        "level": "kombu",
        "transport": transport,
        "seconds": seconds,
        "producers": producers,
        "consumers": consumers,
        "sent": sent,
        "consumed": len(got),
        "unique": len(set(got)),
        "consumer_deaths": len(errors),
        "errors": errors[:3],
        "producer_errors": producer_errors[:3],
        "left_in_queue": len(list((folder / "queue").iterdir())),
    }


def _submit(var_dir, index, deadline, out):
    os.environ["EDGEFLEET_VAR_DIR"] = str(var_dir)
    from fleet.celery import app

    sent = 0
    while time.time() < deadline:
        app.send_task("fleet.tasks.worker_heartbeat")
        sent += 1
        time.sleep(0.2)  # a busy operator team, not a flood: the worker must keep up
    out.put(sent)


def celery_env(var_dir: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL"}
    }
    env.update(
        EDGEFLEET_VAR_DIR=str(var_dir),
        WORKER_HEARTBEAT_S="1",
        WORKER_STALE_S="5",
        DJANGO_SETTINGS_MODULE="fleet.settings",
    )
    return env


def celery_soak(seconds: float, producers: int = 3, var_dir: Path | None = None) -> dict:
    var_dir = Path(var_dir or tempfile.mkdtemp(prefix="edgefleet-soak-var-"))
    env = celery_env(var_dir)
    python = sys.executable
    subprocess.run(
        [python, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )
    log = open(var_dir / "worker.log", "w")  # noqa: SIM115 - closed after the worker stops
    worker = subprocess.Popen(
        [
            python,
            "-m",
            "celery",
            "-A",
            "fleet",
            "worker",
            "-B",
            "-Q",
            "default,compression",
            "--concurrency",
            "2",
            "--loglevel",
            "INFO",
            "-s",
            str(var_dir / "beat-schedule"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        old = os.environ.copy()
        os.environ.update(env)
        for key in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL"):
            os.environ.pop(key, None)
        deadline = time.time() + seconds
        procs = [
            ctx.Process(target=_submit, args=(var_dir, i, deadline, out)) for i in range(producers)
        ]
        for p in procs:
            p.start()
        os.environ.clear()
        os.environ.update(old)
        sent = sum(out.get(timeout=seconds + 120) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        queue_dir = var_dir / "broker" / "queue"
        drain_by = time.time() + 60
        while time.time() < drain_by and any(queue_dir.glob("*.default.msg")):
            time.sleep(0.2)
        left = len(list(queue_dir.glob("*.default.msg")))
        heartbeat = float((var_dir / "worker-heartbeat").read_text())
        alive = worker.poll() is None
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
    text = (var_dir / "worker.log").read_text(errors="replace")
    return {
        "level": "celery",
        "seconds": seconds,
        "producers": producers,
        "sent": sent,
        "left_in_queue": left,
        "worker_alive": alive,
        "heartbeat_age_s": round(time.time() - heartbeat, 1),
        "unrecoverable": text.count("Unrecoverable error"),
        "json_errors": text.count("JSONDecodeError"),
        "log": str(var_dir / "worker.log"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("level", choices=["kombu", "celery"])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--transport", choices=sorted(TRANSPORTS), default="fleet")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-soak-") as scratch:  # removed after
        if args.level == "kombu":
            result = kombu_soak(
                args.seconds, args.producers, args.consumers, args.transport, Path(scratch)
            )
        else:
            result = celery_soak(args.seconds, args.producers, Path(scratch))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
