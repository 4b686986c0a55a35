"""Project-wide fixtures: hypothesis profiles, a private MQTT broker, PostgreSQL.

Under CI=true a missing broker or database is a failure, never a skip: CI has
both, so a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest
from hypothesis import settings

from tests.support.broker import Broker, BrokerError, find_mosquitto, running_broker
from tests.support.db import PgSchema, find_dsn, throwaway_schema

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

    Has .host, .port, .url and restart(); a test that stops it must restore it.
    """
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    try:
        with running_broker() as broker:
            yield broker
    except BrokerError as e:
        missing(str(e))


@pytest.fixture
def mqtt_broker_private() -> Iterator[Broker]:
    """A broker of the test's own, for outage tests that must not disturb others."""
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    with running_broker() as broker:
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
