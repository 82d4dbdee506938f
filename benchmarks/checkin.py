"""Device check-in throughput against a bare Django JSON view, in one run.

100k registered devices (each with a credential) on PostgreSQL; a release
deployed to `--assigned` of them (signed manifests stored per device). The same
gunicorn server (same workers, middleware, cache, database) serves both
`GET /api/v1/device/update` and a bare JSON view; wrk (or, without wrk, a
Python keep-alive load generator) drives 16 connections at each scenario:

  bare          GET /api/v1/bench/bare          plain JsonResponse, no auth
  check-in 304  GET /api/v1/device/update       If-None-Match = the device's ETag
  check-in 200  GET /api/v1/device/update       full signed manifest body
  check-in 204  GET /api/v1/device/update       device with nothing assigned

Target (issue 6): check-in ≥ 0.5 × bare throughput, p99 < 50 ms. Loopback only;
a scratch database next to DATABASE_URL's and a key prefix in REDIS_URL's cache,
both of this run only and removed at the end (`benchmarks._harness.Scratch`).

`--metrics compare` runs a second, identical server with METRICS_ENABLED=0 and
interleaves every check-in scenario on both (the pair's order alternating per
round): the cost of the Prometheus counting (fleet/prometheus.py, multiprocess
mode as under gunicorn in production) as paired ratios of throughput and web
CPU per request (target ≤ 5 %).

    .venv/bin/python benchmarks/checkin.py [--devices 100000] [--assigned 10000]
        [--seconds 10] [--connections 16] [--workers N] [--threads N]
        [--metrics on|off|compare]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Run as a script: this checkout's packages (and `benchmarks`) come first on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402 - after the sys.path fix above
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from benchmarks import _harness as h  # noqa: E402

ROOT = _HERE.parent
PYTHON = sys.executable
BARE_PATH = "/api/v1/bench/bare"
CHECKIN_PATH = "/api/v1/device/update"


# --- the server: fleet's URLs plus one bare view, under gunicorn -------------------------
def serve(port: int, workers: int, threads: int) -> None:
    import types

    import django
    from django.conf import settings
    from django.http import JsonResponse
    from gunicorn.app.base import BaseApplication

    urls = types.ModuleType("checkin_bench_urls")
    sys.modules[urls.__name__] = urls
    settings.ROOT_URLCONF = urls.__name__
    django.setup()
    from django.urls import path

    from fleet.urls import urlpatterns

    def bare(request):
        return JsonResponse({"status": "ok"})

    # Right after the include that holds the check-in URL: both pay the same URL
    # resolution (every api/v1 pattern before them is tried first).
    patterns = list(urlpatterns)
    after = next(
        i
        for i, p in enumerate(patterns)
        if getattr(p, "urlconf_name", None).__class__.__name__ == "module"
        and p.urlconf_name.__name__ == "ota.api.urls"
    )
    patterns.insert(after + 1, path(BARE_PATH.lstrip("/"), bare))
    urls.urlpatterns = patterns
    from fleet.wsgi import application  # the production entry point

    class Server(BaseApplication):
        def load_config(self):
            # The production settings (fleet/gunicorn.py), on loopback.
            from fleet import gunicorn as production

            names = ("worker_class", "keepalive", "timeout", "backlog")
            config = {name: getattr(production, name) for name in names}
            config.update(
                {
                    "bind": f"127.0.0.1:{port}",
                    "workers": workers,
                    "threads": threads,
                    "loglevel": "warning",
                    "preload_app": True,
                }
            )
            for key, value in config.items():
                self.cfg.set(key, value)

        def load(self):
            return application

    Server().run()


def start_server(env: dict, port: int, workers: int, threads: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            PYTHON,
            str(Path(__file__).resolve()),
            "--serve",
            str(port),
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if proc.poll() is None:  # ours, not another process on that port
                    return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start: " + proc.stderr.read().decode()[-3000:])


# --- data ----------------------------------------------------------------------------------


def seed_devices(n: int) -> dict[str, str]:
    """n devices with one credential each, by SQL; returns uid → plaintext token."""
    from django.db import connection

    from devices import tokens

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO devices_device (uid, name, hardware_profile_id, inventory, model_version,
                agent_version, status, last_seen, created_at)
            SELECT 'dev-' || lpad(i::text, 6, '0'), '',
                   (SELECT min(id) FROM devices_hardwareprofile) + i %% 5,
                   '{"models": {"default": {"model_version": "digits:1"}}}'::jsonb,
                   'digits:1', '0.1.0', 'online', now(), now()
            FROM generate_series(1, %s) i""",
            [n],
        )
        cursor.execute("SELECT id, uid FROM devices_device ORDER BY id")
        rows = cursor.fetchall()
        plain: dict[str, str] = {}
        buffer = io.StringIO()
        for pk, uid in rows:
            value, prefix, digest = tokens.new_token(tokens.DEVICE)
            plain[uid] = value
            buffer.write(f"{pk}\t{prefix}\t{digest}\tnow\n")
        buffer.seek(0)
        cursor.copy_expert(
            "COPY devices_devicecredential (device_id, prefix, token_hash, created_at) FROM STDIN",
            buffer,
        )
        cursor.execute("ANALYZE")
    return plain


def deploy(uids: list[str]) -> tuple[float, int]:
    """A release of one new version to `uids`; (seconds to assign and sign, deployment id)."""
    from django.contrib.auth.models import User

    from compression.models import MLModel, ModelVersion
    from ota import services

    model = MLModel.objects.create(name="digits")
    sha = hashlib.sha256(b"bench").hexdigest()
    version = ModelVersion.objects.create(
        model=model,
        number=2,
        artifact=f"models/{sha}.onnx",
        sha256=sha,
        size_bytes=123456,
        metrics={"latency_ms": {"p95": 9.5}},
    )
    admin = User.objects.create_superuser("bench-admin", password="x" * 16)
    release = services.create_release(
        name="digits v2", variants=[{"name": "fp32", "model_version": version.pk}], actor=admin
    )
    began = time.perf_counter()
    deployment = services.start_deployment(release, {"devices": uids}, actor=admin, phases=[100])
    return time.perf_counter() - began, deployment.pk


# CPU time of the web server, the PostgreSQL backends serving the scratch database,
# Redis and wrk (other sessions may use the same PostgreSQL and Redis).
def cpu_roles(database: str) -> dict:
    return {
        "web": lambda cmd: "--serve" in cmd and "checkin.py" in cmd,
        "postgres": lambda cmd: cmd.startswith("postgres") and database in cmd,
        "redis": lambda cmd: "redis-server" in cmd,
        "wrk": lambda cmd: cmd.startswith("wrk"),
    }


# --- load ------------------------------------------------------------------------------------
LUA = """
local items = {%(items)s}
local path = "%(path)s"
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
request = function()
  local item = items[math.random(#items)]
  local headers = {}
  if item[1] ~= "" then headers["Authorization"] = "Bearer " .. item[1] end
  if item[2] ~= "" then headers["If-None-Match"] = item[2] end
  return wrk.format("GET", path, headers)
end
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
done = function(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for k, v in pairs(c) do merged[tostring(k)] = (merged[tostring(k)] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(merged) do table.insert(parts, string.format('"%%s": %%d', k, v)) end
  io.write(string.format('RESULT {"requests": %%d, "seconds": %%f, "p50_ms": %%f, ' ..
    '"p99_ms": %%f, "errors": %%d, "status": {%%s}}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, table.concat(parts, ", ")))
end
"""


def run_wrk(
    port: int, path: str, items: list[tuple[str, str]], seconds: int, connections: int, threads: int
) -> dict:
    lua_items = ", ".join(f'{{"{t}", "{e.replace(chr(34), chr(92) + chr(34))}"}}' for t, e in items)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % {"items": lua_items, "path": path})
        script = fh.name
    try:
        done = subprocess.run(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{seconds}s",
                "--timeout",
                "10s",
                "-s",
                script,
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"wrk failed: {done.stdout[-1000:]} {done.stderr[-2000:]}")
        out = done.stdout
    finally:
        Path(script).unlink()
    result = json.loads(re.search(r"^RESULT (.*)$", out, re.MULTILINE).group(1))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def warm(port: int, path: str, items: list[tuple[str, str]]) -> None:
    """One request per distinct device, so that no measured round pays for a
    first poll (a credential lookup, an answer built and signed): how many of
    those fall into a round would otherwise depend on the machine's speed."""
    for token, etag in dict.fromkeys(items):
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += f"Authorization: Bearer {token}\r\n" if token else ""
        head += f"If-None-Match: {etag}\r\n" if etag else ""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall((head + "\r\n").encode())
            while sock.recv(65536):
                pass


def run_python(
    port: int,
    path: str,
    items: list[tuple[str, str]],
    seconds: int,
    connections: int,
    _threads: int,
) -> dict:
    """Fallback without wrk: raw sockets, one thread per connection, kept alive
    unless the server closes it (gunicorn's sync workers answer `Connection:
    close`: the next request opens a new one, as wrk does)."""
    latencies: list[float] = []
    status: dict[str, int] = {}
    errors = [0]
    lock = threading.Lock()
    deadline = time.time() + seconds

    def receive(sock) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def worker():
        sock, local, buffer, failed = None, [], b"", 0
        codes: dict[str, int] = {}
        while time.time() < deadline:
            token, etag = random.choice(items)
            head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            head += f"Authorization: Bearer {token}\r\n" if token else ""
            head += f"If-None-Match: {etag}\r\n" if etag else ""
            began = time.perf_counter()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    buffer = b""
                sock.sendall((head + "\r\n").encode())
                while b"\r\n\r\n" not in buffer:
                    buffer += receive(sock)
                header, buffer = buffer.split(b"\r\n\r\n", 1)
                found = re.search(rb"(?i)content-length:\s*(\d+)", header)
                length = int(found[1]) if found else 0
                while len(buffer) < length:
                    buffer += receive(sock)
                buffer = buffer[length:]
            except OSError:
                failed += 1
                if sock is not None:
                    sock.close()
                sock = None
                continue
            local.append(time.perf_counter() - began)
            code = header.split(b" ", 2)[1].decode()
            codes[code] = codes.get(code, 0) + 1
            if re.search(rb"(?i)\r\nconnection:\s*close", header):
                sock.close()
                sock = None
        if sock is not None:
            sock.close()
        with lock:
            latencies.extend(local)
            errors[0] += failed
            for code, n in codes.items():
                status[code] = status.get(code, 0) + n

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    began = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.time() - began
    ordered = sorted(latencies) or [0.0]
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "errors": errors[0],
        "status": status,
    }


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--assigned", type=int, default=10_000)
    parser.add_argument(
        "--pollers", type=int, default=2000, help="distinct devices each scenario polls as"
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; medians are reported"
    )
    parser.add_argument("--connections", type=int, default=16)
    h.add_gunicorn_args(parser)
    parser.add_argument(
        "--metrics",
        choices=["on", "off", "compare"],
        default="on",
        help="Prometheus counting on the server (compare: both, interleaved)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.workers, args.threads)
        return

    scratch = h.Scratch("checkin")
    try:
        run_benchmark(args, scratch)
    finally:
        scratch.close()


def run_benchmark(args, scratch) -> None:
    from fleet import gunicorn as production

    redis_url = scratch.redis_url
    roles = cpu_roles(scratch.name)
    env = scratch.setup_django()
    from devices.models import Device
    from ota import manifests

    began = time.perf_counter()
    tokens = seed_devices(args.devices)
    seeded = time.perf_counter() - began
    uids = sorted(tokens)
    assigned = uids[: args.assigned]
    assign_s, _deployment = deploy(assigned)
    pks = dict(Device.objects.filter(uid__in=assigned[: args.pollers]).values_list("uid", "pk"))
    etags = {uid: manifests.checkin_for(pk).etag for uid, pk in pks.items()}
    pollers = list(etags)
    idle = uids[args.assigned : args.assigned + args.pollers]
    cache_backend = f"Redis {redis_url}" if redis_url else "local memory (no Redis)"

    variants = ["on", "off"] if args.metrics == "compare" else [args.metrics]
    servers, ports = [], {}
    for variant in variants:
        ports[variant] = h.free_port()
        prom_dir = tempfile.mkdtemp(prefix=f"edgefleet-bench-prom-{variant}-")
        metrics_env = {
            "METRICS_ENABLED": "1" if variant == "on" else "0",
            "PROMETHEUS_MULTIPROC_DIR": prom_dir,
        }
        servers.append(
            start_server({**env, **metrics_env}, ports[variant], args.workers, args.threads)
        )
    run = run_wrk if shutil.which("wrk") else run_python
    checkins = [
        ("check-in 304 (ETag match)", CHECKIN_PATH, [(tokens[u], etags[u]) for u in pollers]),
        ("check-in 200 (signed manifest)", CHECKIN_PATH, [(tokens[u], "") for u in pollers]),
        ("check-in 204 (nothing assigned)", CHECKIN_PATH, [(tokens[u], "") for u in idle]),
    ]
    compare = len(variants) > 1
    scenarios = [("bare Django JSON view", BARE_PATH, [("", "")], ports[variants[0]])]
    scenarios += [
        (f"{name} · metrics {v}" if compare else name, path, items, ports[v])
        for name, path, items in checkins
        for v in variants
    ]
    # The machine may be shared: scenarios are interleaved round by round and each
    # check-in figure is divided by the bare figure of its own round (paired ratio).
    rounds: list[list[dict]] = []
    try:
        for _name, path, items, port in scenarios:
            warm(port, path, items)  # every device once: credentials and answers cached
            run(port, path, items, 4 if compare else 2, args.connections, 2)  # connections
        for number in range(args.rounds):
            row = [None] * len(scenarios)
            order = list(range(len(scenarios)))
            if compare and number % 2:  # on/off pairs: the other one first
                order = [0] + [i + (1 if i % 2 else -1) for i in order[1:]]
            for index in order:
                _name, path, items, port = scenarios[index]
                # this scenario's server only (with --metrics compare two are running)
                roles = {**roles, "web": lambda cmd, p=port: f"--serve {p} " in cmd}
                before = h.process_cpu_seconds(roles)
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = run(port, path, items, args.seconds, args.connections, 2)
                used = h.cpu_delta(before, h.process_cpu_seconds(roles))
                done = resource.getrusage(resource.RUSAGE_CHILDREN)
                # wrk exits before /proc can be read: its CPU is in our children's rusage.
                used["wrk"] = done.ru_utime + done.ru_stime - children.ru_utime - children.ru_stime
                result["cpu_ms"] = {
                    k: v * 1000 / max(result["requests"], 1) for k, v in used.items()
                }
                row[index] = result
            rounds.append(row)
    finally:
        for server in servers:
            h.stop(server)
    results = []
    for index, (name, _path, _items, _port) in enumerate(scenarios):
        runs = [r[index] for r in rounds]
        results.append(
            (
                name,
                {
                    "rps": statistics.median(r["rps"] for r in runs),
                    "ratio": statistics.median(r[index]["rps"] / r[0]["rps"] for r in rounds),
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                    "cpu_ms": {
                        k: statistics.median(r["cpu_ms"][k] for r in runs)
                        for k in runs[0]["cpu_ms"]
                    },
                    "status": {
                        k: sum(r["status"].get(k, 0) for r in runs)
                        for k in {k for r in runs for k in r["status"]}
                    },
                },
            )
        )

    print(
        f"# EdgeFleet check-in benchmark · {os.cpu_count()} CPUs (shared by server, "
        f"PostgreSQL and the load generator) · PostgreSQL {scratch.name} · cache {cache_backend}"
    )
    print(
        f"{args.devices:,} devices with credentials seeded in {seeded:.1f} s; "
        f"{len(assigned):,} manifests assigned and signed in {assign_s:.1f} s"
    )
    print(
        f"gunicorn {production.worker_class} {args.workers} workers × {args.threads} threads; "
        f"{'wrk' if run is run_wrk else 'python load generator'}, {args.connections} "
        f"connections, {args.rounds} interleaved rounds × {args.seconds} s per scenario "
        f"(medians; × bare paired per round); {len(pollers):,} distinct devices polling"
    )
    print(
        "\n| scenario | requests/s | × bare | p50 ms | p99 ms | CPU ms/request: web, "
        "postgres, redis, wrk | × bare by CPU | statuses |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---|")
    base_cpu = sum(results[0][1]["cpu_ms"].values())
    for name, r in results:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["status"].items()))
        cpu = r["cpu_ms"]
        print(
            f"| {name} | {r['rps']:,.0f} | {r['ratio']:.2f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {cpu['web']:.3f}, {cpu['postgres']:.3f}, "
            f"{cpu['redis']:.3f}, {cpu['wrk']:.3f} | {base_cpu / sum(cpu.values()):.2f} | "
            f"{statuses} |"
        )
    checks = [r for name, r in results[1:]]
    ok = all(r["ratio"] >= 0.5 and r["p99_ms"] < 50 for r in checks)
    print(
        f"\ntarget ≥ 0.50 × bare and p99 < 50 ms on every check-in path: "
        f"{'MET' if ok else 'NOT MET'}"
    )
    print(
        "'× bare by CPU': CPU time per request of everything measured (web, PostgreSQL, "
        "Redis, wrk), bare ÷ check-in: the throughput ratio an otherwise idle machine "
        "would show (PostgreSQL: only the backends of the scratch database; Redis: the whole "
        "server, which other sessions may share)."
    )
    if compare:
        print_metrics_cost(scenarios, rounds)


def print_metrics_cost(scenarios, rounds) -> None:
    """Paired per round: each check-in scenario with metrics on against off."""
    print("\n| Prometheus counting | requests/s on ÷ off | web CPU ms/request on ÷ off |")
    print("|---|---:|---:|")
    names = [s[0] for s in scenarios]
    for index, name in enumerate(names):
        if not name.endswith("· metrics on"):
            continue
        off = names.index(name.replace("metrics on", "metrics off"))
        rps = statistics.median(r[index]["rps"] / r[off]["rps"] for r in rounds)
        cpu = statistics.median(r[index]["cpu_ms"]["web"] / r[off]["cpu_ms"]["web"] for r in rounds)
        ratio_of_medians = statistics.median(
            r[index]["cpu_ms"]["web"] for r in rounds
        ) / statistics.median(r[off]["cpu_ms"]["web"] for r in rounds)
        print(
            f"| {name.removesuffix(' · metrics on')} | {rps:.3f} | {cpu:.3f} "
            f"(ratio of medians {ratio_of_medians:.3f}) |"
        )
    print("target: web CPU per request on ÷ off ≤ 1.05 (medians of paired rounds)")
    web_off = statistics.median(
        r[i]["cpu_ms"]["web"]
        for r in rounds
        for i, n in enumerate(names)
        if n.endswith("metrics off")
    )
    added = counting_cost_us()
    print(
        f"the counting itself, timed in one process in multiprocess mode: {added:.1f} µs CPU "
        f"per request = {added / 10 / web_off:.2f} % of the {web_off:.3f} ms a check-in "
        "costs the web with counting off"
    )


COUNTING = """
import os, tempfile, time, types
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="edgefleet-bench-prom-")
import django
django.setup()
from fleet import prometheus
request = types.SimpleNamespace(resolver_match=types.SimpleNamespace(url_name="device-update"))
for _ in range(2000):
    prometheus.observe_device_request(request, 304, 0.004)
began = time.process_time()
for _ in range(50000):
    prometheus.observe_device_request(request, 304, 0.004)
print((time.process_time() - began) / 50000 * 1e6)
"""


def counting_cost_us() -> float:
    """CPU of `fleet.prometheus.observe_device_request` (a counter and a histogram
    sample per request, written to the multiprocess files), in microseconds."""
    done = subprocess.run(
        [PYTHON, "-c", COUNTING],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "fleet.settings"},
    )
    return float(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
