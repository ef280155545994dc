"""Identity from API keys, sessions, trusted headers, keys files and the ``keys`` CLI."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from sluicegate.engine.identity import (
    AuthError,
    Identity,
    IdentityResolver,
    hash_key,
    make_key_entry,
)
from sluicegate.errors import PolicyError
from sluicegate.identity_cli import append_entry, register
from sluicegate.policy.identity_schema import IdentitySpec, parse_api_keys_text

FIXTURES = Path(__file__).parent / "fixtures" / "identity"
KEY_A = "sg-test-key-for-acme-planner-0123456789"
KEY_B = "sg-test-key-for-globex-writer-987654321"


def spec(**kw: object) -> IdentitySpec:
    base: dict[str, object] = {
        "api_keys": [
            {"sha256": hash_key(KEY_A), "tenant": "acme", "agent": "planner", "name": "ci"},
        ]
    }
    base.update(kw)
    return IdentitySpec.model_validate(base)


def resolver(**kw: object) -> IdentityResolver:
    return IdentityResolver(spec(**kw), base_dir=FIXTURES)


def auth_error(r: IdentityResolver, headers: dict[str, str]) -> AuthError:
    with pytest.raises(AuthError) as info:
        r.resolve(headers)
    return info.value


# --- API keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {KEY_A}"},
        {"authorization": f"bearer   {KEY_A} "},
        {"x-api-key": KEY_A},
    ],
    ids=["bearer", "bearer-lowercase-spaces", "x-api-key"],
)
def test_valid_api_key_in_both_header_styles(headers: dict[str, str]) -> None:
    assert resolver().resolve(headers) == Identity("acme", "planner", None, "key:ci", None)


@pytest.mark.parametrize(
    "headers", [{"authorization": "Bearer sg-wrong"}, {"x-api-key": "sg-wrong"}]
)
def test_invalid_api_key(headers: dict[str, str]) -> None:
    err = auth_error(resolver(), headers)
    assert (err.status, err.code) == (401, "invalid_api_key")
    assert "sg-wrong" not in err.message and "sg-wrong" not in str(err) + repr(err)
    assert err.www_authenticate == 'Bearer realm="sluicegate", error="invalid_token"'


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer "}, {"x-api-key": ""}, {"x-tenant": "acme"}],
    ids=["none", "empty-bearer", "empty-x-api-key", "only-forged-tenant"],
)
def test_missing_credentials(headers: dict[str, str]) -> None:
    err = auth_error(resolver(), headers)
    assert (err.status, err.code) == (401, "missing_credentials")
    assert err.message == (
        "missing credentials: send Authorization: Bearer <key> or X-Api-Key: <key>"
    )
    assert err.www_authenticate == 'Bearer realm="sluicegate"'


def test_other_authorization_scheme_is_not_a_credential() -> None:
    err = auth_error(resolver(), {"authorization": "Basic c2VjcmV0OnNlY3JldA=="})
    assert (err.status, err.code) == (401, "missing_credentials")
    assert "c2VjcmV0" not in err.message
    # ...but an X-Api-Key next to it still works
    r = resolver()
    assert r.resolve({"authorization": "Basic xx", "x-api-key": KEY_A}).tenant == "acme"


def test_first_configured_header_wins() -> None:
    r = resolver(
        api_keys=[
            {"sha256": hash_key(KEY_A), "tenant": "acme", "agent": "planner"},
            {"sha256": hash_key(KEY_B), "tenant": "globex", "agent": "writer"},
        ],
        api_key_headers=["X-Api-Key", "Authorization"],
    )
    ident = r.resolve({"authorization": f"Bearer {KEY_A}", "x-api-key": KEY_B})
    assert (ident.tenant, ident.agent) == ("globex", "writer")
    assert ident.subject == "key:" + hash_key(KEY_B)[:12]


def test_only_configured_headers_are_read() -> None:
    r = resolver(api_key_headers=["X-Gateway-Key"])
    assert r.resolve({"x-gateway-key": KEY_A}).agent == "planner"
    assert auth_error(r, {"x-api-key": KEY_A}).code == "missing_credentials"
    assert auth_error(r, {"authorization": f"Bearer {KEY_A}"}).code == "missing_credentials"


def test_overlong_key_is_refused_without_echo() -> None:
    key = "sg-" + "x" * 5000
    err = auth_error(resolver(), {"x-api-key": key})
    assert err.code == "invalid_api_key" and "xxxx" not in err.message


def test_no_identity_section_refuses_everything() -> None:
    r = IdentityResolver(None, base_dir=FIXTURES)
    err = auth_error(r, {"x-api-key": KEY_A})
    assert (err.status, err.code) == (401, "invalid_api_key")
    assert r.key_count == 0


def test_hash_key_and_make_key_entry() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    key, entry = make_key_entry("acme", "planner", name="bot")
    key2, _ = make_key_entry("acme", "planner")
    assert key.startswith("sg-") and len(key) >= 40 and key != key2 and "." not in key
    assert entry == {"sha256": hash_key(key), "tenant": "acme", "agent": "planner", "name": "bot"}
    r = IdentityResolver(IdentitySpec.model_validate({"api_keys": [entry]}), base_dir=FIXTURES)
    assert r.resolve({"authorization": f"Bearer {key}"}).subject == "key:bot"
    with pytest.raises(ValueError, match="tenant must contain only printable"):
        make_key_entry("ac\nme", "planner")


# --- keys files --------------------------------------------------------------------------------


def test_keys_file_plus_inline_keys() -> None:
    r = resolver(api_keys_file="keys.yaml")
    assert r.key_count == 3
    assert r.resolve({"x-api-key": KEY_A}).tenant == "acme"  # inline
    ident = r.resolve({"x-api-key": KEY_B})  # from tests/fixtures/identity/keys.yaml
    assert (ident.tenant, ident.agent, ident.subject) == ("globex", "writer", "key:globex-writer")


def test_keys_file_errors_have_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "keys.yaml"
    bad.write_text(
        "# keys\n"
        f"- {{sha256: {hash_key('a')}, tenant: acme, agent: a}}\n"
        "- sha256: nothex\n"
        "  tenant: acme\n"
        "  agent: b\n"
        "- {sha256: " + hash_key("c") + ", tenant: acme, agnet: c}\n"
        f"- {{sha256: {hash_key('a')}, tenant: acme, agent: d}}\n"
    )
    with pytest.raises(PolicyError) as info:
        IdentityResolver(spec(api_keys_file=str(bad)), base_dir=Path("/nonexistent"))
    assert [str(p) for p in info.value.problems] == [
        f"{bad}:3: [1].sha256: must be the 64 hex digits of the key's SHA-256 digest",
        f"{bad}:6: [2].agent: missing required key 'agent'",
        f"{bad}:6: [2].agnet: unknown key 'agnet' (allowed: sha256, tenant, agent, name)",
    ]
    bad.write_text(
        f"- {{sha256: {hash_key('a')}, tenant: acme, agent: a}}\n"
        f"- {{sha256: {hash_key('a').upper()}, tenant: acme, agent: d}}\n"
    )
    with pytest.raises(PolicyError) as info:
        IdentityResolver(spec(api_keys_file=bad.name), base_dir=tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f"{bad}:2: [1].sha256: duplicate key hash (first at line 1)"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api_keys: []\n", "1: an API keys file must be a YAML list of entries"),
        ("- [unclosed\n", "2: invalid YAML: "),
        ("- {sha256: x, tenant: '', agent: a}\n", "1: [0].tenant: must not be empty"),
    ],
)
def test_keys_file_shape_errors(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_api_keys_text(text, "k.yaml")
    assert any(str(p).startswith("k.yaml:" + message) for p in info.value.problems), [
        str(p) for p in info.value.problems
    ]


def test_keys_file_missing_and_duplicate_with_inline(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read API keys file"):
        IdentityResolver(spec(api_keys_file="nope.yaml"), base_dir=tmp_path)
    (tmp_path / "k.yaml").write_text(f"- {{sha256: {hash_key(KEY_A)}, tenant: x, agent: y}}\n")
    with pytest.raises(PolicyError, match=r"\[0\]\.sha256: key hash also defined in api_keys"):
        IdentityResolver(spec(api_keys_file="k.yaml"), base_dir=tmp_path)
    (tmp_path / "empty.yaml").write_text("# no keys yet\n")
    assert IdentityResolver(spec(api_keys_file="empty.yaml"), base_dir=tmp_path).key_count == 1


# --- sessions, init tokens ---------------------------------------------------------------------


def test_session_and_init_token() -> None:
    r = resolver()
    ident = r.resolve(
        {"x-api-key": KEY_A, "x-agent-session": "run-42 ünïcode", "x-agent-init-token": "it.1"}
    )
    assert ident.session == "run-42 ünïcode" and ident.init_token == "it.1"
    assert r.resolve({"x-api-key": KEY_A, "x-agent-session": ""}).session is None
    custom = resolver(session_header="X-Run", init_token_header="X-Boot")
    ident = custom.resolve(
        {"x-api-key": KEY_A, "x-run": "r1", "x-boot": "t", "x-agent-session": "s"}
    )
    assert (ident.session, ident.init_token) == ("r1", "t")


@pytest.mark.parametrize("session", ["a\r\nx-tenant: evil", "a\nb", "tab\there", "x" * 129, "\x00"])
def test_bad_session(session: str) -> None:
    err = auth_error(resolver(), {"x-api-key": KEY_A, "x-agent-session": session})
    assert (err.status, err.code) == (400, "bad_session")
    assert err.www_authenticate is None and "evil" not in err.message


def test_session_is_checked_after_credentials() -> None:
    err = auth_error(resolver(), {"x-api-key": "sg-nope", "x-agent-session": "\n"})
    assert err.code == "invalid_api_key"


# --- trusted identity headers ------------------------------------------------------------------


def test_forged_identity_headers_are_ignored_by_default() -> None:
    r = resolver()
    ident = r.resolve({"x-api-key": KEY_A, "x-tenant": "globex", "x-agent": "admin"})
    assert (ident.tenant, ident.agent) == ("acme", "planner")
    assert auth_error(r, {"x-tenant": "globex", "x-agent": "admin"}).status == 401


def test_trusted_identity_headers() -> None:
    r = resolver(trust_headers=True)
    ident = r.resolve({"x-tenant": "globex", "x-agent": "admin", "x-agent-session": "s"})
    assert ident == Identity("globex", "admin", "s", "header", None)
    assert r.resolve({"x-api-key": KEY_A}).tenant == "acme"  # no headers: credentials
    for bad in ({"x-tenant": "globex"}, {"x-agent": "a"}, {"x-tenant": "g\r\n", "x-agent": "a"}):
        err = auth_error(r, {**bad, "x-api-key": KEY_A})
        assert (err.status, err.code) == (400, "bad_identity_headers")
    custom = resolver(trust_headers=True, tenant_header="X-Org", agent_header="X-Bot")
    assert custom.resolve({"x-org": "o", "x-bot": "b"})[:2] == ("o", "b")


def test_credential_headers() -> None:
    assert resolver().credential_headers() == frozenset(
        {"authorization", "x-api-key", "x-agent-init-token", "x-tenant", "x-agent"}
    )
    r = resolver(api_key_headers=["X-Gw-Key"], tenant_header="X-Org")
    assert r.credential_headers() == frozenset(
        {"x-gw-key", "x-agent-init-token", "x-org", "x-agent"}
    )
    assert "x-agent-session" not in r.credential_headers()


# --- spec validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"api_keys": [{"sha256": "abc", "tenant": "a", "agent": "b"}]}, "64 hex digits"),
        ({"api_key_headers": ["X Bad"]}, "invalid header name 'X Bad'"),
        ({"api_key_headers": ["x-api-key", "X-Api-Key"]}, "a header is listed twice"),
        ({"session_header": "X-Api-Key"}, "session_header 'x-api-key' is also a credential"),
        ({"tenant_header": "x-agent"}, "agent_header and tenant_header are the same header"),
        ({"trust_headers": "true"}, "valid boolean"),
        ({"tokens": 1}, "Extra inputs are not permitted"),
        (
            {
                "api_keys": [
                    {"sha256": hash_key("a"), "tenant": "a", "agent": "b"},
                    {"sha256": hash_key("a"), "tenant": "c", "agent": "d"},
                ]
            },
            "api_keys[1] repeats the key hash of api_keys[0]",
        ),
    ],
)
def test_spec_validation(data: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        IdentitySpec.model_validate(data)


# --- the keys CLI ------------------------------------------------------------------------------


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="sluicegate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_add_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    code, out, err = _run_cli(
        ["keys", "add", "--tenant", "acme", "--agent", "planner", "--file", str(path)], capsys
    )
    assert code == 0 and "shown only once" in err
    key = out.strip()
    code, out, _ = _run_cli(
        ["keys", "add", "--tenant", "acme", "--agent", "w", "--name", "n", "--file", str(path)],
        capsys,
    )
    key2 = out.strip()
    text = path.read_text()
    assert text.startswith("# sluicegate API keys") and key not in text and key2 not in text
    r = IdentityResolver(
        IdentitySpec.model_validate({"api_keys_file": "keys.yaml"}), base_dir=tmp_path
    )
    assert r.resolve({"authorization": f"Bearer {key}"})[:2] == ("acme", "planner")
    assert r.resolve({"x-api-key": key2}).subject == "key:n"


def test_keys_add_without_file_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = _run_cli(["keys", "add", "--tenant", "acme", "--agent", "a"], capsys)
    assert code == 0 and "sha256: " + hash_key(out.strip()) in err
    code, _, err = _run_cli(["keys", "add", "--tenant", "", "--agent", "a"], capsys)
    assert code == 2 and "tenant must not be empty" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("api_keys: []\n")
    code, out, err = _run_cli(
        ["keys", "add", "--tenant", "t", "--agent", "a", "--file", str(broken)], capsys
    )
    assert code == 1 and out == "" and "must be a YAML list" in err
    assert broken.read_text() == "api_keys: []\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("abc\n"))
    code, out, _ = _run_cli(["keys", "hash"], capsys)
    assert code == 0 and out.strip() == hash_key("abc")


def test_append_entry_to_flow_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text("[]")
    _, entry = make_key_entry("t", "a")
    append_entry(path, entry)
    assert [e.tenant for e in parse_api_keys_text(path.read_text(), "k")] == ["t"]
