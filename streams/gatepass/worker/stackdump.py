"""What a live worker is doing, on SIGUSR1: every thread's stack and every asyncio task's.

A worker that stops answering while its threads all sit idle in `select` is waiting on a
coroutine that never completes, and only the task stacks say which. mode's Worker answers
SIGUSR1 with its own dump, which also prints every frame's local variables (a signing key
or a bearer token among them would reach the log), and SIGUSR2 with a debugger prompt that
stops the event loop for good. The worker installs this one instead for both: file, line
and code of each frame, never a value.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from types import FrameType
from typing import IO

__all__ = ["DUMP_END", "DUMP_START", "dump_stacks"]

DUMP_START = "==== gatepass stack dump: threads ===="
DUMP_END = "==== end of stack dump ===="


def dump_stacks(out: IO[str], loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Write every thread's stack, then the stack of every task of `loop`, to `out`."""
    names = {t.ident: t.name for t in threading.enumerate()}
    lines = [DUMP_START]
    for ident, frame in sys._current_frames().items():
        lines.append(f"-- thread {names.get(ident, '?')} ({ident})")
        lines.extend(s.rstrip("\n") for s in traceback.format_stack(frame))
    if loop is not None:
        tasks = asyncio.all_tasks(loop)
        lines.append(f"==== gatepass stack dump: {len(tasks)} asyncio tasks ====")
        for task in sorted(tasks, key=lambda t: t.get_name()):
            lines.append(f"-- task {task.get_name()}: {_coro_name(task)}")
            frames, waiting = _chain(task)
            if not frames:
                lines.append("   (no frames: not started or done)")
            summary = traceback.StackSummary.extract(
                ((f, f.f_lineno) for f in frames), capture_locals=False)
            lines.extend(s.rstrip("\n") for s in summary.format())
            if waiting:
                lines.append(f"   awaiting: {waiting}")
    lines.append(DUMP_END)
    out.write("\n".join(lines) + "\n")
    out.flush()


def _coro_name(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", type(coro).__name__)


def _chain(task: asyncio.Task[object]) -> tuple[list[FrameType], str]:
    """The frames of the task's coroutine and of every coroutine it awaits, outermost first
    (`Task.get_stack` gives only the outermost of a suspended task), and the type of what
    the innermost awaits (by type only: a future's repr may show a value)."""
    frames: list[FrameType] = []
    node: object = task.get_coro()
    while node is not None:
        frame = getattr(node, "cr_frame", None) or getattr(node, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        awaited = getattr(node, "cr_await", None) or getattr(node, "gi_yieldfrom", None)
        if awaited is None:
            return frames, ""
        if not (hasattr(awaited, "cr_frame") or hasattr(awaited, "gi_frame")):
            return frames, type(awaited).__qualname__
        node = awaited
    return frames, ""
