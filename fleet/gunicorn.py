"""gunicorn settings for the web process: `gunicorn -c python:fleet.gunicorn fleet.wsgi`.

Measured on 2 cores (benchmarks/checkin.py, benchmarks/simulated_fleet.py and wrk):
- devices open a new connection per request (the agent polls every 30 s), and
  for that traffic gunicorn's plain `sync` workers answered 2,115 check-ins/s
  against 1,416 for `gthread` (p99 11 ms against 34 ms): no selector or
  keep-alive bookkeeping per connection;
- one worker more than cores: idle sync workers all wake for each new
  connection (they select() on the shared socket), so extra workers cost CPU
  on every request. benchmarks/simulated_fleet.py, 10,000 devices, 2 cores shared with
  PostgreSQL, Redis and the simulator: 3 workers served 1,052 requests/s at
  1.07 ms web CPU each, 4 workers 857/s at 1.47 ms, 2 workers 849/s (idle
  while waiting on PostgreSQL/Redis; 1.06 ms); 3 workers × 4 threads doubled
  or tripled p99 in benchmarks/checkin.py, the threads queueing on the GIL.
A sync worker serves one request at a time and (gunicorn 27 here) lingers
until the client closes: put a buffering proxy in front for slow (cellular)
clients, and keep artifacts on S3 (devices get a presigned redirect, no worker
streams the file). WEB_WORKER_CLASS=gthread + WEB_THREADS=N when
serving large artifacts from local storage. Override with WEB_WORKERS / WEB_BIND.
"""

import os

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_WORKERS", (os.cpu_count() or 1) + 1))
worker_class = os.environ.get("WEB_WORKER_CLASS", "sync")
threads = int(os.environ.get("WEB_THREADS", 1))  # gthread only
keepalive = 30  # gthread only: devices that keep their connection
timeout = 120
backlog = 2048
accesslog = os.environ.get("WEB_ACCESS_LOG") or None


# Prometheus multiprocess mode (PROMETHEUS_MULTIPROC_DIR, see fleet/prometheus.py):
# start from an empty directory, and stop merging a dead worker's live gauges.
def on_starting(server):
    from fleet import prometheus

    prometheus.reset_multiprocess_dir()


def child_exit(server, worker):
    from fleet import prometheus

    prometheus.mark_process_dead(worker.pid)
