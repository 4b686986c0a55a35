"""hil.wait: the one polling helper (async and blocking), its value and its errors."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from hil.wait import WaitTimeout, wait_until, wait_until_sync


def test_returns_the_first_truthy_value_plain_or_async() -> None:
    counts = itertools.count()

    def fourth() -> list[int]:
        n = next(counts)
        return [n] if n >= 3 else []

    assert wait_until_sync(fourth, 5, "the fourth poll", every=0.001) == [3]

    async def main() -> None:
        seen = itertools.count()

        async def probe() -> dict[str, int] | None:
            n = next(seen)
            return {"n": n} if n == 2 else None

        assert await wait_until(probe, 5, "n == 2", every=0.001) == {"n": 2}
        assert await wait_until(lambda: "now", 5, "at once") == "now"

    asyncio.run(main())


def test_timeout_names_what_was_awaited_and_the_last_value() -> None:
    seen = itertools.count()
    with pytest.raises(WaitTimeout) as e:
        wait_until_sync(lambda: next(seen) > 10**9 or [], 0.05, "the queue filled", every=0.01)
    assert str(e.value).startswith("the queue filled: not reached in 0.05 s (last: [])")
    assert e.value.what == "the queue filled" and e.value.last == []
    assert next(seen) >= 3  # polled through the wait, and once more at the deadline

    async def never() -> int:
        return 0

    with pytest.raises(WaitTimeout, match=r"job 7 closed: not reached in 0.05 s \(last: 0\)"):
        asyncio.run(wait_until(never, 0.05, "job 7 closed", every=0.01))


def port_never() -> str:
    raise ConnectionRefusedError("nothing listens")


def test_ignored_exceptions_mean_not_yet_others_propagate() -> None:
    calls = itertools.count()

    def port() -> str:
        if next(calls) < 2:
            raise ConnectionRefusedError("nothing listens")
        return "open"

    assert wait_until_sync(port, 5, "port open", every=0.001, ignore=(OSError,)) == "open"
    with pytest.raises(WaitTimeout, match=r"last: ConnectionRefusedError\('nothing listens'\)"):
        wait_until_sync(port_never, 0.02, "port open", every=0.005, ignore=(OSError,))
    with pytest.raises(ConnectionRefusedError):
        wait_until_sync(port_never, 5, "port open")  # not ignored: the first one ends the wait

    async def refused() -> str:
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(WaitTimeout, match="ConnectionRefusedError"):
        asyncio.run(wait_until(refused, 0.02, "port open", every=0.005, ignore=(OSError,)))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="expected > 0 s"):
        wait_until_sync(lambda: True, 0, "x")
    with pytest.raises(ValueError, match="expected > 0 s"):
        wait_until_sync(lambda: True, 1, "x", every=-1)

    async def probe() -> bool:
        return True

    with pytest.raises(TypeError, match="x: an async condition needs wait_until"):
        wait_until_sync(probe, 1, "x")  # type: ignore[arg-type]
