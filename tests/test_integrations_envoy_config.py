"""envoyproxy/ratelimit config loading (errors users will see) and matching, without gRPC."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate.errors import PolicyError
from sluicegate.policy.envoy_config import envoy_domain_from_data, load_envoy_config
from sluicegate.stores.base import Algorithm

FIX = Path(__file__).resolve().parent / "fixtures" / "envoy"


def test_fixture_loads_every_domain() -> None:
    domains = load_envoy_config(FIX / "ratelimit.yaml")
    assert set(domains) == {"mongo_cps", "edge_proxy_per_ip", "messaging", "rl"}
    lim = domains["mongo_cps"].match([("database", "users")])
    assert lim is not None and lim.requests_per_unit == 500 and lim.unit == "second"
    assert lim.limit == (Algorithm.FIXED_WINDOW, 1.0, 500.0)


def test_matching_rules() -> None:
    dom = envoy_domain_from_data(
        {
            "domain": "d",
            "descriptors": [
                {"key": "a", "rate_limit": {"unit": "minute", "requests_per_unit": 1}},
                {"key": "a", "value": "x", "rate_limit": {"unit": "hour", "requests_per_unit": 2},
                 "descriptors": [{"key": "b", "rate_limit": {"unit": "day",
                                                              "requests_per_unit": 3}}]},
                {"key": "a", "value": "pre*", "rate_limit": {"unit": "second",
                                                             "requests_per_unit": 4}},
                {"key": "a", "value": "prefix*", "rate_limit": {"unit": "second",
                                                                "requests_per_unit": 5}},
                {"key": "n", "descriptors": [{"key": "m", "value": "1", "rate_limit": {
                    "unit": "MINUTE", "requests_per_unit": 6, "unit_multiplier": 5}}]},
            ],
        }
    )  # fmt: skip

    def rpu(*entries: tuple[str, str]) -> int | None:
        lim = dom.match(list(entries))
        return None if lim is None else lim.requests_per_unit

    assert rpu(("a", "zzz")) == 1  # key-only
    assert rpu(("a", "x")) == 2  # exact value beats key-only
    assert rpu(("a", "x"), ("b", "q")) == 3  # nested, most specific
    assert rpu(("a", "zzz"), ("b", "q")) is None  # key-only node has no children
    assert rpu(("a", "prefix-1")) == 5  # longest wildcard prefix
    assert rpu(("a", "pre-1")) == 4
    assert rpu(("n", "v")) is None  # no limit on the intermediate node
    assert rpu(("n", "v"), ("m", "1")) == 6
    assert dom.match([("n", "v"), ("m", "1")]).window == 300.0  # type: ignore[union-attr]
    assert rpu(("b", "q")) is None
    assert rpu() is None
    # counters are per request value, hash-tagged by domain
    assert dom.bucket_key([("a", "1")]) != dom.bucket_key([("a", "2")])
    assert dom.bucket_key([("a", "x:y{z}")]).startswith("sg:{envoy:d}:")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"domain": "d", "descriptors": [{"key": "a", "rate_limit": {"unit": "fortnight",
          "requests_per_unit": 1}}]}, "a: rate_limit.unit 'fortnight' is not one of second"),
        ({"domain": "d", "descriptors": [{"key": "a", "rate_limit": {"unit": "second"}}]},
         "a: rate_limit.requests_per_unit is required"),
        ({"domain": "d", "descriptors": [{"key": "a", "rate_limit": {"unit": "second",
          "requests_per_unit": 1, "burst": 3}}]}, "descriptors.0.rate_limit.burst: Extra inputs"),
        ({"descriptors": []}, "domain: Field required"),
        ({"domain": "d", "descriptors": [{"key": "a", "value": "1"}, {"key": "a", "value": "1"}]},
         "a_1: duplicate descriptor"),
    ],
)  # fmt: skip
def test_invalid_configs(data: object, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        envoy_domain_from_data(data, "cfg.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("cfg.yaml: ")


def test_directory_and_duplicate_domain(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("domain: one\ndescriptors: []\n")
    (tmp_path / "b.yaml").write_text("domain: two\n---\ndomain: three\n")
    assert set(load_envoy_config(tmp_path)) == {"one", "two", "three"}
    (tmp_path / "c.yaml").write_text("domain: one\n")
    with pytest.raises(PolicyError, match="duplicate domain 'one'"):
        load_envoy_config(tmp_path)
    (tmp_path / "bad.yml").write_text("domain: [\n")
    with pytest.raises(PolicyError):
        load_envoy_config(tmp_path / "bad.yml")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PolicyError, match="no domain defined"):
        load_envoy_config(empty)
