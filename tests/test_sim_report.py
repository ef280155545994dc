"""Simulator reports and the ``simulate`` command: tables, JSON, the HTML report (with images),
argument errors."""

from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path

import pytest

from sluicegate.cli import main
from sluicegate.policy import load_policy
from sluicegate.sim import build_scenario, compare
from sluicegate.sim.cli import register
from sluicegate.sim.report import html_report, text_report

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sim"
NAIVE = str(FIXTURES / "naive.yaml")
FIXED = str(FIXTURES / "fixed.yaml")


def test_text_report_side_by_side() -> None:
    traffic = build_scenario("runaway-tenant", seed=1, scale=0.3, duration=20.0)
    a, b = compare(load_policy(NAIVE), load_policy(FIXED), traffic, seed=1, labels=("n", "f"))
    text = text_report(a, b)
    assert "scenario runaway-tenant" in text
    assert "Δ in SLA" in text and "quiet interactive" in text
    assert "note: no tenant breaker" in text
    assert "[n]" in text and "[f]" in text


def test_html_report_renders_with_images() -> None:
    pytest.importorskip("matplotlib")
    traffic = build_scenario("realtime-vs-batch", seed=1, scale=0.2, duration=20.0)
    pair = compare(load_policy(NAIVE), load_policy(FIXED), traffic, seed=1)
    page = html_report([pair])
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_register_adds_simulate() -> None:
    parser = argparse.ArgumentParser(prog="sluicegate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", "--policy", NAIVE, "--scenario", "fanout"])
    assert args.func is not None and args.seed == 1 and args.scale == 1.0


def test_cli_compare_with_html_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.html"
    argv = ["simulate", "--policy", NAIVE, "--against", FIXED, "--scenario", "token-heavy"]
    argv += ["--scale", "0.3", "--duration", "20s", "--seed", "5"]
    assert main([*argv, "--report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "scenario token-heavy" in text and "naive" in text and "fixed" in text
    assert out.read_text().count("data:image/png;base64,") == 3
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["a"]["policy"] == "naive" and data[0]["b"]["policy"] == "fixed"
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == data  # deterministic


def test_cli_all_scenarios_single_policy(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--policy", FIXED, "--scenario", "all", "--scale", "0.1"]
    assert main([*argv, "--duration", "10s"]) == 0
    text = capsys.readouterr().out
    assert text.count("scenario ") == 7


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--scenario", "nope"], 2, "unknown scenario 'nope'"),
        (["--scenario", "fanout", "--duration", "soon"], 2, "--duration"),
        (["--scenario", "fanout", "--scale", "0"], 2, "--scale must be positive"),
        (["--scenario", "fanout", "--against", "/nonexistent.yaml"], 1, "nonexistent"),
    ],
)
def test_cli_errors(
    extra: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--policy", NAIVE, *extra]) == code
    assert message in capsys.readouterr().err


def test_cli_invalid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntiers: {t: {tenant: {requests: lots}}}\n")
    assert main(["simulate", "--policy", str(bad), "--scenario", "fanout"]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and "invalid policy" in err
