"""The inbox channel: one private JSON-lines file per approver, read by `gatepass approvals list`.

Each notice is one line (`notice_payload`, so it holds the approver's code and link): the
folder is 0700 and every file 0600. Appends are whole lines under an exclusive lock, so
several worker processes can share a folder, and a notice already in the file (same notice
id) is not written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from gatepass.approvals.notice import ApprovalNotice, notice_id, notice_payload
from gatepass.errors import ConfigError, NotificationError

__all__ = ["InboxNotifier", "inbox_file_name", "read_inbox"]

log = logging.getLogger("gatepass.approvals")

_CONFIG_KEY = "approval_inbox"
_UNSAFE = re.compile(r"[^A-Za-z0-9@._-]+")
_READABLE_MAX = 64  # characters of the approver id kept in the file name, for humans
_DIGEST_HEX = 32  # the part that makes the name unique


def inbox_file_name(approver: str) -> str:
    """The approver's file name: a readable, sanitized prefix plus a digest of the full id.

    Only `[A-Za-z0-9@._-]` survive, with no leading dot, and the digest always follows, so no
    approver id can name another directory, a hidden file or another approver's file.

    >>> inbox_file_name("../x")
    '_x-d6b96a97d147daaae49eb87a5ca7bfbc.jsonl'
    """
    if not approver:
        raise ValueError("approver must not be empty")
    digest = hashlib.sha256(approver.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_HEX]
    readable = _UNSAFE.sub("_", approver)[:_READABLE_MAX].lstrip(".")
    return f"{readable}-{digest}.jsonl" if readable else f"{digest}.jsonl"


class InboxNotifier:
    """Appends approval notices to `<folder>/<inbox_file_name(approver)>`."""

    name = "inbox"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._folder = Path(folder)
        _prepare_folder(self._folder)

    def __repr__(self) -> str:
        return f"InboxNotifier(folder={str(self._folder)!r})"

    async def deliver(self, notice: ApprovalNotice) -> None:
        """Append the notice (unless already there); raise `NotificationError` on I/O failure."""
        line = _encode_line(notice)
        try:
            await asyncio.to_thread(self._append, notice.approver, notice_id(notice), line)
        except OSError as exc:
            # strerror only: the exception's text never carries the line, but keep it plain.
            log.warning("approval notice for request %s: inbox write failed (%s)",
                        notice.request_id, exc.strerror or type(exc).__name__)
            raise NotificationError(
                f"inbox write failed for request {notice.request_id}: "
                f"{exc.strerror or type(exc).__name__}") from exc

    def _append(self, approver: str, nid: str, line: bytes) -> bool:
        # Blocking (run in a thread): append unless the id is there; whether it wrote.
        path = self._folder / inbox_file_name(approver)
        with _open_locked(path) as fd:
            data = _read_all(fd)
            if nid in {record["id"] for record in map(_parse, data.splitlines()) if record}:
                return False
            if data and not data.endswith(b"\n"):
                line = b"\n" + line  # a torn last line (crash mid-write) must not swallow ours
            _write_all(fd, line)
            os.fsync(fd)
            return True

    async def close(self) -> None:
        """Nothing to release: each delivery opens and closes its file."""


def read_inbox(folder: str | os.PathLike[str], approver: str, *,
               now: datetime | None = None) -> list[dict[str, Any]]:
    """The approver's notices, oldest first, one per notice id; with `now`, unexpired only.

    A torn or foreign line (not JSON, or addressed to someone else) is skipped.
    """
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    path = Path(folder) / inbox_file_name(approver)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ConfigError(_CONFIG_KEY, f"{path}: not a regular file")
        data = f.read()
    seen: set[str] = set()
    notices: list[dict[str, Any]] = []
    for raw in data.splitlines():
        record = _parse(raw)
        if record is None or record.get("approver") != approver or record["id"] in seen:
            continue
        if now is not None and not _unexpired(record, now):
            continue
        seen.add(record["id"])
        notices.append(record)
    return notices


def _encode_line(notice: ApprovalNotice) -> bytes:
    text = json.dumps(notice_payload(notice), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8") + b"\n"


def _prepare_folder(folder: Path) -> None:
    try:
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)  # mkdir's mode is narrowed by the umask, never widened
        st = os.stat(folder, follow_symlinks=False)
    except OSError as exc:
        raise ConfigError(_CONFIG_KEY, f"{folder}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(_CONFIG_KEY, f"{folder}: not a directory")
    if st.st_uid != os.getuid():
        raise ConfigError(_CONFIG_KEY, f"{folder}: owned by another user")
    if st.st_mode & 0o077:
        raise ConfigError(_CONFIG_KEY, f"{folder}: mode {stat.S_IMODE(st.st_mode):04o} grants "
                          "group/other access to approval codes; chmod 700")


@contextlib.contextmanager
def _open_locked(path: Path) -> Iterator[int]:
    # O_NOFOLLOW: a symlink planted in place of an inbox never redirects the codes.
    # O_NONBLOCK: a FIFO there fails instead of hanging (no effect on a regular file).
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path.name}: not a regular file")
        if stat.S_IMODE(st.st_mode) != 0o600:
            # Our file, so tightening is safe; but say so: its codes may have been readable.
            log.warning("inbox file %s had mode %04o; reset to 0600", path.name,
                        stat.S_IMODE(st.st_mode))
            os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
        yield fd
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    # One write for the whole line; O_APPEND puts it at the end whatever the offset. The loop
    # only matters if the kernel writes part of it (disk full), and the lock keeps it whole.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return None
    return record


def _unexpired(record: dict[str, Any], now: datetime) -> bool:
    try:
        expires = datetime.fromisoformat(str(record.get("expires_at")))
    except ValueError:
        return True  # unreadable expiry: show it; the approval itself enforces the deadline
    return expires.tzinfo is None or expires > now
