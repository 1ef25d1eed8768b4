"""`gatepass policy validate|test DIR`: check a Cedar policy bundle offline (no broker).

    gatepass policy validate DIR [--json]
    gatepass policy test DIR [--json]

`validate` loads the bundle as a worker would and prints its version, how many scope and
approval policies it has and the actions its schema declares. `test` validates, then decides
every case of DIR/tests/*.toml with the real decision function (gatepass.policy.cases) and
prints each failure. A problem in the bundle or a cases file is printed as `FILE:LINE:
MESSAGE` on stderr (with --json, also as {"valid": false, "error": {...}} on stdout).

Exit codes: 0 the bundle is valid (`test`: and every case passed), 1 it is not (an invalid
bundle or cases file, a failing case, or no cases at all), 2 a usage error: DIR is not a
folder (message on stderr with its code, as every command prints errors).

More `gatepass policy ...` commands (push, replay) join the group through `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatepass.config import Settings
from gatepass.errors import ConfigError, PolicyError

if TYPE_CHECKING:
    from gatepass.core.policy import CedarPolicy
    from gatepass.policy.cases import CaseResult

__all__ = ["SUBCOMMANDS", "add_bundle_argument", "load_bundle", "print_policy_error",
           "register"]


def register(sub: Any) -> None:
    """Add `gatepass policy` and its commands (one per entry of SUBCOMMANDS)."""
    p = sub.add_parser("policy", help="check Cedar policy bundles (validate, test)",
                       description="Check a Cedar policy bundle offline; see docs/policy.md.")
    actions = p.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    for add in SUBCOMMANDS:
        add(actions)


def add_bundle_argument(p: argparse.ArgumentParser) -> None:
    """The DIR argument every `gatepass policy` command takes."""
    p.add_argument("directory", type=Path, metavar="DIR",
                   help="the bundle folder (schema.cedarschema, scope/, approval/, "
                        "gatepass.toml, tests/)")


def _register_validate(actions: Any) -> None:
    v = actions.add_parser("validate", help="parse and validate a bundle; print its version")
    add_bundle_argument(v)
    v.add_argument("--json", action="store_true", help="one JSON object on one line")
    v.set_defaults(handler=cmd_validate)


def _register_test(actions: Any) -> None:
    t = actions.add_parser("test", help="validate, then decide every case of DIR/tests/*.toml")
    add_bundle_argument(t)
    t.add_argument("--json", action="store_true", help="one JSON report on one line")
    t.set_defaults(handler=cmd_test)


# Each: (the `policy` group's subparsers) -> None, adding a parser with
# set_defaults(handler=...). A later command (push, replay) appends itself here.
def _register_push(actions: Any) -> None:
    p = actions.add_parser("push", help="validate, test and publish a bundle; every worker "
                                        "switches to it at its activation time")
    add_bundle_argument(p)
    p.add_argument("--skip-tests", action="store_true",
                   help="publish even if DIR/tests has failing cases (not recommended)")
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    p.set_defaults(handler=cmd_push)


def _register_replay(actions: Any) -> None:
    r = actions.add_parser("replay", help="what would a candidate bundle have decided? "
                                          "(reads the audit topic; emits nothing)")
    r.add_argument("--candidate", type=Path, required=True, metavar="DIR",
                   help="the candidate policy bundle folder")
    r.add_argument("--since", metavar="TIME", help="ISO 8601 time, or an age like 7d, 12h")
    r.add_argument("--until", metavar="TIME", help="ISO 8601 time, or an age like 30m")
    r.add_argument("--out", type=Path, metavar="FILE",
                   help="where the JSON report goes (default: <home>/replay/<time>.json)")
    r.add_argument("--json", action="store_true", help="print the JSON report instead")
    r.set_defaults(handler=cmd_replay)


SUBCOMMANDS: list[Callable[[Any], None]] = [_register_validate, _register_test, _register_push,
                                            _register_replay]


def load_bundle(directory: Path) -> tuple[dict[str, str], CedarPolicy]:
    """The bundle's files and its validated policy. ConfigError when DIR is not a folder
    (a usage error), PolicyError when the bundle is not valid."""
    from gatepass.core.policy import CedarPolicy
    from gatepass.policy.bundle import read_bundle

    if not directory.is_dir():
        raise ConfigError("DIR", f"{directory} is not a folder (a policy bundle is a folder "
                          "with schema.cedarschema, scope/, approval/, gatepass.toml)")
    files = read_bundle(directory)
    return files, CedarPolicy.from_files(files)


def print_policy_error(directory: Path, exc: PolicyError, *, as_json: bool) -> int:
    """`DIR/FILE:LINE: MESSAGE` on stderr (and a JSON object with --json); returns 1."""
    from gatepass.cli.main import dumps

    path = str(directory / exc.file) if exc.file else str(directory)
    if exc.file and exc.file.endswith("/"):
        path += "/"  # "scope/": the folder, not a file
    where = f"{path}:{exc.line}" if exc.line else path
    print(f"{where}: {exc.message}", file=sys.stderr)
    if as_json:
        print(dumps({"valid": False, "error": {"code": exc.code, "file": exc.file,
                                               "line": exc.line, "message": exc.message}}))
    return 1


def cmd_validate(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.cli.main import dumps

    try:
        files, policy = load_bundle(ns.directory)
    except PolicyError as exc:
        return print_policy_error(ns.directory, exc, as_json=ns.json)
    summary = _summary(files, policy)
    if ns.json:
        print(dumps({"valid": True, **summary}))
        return 0
    print(f"valid: {ns.directory}  version {policy.version}")
    print(f"  scope policies:    {summary['scope_policies']}")
    print(f"  approval policies: {summary['approval_policies']}")
    actions = summary["actions"]
    print(f"  actions ({len(actions)}): {', '.join(actions)}")
    print(f"  case files:        {len(summary['case_files'])}")
    return 0


def _summary(files: dict[str, str], policy: CedarPolicy) -> dict[str, Any]:
    policies = [{"id": pid, "kind": kind, "file": file, "line": line}
                for kind, compiled in (("scope", policy.scope_set),
                                       ("approval", policy.approval_set))
                for pid, (file, line) in compiled.origin.items()]
    return {"version": policy.version,
            "scope_policies": len(policy.scope_set),
            "approval_policies": len(policy.approval_set),
            "actions": sorted(policy.actions),
            "policies": policies,
            "case_files": sorted(n for n in files if n.startswith("tests/"))}


def cmd_test(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.cli.main import dumps
    from gatepass.policy.cases import load_cases, run_cases

    try:
        files, policy = load_bundle(ns.directory)
        cases = load_cases(files)
    except PolicyError as exc:
        return print_policy_error(ns.directory, exc, as_json=ns.json)
    if not cases:
        # A test run that tests nothing is more likely a mistake than a success.
        return print_policy_error(ns.directory, PolicyError(
            "no test cases: add [[case]] entries in tests/*.toml (see docs/policy.md)",
            file="tests/"), as_json=ns.json)
    report = run_cases(policy, cases)
    if ns.json:
        print(dumps(report.to_json()))
        return 0 if report.ok else 1
    for result in report.failed:
        _print_failure(ns.directory, result)
    failed = len(report.failed)
    tail = f", {failed} failed" if failed else ""
    print(f"{ns.directory}: {len(report.results)} cases, {report.passed} passed{tail}  "
          f"(version {report.version})")
    return 0 if report.ok else 1


def _print_failure(directory: Path, result: CaseResult) -> None:
    case = result.case
    want = case.want.value
    if case.reasons is not None:
        want += f"  reasons [{', '.join(case.reasons)}]"
    if case.policy_ids is not None:
        want += f"  policy_ids [{', '.join(case.policy_ids)}]"
    where = f"{directory / case.file}:{case.line}" if case.line else str(directory / case.file)
    print(f"FAIL {where}: {case.name}")
    print(f"  want {want}")
    print(f"  got  {result.decision.value}  reasons [{', '.join(result.reasons)}]  "
          f"policy_ids [{', '.join(result.policy_ids)}]")
    for difference in result.differences:
        print(f"  - {difference}")
    if result.detail:
        print(f"  detail: {result.detail}")


def cmd_push(ns: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 pushed, 1 refused (invalid bundle or failing cases), 2 error (broker)."""
    from gatepass.cli.main import dumps
    from gatepass.codec.avro import schemas
    from gatepass.policy.topic import push

    try:
        files, policy = load_bundle(ns.directory)
    except PolicyError as exc:
        return print_policy_error(ns.directory, exc, as_json=ns.json)
    if not ns.skip_tests:
        from gatepass.policy.cases import load_cases, run_cases
        try:
            cases = load_cases(files)
        except PolicyError as exc:
            return print_policy_error(ns.directory, exc, as_json=ns.json)
        report = run_cases(policy, cases)
        if report.failed:
            for result in report.failed:
                _print_failure(ns.directory, result)
            print(f"not pushed: {len(report.failed)} of {len(cases)} cases fail "
                  "(gatepass policy test shows them; --skip-tests pushes anyway)",
                  file=sys.stderr)
            return 1
    activation, previous = push(settings, schemas(), policy)
    body = {"pushed": True, "version": policy.version, "activation_id": activation.activation_id,
            "effective_at": activation.effective_at.isoformat(),
            "previous_version": previous}
    if ns.json:
        print(dumps(body))
    else:
        before = previous or "the workers' local bundle"
        print(f"pushed {policy.version}: in force from {body['effective_at']} "
              f"(before: {before})")
    return 0


def _when(raw: str | None, now: Any) -> Any:
    import re
    from datetime import datetime, timedelta

    if raw is None:
        return None
    m = re.fullmatch(r"(\d+)([smhd])", raw.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: int(m.group(1))})
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError("TIME", f"{raw!r} is neither ISO 8601 nor an age like 7d") from None
    if at.tzinfo is None:
        raise ConfigError("TIME", f"{raw!r} needs a time zone (e.g. Z)")
    return at


def cmd_replay(ns: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 no decision would change, 1 some would (like diff), 2 error."""
    import json
    from datetime import UTC, datetime

    from gatepass.cli.main import dumps
    from gatepass.codec.avro import schemas
    from gatepass.errors import DecodeError
    from gatepass.policy.replay import replay
    from gatepass.transport.reader import read_topics

    try:
        _, candidate = load_bundle(ns.candidate)
    except PolicyError as exc:
        return print_policy_error(ns.candidate, exc, as_json=ns.json)
    now = datetime.now(UTC)
    since, until = _when(ns.since, now), _when(ns.until, now)
    codec = schemas().decision_record
    records = []
    unreadable = 0
    for raw in read_topics(settings.bootstrap, [settings.topics.audit],
                           group=f"{settings.app_id}-replay"):
        try:
            records.append(codec.decode(raw.value))
        except DecodeError:
            unreadable += 1
    report = replay(records, candidate, since=since, until=until)
    if unreadable:
        report.skipped["unreadable audit record"] += unreadable
    data = report.to_json()
    out = ns.out or settings.home / "replay" / f"{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if ns.json:
        print(dumps(data))
    else:
        print(report.render())
        print(f"report: {out}")
    return 1 if report.changed else 0
