"""The CLI, run as a real subprocess (console script) and in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sluicegate.cli import main

from .conftest import EXAMPLES, FIXTURES

AGENTIC = str(EXAMPLES / "agentic.yaml")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluicegate.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_validate_ok() -> None:
    r = run("validate", AGENTIC)
    assert r.returncode == 0
    assert r.stdout.strip().startswith(f"{AGENTIC}: ok (")
    assert len(r.stdout.strip().splitlines()) == 1


def test_validate_broken_prints_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntiers:\n  pro: {agent: {requests: 5/minn, brust: 3}}\n")
    r = run("validate", str(bad))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"{bad}:3: tiers.pro.agent.brust: unknown key 'brust'")
    assert (
        lines[1] == f"{bad}:3: tiers.pro.agent.requests: invalid rate '5/minn': "
        "unknown time unit 'minn' (use s, min, h or d)"
    )
    assert lines[-1] == f"{bad}: invalid (2 problems)"


def test_validate_missing_file() -> None:
    r = run("validate", "/nonexistent/policy.yaml")
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_check_prints_outcomes_and_headers(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["check", "--policy", AGENTIC, "--tenant", "acme", "--agent", "a", "--session", "s",
         "--class", "realtime", "--repeat", "22"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "#1 t=0.000s allow: allowed" in out
    assert (
        "#21 t=0.000s refuse: refused by session-requests (limit 30/min, burst 20, cost 1)" in out
    )
    assert "retry-after: 2" in out
    assert out.strip().endswith("20/22 admitted")


def test_check_json_with_interval(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["check", "--policy", AGENTIC, "--tenant", "acme", "--agent", "a", "--session", "s",
         "--class", "realtime", "--repeat", "30", "--interval", "2s", "--json", "--tokens", "100"]
    )  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(rows) == 30
    assert all(r["outcome"] == "allow" for r in rows)  # 1 call / 2 s is exactly the refill rate
    assert rows[0]["headers"]["x-ratelimit-limit-tokens"] == "200000"


def test_check_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["check", "--policy", AGENTIC, "--tenant", "t", "--agent", "a", "--repeat", "0"]) == 2
    )
    bad = str(FIXTURES / "invalid" / "unknown_key.yaml")
    assert main(["check", "--policy", bad, "--tenant", "t", "--agent", "a"]) == 1
    assert "unknown key 'burts'" in capsys.readouterr().err
    rc = main(["check", "--policy", AGENTIC, "--tenant", "t", "--agent", "a", "--interval", "x"])
    assert rc == 2
