"""`gatepass policy validate|test DIR`: output shapes and exit codes, offline (no broker)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from gatepass.cli import policy as policy_cli
from gatepass.cli.main import build_parser, main
from gatepass.policy import DEFAULT_POLICY_DIR, load_policy

SCHEMA = """namespace Gatepass {
  entity Principal = { status: String };
  entity Department;
  entity Agent in [Department] = {
    purpose: String, status: String, signed: Bool, owner?: Principal, department?: String,
  };
  entity Resource;
  type Request = {
    amount?: decimal, currency?: String, resource: String, audience: String,
    delegated: Bool, delegation_depth: Long,
  };
  action "vendor.read", "ticket.update"
    appliesTo { principal: Agent, resource: Resource, context: Request };
}
"""
SCOPE = """// reads
@id("reads")
permit (principal, action == Gatepass::Action::"vendor.read", resource)
when { principal.purpose == "procurement" };
"""
APPROVAL = """@id("tickets")
@reason("ticket updates need the owner")
permit (principal, action == Gatepass::Action::"ticket.update", resource);
"""
CASES = """[[case]]
name = "reads a vendor"
agent = { id = "bot", purpose = "procurement", owner = "sarah" }
action = "vendor.read"
resource = "vendor:acme"
want = "ALLOW"
policy_ids = ["reads"]

[[case]]
name = "support may not read vendors"
agent = { id = "help", purpose = "support", owner = "sarah" }
action = "vendor.read"
resource = "vendor:acme"
want = "DENY"
reasons = ["out_of_scope"]
"""
FAILING = """
[[case]]
name = "wrongly expected"
agent = { id = "bot", purpose = "procurement", owner = "sarah" }
action = "vendor.read"
resource = "vendor:acme"
want = "DENY"
reasons = ["out_of_scope"]
policy_ids = []
"""


def write_bundle(root: Path, extra: dict[str, str] | None = None) -> Path:
    """A small valid bundle under root/bundle; `extra` adds or replaces files."""
    files = {"schema.cedarschema": SCHEMA, "scope/main.cedar": SCOPE,
             "approval/main.cedar": APPROVAL, "gatepass.toml": "", "tests/cases.toml": CASES,
             **(extra or {})}
    bundle = root / "bundle"
    for name, text in files.items():
        path = bundle / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return bundle


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["policy", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- validate --------------------------------------------------------------------------------
def test_validate_prints_version_counts_and_actions(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    code, out, err = run(capsys, "validate", str(bundle))
    assert (code, err) == (0, "")
    version = load_policy(bundle).version
    assert out.splitlines() == [
        f"valid: {bundle}  version {version}",
        "  scope policies:    1",
        "  approval policies: 1",
        "  actions (2): ticket.update, vendor.read",
        "  case files:        1",
    ]


def test_validate_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    code, out, _ = run(capsys, "validate", str(bundle), "--json")
    assert code == 0
    assert json.loads(out) == {
        "valid": True, "version": load_policy(bundle).version,
        "scope_policies": 1, "approval_policies": 1,
        "actions": ["ticket.update", "vendor.read"],
        "policies": [
            {"id": "reads", "kind": "scope", "file": "scope/main.cedar", "line": 2},
            {"id": "tickets", "kind": "approval", "file": "approval/main.cedar", "line": 1},
        ],
        "case_files": ["tests/cases.toml"],
    }


def test_validate_the_shipped_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(DEFAULT_POLICY_DIR), "--json")
    assert code == 0
    doc = json.loads(out)
    policy = load_policy()
    assert doc["version"] == policy.version
    assert doc["actions"] == sorted(policy.actions)


BROKEN_SCOPE = SCOPE + """
@id("typo")
permit (principal, action == Gatepass::Action::"vendor.read", resource)
when { principal.purpos == "procurement" };
"""


@pytest.mark.parametrize(("extra", "where", "message"), [
    ({"scope/main.cedar": BROKEN_SCOPE}, "scope/main.cedar:6",
     "attribute `purpos` on entity type `Gatepass::Agent` not found"),
    ({"scope/main.cedar": SCOPE + '\n@id("reads")\npermit (principal, action, resource);\n'},
     "scope/main.cedar:6", "policy id 'reads' is already used at scope/main.cedar:2"),
    ({"approval/main.cedar": "permit (principal, action, resource);\n"},
     "approval/main.cedar:1", 'every policy needs an @id("...") annotation'),
    ({"gatepass.toml": "[approval]\nwho = 1\n"}, "gatepass.toml",
     "approval: unknown keys ['who']"),
])
def test_validate_names_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      extra: dict[str, str], where: str,
                                      message: str) -> None:
    bundle = write_bundle(tmp_path, extra)
    code, out, err = run(capsys, "validate", str(bundle))
    assert (code, out) == (1, "")
    assert err.startswith(f"{bundle}/{where}: ")
    assert message in err
    assert len(err.splitlines()) == 1


def test_validate_error_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, {"scope/main.cedar": BROKEN_SCOPE})
    code, out, err = run(capsys, "validate", str(bundle), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["valid"] is False
    assert {k: doc["error"][k] for k in ("code", "file", "line")} == {
        "code": "policy_invalid", "file": "scope/main.cedar", "line": 6}
    assert "purpos" in doc["error"]["message"]
    assert err.startswith(f"{bundle}/scope/main.cedar:6: ")


def test_an_unexpected_file_is_named(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, {"notes.toml": "x = 1\n"})
    code, _, err = run(capsys, "validate", str(bundle))
    assert code == 1
    assert err.startswith(f"{bundle}/notes.toml: unexpected file in a policy bundle")


@pytest.mark.parametrize("command", ["validate", "test"])
def test_a_missing_folder_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           command: str) -> None:
    code, out, err = run(capsys, command, str(tmp_path / "nowhere"), "--json")
    assert (code, out) == (2, "")
    assert err.startswith("gatepass: error [config_invalid]: DIR: ")
    assert "is not a folder" in err


def test_policy_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy"])
    assert info.value.code == 2
    assert "ACTION" in capsys.readouterr().err


# ---- test ------------------------------------------------------------------------------------
def test_test_passes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    code, out, err = run(capsys, "test", str(bundle))
    assert (code, err) == (0, "")
    assert out == f"{bundle}: 2 cases, 2 passed  (version {load_policy(bundle).version})\n"


def test_test_the_shipped_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "test", str(DEFAULT_POLICY_DIR), "--json")
    doc = json.loads(out)
    assert code == 0, doc["failed"]
    assert doc["cases"] == doc["passed"] > 0
    assert doc["failed"] == []


def test_test_reports_a_failing_case(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, {"tests/more.toml": FAILING})
    code, out, err = run(capsys, "test", str(bundle))
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        f"FAIL {bundle}/tests/more.toml:2: wrongly expected",
        "  want DENY  reasons [out_of_scope]  policy_ids []",
        "  got  ALLOW  reasons [allowed]  policy_ids [reads]",
        "  - decision: want DENY, got ALLOW",
        "  - reasons: want [out_of_scope], got [allowed]",
        "  - policy_ids: want [], got [reads]",
        "  detail: vendor.read allowed by reads",
        f"{bundle}: 3 cases, 2 passed, 1 failed  (version {load_policy(bundle).version})",
    ]


def test_test_json_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, {"tests/more.toml": FAILING})
    code, out, _ = run(capsys, "test", str(bundle), "--json")
    assert code == 1
    doc = json.loads(out)
    assert set(doc) == {"version", "cases", "passed", "failed"}
    assert (doc["version"], doc["cases"], doc["passed"]) == (
        load_policy(bundle).version, 3, 2)
    (failed,) = doc["failed"]
    assert failed == {
        "file": "tests/more.toml", "line": 2, "name": "wrongly expected",
        "want": {"decision": "DENY", "reasons": ["out_of_scope"], "policy_ids": []},
        "got": {"decision": "ALLOW", "reasons": ["allowed"], "policy_ids": ["reads"],
                "detail": "vendor.read allowed by reads"},
        "differences": ["decision: want DENY, got ALLOW",
                        "reasons: want [out_of_scope], got [allowed]",
                        "policy_ids: want [], got [reads]"],
    }


def test_test_validates_first(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, {"scope/main.cedar": BROKEN_SCOPE})
    code, out, err = run(capsys, "test", str(bundle), "--json")
    assert code == 1
    assert json.loads(out)["error"]["file"] == "scope/main.cedar"
    assert err.startswith(f"{bundle}/scope/main.cedar:6: ")


def test_test_names_a_malformed_case(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, {"tests/more.toml": FAILING.replace(
        'want = "DENY"', 'want = "DENY"\nwnat = "ALLOW"')})
    code, out, err = run(capsys, "test", str(bundle))
    assert (code, out) == (1, "")
    assert err.startswith(f"{bundle}/tests/more.toml:2: case 'wrongly expected': unknown "
                          "keys ['wnat']")


def test_test_without_cases_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    (bundle / "tests" / "cases.toml").unlink()
    code, out, err = run(capsys, "test", str(bundle))
    assert (code, out) == (1, "")
    assert err.startswith(f"{bundle}/tests/: no test cases")


# ---- the group takes more commands ---------------------------------------------------------
def test_more_commands_join_the_policy_group(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(ns: Any, settings: Any) -> int:
        return 0

    def register_extra(actions: Any) -> None:
        p = actions.add_parser("extra-check")
        policy_cli.add_bundle_argument(p)
        p.set_defaults(handler=handler)

    builtin = list(policy_cli.SUBCOMMANDS)
    monkeypatch.setattr(policy_cli, "SUBCOMMANDS", [*builtin, register_extra])
    parser = build_parser()
    ns = parser.parse_args(["policy", "extra-check", "policies"])
    assert (ns.command, ns.policy_action, ns.directory) == (
        "policy", "extra-check", Path("policies"))
    assert ns.handler is handler
    # It joins the commands registered before it (however many): none is lost or replaced.
    names = list(_subcommands(_subcommands(parser)["policy"]))
    assert names[-1] == "extra-check" and len(names) == len(builtin) + 1
    assert {"validate", "test"} <= set(names)
    for action in ("validate", "test"):
        assert parser.parse_args(["policy", action, "policies"]).policy_action == action


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(group.choices)
