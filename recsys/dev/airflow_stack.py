"""A real Airflow 3 on this machine: ``recsys airflow up|down|status``.

The scheduler, dag-processor, triggerer and api-server (and, with CeleryExecutor, Celery
workers on Redis) run as background processes, each in its own session, with logs and pid
files under ``$RECSYS_HOME/airflow/stack/``. Metadata lives in PostgreSQL, in a database of
its own that is created when missing. The processes inherit the ``RECSYS_*`` environment,
so the DAG runs with the same settings as ``recsys run``.

Settings (environment): ``RECSYS_AIRFLOW_DB`` (SQLAlchemy URL of the metadata database,
default ``postgresql+psycopg2://postgres@127.0.0.1:5432/recsys_airflow``),
``RECSYS_AIRFLOW_EXECUTOR`` (``LocalExecutor`` or ``CeleryExecutor``),
``RECSYS_AIRFLOW_BROKER`` (default ``redis://127.0.0.1:6379/0``), ``RECSYS_AIRFLOW_WORKERS``
(Celery workers, default 2) and ``RECSYS_AIRFLOW_WORKER_CONCURRENCY`` (default 2),
``RECSYS_AIRFLOW_PORT`` (default 8080), ``RECSYS_AIRFLOW_USER``/``RECSYS_AIRFLOW_PASSWORD``
(the UI login; a password is generated and kept in the stack folder when none is given).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from recsys.config import DEFAULT_AIRFLOW_BROKER, DEFAULT_AIRFLOW_DB, Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


class StackError(RuntimeError):
    """The Airflow stack could not be started or stopped."""


@dataclass(frozen=True)
class StackConfig:
    """Where and how the stack runs; built from the settings by :meth:`of`."""

    home: Path
    db_url: str = DEFAULT_AIRFLOW_DB
    executor: str = "LocalExecutor"
    broker_url: str = DEFAULT_AIRFLOW_BROKER
    workers: int = 2
    worker_concurrency: int = 2
    port: int = 8080
    user: str = "admin"
    password: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings) -> StackConfig:
        """The stack the settings describe (``RECSYS_AIRFLOW_*``, checked by Settings)."""
        return cls(
            home=settings.airflow_home,
            db_url=settings.airflow_db,
            executor=settings.airflow_executor,
            broker_url=settings.airflow_broker,
            workers=settings.airflow_workers,
            worker_concurrency=settings.airflow_worker_concurrency,
            port=settings.airflow_port,
            user=settings.airflow_user,
            password=settings.airflow_password,
        )

    @property
    def stack_dir(self) -> Path:
        return self.home / "stack"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def components(self) -> list[tuple[str, list[str]]]:
        """(name, airflow arguments) of every process to start."""
        parts = [(name, [name]) for name in CORE_COMPONENTS]
        parts[0] = ("api-server", ["api-server", "--port", str(self.port), "--host", "127.0.0.1"])
        if self.executor == "CeleryExecutor":
            parts += [
                (f"celery-worker-{i}", ["celery", "worker", "--concurrency", str(self.worker_concurrency),
                                        "--celery-hostname", f"recsys-worker-{i}@%h"])
                for i in range(1, self.workers + 1)
            ]
        return parts


def login_password(config: StackConfig) -> str:
    """The UI password: the configured one, or one generated once and kept in the stack folder."""
    if config.password:
        return config.password
    path = config.stack_dir / "password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(12) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _secret(config: StackConfig, name: str) -> str:
    """A secret every process of the stack must share (JWT signing), kept in the stack folder."""
    path = config.stack_dir / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def stack_env(config: StackConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every process of the stack (and of ``airflow db migrate``)."""
    env = dict(os.environ if base is None else base)
    passwords = config.stack_dir / "passwords.json"
    passwords.parent.mkdir(parents=True, exist_ok=True)
    passwords.write_text(json.dumps({config.user: login_password(config)}) + "\n")
    passwords.chmod(0o600)
    result_backend = "db+" + config.db_url
    env.update({
        "AIRFLOW_HOME": str(config.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__EXECUTOR": config.executor,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": config.db_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{config.base_url}/execution/",
        "AIRFLOW__API__BASE_URL": config.base_url,
        "AIRFLOW__API__PORT": str(config.port),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(config, "jwt-secret"),
        "AIRFLOW__API__SECRET_KEY": _secret(config, "api-secret"),
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{config.user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CELERY__BROKER_URL": config.broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(config.home / "logs"),
        "OPENBLAS_NUM_THREADS": env.get("OPENBLAS_NUM_THREADS", "1"),
        # Tasks import recsys from this checkout, whatever the virtualenv points at.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")])),
    })
    env.update(config.extra_env)
    return env


def ensure_database(db_url: str) -> bool:
    """Create the metadata database when missing; returns True when it was created.

    Raises StackError when the server cannot be reached.
    """
    import psycopg

    parts = urlsplit(db_url.replace("+psycopg2", "").replace("+psycopg", ""))
    name = parts.path.lstrip("/")
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as con:
            if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            con.execute(f'CREATE DATABASE "{name}"')  # an identifier cannot be bound
            return True
    except psycopg.OperationalError as exc:
        raise StackError(f"PostgreSQL for the Airflow metadata ({parts.netloc}) is not reachable: {exc}. "
                         "Start it or set RECSYS_AIRFLOW_DB") from exc


def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _pid_path(config: StackConfig, name: str) -> Path:
    return config.stack_dir / f"{name}.pid"


def running(config: StackConfig) -> dict[str, int]:
    """The stack's processes that are alive: {name: pid}."""
    alive: dict[str, int] = {}
    for path in sorted(config.stack_dir.glob("*.pid")):
        pid = int(path.read_text().strip() or 0)
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that exited: reap it
                path.unlink(missing_ok=True)
                continue
        except ChildProcessError:
            pass  # started by another process (an earlier 'recsys airflow up')
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            path.unlink(missing_ok=True)
            continue
        alive[path.stem] = pid
    return alive


def up(config: StackConfig, timeout: float = 180.0) -> dict[str, Any]:
    """Start the stack (migrating the metadata DB first); returns the UI address and login.

    Idempotent: components already running are left alone. Raises StackError when a
    component dies or the api-server does not answer within ``timeout`` seconds.
    """
    config.stack_dir.mkdir(parents=True, exist_ok=True)
    env = stack_env(config)
    created = ensure_database(config.db_url)
    started = time.perf_counter()
    done = subprocess.run([_airflow(), "db", "migrate"], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"'airflow db migrate' failed ({done.returncode}):\n{done.stderr[-3000:]}")
    log.info("metadata database %s %s and migrated in %.1f s", config.db_url.rsplit("/", 1)[-1],
             "created" if created else "found", time.perf_counter() - started)
    # The publish shards run in an Airflow pool; a scheduler never starts tasks of a missing pool.
    done = subprocess.run(
        [sys.executable, "-m", "recsys.dev.cli", "pool"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise StackError(f"creating the publish pool failed ({done.returncode}):\n{done.stderr[-3000:]}")
    log.info("%s", done.stdout.strip())
    alive = running(config)
    for name, args in config.components():
        if name in alive:
            continue
        log_path = config.stack_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                [_airflow(), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        _pid_path(config, name).write_text(f"{process.pid}\n")
        log.info("started %s (pid %d), log %s", name, process.pid, log_path)
    wait_until_healthy(config, timeout)
    return {
        "url": config.base_url,
        "user": config.user,
        "password": login_password(config),
        "executor": config.executor,
        "logs": str(config.stack_dir),
        "processes": running(config),
    }


def wait_until_healthy(config: StackConfig, timeout: float) -> None:
    """Wait for the api-server to answer and every component to be alive; raises StackError."""
    deadline = time.monotonic() + timeout
    names = [name for name, _ in config.components()]
    last = ""
    while time.monotonic() < deadline:
        alive = running(config)
        dead = [n for n in names if n not in alive]
        if dead:
            tail = "\n".join(
                f"--- {n}.log ---\n" + _tail(config.stack_dir / f"{n}.log") for n in dead
            )
            raise StackError(f"Airflow component(s) {dead} exited; see {config.stack_dir}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{config.base_url}/api/v2/monitor/health", timeout=5) as response:
                health = json.load(response)
            if health.get("metadatabase", {}).get("status") == "healthy":
                return
            last = json.dumps(health)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(2)
    raise StackError(f"the api-server did not become healthy at {config.base_url} within {timeout:.0f} s ({last}); "
                     f"see {config.stack_dir}/api-server.log")


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def down(config: StackConfig, timeout: float = 30.0) -> list[str]:
    """Stop the stack's processes (SIGTERM to each one's session, SIGKILL after ``timeout``).

    Returns the names stopped. Only processes whose pid files this stack wrote are touched.
    """
    alive = running(config)
    for _name, pid in alive.items():
        try:
            os.killpg(pid, signal.SIGTERM)  # each component leads its own session (start_new_session)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running(config):
        time.sleep(0.5)
    for name, pid in running(config).items():
        log.warning("%s (pid %d) did not stop in %.0f s: killing it", name, pid, timeout)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in alive:
        _pid_path(config, name).unlink(missing_ok=True)
    return sorted(alive)


class ApiClient:
    """The Airflow public REST API (v2) with a JWT from the simple auth manager."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = self._token(user, password)

    def _token(self, user: str, password: str) -> str:
        body = self._send("POST", "/auth/token", {"username": user, "password": password}, auth=False)
        return str(body["access_token"])

    def _send(self, method: str, path: str, payload: Any = None, auth: bool = True) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise StackError(f"{method} {path} -> {exc.code}: {exc.read().decode(errors='replace')[:1000]}") from exc
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self._send("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        return self._send("POST", path, payload)

    def patch(self, path: str, payload: Any) -> Any:
        return self._send("PATCH", path, payload)


# --------------------------------------------------------------------------- command line


def cmd_airflow(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    config = StackConfig.of(settings)
    if args.action == "up":
        info = up(config, timeout=args.timeout)
        print(f"Airflow 3 is up ({info['executor']}, metadata {config.db_url.rsplit('@', 1)[-1]})")
        print(f"  UI:     {info['url']}/dags/recsys_nightly")
        print(f"  login:  {info['user']} / {info['password']}")
        print(f"  logs:   {info['logs']}/<component>.log; stop with 'recsys airflow down'")
        return 0
    if args.action == "down":
        stopped = down(config)
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    alive = running(config)
    for name, _ in config.components():
        print(f"  {name:<18} {'running, pid ' + str(alive[name]) if name in alive else 'stopped'}")
    return 0 if alive else 1


def add_airflow_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "airflow", help="a real Airflow 3 (PostgreSQL metadata) in the background: up, down, status"
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the api-server")
    parser.set_defaults(func=cmd_airflow)
