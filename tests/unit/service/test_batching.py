"""The micro-batcher: gathers concurrent requests, bounds its queue, fails loudly and for everyone."""

from __future__ import annotations

import asyncio

import pytest

from service.batching import MicroBatcher
from service.errors import Overloaded


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call() -> None:
    calls: list[int] = []

    async def handle(items: list[int]) -> list[int]:
        calls.append(len(items))
        return [i * 2 for i in items]

    async def go() -> list[int]:
        b = MicroBatcher(handle, max_batch_size=64, max_wait_ms=20, max_queue=100)
        b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(10)))
        await b.stop()
        return list(out)

    assert _run(go()) == [i * 2 for i in range(10)]
    assert calls == [10]


def test_max_batch_size_splits() -> None:
    calls: list[int] = []

    async def handle(items: list[int]) -> list[int]:
        calls.append(len(items))
        return items

    async def go() -> None:
        b = MicroBatcher(handle, max_batch_size=4, max_wait_ms=20, max_queue=100)
        b.start()
        await asyncio.gather(*(b.submit(i) for i in range(10)))
        await b.stop()

    _run(go())
    assert calls == [4, 4, 2]


def test_full_queue_is_overloaded_not_a_hang() -> None:
    release = asyncio.Event

    async def go() -> None:
        gate = release()

        async def handle(items: list[int]) -> list[int]:
            await gate.wait()
            return items

        b = MicroBatcher(handle, max_batch_size=1, max_wait_ms=0, max_queue=2)
        b.start()
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.01)  # the first is in the handler; two more fill the queue
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await b.submit(3)
        gate.set()
        assert await asyncio.gather(first, *queued) == [0, 1, 2]
        await b.stop()

    _run(go())


@pytest.mark.parametrize(("failure", "error"), [("raise", ValueError), ("short", RuntimeError)])
def test_failure_reaches_every_waiter_and_the_loop_survives(failure: str, error: type) -> None:
    calls = 0

    async def handle(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1 and failure == "raise":
            raise ValueError("engine exploded")
        if calls == 1:
            return items[:-1]  # wrong number of results
        return items

    async def go() -> None:
        b = MicroBatcher(handle, max_batch_size=8, max_wait_ms=10, max_queue=100)
        b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, error) for r in results), results
        assert await asyncio.wait_for(b.submit(7), 1) == 7
        await b.stop()

    _run(go())
