"""Shared fixtures: Airflow's test home (imported first) and a private DynamoDB Local.

DynamoDB Local is never skipped: when java or npm is missing the fixture errors with the
fix in its message, so a green run always means the real server was exercised.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsys.config import Settings
from recsys.dev import dynamodb_local

# Must come before anything imports airflow: Airflow reads its configuration once, at import.
from tests.fixtures_airflow import airflow_env  # noqa: F401  (re-exported as a fixture)

# Fixture modules of their own (store, recsys_env; postgres_database), for every test module.
pytest_plugins = ["tests.fixtures_store", "tests.fixtures_postgres"]


@pytest.fixture(scope="session")
def dynamodb_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a DynamoDB Local started for this test session (in memory, -sharedDb, free port).

    Tables live as long as the session: tests should use table names of their own.
    """
    jar_dir = dynamodb_local.ensure_jar(Settings.from_env().cache_dir)
    log_path: Path = tmp_path_factory.mktemp("dynamodb-local") / "dynamodb-local.log"
    last_error: Exception | None = None
    for _ in range(3):  # the free port can be taken between choosing it and java binding it
        port = dynamodb_local.free_port()
        endpoint = f"http://127.0.0.1:{port}"
        process = dynamodb_local.start_process(jar_dir, port, None, log_path)
        try:
            dynamodb_local.wait_until_ready(endpoint, 60, process=process, log_path=log_path)
        except dynamodb_local.DynamoDBLocalError as exc:
            last_error = exc
            _stop(process)
            continue
        try:
            yield endpoint
        finally:
            _stop(process)
        return
    raise RuntimeError(f"could not start DynamoDB Local for the tests: {last_error}")


def _stop(process: Any) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except Exception:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def dynamodb_client(dynamodb_endpoint: str) -> Any:
    """A boto3 DynamoDB client on the session's DynamoDB Local (dummy credentials)."""
    import boto3

    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=dynamodb_endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
