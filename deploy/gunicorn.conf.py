"""gunicorn settings for Ops-Core: `gunicorn -c deploy/gunicorn.conf.py opscore_site.wsgi --bind ...`.

With PROMETHEUS_MULTIPROC_DIR set, every worker writes its metrics to files in that directory
and a scrape of any worker sums them; a worker that exits must have its live gauges dropped.
"""

import os


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
