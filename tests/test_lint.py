"""``sluicegate lint``: one fixture per finding code, the examples, output formats, exit codes.

Every fixture in ``tests/fixtures/lint`` starts with ``# expect: CODE`` and triggers exactly that
code (``clean.yaml`` triggers nothing). The fixtures carry ``retry_budget`` and ``init``, keys
the schema does not have yet, which the linter reads from the raw document: so SG003 and SG007
stay quiet on them, while they fire on every policy without those keys (``examples/*.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluicegate.cli import main
from sluicegate.policy import policy_from_text
from sluicegate.policy.lint import (
    RULES,
    LintOptions,
    Severity,
    build_doc,
    lint_file,
    lint_text,
    reaches,
    supports,
)
from sluicegate.policy.lint_fix import convert
from sluicegate.policy.lint_output import render_text, sarif

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(__file__).parent / "fixtures" / "lint"
FIXTURES = sorted(LINT.glob("*.yaml"))
SEVEN = {f"SG00{i}" for i in range(1, 8)}
LANDING = {"SG003", "SG007"}  # fire on every policy without retry_budget / init
#: Codes convert cannot fix yet: their key is not in the schema (checked at run time, so these
#: tests keep passing as retry_budget and init land).
UNFIXABLE = {c for c, key in (("SG003", "retry_budget"), ("SG007", "init")) if not supports(key)}


def _expected(path: Path) -> set[str]:
    head = path.read_text().splitlines()[0].removeprefix("# expect: ")
    return set() if head.startswith("(none)") else {head.split()[0]}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_triggers_exactly_its_code(path: Path) -> None:
    findings = lint_file(path)
    assert {f.code for f in findings} == _expected(path), "\n".join(map(str, findings))
    for f in findings:
        assert f.line is not None and f.line >= 1
        assert f.fix and f.message and f.severity is RULES[f.code].severity


def test_every_code_has_a_fixture() -> None:
    covered = set().union(*(_expected(p) for p in FIXTURES))
    assert covered == set(RULES)


def test_naive_example_reports_all_seven_codes() -> None:
    path = ROOT / "examples" / "naive.yaml"
    policy_from_text(path.read_text(), str(path))  # it is a valid policy
    findings = lint_file(path)
    assert {f.code for f in findings} == SEVEN
    assert all(f.severity is Severity.WARNING for f in findings)


def _missing_landing_keys(text: str) -> set[str]:
    """SG003 / SG007 for the landing keys a policy does not set (yet)."""
    import yaml

    data = yaml.safe_load(text)
    return {c for c, key in (("SG003", "retry_budget"), ("SG007", "init")) if key not in data}


def test_agentic_example_is_clean_except_the_landing_keys() -> None:
    """examples/agentic.yaml is clean except SG003 / SG007 while it lacks retry_budget / init,
    and SG103 on its free tier: free agents (100k tokens/min) and sessions (50k/min) can never
    pass one 128k-token call. The second half shows the one-key fix (tokens_burst: 128k)."""
    path = ROOT / "examples" / "agentic.yaml"
    text = path.read_text()
    findings = lint_file(path)
    assert {f.code for f in findings} - {"SG103"} == _missing_landing_keys(text)
    assert {f.path for f in findings if f.code == "SG103"} <= {
        "tiers.free.agent.tokens",
        "tiers.free.session.tokens",
    }
    fixed = text.replace("tokens: 100k/min}", "tokens: 100k/min, tokens_burst: 128k}")
    fixed = fixed.replace("tokens: 50k/min}", "tokens: 50k/min, tokens_burst: 128k}")
    assert {f.code for f in lint_text(fixed, str(path))} == _missing_landing_keys(text)


def test_options_change_thresholds() -> None:
    text = (LINT / "sg103_tokens_below_max_request.yaml").read_text()
    assert {f.code for f in lint_text(text)} == {"SG103"}
    assert lint_text(text, options=LintOptions(max_request_tokens=64_000)) == []


def test_finding_locations_point_at_the_key() -> None:
    path = LINT / "sg101_session_above_agent.yaml"
    (finding,) = lint_file(path)
    line = path.read_text().splitlines()[finding.line - 1 if finding.line else 0]
    assert line.strip().startswith("session:") and "400/min" in line
    assert str(finding).startswith(f"{path}:{finding.line}: warning SG101 tiers.pro.session")


def test_convert_naive_fixes_everything_but_the_landing_keys() -> None:
    path = ROOT / "examples" / "naive.yaml"
    result = convert(build_doc(path.read_text(), str(path)))
    policy_from_text(result.text)
    assert {f.code for f in result.remaining} == UNFIXABLE
    assert {f.code for f in result.fixed} == SEVEN - UNFIXABLE
    for code in SEVEN - UNFIXABLE:
        assert f"# fixed {code}: " in result.text
    for code in UNFIXABLE:
        assert f"# todo {code}: " in result.text
    assert {f.code for f in lint_text(result.text)} == UNFIXABLE


def test_reaches() -> None:
    findings = lint_file(LINT / "sg101_session_above_agent.yaml")
    assert reaches(findings, Severity.WARNING) and reaches(findings, Severity.INFO)
    assert not reaches(findings, Severity.ERROR)


# --- output --------------------------------------------------------------------------------------


def test_text_output_has_fix_lines_and_no_colour_off_a_tty(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["lint", str(ROOT / "examples" / "naive.yaml")]) == 0
    out = capsys.readouterr().out
    assert "\033[" not in out
    assert out.count("  fix: ") == len(lint_file(ROOT / "examples" / "naive.yaml"))
    assert out.rstrip().endswith("warnings, 0 infos)")


def test_text_colour() -> None:
    findings = lint_file(LINT / "sg102_burst_below_call.yaml")
    coloured = render_text(findings, colour=True)
    assert "\033[31merror\033[0m" in coloured
    assert "\033[" not in render_text(findings)


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    main(["lint", "--format", "json", str(LINT / "sg102_burst_below_call.yaml")])
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"] == {"info": 0, "warning": 0, "error": 1, "total": 1}
    (f,) = doc["findings"]
    assert f["code"] == "SG102" and f["severity"] == "error" and f["line"] == 13
    assert f["path"] == "tiers.pro.session.tokens_burst" and f["fix"]
    assert set(f) == {"code", "severity", "title", "message", "file", "line", "path", "fix"}


def test_sarif_structure(capsys: pytest.CaptureFixture[str]) -> None:
    main(["lint", "--format", "sarif", str(ROOT / "examples" / "naive.yaml")])
    log = json.loads(capsys.readouterr().out)
    assert log["version"] == "2.1.0" and "sarif-2.1.0" in log["$schema"]
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "sluicegate"
    ids = [r["id"] for r in driver["rules"]]
    assert ids == list(RULES)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["help"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert {r["ruleId"] for r in run["results"]} == SEVEN
    for result in run["results"]:
        assert ids[result["ruleIndex"]] == result["ruleId"]
        assert result["level"] == "warning" and result["message"]["text"]
        (loc,) = result["locations"]
        physical = loc["physicalLocation"]
        assert physical["artifactLocation"]["uri"].endswith("examples/naive.yaml")
        assert isinstance(physical["region"]["startLine"], int)
        assert physical["region"]["startLine"] >= 1


def test_sarif_levels_and_relative_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    log = sarif(lint_file("tests/fixtures/lint/sg102_burst_below_call.yaml"))
    (result,) = log["runs"][0]["results"]
    assert result["level"] == "error"
    uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "tests/fixtures/lint/sg102_burst_below_call.yaml"
    assert result["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == (
        "tiers.pro.session.tokens_burst"
    )


# --- exit codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "fail_on", "code"),
    [
        ("clean.yaml", "info", 0),
        ("sg101_session_above_agent.yaml", "error", 0),
        ("sg101_session_above_agent.yaml", "warning", 1),
        ("sg101_session_above_agent.yaml", "info", 1),
        ("sg102_burst_below_call.yaml", "error", 1),
        ("sg000_invalid.yaml", "error", 1),
    ],
)
def test_exit_codes(
    fixture: str, fail_on: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lint", "--fail-on", fail_on, str(LINT / fixture)]) == code
    capsys.readouterr()


def test_default_fail_on_is_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(ROOT / "examples" / "naive.yaml")]) == 0
    assert main(["lint", "--fail-on", "warning", str(ROOT / "examples" / "naive.yaml")]) == 1
    capsys.readouterr()


def test_unreadable_file_is_sg000(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(tmp_path / "missing.yaml")]) == 1
    assert "SG000" in capsys.readouterr().out


def test_bad_yaml_is_sg000(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntiers: [\n")
    (finding,) = lint_file(bad)
    assert finding.code == "SG000" and "invalid YAML" in finding.message


def test_other_format_is_detected(capsys: pytest.CaptureFixture[str]) -> None:
    kong = Path(__file__).parent / "fixtures" / "importers" / "kong.yaml"
    assert main(["lint", str(kong)]) == 1
    assert "use --from kong" in capsys.readouterr().out


def test_future_keys_do_not_hide_real_errors() -> None:
    text = (LINT / "clean.yaml").read_text().replace("burst: 120,", "burts: 120,")
    findings = lint_text(text)
    assert [f.code for f in findings] == ["SG000"]
    assert "burts" in findings[0].path


def test_routes_without_llm_skip_the_token_checks() -> None:
    text = (LINT / "sg004_requests_only.yaml").read_text()
    text += (
        "routes:\n  - {path_prefix: /tools, upstream: tools, llm: false}\n"
        "upstreams:\n  tools: {url: http://127.0.0.1:9000}\n"
    )
    assert lint_text(text) == []
    llm_route = text.replace("llm: false", "llm: true")
    assert {f.code for f in lint_text(llm_route)} == {"SG004"}


def test_convert_applies_landing_keys_once_the_schema_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fix for SG003 / SG007 is a patch as soon as ``supports()`` says the key exists."""
    from sluicegate.policy import lint_rules

    monkeypatch.setattr(lint_rules, "supports", lambda key: key in ("retry_budget", "init"))
    doc = build_doc((ROOT / "examples" / "naive.yaml").read_text(), "naive.yaml")
    findings = {f.code: f for f in lint_rules.check_retry_budget(doc, LintOptions())}
    assert findings["SG003"].patches[0].loc == ("retry_budget",)
    (init,) = lint_rules.check_init_tier(doc, LintOptions())
    assert init.patches[0].value["window"] == "60s"


def test_dump_yaml_reads_back_the_same_data() -> None:
    import yaml

    from sluicegate.policy.lint_yaml import Loc, dump_yaml

    data = yaml.safe_load((ROOT / "examples" / "agentic.yaml").read_text())
    assert yaml.safe_load(dump_yaml(data)) == data
    tricky = {
        "a": ["yes", "1.0", "a: b", "", None, True, "-x", "#c", 3, 2.5, "${X}"],
        "b": {"nested": {"deep": [{"k": "v"}, {"k": {"x": 1}}]}, "empty": {}, "none": []},
        "costs": [{"path_prefix": "/v1/chat", "units": 5}],
    }
    comments: dict[Loc, list[str]] = {("b", "nested"): ["a note"], ("costs", 0): ["first rule"]}
    text = dump_yaml(tricky, comments, ["header"])
    assert yaml.safe_load(text) == tricky
    assert text.startswith("# header\n") and "  # a note\n  nested:" in text
    assert "  # first rule\n  - {path_prefix: /v1/chat, units: 5}" in text


def test_no_color_env(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    main(["lint", str(LINT / "sg101_session_above_agent.yaml")])
    assert "\033[" in capsys.readouterr().out
    monkeypatch.setenv("NO_COLOR", "1")
    main(["lint", str(LINT / "sg101_session_above_agent.yaml")])
    assert "\033[" not in capsys.readouterr().out


def test_convert_gives_starting_instances_a_tenant_allowance() -> None:
    """SG105's fix is mechanical: ``init.tenant`` at the aggregate's rate and burst; the
    converted policy validates, lints clean and lets the init tier hold its aggregate."""
    path = LINT / "sg105_init_held_by_tenant.yaml"
    result = convert(build_doc(path.read_text(), str(path)))
    assert [f.code for f in result.fixed] == ["SG105"] and result.remaining == []
    assert result.data["init"]["tenant"] == {"requests": "3k/min", "burst": 1000}
    policy = policy_from_text(result.text)
    assert policy.init is not None and policy.init.tenant_rules is not None
    assert policy.init.tenant_rules[0].capacity == 1000
