"""PostgreSQL for the tests: the server at RECSYS_TEST_POSTGRES (default 127.0.0.1:5432, user
postgres), a fresh database per fixture, dropped afterwards.

Never skipped: when the server is not there the fixture errors and says how to start it.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

SERVER = os.environ.get("RECSYS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def admin_connect() -> "object":
    """An autocommit psycopg connection to the server's ``postgres`` database."""
    import psycopg

    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {SERVER} ({exc}); start it (e.g. 'service postgresql start') "
            "or point RECSYS_TEST_POSTGRES at one (trust auth, a user that may CREATE DATABASE)"
        ) from exc


def create_database(prefix: str) -> str:
    """Create a database with a fresh name; returns its URI."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin_connect() as con:  # type: ignore[attr-defined]
        con.execute(f'CREATE DATABASE "{name}"')
    return f"{SERVER}/{name}"


def drop_database(uri: str) -> None:
    name = uri.rsplit("/", 1)[1]
    with admin_connect() as con:  # type: ignore[attr-defined]
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """URI of a new, empty database on the test server (dropped after the test)."""
    uri = create_database("recsys_test")
    try:
        yield uri
    finally:
        drop_database(uri)
