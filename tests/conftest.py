"""Project-wide fixtures: hypothesis profiles, a private MQTT broker, PostgreSQL;
the per-test timeout's backstop.

Under CI=true a missing broker or database is a failure, never a skip: CI has
both, so a skip there would hide a broken setup.

Every test has a timeout (pytest-timeout, pyproject: 120 s unless the test is
marked `@pytest.mark.timeout(S)`). Its "signal" method fails the test where it
hangs and lets its fixtures and context managers clean up (brokers, boards,
temp dirs), and the run goes on. A test still running `BACKSTOP_S` after that
(a cleanup stuck too: e.g. a task that swallows its cancellation while
asyncio.run shuts down) is ended by pytest-timeout's "thread" method: every
stack dumped, then the run exits 1.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest
import pytest_timeout
from hypothesis import settings

from tests.support.broker import Broker, BrokerError, find_mosquitto, running_broker
from tests.support.db import PgSchema, find_dsn, throwaway_schema

# A shell starts a background job with SIGINT ignored, and children inherit that:
# the Ctrl-C tests need children that react as on a terminal, wherever pytest runs.
signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    print_blob=True,
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


# HYPOTHESIS_PROFILE picks any profile by hand (e.g. "ci" locally before a push).
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if in_ci() else "dev"))


def missing(reason: str) -> NoReturn:
    """Skip on a developer machine; fail under CI=true, where everything must be there."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[Broker]:
    """A private mosquitto on a free 127.0.0.1 port, shared by the session.

    Plain and anonymous (``insecure``): the head-end's logic under test, not
    the broker's security, which tests/hil/test_m20_t02_broker.py proves.
    Has .host, .port, .url and restart(); a test that stops it must restore it.
    """
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    try:
        with running_broker(insecure=True) as broker:
            yield broker
    except BrokerError as e:
        missing(str(e))


@pytest.fixture
def mqtt_broker_private() -> Iterator[Broker]:
    """A broker of the test's own, for outage tests that must not disturb others."""
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    with running_broker(insecure=True) as broker:
        yield broker


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """DSN of the test PostgreSQL database ($AMI_TEST_PG_DSN overrides)."""
    dsn, why = find_dsn()
    if dsn is None:
        missing(why)
    return dsn


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[PgSchema]:
    """A fresh schema, dropped after the test; unpacks as (dsn, schema_name)."""
    with throwaway_schema(pg_dsn) as schema:
        yield schema


BACKSTOP_S = 30
_backstop = pytest.StashKey[threading.Timer]()


@pytest.hookimpl
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Arm the backstop; returns None, so pytest-timeout arms its own timer as well."""

    def stuck() -> None:
        print(
            f"\n{item.nodeid}: still running {BACKSTOP_S} s after its {settings.timeout} s "
            "timeout (its cleanup hangs too): stacks follow, then the run stops",
            file=sys.stderr,
        )
        pytest_timeout.timeout_timer(item, settings)

    timer = threading.Timer(settings.timeout + BACKSTOP_S, stuck)
    timer.daemon = True
    timer.start()
    item.stash[_backstop] = timer


@pytest.hookimpl
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    timer = item.stash.get(_backstop, None)
    if timer is not None:
        timer.cancel()


# Under pytest-xdist (`-n 2 --dist loadgroup`, as `make test` runs), the rigs (broker,
# head-end and boards on MicroPython, on simulated time) run one at a time on one
# worker, so two never fight over the cores; the rest spreads over both workers.
RIG_PATHS = ("tests/hil/", "tests/test_demo.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(RIG_PATHS):
            item.add_marker(pytest.mark.xdist_group("rig"))
