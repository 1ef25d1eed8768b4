"""`gatepass import ... --dry-run`: the mapping as the CLI prints it, and its exit codes.

Publishing needs a broker: tests/integration/test_importers.py covers it.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gatepass.cli.main import main

FIXTURES = Path(__file__).parent / "fixtures"
AS_OF = "2026-03-03T08:00:00Z"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--bootstrap", "127.0.0.1:1", "import", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_each_event_then_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "hr", str(FIXTURES / "hr_terminations.csv"), "--dry-run",
                         "--as-of", AS_OF)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("principal:sarah.connor@example.com/scheduled-status  ")
    assert "status=offboarded at 2026-03-06T00:00:00Z" in lines[0]
    assert lines[-1] == "hr-feed: 4 rows read, 4 events: 3 would publish, 1 skipped as " \
        "duplicates"


@pytest.mark.parametrize(("kind", "fixture", "extra", "events"), [
    ("hr", "hr_terminations.json", ["--zone", "Europe/Paris"], 3),
    ("entra-agents", "entra_agent_identities.json", ["--default-purpose", "support"], 6),
    ("servicenow", "servicenow_cmdb_ci_all.json", [], 6),
    ("servicenow", "servicenow_cmdb_ci_default.json", ["--owner-field", "owned_by.email"], 2),
])
def test_dry_run_json_lines(capsys: pytest.CaptureFixture[str], kind: str, fixture: str,
                            extra: list[str], events: int) -> None:
    code, out, _ = run(capsys, kind, str(FIXTURES / fixture), "--dry-run", "--json",
                       "--as-of", AS_OF, *extra)
    assert code == 0
    *lines, summary = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == events
    assert all({"key", "type", "event_time", "source", "source_event_id"} <= set(e)
               for e in lines)
    assert summary == {"source": summary["source"], "rows": summary["rows"],
                       "events": events, "published": 0, "skipped_duplicates": 0,
                       "dry_run": True}


def test_the_file_time_is_the_default_export_time(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    shutil.copy(FIXTURES / "hr_terminations.csv", feed)
    stamp = datetime(2026, 3, 7, 12, 0, tzinfo=UTC).timestamp()  # after the termination
    os.utime(feed, (stamp, stamp))
    code, out, _ = run(capsys, "hr", str(feed), "--dry-run", "--json")
    assert code == 0
    sarah = json.loads(out.splitlines()[0])
    assert sarah["key"] == "principal:sarah.connor@example.com/status"  # no longer ahead
    assert sarah["recorded_at"] == "2026-03-07T12:00:00Z"


@pytest.mark.parametrize(("args", "code_name"), [
    (["hr", "/no/such/file.csv", "--dry-run"], "config_invalid"),
    (["hr", str(FIXTURES / "hr_terminations.csv"), "--dry-run", "--as-of", "tomorrow"],
     "config_invalid"),
    (["hr", str(FIXTURES / "hr_terminations.csv"), "--dry-run", "--as-of",
      "2026-03-03T08:00:00"], "config_invalid"),
    (["hr", str(FIXTURES / "hr_terminations.csv"), "--dry-run", "--as-of",
      "2999-01-01T00:00:00Z"], "config_invalid"),
    (["hr", str(FIXTURES / "hr_terminations.csv"), "--dry-run", "--zone", "Nowhere/Else"],
     "config_invalid"),
    (["hr", str(FIXTURES / "entra_agent_identities.json"), "--dry-run", "--format", "csv",
      "--as-of", AS_OF], "record_invalid"),
    (["entra-agents", str(FIXTURES / "entra_agent_identities.json"), "--dry-run",
      "--as-of", AS_OF], "record_invalid"),
    (["servicenow", str(FIXTURES / "hr_terminations.csv"), "--dry-run"], "record_invalid"),
], ids=["missing file", "bad as-of", "as-of without zone", "as-of in the future",
        "bad zone", "wrong format", "identity without purpose", "not JSON"])
def test_bad_input_exits_2_with_the_error_code(capsys: pytest.CaptureFixture[str],
                                               args: list[str], code_name: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2
    assert err.startswith(f"gatepass: error [{code_name}]: ")
    assert "would publish" not in out


def test_a_bad_row_is_named_on_stderr(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("email,status,effective_date\na@example.com,active,2026-01-01\n"
                    "b@example.com,fired,2026-01-01\n")
    code, out, err = run(capsys, "hr", str(feed), "--dry-run")
    assert (code, out) == (2, "")
    assert "row 2 (b@example.com), field 'status': unknown status 'fired'" in err

