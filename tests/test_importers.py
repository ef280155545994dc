"""Importers (Kong, envoyproxy/ratelimit, LiteLLM): mapping, source lines, convert round trip.

The fixtures in ``tests/fixtures/importers`` are realistic configs of each format, written from
its public documentation. Round trip: import -> lint -> convert -> load with
``policy_from_text`` (the output must validate) -> lint again: every code marked ``# fixed`` is
gone, only SG003 / SG007 remain (their keys have not landed in the schema yet).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate.cli import main
from sluicegate.errors import PolicyError
from sluicegate.policy import policy_from_text
from sluicegate.policy.importers import detect, import_file, import_text
from sluicegate.policy.lint import lint_doc, lint_text, supports
from sluicegate.policy.lint_fix import convert
from sluicegate.policy.lint_yaml import load_located

IMPORTERS = Path(__file__).parent / "fixtures" / "importers"
KINDS = ("kong", "envoy", "litellm")
LANDING = {"SG003", "SG007"}  # fire on every config without retry_budget / init
#: What convert cannot fix yet (the key is not in the schema; checked at run time).
UNFIXABLE = {c for c, key in (("SG003", "retry_budget"), ("SG007", "init")) if not supports(key)}


def _source_line(kind: str, line: int | None) -> str:
    assert line is not None
    return (IMPORTERS / f"{kind}.yaml").read_text().splitlines()[line - 1]


@pytest.mark.parametrize("kind", KINDS)
def test_detect(kind: str) -> None:
    data, _ = load_located((IMPORTERS / f"{kind}.yaml").read_text())
    assert detect(data) == kind


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(kind: str, tmp_path: Path) -> None:
    imported = import_file(kind, IMPORTERS / f"{kind}.yaml")
    before = lint_doc(imported.lint_doc())
    assert LANDING <= {f.code for f in before}
    result = convert(imported.lint_doc(), comments=imported.comments, header=imported.header())
    policy = policy_from_text(result.text, "converted.yaml")  # `sluicegate validate` passes
    assert policy.tier_rules
    fixed_codes = {f.code for f in result.fixed}
    assert fixed_codes and fixed_codes.isdisjoint(UNFIXABLE)
    for code in fixed_codes:
        assert f"# fixed {code}: " in result.text
    after = {f.code for f in lint_text(result.text, "converted.yaml")}
    assert after == UNFIXABLE, after
    assert {f.code for f in result.remaining} == UNFIXABLE
    assert f"--from {kind}" in result.text.splitlines()[0]


@pytest.mark.parametrize("kind", KINDS)
def test_findings_point_into_the_source(kind: str) -> None:
    imported = import_file(kind, IMPORTERS / f"{kind}.yaml")
    for f in lint_doc(imported.lint_doc()):
        assert f.source.endswith(f"{kind}.yaml")
        assert f.line is not None and 1 <= f.line <= len(
            (IMPORTERS / f"{kind}.yaml").read_text().splitlines()
        )


def test_kong_mapping() -> None:
    imported = import_file("kong", IMPORTERS / "kong.yaml")
    data = imported.data
    tenant = data["tiers"]["default"]["tenant"]
    # minute: 600 and hour: 20000 on one plane: the lower sustained rate is kept, fixed window.
    assert tenant["requests"] == {"rate": "20k/h", "algorithm": "fixed_window"}
    # ai-rate-limiting-advanced (window_type fixed): tokens.
    assert tenant["tokens"] == {"rate": "100k/min", "algorithm": "fixed_window"}
    # identifier: service -> one shared counter -> a pool.
    assert data["pools"]["embeddings"]["requests"]["rate"] == "3k/min"
    # consumer plugin -> that consumer's tenant override; consumers are tenants.
    assert data["tenants"]["acme"]["tenant"]["requests"]["rate"] == "2k/min"
    assert data["tenants"]["globex"] == {"tier": "default"}
    assert imported.llm is True
    assert any("policy local" in n for n in imported.notes)
    assert any("600/min not kept" in n for n in imported.notes)
    findings = {(f.code, f.path): f for f in lint_doc(imported.lint_doc())}
    sg002 = findings[("SG002", "tiers.default.tenant.requests.algorithm")]
    assert "hour: 20000" in _source_line("kong", sg002.line)
    sg006 = findings[("SG006", "tenants.acme.tenant")]
    assert "minute: 2000" in _source_line("kong", sg006.line)


def test_kong_sliding_and_header_identifier() -> None:
    text = """
_format_version: "3.0"
services:
  - name: llm
    url: http://llm.internal/v1/chat/completions
    plugins:
      - name: rate-limiting-advanced
        config: {identifier: header, header_name: X-Agent-Session, limit: [20, 300],
                 window_size: [10, 3600], window_type: sliding, strategy: redis}
      - name: rate-limiting
        config: {second: 5, limit_by: ip, policy: redis}
"""
    imported = import_text("kong", text, "k.yaml")
    tier = imported.data["tiers"]["default"]
    assert tier["session"]["requests"] == {"rate": "300/h", "algorithm": "sliding_window"}
    assert tier["tenant"]["requests"] == {"rate": "5/s", "algorithm": "fixed_window"}
    assert any("client IP" in n for n in imported.notes)
    codes = {f.code for f in lint_doc(imported.lint_doc())}
    assert "SG002" in codes  # fixed window on the tenant plane; 300/h sliding is not huge


def test_envoy_mapping() -> None:
    imported = import_file("envoy", IMPORTERS / "envoy.yaml")
    data = imported.data
    # api_key (no value) -> a counter per key -> tenant plane of the default tier; the nested
    # api_key > path=... limit is per key too, and the tighter sustained rate wins.
    assert data["tiers"]["default"]["tenant"]["requests"]["rate"] == "3k/h"
    assert data["tenants"]["acme"]["tenant"]["requests"]["rate"] == "1.5k/min"
    assert data["tenants"]["initech"]["tenant"]["requests"]["shadow"] is True
    assert data["pools"]["llm_gateway-openai_quota"]["requests"]["rate"] == "2k/min"
    assert any("unlimited" in n for n in imported.notes)
    findings = lint_doc(imported.lint_doc())
    sg006 = [f for f in findings if f.code == "SG006"]
    assert {f.path for f in sg006} == {"tenants.acme.tenant", "tenants.globex.tenant"}
    acme = next(f for f in sg006 if f.path == "tenants.acme.tenant")
    assert _source_line("envoy", acme.line).strip() == "rate_limit:"
    assert _source_line("envoy", (acme.line or 0) - 1).strip() == "value: acme"


def test_envoy_session_and_tokens_descriptors() -> None:
    text = """
domain: ai_gateway
descriptors:
  - key: tenant_id
    descriptors:
      - key: agent_session
        rate_limit: {unit: minute, requests_per_unit: 30}
  - key: tenant_id
    descriptors:
      - key: llm_tokens
        rate_limit: {unit: minute, requests_per_unit: 200000}
"""
    imported = import_text("envoy", text, "e.yaml")
    tier = imported.data["tiers"]["default"]
    assert tier["session"]["requests"]["rate"] == "30/min"
    assert tier["tenant"]["tokens"]["rate"] == "200k/min"
    assert imported.llm is True


def test_litellm_mapping() -> None:
    imported = import_file("litellm", IMPORTERS / "litellm.yaml")
    data = imported.data
    # Deployments of one model_name are summed (the router spreads calls over them).
    assert data["pools"]["gpt-4o"]["requests"]["rate"] == "1.5k/min"
    assert data["pools"]["gpt-4o"]["tokens"]["rate"] == "750k/min"
    # Teams -> tenants; with teams, the default key limits are the agent plane.
    assert data["tenants"]["research"]["tenant"]["concurrency"] == 50
    agent = data["tiers"]["default"]["agent"]
    assert agent["requests"]["rate"] == "120/min"
    # general_settings.max_parallel_requests is per deployment: gpt-4o has two.
    assert data["pools"]["gpt-4o"]["concurrency"] == 40
    assert data["pools"]["claude-sonnet"]["concurrency"] == 20
    assert any("max_budget" in n for n in imported.notes)
    assert any("num_retries" in n for n in imported.notes)
    codes = {f.code for f in lint_doc(imported.lint_doc())}
    assert {"SG001", "SG002", "SG003", "SG005", "SG006", "SG007", "SG103"} <= codes


def test_litellm_keys_only_is_the_tenant_plane() -> None:
    text = """
model_list:
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, rpm: 500}
litellm_settings:
  default_key_generate_params: {rpm_limit: 60}
"""
    imported = import_text("litellm", text, "l.yaml")
    assert imported.data["tiers"]["default"] == {
        "tenant": {"requests": {"rate": "60/min", "algorithm": "fixed_window"}}
    }
    codes = {f.code for f in lint_doc(imported.lint_doc())}
    assert {"SG001", "SG004"} <= codes


def test_shared_counters_only() -> None:
    """No per-caller limit at all: the tenant plane is the pools' sum (never binds first)."""
    text = (
        "domain: api\ndescriptors:\n  - {key: generic_key, value: all, rate_limit: "
        "{unit: second, requests_per_unit: 50}}\n"
    )
    imported = import_text("envoy", text, "e.yaml")
    assert imported.data["tiers"]["default"]["tenant"]["requests"] == "3k/min"
    findings = lint_doc(imported.lint_doc())
    assert any(f.code == "SG006" for f in findings)


def test_not_a_config_is_an_error() -> None:
    with pytest.raises(PolicyError, match="not a kong config"):
        import_text("kong", "- just\n- a list\n", "x.yaml")
    with pytest.raises(PolicyError, match="invalid YAML"):
        import_text("envoy", "domain: [\n", "x.yaml")


# --- CLI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_cli_lint_from(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = IMPORTERS / f"{kind}.yaml"
    assert main(["lint", "--from", kind, str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:" in out and "SG003" in out
    assert main(["lint", "--from", kind, "--fail-on", "warning", str(path)]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("kind", KINDS)
def test_cli_convert_writes_a_valid_policy(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "policy.yaml"
    assert main(["convert", "--from", kind, str(IMPORTERS / f"{kind}.yaml"), "-o", str(out)]) == 0
    policy_from_text(out.read_text(), str(out))
    assert "fixes applied" in capsys.readouterr().err
    assert main(["lint", "--fail-on", "warning", str(out)]) == (1 if UNFIXABLE else 0)
    assert {
        line.split()[2] for line in capsys.readouterr().out.splitlines() if ": warning " in line
    } == UNFIXABLE


def test_cli_convert_stdout_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["convert", "--from", "envoy", str(IMPORTERS / "envoy.yaml")]) == 0
    assert capsys.readouterr().out.startswith("# Converted by `sluicegate convert --from envoy`")
    assert main(["convert", "--from", "kong", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_cli_convert_sluicegate_policy(capsys: pytest.CaptureFixture[str]) -> None:
    naive = Path(__file__).resolve().parent.parent / "examples" / "naive.yaml"
    assert main(["convert", "--from", "sluicegate", str(naive)]) == 0
    text = capsys.readouterr().out
    policy_from_text(text)
    assert {f.code for f in lint_text(text)} == UNFIXABLE
