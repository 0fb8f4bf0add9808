"""Shared fixtures: Airflow's test home (imported first), a private DynamoDB Local and moto S3 server.

DynamoDB Local is never skipped: when java or npm is missing the fixture errors with the
fix in its message, so a green run always means the real server was exercised.
"""

from __future__ import annotations

# isort: off
# Must come before anything imports airflow: Airflow reads its configuration once, at import.
from tests.fixtures_airflow import airflow_env  # noqa: F401  (re-exported as a fixture)
# isort: on

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsys.config import Settings
from recsys.dev import dynamodb_local
from recsys.dev.datagen import generate_store
from tests.services import create_database, drop_database
from tests.support import ONE_MODEL, SMALL, SMALL_GRID


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


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto S3 server started for this test session (in memory, free port): the real HTTP
    protocol of S3, so boto3 talks to it exactly as it would to AWS or MinIO. Tests use buckets
    of their own."""
    import urllib.request

    moto_server = str(Path(sys.executable).with_name("moto_server"))
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    for _ in range(3):  # the free port can be taken between choosing it and moto binding it
        port = dynamodb_local.free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)],
                                       stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        else:
            process.kill()
            process.wait()
            continue
        try:
            yield endpoint
        finally:
            process.terminate()
            process.wait(timeout=10)
        return
    raise RuntimeError(f"moto_server did not start (pip install 'moto[server]'); see {log_path}: "
                       f"{log_path.read_text()[-2000:]}")


# --------------------------------------------------------------------------- the small store of the whole-DAG tests


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "demo"
    generate_store(out, **SMALL)  # type: ignore[arg-type]
    return out


@pytest.fixture
def recsys_env(store: Path, dynamodb_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    values = {
        "RECSYS_HOME": str(tmp_path / "home"),
        "RECSYS_SOURCE": str(store / "interactions"),
        "RECSYS_CATALOG": str(store / "catalog.parquet"),
        "RECSYS_WINDOW_DAYS": "28",
        "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
        "RECSYS_TABLE": f"recs_{uuid.uuid4().hex[:8]}",
        "RECSYS_VERIFY_SAMPLE": "300",
        "RECSYS_RECOMMEND_BATCH_USERS": "700",  # several batches of lists, each written as it is made
        # A day that has not landed fails the run within a minute instead of the 6 hours a night waits.
        "RECSYS_WAIT_TIMEOUT": "60s",
        "RECSYS_WAIT_POKE_SECONDS": "5",
        **SMALL_GRID,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


@pytest.fixture
def one_model_env(recsys_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in ONE_MODEL.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """URI of a new, empty database on the test server (dropped after the test)."""
    uri = create_database("recsys_test")
    try:
        yield uri
    finally:
        drop_database(uri)
