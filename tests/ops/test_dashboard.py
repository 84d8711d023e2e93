"""The shipped Grafana dashboard and Prometheus rules use only what the bot exports (issue 19).

A `feishu-bot run` is started and scraped; every PromQL expression of
deploy/grafana/feishu-claude-bot.json and deploy/prometheus/alerts.yml must name metrics and
labels from that scrape (plus what Prometheus adds itself: `up`, `job`, `instance`). The files
must parse, and `promtool check rules` must accept them where promtool is installed (or named
by PROMTOOL).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from feishu_bot.simulator import FeishuSimulator
from tests.fakes.claude_env import REPO_ROOT
from tests.ops.conftest import StartBot, free_port, replies_text

pytestmark = pytest.mark.timeout(300)

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "feishu-claude-bot.json"
RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
# Added by Prometheus to every scraped series, and its own health metric of a target.
SCRAPE_LABELS = {"job", "instance"}
SCRAPE_METRICS = {"up"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
# a whole identifier (no backtracking into a shorter one) that is not a function call
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def promql_names(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """(metric -> label names in its selector, label names in grouping clauses) of `expr`."""
    expr = re.sub(r"\$\{?\w+\}?", "5m", expr)  # Grafana variables ($__rate_interval)
    metrics: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(expr):
        metrics.setdefault(name, set()).update(_MATCHER.findall(matchers))
    grouping = {g.strip() for group in _GROUPING.findall(expr) for g in group.split(",")}
    bare = _GROUPING.sub(" ", _SELECTOR.sub(lambda m: f" {m.group(1)} ", expr))
    bare = re.sub(r'"[^"]*"|\[[^\]]*\]', " ", bare)
    for word in _IDENT.findall(bare):
        if word.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d.*", word):
            metrics.setdefault(word, set())
    metrics.pop("", None)
    return metrics, grouping - {""}


def problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What `expr` uses that the scrape does not have."""
    found: list[str] = []
    metrics, grouping = promql_names(expr)
    known_labels = set(SCRAPE_LABELS)
    for name, labels in metrics.items():
        if name not in exported and name not in SCRAPE_METRICS:
            found.append(f"metric {name}")
            continue
        allowed = exported.get(name, set()) | SCRAPE_LABELS
        known_labels |= allowed
        found += [f"label {label} of {name}" for label in sorted(labels - allowed)]
    found += [f"label {label}" for label in sorted(grouping - known_labels)]
    return found


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} shows nothing"
        exprs += [target["expr"] for target in panel["targets"]]
    return exprs


def rule_exprs() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    for rule in rules:
        assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"], rule
    return rules


def test_the_checker_catches_a_wrong_name_and_a_wrong_label() -> None:
    exported = {"feishu_bot_turns_total": {"outcome"}, "feishu_bot_alert_active": {"condition"}}
    assert problems('sum by (outcome) (rate(feishu_bot_turns_total{outcome="ok"}[5m]))',
                    exported) == []
    assert problems("rate(feishu_bot_turn_total[$__rate_interval])", exported) == [
        "metric feishu_bot_turn_total"
    ]
    assert problems('feishu_bot_turns_total{state="x"}', exported) == [
        "label state of feishu_bot_turns_total"
    ]
    assert problems("sum by (kind) (feishu_bot_alert_active)", exported) == ["label kind"]
    assert problems('up{job="feishu-claude-bot"} == 0', exported) == []


async def test_dashboard_and_rules_use_only_what_the_bot_exports(
    sim: FeishuSimulator, start_bot: StartBot
) -> None:
    port = free_port()
    await start_bot(HEALTH_PORT=port)
    mid = await sim.push_message(text="hello dashboard")  # a turn: labelled counters appear
    await replies_text(sim, mid, contains="echo: hello dashboard", finished=True)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    assert "feishu_bot_alert_active" in exported and "feishu_bot_turns_total" in exported

    exprs = dashboard_exprs() + [rule["expr"] for rule in rule_exprs()]
    assert len(exprs) > 20
    found = {expr: problems(expr, exported) for expr in exprs}
    assert {expr: p for expr, p in found.items() if p} == {}
    # every condition the bot alerts on has a rule
    rules_text = RULES.read_text(encoding="utf-8")
    for condition in ("claude_auth", "degraded", "sandbox_off"):
        assert f'condition="{condition}"' in rules_text
    for metric in ("feishu_bot_websocket_connected", "feishu_bot_disk_free_bytes",
                   'feishu_bot_turns_total{outcome="busy"}', 'outcome="failed"'):
        assert metric in rules_text


def _promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


@pytest.mark.skipif(_promtool() is None, reason="promtool is not installed (set PROMTOOL)")
def test_promtool_accepts_the_rules_and_the_dashboard_queries(tmp_path: Path) -> None:
    promtool = _promtool()
    assert promtool is not None
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # The dashboard's queries, as recording rules, go through the same PromQL parser.
    records = [
        {"record": f"feishu_bot:dashboard_query_{i}", "expr": re.sub(r"\$__\w+", "5m", expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    queries = tmp_path / "dashboard_queries.yml"
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = subprocess.run([promtool, "check", "rules", str(queries)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
