# link/loop, the firmware's scheduler (asyncio's subset), on MicroPython only:
# its awaitables are generators, which CPython's await does not take.

from link import loop  # MicroPython only: tests/firmware/conftest.py keeps it from CPython

_DEADLINE_MS = 5000  # a test that waits longer than this has failed


def _run(coro):
    from time import ticks_diff, ticks_ms

    t0 = ticks_ms()

    async def guard():
        task = loop.create_task(coro)
        while task.coro is not None:
            assert ticks_diff(ticks_ms(), t0) < _DEADLINE_MS, "deadline"
            await loop.sleep_ms(5)

    loop.run(guard())


def test_tasks_run_in_creation_order_and_interleave_at_each_yield():
    out = []

    async def worker(name):
        for i in range(3):
            out.append((name, i))
            await loop.sleep_ms(0)

    async def main():
        a = loop.create_task(worker("a"))
        b = loop.create_task(worker("b"))
        while a.coro is not None or b.coro is not None:
            await loop.sleep_ms(1)

    _run(main())
    assert out == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_sleepers_wake_in_deadline_order_not_start_order():
    out = []

    async def sleeper(ms):
        await loop.sleep_ms(ms)
        out.append(ms)

    async def main():
        ts = [loop.create_task(sleeper(ms)) for ms in (60, 20, 40, 0)]
        while any(t.coro is not None for t in ts):
            await loop.sleep_ms(5)

    _run(main())
    assert out == [0, 20, 40, 60]


def test_run_returns_the_main_coroutine_value_and_current_task_is_its_task():
    seen = []

    async def main():
        seen.append(loop.current_task())
        await loop.sleep_ms(1)
        return 42

    assert loop.run(main()) == 42
    assert isinstance(seen[0], loop.Task)


def test_cancel_throws_cancelled_error_into_a_sleeping_task_at_once():
    out = []

    async def victim():
        try:
            await loop.sleep(60)
            out.append("slept")
        except loop.CancelledError:
            out.append("cancelled")
            raise

    async def main():
        t = loop.create_task(victim())
        await loop.sleep_ms(10)
        assert t.cancel() is True
        await loop.sleep_ms(0)
        await loop.sleep_ms(0)
        out.append("done" if t.coro is None else "running")
        assert t.cancel() is False  # done: nothing to cancel

    _run(main())
    assert out == ["cancelled", "done"]


def test_a_timeout_as_the_firmware_does_it_a_watchdog_task_cancels_a_stuck_read():
    # the MQTT pinger's pattern: no wait_for, a task that cancels the reader
    out = []

    async def silent(reader, writer):
        await loop.sleep(60)  # never answers

    async def watchdog(task, ms):
        await loop.sleep_ms(ms)
        task.cancel()

    async def main():
        server = await loop.start_server(silent, "127.0.0.1", 18763)
        r, w = await loop.open_connection("127.0.0.1", 18763)
        me = loop.current_task()
        loop.create_task(watchdog(me, 50))
        try:
            await r.readexactly(1)
            out.append("read")
        except loop.CancelledError:
            out.append("timed out")
        w.close()
        server.cancel()

    _run(main())
    assert out == ["timed out"]


def test_m18_wait_for_ms_returns_the_read_or_none_at_the_deadline():
    # the optical port's inter-character and idle timeouts (main.serve_optical)
    out = []

    async def talker(reader, writer):
        await loop.sleep_ms(80)  # silent past the first deadline, then one byte
        writer.write(b"x")
        await writer.drain()
        await loop.sleep(60)

    async def main():
        server = await loop.start_server(talker, "127.0.0.1", 18765)
        r, w = await loop.open_connection("127.0.0.1", 18765)
        buf = bytearray(4)
        out.append(await loop.wait_for_ms(r.readinto(buf), 30))  # None: timed out
        out.append(await loop.wait_for_ms(r.readinto(buf), 2000))  # 1 byte
        out.append(bytes(buf[:1]))
        w.close()
        server.cancel()

    _run(main())
    assert out == [None, 1, b"x"]


def test_event_wakes_every_waiter_and_stays_set_until_cleared():
    ev = loop.Event()
    out = []

    async def waiter(n):
        assert await ev.wait() is True
        out.append(n)

    async def main():
        ts = [loop.create_task(waiter(n)) for n in (1, 2)]
        await loop.sleep_ms(10)
        assert out == [] and not ev.is_set()
        ev.set()
        while any(t.coro is not None for t in ts):
            await loop.sleep_ms(1)
        assert ev.is_set()
        await ev.wait()  # set: returns at once
        ev.clear()
        assert not ev.is_set()

    _run(main())
    assert out == [1, 2]


def test_thread_safe_flag_wakes_its_waiter_and_clears():
    flag = loop.ThreadSafeFlag()
    out = []

    async def waiter():
        await flag.wait()
        out.append("woke")

    async def main():
        t = loop.create_task(waiter())
        await loop.sleep_ms(30)
        out.append("waiting" if t.coro is not None else "early")
        flag.set()  # as an interrupt handler would
        while t.coro is not None:
            await loop.sleep_ms(1)
        assert flag.state == 0

    _run(main())
    assert out == ["waiting", "woke"]


def test_tcp_echo_through_start_server_and_open_connection():
    port = 18761

    async def echo(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line.upper())
            await writer.drain()
        writer.close()

    async def main():
        server = await loop.start_server(echo, "127.0.0.1", port)
        r, w = await loop.open_connection("127.0.0.1", port)
        big = b"x" * 100000 + b"\n"  # more than a socket buffer: drain waits
        w.write(b"hello\n")
        w.write(big)
        await w.drain()
        assert await r.readline() == b"HELLO\n"
        assert await r.readexactly(len(big)) == big.upper()
        w.write(b"ab\n")
        await w.drain()
        buf = bytearray(8)
        n = await r.readinto(buf)
        assert bytes(buf[:n]) == b"AB\n"[:n] and n > 0
        w.close()
        await w.wait_closed()
        server.cancel()

    _run(main())


def test_a_task_cannot_cancel_itself_as_in_asyncio():
    out = []

    async def main():
        try:
            loop.current_task().cancel()
        except RuntimeError:
            out.append("refused")
        await loop.sleep_ms(1)  # and it goes on
        out.append("went on")

    _run(main())
    assert out == ["refused", "went on"]


def test_a_task_exception_is_printed_and_the_others_go_on():
    out = []

    async def bad():
        raise ValueError("boom")

    async def main():
        t = loop.create_task(bad())
        await loop.sleep_ms(5)
        out.append(t.coro is None)

    _run(main())
    assert out == [True]


def test_open_connection_to_a_closed_port_fails_with_oserror():
    async def main():
        r, w = await loop.open_connection("127.0.0.1", 18762)
        try:
            w.write(b"x")
            await w.drain()
            await r.readexactly(1)
        except (OSError, EOFError):
            return "refused"
        return "connected"

    assert loop.run(main()) == "refused"
