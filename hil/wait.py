"""Wait for a condition, with a deadline: the one polling helper of the project.

    regs = await wait_until(lambda: sniffer.of("register"), 30, "a register frame")
    wait_until_sync(path.exists, 5, f"{path} written")

A caller states *what* must become true and how long it may take, never how
fast: the condition is polled every ``every`` s until it returns something
truthy (that value is returned), and once more at the deadline. Running out
raises `WaitTimeout` naming what was awaited and the last value seen, so a
failure says how far things got. `wait_until` is for coroutines (the
condition may be a plain or an async callable); `wait_until_sync` blocks the
calling thread. Both read the monotonic clock, so a wall-clock step cannot
shorten or stretch a wait.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


class WaitTimeout(RuntimeError):
    """A condition did not become true in time (the message says which, and the last value)."""

    def __init__(self, what: str, timeout: float, last: object) -> None:
        super().__init__(f"{what}: not reached in {timeout:g} s (last: {last!r})")
        self.what, self.timeout, self.last = what, timeout, last


def _check(timeout: float, every: float) -> None:
    if not timeout > 0 or not every > 0:
        raise ValueError(f"timeout and every: expected > 0 s, got {timeout!r} and {every!r}")


def _probe(
    condition: Callable[[], Any], ignore: tuple[type[BaseException], ...]
) -> tuple[Any, bool]:
    """(value, True), or (the exception, False) when ``condition`` raised one of ``ignore``."""
    try:
        return condition(), True
    except ignore as e:
        return e, False


@overload
async def wait_until(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float,
    what: str,
    every: float = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...
@overload
async def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    every: float = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...
async def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``condition`` until it returns something truthy; return that value.

    Args:
        condition: a callable, plain or async, returning a falsy value while not yet.
        timeout: real seconds from now to give up after.
        what: the condition in words (in the error).
        every: real seconds between polls.
        ignore: exceptions that mean "not yet" (e.g. a port that does not listen
            yet); the last one is reported as the last value. Others propagate.

    Raises:
        WaitTimeout: nothing truthy before the deadline.
    """
    _check(timeout, every)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        last, ok = _probe(condition, ignore)
        if ok and inspect.isawaitable(last):
            try:
                last = await last
            except ignore as e:
                last, ok = e, False
        if ok and last:
            return last
        left = end - loop.time()
        if left <= 0:
            raise WaitTimeout(what, timeout, last)
        await asyncio.sleep(min(every, left))


def wait_until_sync(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    every: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """`wait_until` for code without an event loop: blocks the calling thread."""
    _check(timeout, every)
    end = time.monotonic() + timeout
    while True:
        last, ok = _probe(condition, ignore)
        if inspect.isawaitable(last):
            if inspect.iscoroutine(last):
                last.close()  # never awaited: no "was never awaited" warning on top
            raise TypeError(f"{what}: an async condition needs wait_until, not wait_until_sync")
        if ok and last:
            result: T = last
            return result
        left = end - time.monotonic()
        if left <= 0:
            raise WaitTimeout(what, timeout, last)
        time.sleep(min(every, left))
