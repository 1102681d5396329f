"""
In-process single-flight: concurrent calls with one key share one execution.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        # Held by the leader until it finishes: a lock is cheaper to create
        # than an Event, and most calls have no follower to wake.
        self.done = threading.Lock()
        self.done.acquire()
        self.value: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    """
    Runs at most one function call per key at a time, across threads.

    The first caller for a key (the leader) runs the function; callers that
    arrive while it runs wait and receive the leader's return value or its
    exception. Once the leader finishes, the key is free again: nothing is
    cached here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call[T]] = {}

    def run(self, key: Hashable, function: Callable[[], T]) -> tuple[T, bool]:
        """
        Run ``function`` unless a call with ``key`` is already running.

        Returns:
            The value, and whether it came from another caller's execution.

        Raises:
            BaseException: whatever ``function`` raised, in the leader and in
                every caller that waited for it.
        """
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = _Call()
                self._calls[key] = call
        if not leader:
            with call.done:
                pass
            if call.error is not None:
                raise call.error
            return call.value, True  # type: ignore[return-value]  # set by the leader
        try:
            call.value = function()
        except BaseException as error:
            call.error = error
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.release()
        return call.value, False
