"""deploy/: the Prometheus scrape config, the alert rules and the Grafana dashboard parse, and every
metric they use is one that opscore_site/metrics.py exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from opscore_site.metrics import HISTOGRAM_NAMES, METRIC_NAMES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERIES_SUFFIXES = ("_bucket", "_count", "_sum")
ALERTS = {"OpscoreSchedulerStopped", "OpscoreQueueGrowing", "OpscoreDispatchLatencyHigh", "OpscoreAgentsStale",
          "OpscoreDeadTasksRising"}


def metric_names(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"\bopscore_[a-z0-9_]+", expr):
        for suffix in SERIES_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAM_NAMES:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def test_the_metric_name_check_can_fail():
    assert metric_names("rate(opscore_tasks_total[5m])") <= METRIC_NAMES
    assert not metric_names("opscore_no_such_metric_total") <= METRIC_NAMES
    assert not metric_names("opscore_queue_depth_bucket") <= METRIC_NAMES  # a gauge has no buckets


def test_the_scrape_config_scrapes_metrics_with_the_token_and_loads_the_rules():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "opscore")
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    assert job["static_configs"][0]["targets"]
    for rule_file in config["rule_files"]:
        assert (DEPLOY / rule_file).is_file(), rule_file


def test_the_alert_rules_cover_the_issue_and_use_only_our_metrics():
    rules = [rule for group in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for rule in group["rules"]]
    assert ALERTS <= {rule["alert"] for rule in rules}
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m")), rule
        used = metric_names(rule["expr"])
        assert used and used <= METRIC_NAMES, (rule["alert"], used - METRIC_NAMES)
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_the_grafana_dashboard_uses_only_our_metrics():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    used = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, target
            used |= names
    assert used <= METRIC_NAMES, used - METRIC_NAMES
    # Every metric has a panel.
    assert used == METRIC_NAMES, METRIC_NAMES - used
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_gunicorn_config_marks_dead_workers(tmp_path, monkeypatch):
    from prometheus_client import Gauge, values

    namespace: dict = {}
    exec(compile((DEPLOY / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), namespace)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "counter_4242.db").write_bytes(b"")

    class Worker:
        pid = 4242

    namespace["child_exit"](None, Worker())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db"]  # counters stay: they are summed
    assert Gauge and values  # the library the hook needs is installed
