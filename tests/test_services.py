"""The tests' PostgreSQL and Redis: the configured server when one answers, else a private one
from a PyPI wheel that works over TCP, from other processes too, and is gone after the run.

Each test points the configured address at a closed port, so the private servers are
exercised even on a machine where the real ones run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis

from tests import services


def closed_port() -> int:
    """A port nothing listens on (free a moment ago)."""
    port = services.free_port()
    assert not services.answers("127.0.0.1", port)
    return port


def wait_until_gone(port: int, folder: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not services.answers("127.0.0.1", port, timeout=0.2) and not folder.exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"port {port} still answers or {folder} still exists after {timeout:.0f} s")


def test_a_closed_postgres_address_gets_a_private_server_that_other_processes_reach_over_tcp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configured = f"postgresql://postgres@127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RECSYS_TEST_POSTGRES", configured)

    server = services.postgres_server()

    assert server != configured and server.startswith("postgresql://postgres@127.0.0.1:")
    assert services.postgres_server() == server  # started once, then reused
    with psycopg.connect(f"{server}/postgres", connect_timeout=5) as con:
        assert con.execute("SELECT 1").fetchone() == (1,)
        version = con.execute("SHOW server_version_num").fetchone()
    assert version is not None and int(version[0]) >= 150000
    # What the Airflow processes do: another process, TCP, trust auth.
    probe = f"import psycopg; print(psycopg.connect({server + '/postgres'!r}).execute('SELECT 41 + 1').fetchone()[0])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "42"


def test_a_closed_redis_address_gets_a_private_server_that_answers_over_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = f"redis://127.0.0.1:{closed_port()}/0"
    monkeypatch.setenv("RECSYS_TEST_REDIS", configured)

    url = services.redis_url()

    assert url != configured and url.startswith("redis://127.0.0.1:")
    assert services.redis_url() == url
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.ping() is True
        assert client.set("recsys-test-key", b"value") is True
        assert client.get("recsys-test-key") == b"value"
    finally:
        client.close()


def test_an_address_that_answers_is_used_as_it_is() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert services.postgres_server_for(f"postgresql://postgres@127.0.0.1:{port}") == (
            f"postgresql://postgres@127.0.0.1:{port}"
        )
        assert services.redis_url_for(f"redis://127.0.0.1:{port}/0") == f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("start", [services.start_postgres, services.start_redis], ids=["postgres", "redis"])
def test_stop_ends_the_server_and_removes_its_folder(start: Callable[[], services.Service]) -> None:
    service = start()
    port = int(service.url.rsplit(":", 1)[1].split("/")[0])
    assert services.answers("127.0.0.1", port) and service.folder.is_dir()

    service.stop()

    assert service.process.poll() is not None
    wait_until_gone(port, service.folder, timeout=5)
    service.stop()  # a second stop (as at exit) is harmless


def test_postgres_runs_from_a_copy_of_its_programs_when_the_virtualenv_is_out_of_reach() -> None:
    # As root the server runs as nobody, who may not be able to enter the virtualenv's folder.
    service = services.start_postgres(copy_programs=True)
    try:
        assert isinstance(service.process.args, list)
        assert service.folder in Path(service.process.args[0]).parents
        with psycopg.connect(f"{service.url}/postgres", connect_timeout=5) as con:
            assert con.execute("SELECT 1").fetchone() == (1,)
    finally:
        service.stop()
    assert not service.folder.exists()


GUARDED = textwrap.dedent("""
    import json, sys, time
    from tests import services
    pg, rd = services.start_postgres(), services.start_redis()
    print(json.dumps({"urls": [pg.url, rd.url], "folders": [str(pg.folder), str(rd.folder)]}), flush=True)
    time.sleep(120)
""")


def test_the_servers_of_a_killed_test_process_are_stopped_and_their_folders_removed() -> None:
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-c", GUARDED], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
    finally:
        process.kill()  # no atexit: only the guard processes can clean up
        process.wait()
    for url, folder in zip(started["urls"], started["folders"]):
        wait_until_gone(int(url.rsplit(":", 1)[1].split("/")[0]), Path(folder))
