"""Micro-batching: concurrent requests gathered into one call, Triton-style.

An asyncio queue, a deadline on the monotonic clock and one future per request. A batch closes when
it has ``max_batch_size`` items or the oldest has waited ``max_wait_ms``. A bounded queue answers
``Overloaded`` (503) instead of queueing forever; a failing batch call fails every waiting request,
a result that is an exception fails its own request only, and a call that returns the wrong number
of results is treated as failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from service.errors import Overloaded

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        handle: Callable[[list[T]], Awaitable[list[R | Exception]]],
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._handle = handle
        self._max_batch = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue(max_queue)
        self._on_batch = on_batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(Overloaded("shutting down"))

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, fut))
        except asyncio.QueueFull:
            raise Overloaded(f"{self._queue.maxsize} requests already waiting; retry shortly") from None
        return await fut

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        while len(batch) < self._max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())  # already waiting: no reason to leave them behind
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]  # client gone: skip
            if not live:
                continue
            if self._on_batch:
                self._on_batch(len(live))
            try:
                results = await self._handle([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(
                        f"batch handler returned {len(results)} results for {len(live)} inputs"
                    )
            except Exception as exc:  # every waiter gets the failure; the loop keeps running
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):  # this request alone failed
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
