"""The SIGUSR1 dump names where every thread and task waits, and never a value."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable

from gatepass.worker.stackdump import dump_stacks

SECRET = "MC4CAQAwBQYDK2VwBCIEIKeyMaterialThatMustNeverBeLogged"


async def _parked_on(event: asyncio.Event) -> None:
    signing_key = SECRET  # a local the dump must not print
    await event.wait()
    del signing_key


async def _outer(event: asyncio.Event) -> None:
    await _parked_on(event)


def _dump_while_parked(parked: Callable[[asyncio.Event], Awaitable[None]]) -> str:
    """The dump taken while a task named parked-one waits in `parked`."""
    async def main() -> str:
        event = asyncio.Event()
        task = asyncio.create_task(parked(event), name="parked-one")
        await asyncio.sleep(0)
        out = io.StringIO()
        dump_stacks(out, asyncio.get_running_loop())
        event.set()
        await task
        return out.getvalue()

    return asyncio.run(main())


def test_a_parked_task_is_shown_down_to_the_await_it_sits_on() -> None:
    text = _dump_while_parked(_outer)
    assert "-- task parked-one: _outer" in text
    chunk = text.split("-- task parked-one")[1].split("-- task")[0]
    assert "in _outer" in chunk and "in _parked_on" in chunk
    assert "await event.wait()" in chunk
    assert "awaiting:" in chunk
    assert "-- thread MainThread" in text


def test_no_local_value_reaches_the_dump() -> None:
    text = _dump_while_parked(_parked_on)
    assert "_parked_on" in text  # the frame is there...
    assert SECRET not in text  # ...its values are not


def test_threads_only_without_a_loop() -> None:
    out = io.StringIO()
    dump_stacks(out)
    assert "asyncio tasks" not in out.getvalue()
    assert "test_threads_only_without_a_loop" in out.getvalue()
