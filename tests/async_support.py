"""
Running AsyncAnalysisCache from sync tests: an event loop in a thread of its
own, and a facade with the sync methods of AnalysisCache.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from salesai_cache import AsyncAnalysisCache

T = TypeVar("T")


class LoopThread:
    """
    An event loop running in a daemon thread.

    Sync code, from any thread, runs coroutines on it with ``run``; tasks
    submitted from several threads at once run concurrently on the one loop,
    as the requests of an async web app do.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


class AsyncCacheFacade:
    """
    The sync methods of AnalysisCache, each running the method of the same
    name of an AsyncAnalysisCache on a LoopThread.
    """

    def __init__(self, cache: AsyncAnalysisCache[Any], loop: LoopThread) -> None:
        self.cache = cache
        self._loop = loop

    def get_or_compute(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self.cache.get_or_compute(*args, **kwargs))

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self.cache.refresh(*args, **kwargs))

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self.cache.invalidate(*args, **kwargs))

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self.cache.get(*args, **kwargs))

    def get_by_conversation(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self.cache.get_by_conversation(*args, **kwargs))

    def get_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self.cache.get_many(*args, **kwargs))

    def flush_pending(self) -> int:
        return self._loop.run(self.cache.flush_pending())

    def flush_stats(self) -> int:
        return self._loop.run(self.cache.flush_stats())

    def close(self) -> None:
        self._loop.run(self.cache.aclose())

    @property
    def pending_writes(self) -> int:
        return self.cache.pending_writes

    def stats(self) -> Any:
        return self.cache.stats()

    @property
    def store(self) -> Any:
        return self.cache.store
