"""One fixture file per kind of invalid policy; each states the exact message users will see
in its first line (``# expect: ...``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate.errors import PolicyError
from sluicegate.policy import load_policy

INVALID = sorted((Path(__file__).parent / "fixtures" / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_policy_message(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parent)
    monkeypatch.delenv("SLUICEGATE_TEST_UNSET_VAR", raising=False)
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(PolicyError) as info:
        load_policy(path.name)
    messages = [str(p) for p in info.value.problems]
    assert expected in messages, "\n".join(messages)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "many.yaml"
    bad.write_text(
        "version: 1\n"
        "tiers:\n"
        "  pro:\n"
        "    session: {requests: 30/minn, burts: 3}\n"
        "tenants:\n"
        "  acme: {tier: nope}\n"
        "classes:\n"
        "  batch: {max_wait: soon}\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(bad)
    lines = [p.line for p in info.value.problems]
    assert len(info.value.problems) == 4
    assert lines == sorted(lines) == [4, 4, 6, 8]


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


def test_env_substitution_with_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SG_STORE", "redis://127.0.0.1:1/0")
    p = tmp_path / "p.yaml"
    p.write_text(
        'version: 1\nstore: "${SG_STORE}"\ndefault_tier: "${SG_TIER:-pro}"\n'
        "tiers:\n  pro: {agent: {requests: 5/s}}\n"
    )
    policy = load_policy(p)
    assert policy.store_url == "redis://127.0.0.1:1/0" and policy.default_tier == "pro"
