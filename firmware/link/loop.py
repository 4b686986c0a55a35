# The meter's scheduler: the part of asyncio the firmware uses, smaller.
#
# MicroPython's asyncio is frozen (code in ROM), but importing it builds
# ~4 KB of heap objects (its module, classes, functions, queues) plus ~1.7 KB
# for asyncio.stream; this module gives the same subset in far less
# (firmware README, "Heap"): run, create_task, current_task, Task.cancel,
# sleep/sleep_ms, Event, ThreadSafeFlag, start_server, open_connection (plain
# or TLS), StreamReader/StreamWriter (readinto, readexactly, readline, write,
# drain, close; no read(): the firmware reads none), CancelledError, TimeoutError.
#   from link import loop as asyncio
# A coroutine waits by parking its task in one place (`Task.on`: the sleep
# queue, an Event's waiters, or a stream in the poll map) and yielding; the
# loop runs ready tasks, wakes sleepers by deadline and pollers by
# select.poll. Sockets are non-blocking; a TLS socket is wrapped without
# handshake and reads/writes return None until the record is whole, as in
# asyncio/stream.py. A task's exception is printed, not fatal; SystemExit
# and KeyboardInterrupt end run(). MicroPython only (generators as awaitables).
import select
import time

from micropython import const

_IN = const(1)  # select.POLLIN
_OUT = const(4)  # select.POLLOUT
_BUSY_MS = const(10)  # a stream another task already waits on: look again then

# Names are asyncio's where they fit: those are interned in the binary already
# (static qstrs), a new name costs heap when the module loads.


class CancelledError(BaseException):
    pass


TimeoutError = OSError  # nothing here times out; `except` clauses name it

_run = []  # ready tasks, in order
_task_queue = []  # sleeping tasks, by deadline (their `on`)
_io_queue = {}  # stream -> [reading task, writing task]
poller = select.poll()
cur_task = None  # the running task


class Task:
    # Two attributes (each costs heap in every task): `coro`, None once done,
    # and `on`, what the task waits for: None (ready, in _run), a
    # CancelledError (ready, to be thrown in), an int (asleep in _task_queue
    # until that tick), a list (an Event's waiters), else a stream in _io_queue.
    def __init__(self, coro):
        self.coro = coro
        self.on = None

    def cancel(self):
        """Throw CancelledError into the task at its next step (now, if parked)."""
        if self.coro is None:
            return False
        if self is cur_task:
            raise RuntimeError  # as asyncio's: a task cannot cancel itself
        o = self.on
        if o is not None and not isinstance(o, CancelledError):  # parked
            if type(o) is int:
                _task_queue.remove(self)
            elif type(o) is list:
                o.remove(self)
            else:
                e = _io_queue[o]
                e[e.index(self)] = None
                _enqueue(o, e)
            _run.append(self)
        self.on = CancelledError()
        return True


def _enqueue(s, e):
    # poll `s` for what its waiters `e` want; forget it when none is left
    o = (_IN if e[0] else 0) | (_OUT if e[1] else 0)
    if o:
        poller.register(s, o)  # again: updates the mask
    else:
        del _io_queue[s]
        poller.unregister(s)


def wait_io_event(s, n):
    # park the running task until `s` is readable (n=0) or writable (n=1)
    e = _io_queue.get(s)
    if e is None:
        e = _io_queue[s] = [None, None]
    if e[n] is not None:  # another task waits there: yield, the caller retries
        yield from sleep_ms(_BUSY_MS)
        return
    e[n] = cur_task
    cur_task.on = s
    _enqueue(s, e)
    yield


def sleep_ms(t):
    o = cur_task
    o.on = t = time.ticks_add(time.ticks_ms(), t)
    n = 0
    q = _task_queue
    while n < len(q) and time.ticks_diff(q[n].on, t) <= 0:
        n += 1
    q.insert(n, o)
    yield


def sleep(t):
    return sleep_ms(t * 1000)


def create_task(coro):
    t = Task(coro)
    _run.append(t)
    return t


def current_task():
    return cur_task


def run(coro):
    """Run `coro` as a task, and the others meanwhile, until it returns."""
    global cur_task
    main = create_task(coro)
    q = _task_queue
    while main.coro is not None:
        dt = 0  # how long to wait for I/O: not at all while a task is ready
        if not _run:
            dt = max(0, time.ticks_diff(q[0].on, time.ticks_ms())) if q else -1
        if dt or _io_queue:
            for v in poller.ipoll(dt):
                s = v[0]
                e = _io_queue.get(s)
                if e is None:
                    poller.unregister(s)
                    continue
                for n in (0, 1):  # an error or hang-up wakes both
                    t = e[n]
                    if t is not None and v[1] & (_OUT if n else ~_OUT):
                        e[n] = t.on = None
                        _run.append(t)
                _enqueue(s, e)
        dt = time.ticks_ms()
        while q and time.ticks_diff(q[0].on, dt) <= 0:
            t = q.pop(0)
            t.on = None
            _run.append(t)
        for _ in range(len(_run)):
            t = cur_task = _run.pop(0)
            e = t.on
            t.on = None
            try:
                if e is None:
                    t.coro.send(None)
                else:
                    t.coro.throw(e)
            except StopIteration as r:
                t.coro = None
                if t is main:
                    return r.value
            except CancelledError:
                t.coro = None
            except Exception as e:
                t.coro = None
                if t is main:
                    raise
                import sys

                sys.print_exception(e)
            cur_task = None
    return None


async def wait_for_ms(aw, ms):
    """`aw`'s result, or None if it has not come within `ms` (then `aw` is
    cancelled). Unlike asyncio's, a timeout is a value, not TimeoutError: the
    loop's TimeoutError is OSError, which a broken link raises too."""
    box = []

    async def run():
        try:
            box.append(await aw)
        except BaseException as e:  # noqa: BLE001 - handed to the waiter below
            box.append(e)

    t = create_task(run())
    end = time.ticks_add(time.ticks_ms(), ms)
    while not box:
        left = time.ticks_diff(end, time.ticks_ms())
        if left <= 0:
            t.cancel()
            return None
        await sleep_ms(left if left < _BUSY_MS else _BUSY_MS)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def __getattr__(name):
    # Event, ThreadSafeFlag (link/loopsync): loaded on first use, as classes
    # cost heap and the virtual board uses neither
    if name[:6] == "Stream":  # StreamReader, StreamWriter
        return Stream
    from link import loopsync

    return getattr(loopsync, name)


class Stream:
    """Reader and writer in one, over a non-blocking socket, TLS socket or UART."""

    def __init__(self, s, e=None):
        self.s = s
        self.out_buf = b""  # written, not yet taken by the socket

    def readinto(self, buf):
        while True:
            yield from wait_io_event(self.s, 0)
            r = self.s.readinto(buf)
            if r is not None:
                return r

    def readexactly(self, n):
        r = b""
        while len(r) < n:
            yield from wait_io_event(self.s, 0)
            v = self.s.read(n - len(r))
            if v is not None:
                if not v:
                    raise EOFError
                r += v
        return r

    def readline(self):
        r = b""
        while not r.endswith(b"\n"):
            yield from wait_io_event(self.s, 0)
            v = self.s.readline()
            if v is not None:
                if not v:
                    break
                r += v
        return r

    def write(self, buf):
        if not self.out_buf:
            n = self.s.write(buf)
            if n == len(buf):
                return
            if n:
                buf = buf[n:]
        self.out_buf += buf

    def drain(self):
        if not self.out_buf:
            yield from sleep_ms(0)  # always yield: a write loop must not starve the rest
        while self.out_buf:
            yield from wait_io_event(self.s, 1)
            n = self.s.write(self.out_buf)
            if n:
                self.out_buf = self.out_buf[n:]

    wait_closed = drain  # close() drops the buffer: one yield

    def close(self):
        self.out_buf = b""
        self.s.close()


async def open_connection(host, port, ssl=None, server_hostname=None):
    """A TCP connection (ssl: an SSLContext, the handshake on the first
    read/write) as (reader, writer), one Stream."""
    import socket
    from errno import EINPROGRESS

    a = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(a[0], a[1], a[2])
    s.setblocking(False)
    try:
        s.connect(a[-1])
    except OSError as e:
        if e.errno != EINPROGRESS:
            raise
    if ssl:
        s = ssl.wrap_socket(s, server_hostname=server_hostname, do_handshake_on_connect=False)
        s.setblocking(False)
    e = Stream(s)
    await wait_io_event(s, 1)
    return e, e


async def start_server(cb, host, port, backlog=5):
    """Listen on host:port; each connection runs cb(stream, stream) as a task."""
    import socket

    a = socket.getaddrinfo(host, port)[0]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(a[-1])
    s.listen(backlog)
    s.setblocking(False)
    return create_task(_serve(s, cb))


async def _serve(s, cb):
    while True:
        await wait_io_event(s, 0)
        s2 = Stream(s.accept()[0])
        s2.s.setblocking(False)
        create_task(cb(s2, s2))
