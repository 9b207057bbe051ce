"""Fleet observability: the fleet recording and alert rules and the fleet dashboard.

promtool checks the rules and runs their unit tests
(tests/data/prometheus/fleet-rules.test.yml); the dashboard and the rules
may only use series the daemon exports (checked against a real pass on the
demo host and against docs/metrics.md) or the rules' own records.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from autonumad.service.metrics import DaemonMetrics, local_pages
from test_metrics import _daemon, _rich_metrics, _sample_names, _tool, _without_annotations

REPO = Path(__file__).resolve().parent.parent
FLEET_RULES = REPO / "config/prometheus/autonumad-fleet-rules.yml"
FLEET_DASHBOARD = REPO / "config/grafana/autonumad-fleet-dashboard.json"
RULES_TEST = REPO / "tests/data/prometheus/fleet-rules.test.yml"
METRICS_DOC = REPO / "docs/metrics.md"
RECORD = re.compile(r"\b(?:[a-z_]+:)[a-z0-9_]+:[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    daemon, metrics = _daemon(tmp_path_factory.mktemp("fleet"))
    return daemon.run_pass(), metrics


def _exprs(doc: dict) -> list[str]:
    out = []
    for panel in doc["panels"]:
        out += [t["expr"] for t in panel.get("targets", [])]
    return out


def test_remote_and_measured_bytes_are_the_local_fraction_in_bytes(demo_report):
    report, metrics = demo_report
    procs = report.snapshot.processes
    measured = sum(p.total_pages for p in procs) * report.snapshot.page_size_bytes
    remote = sum(p.total_pages - local_pages(p) for p in procs) * report.snapshot.page_size_bytes
    assert remote > 0  # the demo host has misplaced processes: the check means something
    get = metrics.registry.get_sample_value
    assert get("autonumad_measured_memory_bytes") == measured
    assert get("autonumad_remote_memory_bytes") == remote
    assert get("autonumad_local_fraction") == pytest.approx(1 - remote / measured)


def test_remote_bytes_are_zero_not_absent_without_processes():
    from autonumad.service.metrics import remote_memory_families
    values = {f.name: f.samples[0].value for f in remote_memory_families([], 4096)}
    assert values == {"autonumad_measured_memory_bytes": 0, "autonumad_remote_memory_bytes": 0}


def test_fleet_rules_and_dashboard_use_only_exported_and_documented_metrics(demo_report):
    report, _ = demo_report
    exported = _sample_names(_rich_metrics(report))
    doc = METRICS_DOC.read_text()
    documented = set(re.findall(r"`(autonumad_[a-z0-9_]+)", doc))
    # "`autonumad_tiering_hot_bytes` / `_cold_bytes`": the short form swaps as many trailing words.
    for full, short in re.findall(r"`(autonumad_[a-z0-9_]+)`\s*/\s*`(_[a-z0-9_]+)`", doc):
        documented.add("_".join(full.split("_")[:-short.count("_")]) + short)
    # The docs name counters without _total in places and histograms by family: accept either spelling.
    def is_documented(name: str) -> bool:
        return any(name == d or name.startswith(d + "_") or d == re.sub(r"_total$", "", name) for d in documented)

    rules_text = FLEET_RULES.read_text()
    dash_exprs = "\n".join(_exprs(json.loads(FLEET_DASHBOARD.read_text())))
    for text in (rules_text, dash_exprs):
        # Strip recording-rule names first: "instance:autonumad_x:rate5m" names a record, not a metric.
        used = set(re.findall(r"(?<![:\w])autonumad_[a-z0-9_]+(?![:\w])", RECORD.sub("", text)))
        assert used
        assert used <= exported, sorted(used - exported)
        assert all(map(is_documented, used)), sorted(n for n in used if not is_documented(n))


def test_dashboard_records_are_defined_by_the_fleet_rules():
    defined = set(re.findall(r"^\s*- record: (\S+)", FLEET_RULES.read_text(), re.M))
    used = set(RECORD.findall("\n".join(_exprs(json.loads(FLEET_DASHBOARD.read_text())))))
    assert len(used) >= 8
    assert used <= defined, sorted(used - defined)


def test_fleet_dashboard_is_a_grafana_dashboard_with_the_top_host_panels():
    doc = json.loads(FLEET_DASHBOARD.read_text())
    assert doc["uid"] == "autonumad-fleet" and isinstance(doc["schemaVersion"], int)
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "job", "top"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    tops = {p["title"]: p["targets"][0]["expr"] for p in doc["panels"] if p["type"] == "bargauge"}
    assert set(tops) == {"Top hosts by remote memory", "Top hosts by hint faults avoided",
                         "Top hosts by tiering backlog"}
    assert all(e.startswith("topk($top, ") for e in tops.values())
    for p in doc["panels"]:
        for t in p.get("targets", []):
            assert '{job=~"$job"}' in t["expr"], (p["title"], t["expr"])


def test_promtool_check_fleet_rules():
    promtool = _tool("promtool")
    r = subprocess.run([promtool, "check", "rules", str(FLEET_RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(re.search(r"SUCCESS: (\d+) rules found", r.stdout).group(1)) >= 15


def test_promtool_unit_tests_of_the_fleet_rules(tmp_path):
    promtool = _tool("promtool")
    (tmp_path / "rules.yml").write_text(_without_annotations(FLEET_RULES.read_text()))
    test = RULES_TEST.read_text()
    assert "  - RULES\n" in test
    (tmp_path / "test.yml").write_text(test.replace("  - RULES\n", "  - rules.yml\n"))
    r = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # Every alert of the fleet rules is exercised.
    alerts = set(re.findall(r"- alert: (\w+)", FLEET_RULES.read_text()))
    assert alerts == set(re.findall(r"alertname: (\w+)", test))


def test_promtool_unit_tests_can_fail(tmp_path):
    """A wrong expectation (the mean of host fractions, 0.875, instead of the weighted 0.9375) fails."""
    promtool = _tool("promtool")
    (tmp_path / "rules.yml").write_text(_without_annotations(FLEET_RULES.read_text()))
    test = RULES_TEST.read_text().replace("  - RULES\n", "  - rules.yml\n")
    assert "value: 0.9375" in test
    (tmp_path / "test.yml").write_text(test.replace("value: 0.9375", "value: 0.875"))
    r = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
