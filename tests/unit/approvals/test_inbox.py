"""The inbox channel: private files, a line per notice, safe names, whole lines across processes."""

from __future__ import annotations

import asyncio
import doctest
import json
import multiprocessing
import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gatepass.approvals import inbox
from gatepass.approvals.inbox import InboxNotifier, inbox_file_name, read_inbox
from gatepass.approvals.notice import ApprovalNotice, notice_id
from gatepass.errors import ConfigError, NotificationError

NOW = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
SAFE_NAME = re.compile(r"[A-Za-z0-9@_-][A-Za-z0-9@._-]*\.jsonl")


def make_notice(request_id: str = "apr-1", approver: str = "bob@example.com",
                **overrides: Any) -> ApprovalNotice:
    values: dict[str, Any] = {
        "request_id": request_id,
        "intent_id": f"int-{request_id}",
        "agent_id": "agent-7",
        "owner": "alice@example.com",
        "approver": approver,
        "purpose": "Küchenbedarf",
        "department": "finance",
        "action": "payments.transfer",
        "resource": "acct:DE89",
        "amount": "1250.00",
        "currency": "EUR",
        "why": ("amount_over_threshold",),
        "requested_at": NOW,
        "expires_at": NOW + timedelta(minutes=15),
        "code": f"code-{request_id}",
        "link": f"https://approve.example/r/{request_id}?code=code-{request_id}",
    }
    values.update(overrides)
    return ApprovalNotice(**values)


def deliver(folder: Path, *notices: ApprovalNotice) -> None:
    async def go() -> None:
        notifier = InboxNotifier(folder)
        for notice in notices:
            await notifier.deliver(notice)
        await notifier.close()

    asyncio.run(go())


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The loosest umask: whatever we create must still come out 0700/0600."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- permissions -------------------------------------------------------------------------


def test_folder_is_created_0700_and_file_0600(tmp_path: Path, umask_zero: None) -> None:
    folder = tmp_path / "state" / "inbox"
    deliver(folder, make_notice())
    assert mode(folder) == 0o700
    [path] = folder.iterdir()
    assert mode(path) == 0o600
    assert stat.S_ISREG(os.stat(path).st_mode)


def test_file_mode_stays_0600_across_appends(tmp_path: Path, umask_zero: None) -> None:
    deliver(tmp_path / "inbox", make_notice("apr-1"))
    deliver(tmp_path / "inbox", make_notice("apr-2"))
    [path] = (tmp_path / "inbox").iterdir()
    assert mode(path) == 0o600


def test_a_loosened_file_is_set_back_to_0600(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "inbox"
    deliver(folder, make_notice("apr-1"))
    [path] = folder.iterdir()
    path.chmod(0o644)
    deliver(folder, make_notice("apr-2"))
    assert mode(path) == 0o600
    assert "reset to 0600" in caplog.text


@pytest.mark.parametrize("loose", [0o755, 0o750, 0o701, 0o770])
def test_an_existing_folder_open_to_others_is_refused(tmp_path: Path, loose: int) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    folder.chmod(loose)
    with pytest.raises(ConfigError) as info:
        InboxNotifier(folder)
    assert info.value.key == "approval_inbox"
    assert "chmod 700" in str(info.value)


def test_a_file_where_the_folder_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "inbox").write_text("")
    with pytest.raises(ConfigError):
        InboxNotifier(tmp_path / "inbox")


def test_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "inbox").symlink_to(real)
    with pytest.raises(ConfigError):
        InboxNotifier(tmp_path / "inbox")


def test_a_planted_symlink_never_redirects_the_codes(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    notifier = InboxNotifier(folder)
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    (folder / inbox_file_name("bob@example.com")).symlink_to(outside)
    with pytest.raises(NotificationError) as info:
        asyncio.run(notifier.deliver(make_notice()))
    assert info.value.code == "notification_failed"
    assert "code-apr-1" not in str(info.value)
    assert outside.read_text() == "untouched\n"


def test_a_fifo_in_place_of_the_file_fails_instead_of_hanging(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    notifier = InboxNotifier(folder)
    os.mkfifo(folder / inbox_file_name("bob@example.com"))
    with pytest.raises(NotificationError):
        asyncio.run(notifier.deliver(make_notice()))


# --- content and idempotency -------------------------------------------------------------


def test_one_json_line_per_notice_with_code_and_link(tmp_path: Path) -> None:
    deliver(tmp_path / "inbox", make_notice("apr-1"), make_notice("apr-2"))
    path = tmp_path / "inbox" / inbox_file_name("bob@example.com")
    records = [json.loads(line) for line in lines(path)]
    assert [r["request_id"] for r in records] == ["apr-1", "apr-2"]
    assert records[0]["id"] == notice_id(make_notice("apr-1"))
    assert records[0]["code"] == "code-apr-1"
    assert records[0]["link"].endswith("code=code-apr-1")
    assert records[0]["type"] == "gatepass.approval.requested"
    assert records[0]["expires_at"] == "2026-01-01T10:15:00Z"
    assert path.read_bytes().endswith(b"\n")


def test_the_same_notice_is_not_appended_twice(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    deliver(folder, make_notice(), make_notice())
    deliver(folder, make_notice())  # a redelivery after a worker restart: a new notifier
    assert len(lines(folder / inbox_file_name("bob@example.com"))) == 1


def test_the_same_request_for_two_approvers_goes_to_two_files(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    deliver(folder, make_notice(approver="bob@example.com"),
            make_notice(approver="carol@example.com"))
    assert [r["code"] for r in read_inbox(folder, "bob@example.com")] == ["code-apr-1"]
    assert [r["approver"] for r in read_inbox(folder, "carol@example.com")] == [
        "carol@example.com"]


def test_read_inbox_of_an_unknown_approver_is_empty(tmp_path: Path) -> None:
    assert read_inbox(tmp_path, "nobody") == []
    assert read_inbox(tmp_path / "missing-folder", "nobody") == []


def test_read_inbox_drops_expired_notices_when_given_now(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    deliver(folder, make_notice("apr-old", expires_at=NOW - timedelta(seconds=1)),
            make_notice("apr-new"))
    assert [r["request_id"] for r in read_inbox(folder, "bob@example.com")] == [
        "apr-old", "apr-new"]
    assert [r["request_id"] for r in read_inbox(folder, "bob@example.com", now=NOW)] == [
        "apr-new"]
    with pytest.raises(ValueError):
        read_inbox(folder, "bob@example.com", now=datetime(2026, 1, 1))


def test_a_torn_last_line_is_skipped_and_does_not_swallow_the_next(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    deliver(folder, make_notice("apr-1"))
    path = folder / inbox_file_name("bob@example.com")
    with path.open("ab") as f:
        f.write(b'{"id":"apn_torn","approver":"bob@exa')  # a crash mid-write
    deliver(folder, make_notice("apr-2"))
    assert [r["request_id"] for r in read_inbox(folder, "bob@example.com")] == [
        "apr-1", "apr-2"]


def test_read_inbox_ignores_lines_for_another_approver(tmp_path: Path) -> None:
    # Defence in depth: were two ids ever to share a file, neither sees the other's codes.
    folder = tmp_path / "inbox"
    deliver(folder, make_notice())
    path = folder / inbox_file_name("bob@example.com")
    with path.open("ab") as f:
        f.write(json.dumps({"id": "apn_x", "approver": "mallory", "code": "m"}).encode() + b"\n")
    assert [r["approver"] for r in read_inbox(folder, "bob@example.com")] == [
        "bob@example.com"]


# --- file names --------------------------------------------------------------------------

HOSTILE = ["../x", "a/b", "a_b", "..", ".", "/etc/passwd", "..\\..\\windows", "x" * 10_000,
           "nul\x00byte", "line\nbreak", ".hidden", "-rf", "Ünïcødé 名前", "bob@example.com",
           "BOB@example.com", " ", "~root", "$(reboot)"]


@pytest.mark.parametrize("approver", HOSTILE)
def test_approver_ids_cannot_escape_the_folder(tmp_path: Path, approver: str) -> None:
    folder = tmp_path / "inbox"
    name = inbox_file_name(approver)
    assert SAFE_NAME.fullmatch(name), name
    assert len(name.encode()) <= 255
    deliver(folder, make_notice(approver=approver))
    assert [p.name for p in folder.iterdir()] == [name]
    assert {p.name for p in tmp_path.iterdir()} == {"inbox"}
    assert [r["approver"] for r in read_inbox(folder, approver)] == [approver]


def test_distinct_approver_ids_get_distinct_files() -> None:
    names = [inbox_file_name(a) for a in HOSTILE]
    assert len(set(names)) == len(HOSTILE)


def test_an_empty_approver_id_is_refused() -> None:
    with pytest.raises(ValueError):
        inbox_file_name("")


def test_module_doctests() -> None:
    assert doctest.testmod(inbox, raise_on_error=False).failed == 0


# --- several processes -------------------------------------------------------------------


def deliver_many(folder: str, prefix: str, count: int) -> None:
    """Runs in a child process: `count` notices to one approver, as fast as it can."""
    deliver(Path(folder), *(make_notice(f"{prefix}-{i}") for i in range(count)))


def run_processes(*jobs: tuple[str, str, int]) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=deliver_many, args=job) for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_concurrent_appends_from_two_processes_do_not_interleave(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    InboxNotifier(folder)
    run_processes((str(folder), "a", 200), (str(folder), "b", 200))
    raw = lines(folder / inbox_file_name("bob@example.com"))
    assert len(raw) == 400
    records = [json.loads(line) for line in raw]  # every line whole, valid JSON
    assert len({r["id"] for r in records}) == 400
    for prefix in "ab":  # each process's notices in its own order
        mine = [r["request_id"] for r in records if r["request_id"].startswith(prefix + "-")]
        assert mine == [f"{prefix}-{i}" for i in range(200)]


def test_two_processes_delivering_the_same_notices_write_each_once(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    InboxNotifier(folder)
    run_processes((str(folder), "same", 100), (str(folder), "same", 100))
    assert len(lines(folder / inbox_file_name("bob@example.com"))) == 100
