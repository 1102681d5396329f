"""
Single-flight within one event loop: concurrent tasks with one key share one
execution.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["AsyncSingleFlight"]

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("cancelled", "done", "error", "value")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.cancelled = False


class AsyncSingleFlight(Generic[T]):
    """
    Runs at most one coroutine per key at a time, within one event loop.

    The first task for a key (the leader) runs the function; tasks that
    arrive while it runs wait and receive the leader's return value or its
    exception. When the leader is cancelled, its waiters do not fail with
    it: the first of them to resume becomes the new leader and runs the
    function, the others wait for that one. A cancelled waiter leaves the
    leader running.
    """

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[T]] = {}

    async def run(
        self, key: Hashable, function: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """
        Run ``function`` unless a call with ``key`` is already running.

        Returns:
            The value, and whether it came from another task's execution.

        Raises:
            BaseException: whatever ``function`` raised, in the leader and in
                every task that waited for it, except a cancellation of the
                leader, which only the leader sees.
        """
        while True:
            call = self._calls.get(key)
            if call is None:
                return await self._lead(key, function), False
            await call.done.wait()
            if call.cancelled:
                continue
            if call.error is not None:
                raise call.error
            return call.value, True  # type: ignore[return-value]  # set by the leader

    async def _lead(self, key: Hashable, function: Callable[[], Awaitable[T]]) -> T:
        call: _Call[T] = _Call()
        self._calls[key] = call
        try:
            call.value = await function()
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        except BaseException as error:
            call.error = error
            raise
        finally:
            del self._calls[key]
            call.done.set()
        return call.value
