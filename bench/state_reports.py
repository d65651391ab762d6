#!/usr/bin/env python
"""Benchmark the hottest path, POST /v1/opscore/agent/{agentId}/state, beside the reference.

Starts, on the same PostgreSQL (DATABASE_URL's server):
  - the product: a fresh database (--database, dropped and re-created), migrated, under
    gunicorn with --workers sync workers, OPSCORE_API_KEY = the benchmark token;
  - the reference `db` app from ../shared/baselines/djbench (DRF + ORM insert + update in
    one transaction) in its own venv outside the repository (--reference-venv, created with
    Python 3.12 and djbench/requirements.txt when missing) on its database opscore_baselines,
    with the same number of gunicorn workers;
then runs ../shared/baselines/bench.sh (wrk, alternating targets A, B, A, B, with server
CPU per request) with wrk/state_post.lua over --agents agents, and prints per round and as
medians: req/s, p50/p99, server CPU per report (the gunicorn tree; PostgreSQL's backends
are counted apart), and the ratio product/reference. Read the ratio: the machine is shared.

Options: --rounds, --duration, --connections (several: --connections 32 128), --preload N
(N history rows over --preload-agents agents, default 10,000, inserted before the run;
compare its ratio with an empty run's), --get (also GET state under the same load, and
sequential p50 of GET and POST from one connection), --sustained MINUTES (then POST at a fixed
offered rate, --sustained-fraction of the product's median rate (0.7) or --sustained-rate,
for MINUTES one-minute wrk runs, printing req/s and p50/p99 per minute: wrk/state_post_paced.lua
paces wrk with its delay() hook; wrk2 is not available, and latency is timed from each send,
so a stall shows as fewer req/s rather than as coordinated-omission latency), --keep (leave
both servers up).

Needs wrk and GNU time (`apt-get install -y wrk time`; the script installs them with apt
when missing and it can). Not a test: nothing is asserted.

    .venv/bin/python bench/state_reports.py --rounds 3 --duration 10s --connections 32
    .venv/bin/python bench/state_reports.py --rounds 3 --duration 10s --preload 1000000
    .venv/bin/python bench/state_reports.py --rounds 3 --duration 10s --no-reference --sustained 10

Figures (2 vCPU shared with other work; wrk 2 threads, 100 agents, 3 rounds x 10 s, medians;
the README section "State reports: benchmark figures" has the table): ratio product/reference
at c32 0.43 on main before issue 12, 1.89 after (p99 159 ms), 2.01 with 1,000,000 history
rows over 10,000 agents, 1.40 at c128 with no errors; server CPU per report 4.3 ms before,
0.95 ms after (reference 1.75 ms).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from benchlib import recreate_database  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parent.parent
BASELINES = (ROOT / ".." / "shared" / "baselines").resolve()
if not BASELINES.exists():  # a worktree beside the main checkout
    BASELINES = Path("/work/shared/baselines")
TOKEN = "opk_bench_0123456789abcdef0123"
REFERENCE_DB = "opscore_baselines"


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


def ensure_tools() -> None:
    missing = [tool for tool in ("wrk", "time") if not shutil.which(tool) and not Path(f"/usr/bin/{tool}").exists()]
    if not missing:
        return
    print(f"bench: installing {' '.join(missing)} with apt-get", file=sys.stderr)
    try:
        run(["apt-get", "install", "-y", "-qq", *missing], stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        sys.exit(f"bench: {' '.join(missing)} missing; install with: apt-get install -y {' '.join(missing)}")


def ensure_reference_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not (venv / "bin" / "gunicorn").exists():
        candidates = [*sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")), shutil.which("python3.12")]
        base = next((str(c) for c in candidates if c and subprocess.run(
            [str(c), "-c", ""], capture_output=True).returncode == 0), sys.executable)
        print(f"bench: creating the reference venv {venv} with {base}", file=sys.stderr)
        run([base, "-m", "venv", str(venv)])
        run([str(python), "-m", "pip", "install", "-q", "-r", str(BASELINES / "djbench" / "requirements.txt")])
    return python


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"bench: server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    sys.exit(f"bench: {url} did not become ready")


def postmaster_pid(database_url: str) -> str:
    import psycopg

    with psycopg.connect(database_url) as conn:
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
    try:
        return Path(data_dir, "postmaster.pid").read_text().split()[0]
    except OSError:  # not readable here (another machine or user): PostgreSQL's CPU is not counted
        return ""


def preload(database_url: str, rows: int, agents: int) -> None:
    """`agents` agents (agent-0 ...) and `rows` history rows over them, received in the last 30 days."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO agents_agent (id, name, version, capabilities, contact_endpoint, metadata, created_at,"
            " last_seen_at, state, state_timestamp, state_received_at, state_details, drained_reason)"
            " SELECT 'agent-' || i, '', '', '[]', '', '{}', now(), now(), 'idle', now(), now(), '{}', ''"
            " FROM generate_series(0, %s - 1) AS i", (agents,))
        conn.execute(
            "INSERT INTO agents_agentstate (agent_id, state, details, timestamp, received_at)"
            " SELECT 'agent-' || (i %% %s), CASE WHEN i %% 2 = 0 THEN 'active' ELSE 'idle' END,"
            " jsonb_build_object('n', i), now() - (i || ' seconds')::interval * 2.5,"
            " now() - (i || ' seconds')::interval * 2.5 FROM generate_series(1, %s) AS i", (agents, rows))
        conn.execute("VACUUM ANALYZE agents_agent")
        conn.execute("VACUUM ANALYZE agents_agentstate")
    print(f"bench: preloaded {agents} agents and {rows} history rows in {time.perf_counter() - started:.0f}s",
          file=sys.stderr)


RUN_LINE = re.compile(r"^RUN (.*)$")


def parse_runs(text: str) -> list[dict[str, str]]:
    runs = []
    for line in text.splitlines():
        if match := RUN_LINE.match(line):
            runs.append(dict(part.split("=", 1) for part in match.group(1).split() if "=" in part))
    return runs


def bench_sh(lua: str, conns: int, targets: list[str], args, env: dict[str, str]) -> list[dict[str, str]]:
    out = Path(tempfile.mkstemp(prefix="state-bench-", suffix=".txt")[1])
    out.unlink()
    env = {**env, "OUT": str(out), "TOKEN": TOKEN, "AGENTS": str(args.agents), "DURATION": args.duration,
           "WARMUP": args.warmup, "REPEATS": str(args.rounds), "QUIET_WAIT": str(args.quiet_wait),
           "QUIET_PCT": str(args.quiet_pct), "OTHER_MAX_PCT": str(args.other_max_pct),
           "RETRIES": str(args.retries)}
    subprocess.run(["bash", str(BASELINES / "bench.sh"), "wrk", str(BASELINES / "wrk" / lua), str(conns), *targets],
                   env=env, check=True, stdout=sys.stderr)
    return parse_runs(out.read_text())


def per_report_ms(run: dict[str, str], field: str) -> float:
    requests = int(run.get("requests", "0") or 0)
    return 1000 * float(run.get(field, "0")) / requests if requests else float("nan")


def report(runs: list[dict[str, str]], product: str, reference: str | None) -> None:
    by_conns: dict[str, list[dict[str, str]]] = {}
    for r in runs:
        by_conns.setdefault(r["conns"], []).append(r)
    for conns, rows in by_conns.items():
        print(f"\n== c{conns}: {len({r['round'] for r in rows})} rounds")
        print(f"{'target':<14}{'round':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
              f"{'srv ms/rep':>12}{'pg ms/rep':>11}{'ratio':>8}")
        names = [product] + ([reference] if reference else [])
        ratios = []
        for r in rows:
            errors = sum(int(r.get(k, 0) or 0) for k in ("non2xx", "connect", "read", "write", "timeout", "failed"))
            ratio = ""
            if reference and r["name"] == product:
                ref = next((x for x in rows if x["name"] == reference and x["round"] == r["round"]), None)
                if ref and float(ref["rps"]):
                    ratios.append(float(r["rps"]) / float(ref["rps"]))
                    ratio = f"{ratios[-1]:.2f}"
            print(f"{r['name']:<14}{r['round']:>6}{float(r['rps']):>9.0f}{float(r['p50_ms']):>9.1f}"
                  f"{float(r['p99_ms']):>9.1f}{errors:>8}{per_report_ms(r, 'cpu_srv_s'):>12.2f}"
                  f"{per_report_ms(r, 'cpu_aux_s'):>11.2f}{ratio:>8}")
        for name in names:
            mine = [r for r in rows if r["name"] == name]
            if not mine:
                continue
            rps = [float(r["rps"]) for r in mine]
            print(f"MEDIAN {name} c{conns}: {statistics.median(rps):.0f} req/s [{min(rps):.0f}-{max(rps):.0f}], "
                  f"p50 {statistics.median(float(r['p50_ms']) for r in mine):.1f} ms, "
                  f"p99 {statistics.median(float(r['p99_ms']) for r in mine):.1f} ms, "
                  f"server CPU {statistics.median(per_report_ms(r, 'cpu_srv_s') for r in mine):.2f} ms/report "
                  f"+ PostgreSQL {statistics.median(per_report_ms(r, 'cpu_aux_s') for r in mine):.2f} ms, "
                  f"last/first round {rps[-1] / rps[0]:.2f}")
        if ratios:
            print(f"RATIO product/reference c{conns}: median {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}-{max(ratios):.2f}]")


def sequential_p50(base: str, lua: str, env: dict[str, str], seconds: str = "5s") -> str:
    result = subprocess.run(["wrk", "-t1", "-c1", f"-d{seconds}", "--latency", "-s", str(BASELINES / "wrk" / lua),
                             base], env={**env, "TOKEN": TOKEN}, capture_output=True, text=True)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), "RESULT failed")
    return line.removeprefix("RESULT ")


def parse_result(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.removeprefix("RESULT ").split() if "=" in part)


def sustained(base: str, *, rate: float, minutes: int, conns: int, args, env: dict[str, str]) -> None:
    """`minutes` back-to-back one-minute wrk runs at a fixed offered rate (wrk/state_post_paced.lua)."""
    print(f"\n== sustained: {rate:.0f} req/s offered, c{conns}, {minutes} x 1 minute")
    print(f"{'minute':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    env = {**env, "TOKEN": TOKEN, "AGENTS": str(args.agents), "RATE": f"{rate:.1f}", "THREADS": "2",
           "BASELINES_WRK": str(BASELINES / "wrk")}
    p99s = []
    for minute in range(1, minutes + 1):
        result = subprocess.run(["wrk", "-t2", f"-c{conns}", "-d60s", "--latency", "-s",
                                 str(ROOT / "bench" / "wrk" / "state_post_paced.lua"), base],
                                env=env, capture_output=True, text=True)
        line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
        if line is None:
            print(f"{minute:>6}  wrk failed: {result.stderr.strip()[:200]}")
            continue
        r = parse_result(line)
        errors = sum(int(r.get(k, 0) or 0) for k in ("non2xx", "connect", "read", "write", "timeout"))
        p99s.append(float(r["p99_ms"]))
        print(f"{minute:>6}{float(r['rps']):>9.0f}{float(r['p50_ms']):>9.1f}{p99s[-1]:>9.1f}{errors:>8}", flush=True)
    if p99s:
        print(f"SUSTAINED p99 first minute {p99s[0]:.1f} ms, last {p99s[-1]:.1f} ms, worst {max(p99s):.1f} ms, "
              f"median {statistics.median(p99s):.1f} ms; last/first {p99s[-1] / p99s[0]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds per target (default 3)")
    parser.add_argument("--duration", default="30s", help="wrk duration per round (default 30s)")
    parser.add_argument("--warmup", default="5s", help="unrecorded wrk run per target first (default 5s)")
    parser.add_argument("--connections", type=int, nargs="+", default=[32], help="wrk connections (default 32)")
    parser.add_argument("--agents", type=int, default=100, help="agents the wrk script cycles over (default 100)")
    parser.add_argument("--preload", type=int, default=0, help="history rows inserted before the run (default 0)")
    parser.add_argument("--preload-agents", type=int, default=10_000,
                        help="agents inserted with --preload (default 10000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers per server (default 2)")
    parser.add_argument("--get", action="store_true",
                        help="also GET state under load, and sequential GET/POST p50 from one connection")
    parser.add_argument("--no-reference", action="store_true", help="the product only (no ratio)")
    parser.add_argument("--port", type=int, default=18150, help="product port (reference: port + 1)")
    parser.add_argument("--database", default="opscore_bench_state", help="the product's database (re-created)")
    parser.add_argument("--reference-venv", type=Path, default=Path("/tmp/djbench-venv"))
    parser.add_argument("--throttle-rate", default="6000/min", help="OPSCORE_THROTTLE_RATE (default the product's)")
    parser.add_argument("--quiet-wait", type=int, default=20,
                        help="bench.sh: seconds to wait for a quiet machine before each run (default 20)")
    parser.add_argument("--quiet-pct", type=int, default=12)
    parser.add_argument("--other-max-pct", type=int, default=100,
                        help="bench.sh: redo a run when other processes took more than this %% (default 100: never)")
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--sustained", type=int, default=0, metavar="MINUTES",
                        help="after the rounds, POST at a fixed offered rate for MINUTES one-minute wrk runs "
                             "and print each minute's req/s and p50/p99 (default 0: off)")
    parser.add_argument("--sustained-fraction", type=float, default=0.7,
                        help="the offered rate as a fraction of the product's median req/s at the first "
                             "--connections (default 0.7)")
    parser.add_argument("--sustained-rate", type=float, default=0,
                        help="the offered rate in req/s instead (default 0: use --sustained-fraction)")
    parser.add_argument("--keep", action="store_true", help="leave both servers running (Ctrl-C stops them)")
    parser.add_argument("--product-root", type=Path, default=ROOT,
                        help="the checkout to serve as the product, e.g. an export of main for BEFORE figures "
                             "(`git archive main | tar -x -C /tmp/main`); default this one")
    args = parser.parse_args()

    ensure_tools()
    database_url = recreate_database(args.database)
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "opscore_site.settings",
           "SECRET_KEY": "bench-secret-key-" + "x" * 40, "OPSCORE_WEBHOOK_SECRET": "bench-webhook-secret",
           "OPSCORE_API_KEY": TOKEN, "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "false",
           "LOG_LEVEL": "WARNING", "DEBUG": "false", "OPSCORE_THROTTLE_RATE": args.throttle_rate,
           "AGENTKIT_API_URL": "http://127.0.0.1:9"}
    python = sys.executable
    run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=args.product_root, env=env)
    if args.preload:
        preload(database_url, args.preload, max(args.preload_agents, args.agents))
    servers: list[subprocess.Popen] = []
    gunicorn_common = ["--workers", str(args.workers), "--log-level", "warning", "--no-control-socket"]
    try:
        product = subprocess.Popen(
            [str(Path(python).parent / "gunicorn"), "opscore_site.wsgi", "--bind", f"127.0.0.1:{args.port}",
             *gunicorn_common], cwd=args.product_root, env=env, start_new_session=True)
        servers.append(product)
        product_base = f"http://127.0.0.1:{args.port}/v1/opscore"
        targets = [f"product={product_base}@{product.pid}"]
        if not args.no_reference:
            ref_python = ensure_reference_venv(args.reference_venv)
            ref_url = recreate_database(REFERENCE_DB)
            parts = urlparse(ref_url)
            ref_env = {**os.environ, "DJBENCH_API_KEY": TOKEN, "DJBENCH_DB_NAME": REFERENCE_DB,
                       "DJBENCH_DB_HOST": parts.hostname or "127.0.0.1", "DJBENCH_DB_PORT": str(parts.port or 5432),
                       "DJBENCH_DB_USER": parts.username or "postgres", "DJBENCH_DB_PASSWORD": parts.password or ""}
            djbench = BASELINES / "djbench"
            run([str(ref_python), "manage.py", "migrate", "-v", "0"], cwd=djbench, env=ref_env)
            run([str(ref_python), "manage.py", "seed_agents", "--agents", str(args.agents)], cwd=djbench, env=ref_env,
                stdout=subprocess.DEVNULL)
            reference = subprocess.Popen(
                [str(ref_python.parent / "gunicorn"), "djbench.wsgi:application", "--bind",
                 f"127.0.0.1:{args.port + 1}", *gunicorn_common], cwd=djbench, env=ref_env, start_new_session=True)
            servers.append(reference)
            wait_ready(f"http://127.0.0.1:{args.port + 1}/nodb/v1/opscore/agent/x/state", reference)
            targets.append(f"reference=http://127.0.0.1:{args.port + 1}/db/v1/opscore@{reference.pid}")
        wait_ready(f"http://127.0.0.1:{args.port}/ready", product)
        wrk_env = {**os.environ, "AUX_PIDS": postmaster_pid(database_url)}
        print(f"# product {args.workers} gunicorn sync workers, {args.agents} agents, preload {args.preload} rows"
              f"{f' over {max(args.preload_agents, args.agents)} agents' if args.preload else ''}, "
              f"{args.rounds} rounds x {args.duration}")
        runs: list[dict[str, str]] = []
        for conns in args.connections:
            runs += bench_sh("state_post.lua", conns, targets, args, wrk_env)
        report(runs, "product", None if args.no_reference else "reference")
        if args.get:
            get_runs = []
            for conns in args.connections:
                get_runs += bench_sh("state_get.lua", conns, [f"product-get={product_base}@{product.pid}"],
                                     args, wrk_env)
            report(get_runs, "product-get", None)
            post = {c: statistics.median(float(r["rps"]) for r in runs if r["name"] == "product" and r["conns"] == c)
                    for c in {r["conns"] for r in runs}}
            for conns, rate in post.items():
                get = statistics.median(float(r["rps"]) for r in get_runs if r["conns"] == conns)
                print(f"GET/POST rate c{conns}: {get:.0f} / {rate:.0f} = {get / rate:.2f}")
            for lua in ("state_get.lua", "state_post.lua"):
                print(f"SEQUENTIAL {lua} (1 connection, 5 s): {sequential_p50(product_base, lua, wrk_env)}")
        if args.sustained:
            first = str(args.connections[0])
            rate = args.sustained_rate or args.sustained_fraction * statistics.median(
                float(r["rps"]) for r in runs if r["name"] == "product" and r["conns"] == first)
            sustained(product_base, rate=rate, minutes=args.sustained, conns=args.connections[0], args=args,
                      env=wrk_env)
        if args.keep:
            print(f"servers up: {' '.join(targets)}; Ctrl-C stops them", file=sys.stderr)
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
