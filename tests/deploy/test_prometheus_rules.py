"""deploy/prometheus/alerts.yaml: valid for Prometheus (`promtool check rules`) and unit-tested by
`promtool test rules` with deploy/prometheus/alerts_test.yaml, which must hold, for every alert, a case
where it fires and one where it does not. promtool comes from Debian's `prometheus` package
(scripts/setup.sh installs it); without it these tests fail, they never skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
MISSING = "promtool is not installed: apt-get install prometheus (scripts/setup.sh test does it)"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(MISSING, pytrace=False)
    return subprocess.run([binary, *args], cwd=RULES, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests are not vacuous: with every alert's threshold moved out of reach, they fail."""
    rules = yaml.safe_load((RULES / "alerts.yaml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["expr"] = f"({rule['expr']}) and on() vector(0) > 1"
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(RULES / "alerts_test.yaml", tmp_path)
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(MISSING, pytrace=False)
    result = subprocess.run(
        [binary, "test", "rules", "alerts_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    firing = {
        case["alertname"]
        for test in yaml.safe_load((RULES / "alerts_test.yaml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    for alert in firing:
        assert f"alertname: {alert}," in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((RULES / "alerts.yaml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    cases = [
        case
        for test in yaml.safe_load((RULES / "alerts_test.yaml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts == fires, f"alerts without a firing case: {sorted(alerts - fires)}"
    assert alerts == quiet, f"alerts without a quiet case: {sorted(alerts - quiet)}"
