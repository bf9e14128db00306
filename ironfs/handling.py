"""How a FUSE handler is wrapped: its request counted, and only FUSEError let
out (the adapter's ``fuse_error`` maps OS errors and quota refusals; anything
else is a bug and propagates)."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, NoReturn, ParamSpec, Protocol, TypeVar

#: Runs of a request after the first, when worth_retrying says it may now succeed.
RETRIES = 2

P = ParamSpec("P")
R = TypeVar("R")


class Adapter(Protocol):
    requests: Counter[str]  # FUSE requests by operation (metrics)

    def fuse_error(self, e: Exception) -> Exception:
        """The FUSEError for *e*, or *e* itself if it is a bug (not mapped)."""
        ...

    async def worth_retrying(self, e: Exception) -> bool:
        """Whether a request that raised *e* may now succeed (a cluster node
        obtained the grant it lacked): it is run once more."""
        ...


A = TypeVar("A", bound=Adapter)


def _reraise(adapter: Adapter, e: Exception) -> NoReturn:
    mapped = adapter.fuse_error(e)
    if mapped is e:
        raise e  # a bug: let it stop the daemon (the mount stays dead, never writable)
    raise mapped from None


def handler(fn: Callable[Concatenate[A, P], R]) -> Callable[Concatenate[A, P], Coroutine[Any, Any, R]]:
    """Wrap a synchronous handler body (no await: see fs.py's concurrency contract)."""
    op = fn.__name__

    async def wrapper(self: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.requests[op] += 1
        try:  # (no context manager: this runs for every request)
            return fn(self, *args, **kwargs)
        except Exception as e:
            if not await self.worth_retrying(e):
                _reraise(self, e)
        # The handler changed nothing when it raised: it runs from the start, once
        # per grant a growth may lack (its bucket's, then its account's).
        for attempt in range(RETRIES):
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:
                if attempt == RETRIES - 1 or not await self.worth_retrying(e):
                    _reraise(self, e)
        raise AssertionError("unreachable")
    functools.update_wrapper(wrapper, fn)
    return wrapper


def async_handler(fn: Callable[Concatenate[A, P], Coroutine[Any, Any, R]]
                  ) -> Callable[Concatenate[A, P], Coroutine[Any, Any, R]]:
    """The same for a handler that awaits (it waits for its own work; other
    requests are answered meanwhile)."""
    op = fn.__name__

    async def wrapper(self: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.requests[op] += 1
        try:
            return await fn(self, *args, **kwargs)
        except Exception as e:
            _reraise(self, e)
    functools.update_wrapper(wrapper, fn)
    return wrapper
