"""gunicorn settings for the web process: `gunicorn -c python:fleet.gunicorn fleet.wsgi`.

Measured on 2 cores (benchmarks/checkin.py, wrk with 16 keep-alive connections):
two single-threaded workers per core gave the shortest tail (check-in p99 ≈ 20 ms)
at the same throughput; 3 workers × 4 threads doubled or tripled p99, the
threads queueing on the GIL. Threads help only where requests wait on I/O for
long (local-storage artifact downloads; on S3 those are redirects). Override with
WEB_WORKERS / WEB_THREADS / WEB_BIND.
"""

import os

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_WORKERS", 2 * (os.cpu_count() or 1)))
worker_class = "gthread"  # keep-alive connections, even with one thread
threads = int(os.environ.get("WEB_THREADS", 1))
keepalive = 30  # devices poll over one kept connection
timeout = 120
backlog = 2048
accesslog = os.environ.get("WEB_ACCESS_LOG") or None
