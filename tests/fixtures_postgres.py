"""PostgreSQL for the tests: a fresh database per fixture on the tests' server, dropped afterwards.

The server is ``tests.services.postgres_server()``: the one at RECSYS_TEST_POSTGRES (default
127.0.0.1:5432, user postgres) when it answers, else a private one started for the test run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.services import postgres_server


def admin_connect() -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit psycopg connection to the server's ``postgres`` database."""
    server = postgres_server()
    try:
        return psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL answers at {server} but refuses the tests ({exc}); RECSYS_TEST_POSTGRES must name a "
            "server with trust auth and a user that may CREATE DATABASE (or nothing, for a private one)"
        ) from exc


def create_database(prefix: str) -> str:
    """Create a database with a fresh name; returns its URI."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin_connect() as con:
        con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{postgres_server()}/{name}"


def drop_database(uri: str) -> None:
    name = uri.rsplit("/", 1)[1]
    with admin_connect() as con:
        con.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """URI of a new, empty database on the test server (dropped after the test)."""
    uri = create_database("recsys_test")
    try:
        yield uri
    finally:
        drop_database(uri)
