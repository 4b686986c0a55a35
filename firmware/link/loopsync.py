# Event and ThreadSafeFlag of link/loop (asyncio's), in a module of their
# own: loaded on first use (`loop.Event`), as the virtual board uses neither.
import io

from micropython import const

from link import loop

_IN = const(1)  # select.POLLIN
_POLL = const(3)  # MP_STREAM_POLL: the ioctl select.poll asks


class Event:
    def __init__(self):
        self.state = False
        self.waiting = []  # the waiting tasks

    def is_set(self):
        return self.state

    def set(self):
        self.state = True
        for t in self.waiting:
            t.on = None
            loop._run.append(t)
        self.waiting.clear()

    def clear(self):
        self.state = False

    def wait(self):
        if not self.state:
            t = loop.cur_task
            self.waiting.append(t)
            t.on = self.waiting
            yield
        return True


class ThreadSafeFlag(io.IOBase):
    # set() from an interrupt allocates nothing: the loop polls the flag
    # like a stream (one waiter), and wait() clears it
    def __init__(self):
        self.state = 0

    def ioctl(self, req, flags):
        return flags & _IN if req == _POLL and self.state else 0

    def set(self):
        self.state = 1

    def wait(self):
        while not self.state:
            yield from loop.wait_io_event(self, 0)
        self.state = 0
