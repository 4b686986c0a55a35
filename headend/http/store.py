"""The API's access to the store: every request that does store work runs in a worker
thread (sync endpoints), and each worker thread has its own `Headend` connection
(`Pool`), so the service's event loop is never blocked and no connection is used by
two threads at once. A connection that failed is dropped and opened again next time."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from starlette.exceptions import HTTPException

from headend.api import Headend
from headend.config import Config
from headend.errors import InvalidData, UnknownMeter

#: zero-argument callable giving a context manager that yields one `Headend`
Opener = Callable[[], AbstractContextManager[Headend]]

# errors of the caller's request, not of the connection: it stays
_CALLERS = (HTTPException, InvalidData, UnknownMeter)


def opener(config: Config) -> Opener:
    """A fresh connection each time (for a streamed body, which moves between threads)."""

    @contextmanager
    def db() -> Iterator[Headend]:
        he = Headend.open(config)
        try:
            yield he
        finally:
            he.close()

    return db


class Pool:
    """One connection per thread; the ``db`` callable of the app (and of part B's pages)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.local = threading.local()
        self.lock = threading.Lock()
        self.open: list[Headend] = []

    @contextmanager
    def __call__(self) -> Iterator[Headend]:
        he: Headend | None = getattr(self.local, "he", None)
        if he is None:
            he = Headend.open(self.config)
            self.local.he = he
            with self.lock:
                self.open.append(he)
        try:
            yield he
        except _CALLERS:
            raise
        except BaseException:
            self._drop(he)
            raise

    def _drop(self, he: Headend) -> None:
        self.local.he = None
        with self.lock:
            if he in self.open:
                self.open.remove(he)
        with contextlib.suppress(Exception):  # it failed already; a new one replaces it
            he.close()

    def close(self) -> None:
        """Close every connection (the app's shutdown)."""
        with self.lock:
            gone, self.open = self.open, []
        for he in gone:
            he.close()
