"""gunicorn settings for the web process: `gunicorn -c python:fleet.gunicorn fleet.wsgi`.

Measured on 2 cores (benchmarks/checkin.py, benchmarks/fleet.py and wrk):
- devices open a new connection per request (the agent polls every 30 s), and
  for that traffic gunicorn's plain `sync` workers answered 2,115 check-ins/s
  against 1,416 for `gthread` (p99 11 ms against 34 ms): no selector or
  keep-alive bookkeeping per connection;
- two single-process workers per core gave the shortest tail; 3 workers ×
  4 threads doubled or tripled p99, the threads queueing on the GIL.
A sync worker serves one request at a time: put a buffering proxy in front
for slow clients, and keep artifacts on S3 (devices get a presigned redirect,
no worker streams the file). WEB_WORKER_CLASS=gthread + WEB_THREADS=N when
serving large artifacts from local storage. Override with WEB_WORKERS / WEB_BIND.
"""

import os

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_WORKERS", 2 * (os.cpu_count() or 1)))
worker_class = os.environ.get("WEB_WORKER_CLASS", "sync")
threads = int(os.environ.get("WEB_THREADS", 1))  # gthread only
keepalive = 30  # gthread only: devices that keep their connection
timeout = 120
backlog = 2048
accesslog = os.environ.get("WEB_ACCESS_LOG") or None
