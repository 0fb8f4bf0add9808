"""Take docs/airflow-grid.png: the recsys_nightly grid in a real Airflow 3, seen by headless Chromium.

    PYTHONPATH=. .venv/bin/python scripts/screenshot.py [--out docs/airflow-grid.png] [--keep]

Starts everything under ``$RECSYS_HOME`` (default ``var/screenshot``): a small demo store,
DynamoDB Local, the Airflow stack (``recsys airflow up``, PostgreSQL metadata in the database
``recsys_airflow_screenshot``); runs the DAG for the store's last day and backfills the two
days before it through the REST API; then logs in to the UI in headless Chromium (Debian's
``chromium``; ``apt-get install -y chromium``) through the Chrome DevTools protocol, opens the
DAG's grid and saves a PNG. The stack is stopped afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RECSYS_HOME", str(REPO / "var" / "screenshot"))
os.environ.setdefault("RECSYS_AIRFLOW_DB", "postgresql+psycopg2://postgres@127.0.0.1:5432/recsys_airflow_screenshot")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from recsys.config import Settings  # noqa: E402
from recsys.dev.airflow_stack import ApiClient, StackConfig, down, login_password, up  # noqa: E402
from recsys.dev.dynamodb_local import free_port  # noqa: E402

log = logging.getLogger("screenshot")
DAG_ID = "recsys_nightly"
END = dt.date(2026, 5, 31)
STORE = dict(users=3_000, items=300, events=60_000, days=35, seed=11, end_date=END, categories=10)
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1600,900",
]


def prepare_data(settings: Settings) -> None:
    """The demo store and DynamoDB Local the DAG runs against."""
    from recsys.dev import dynamodb_local
    from recsys.dev.datagen import generate_store

    if not (settings.demo_dir / "interactions").exists():
        log.info("generating a small store in %s", settings.demo_dir)
        generate_store(settings.demo_dir, **STORE)  # type: ignore[arg-type]
    log.info("%s", dynamodb_local.start(settings))


def run_dag_runs(api: ApiClient, days_back: int = 2, timeout: float = 1800) -> None:
    """One run for END (it publishes) and a backfill of the days before it; waits for all."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            api.get(f"/api/v2/dags/{DAG_ID}")
            break
        except RuntimeError:
            time.sleep(3)
    api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    runs = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
    if not runs:
        api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": f"{END.isoformat()}T00:00:00Z"})
        first = END - dt.timedelta(days=days_back)
        api.post("/api/v2/backfills", {
            "dag_id": DAG_ID, "from_date": f"{first.isoformat()}T00:00:00Z",
            "to_date": f"{(END - dt.timedelta(days=1)).isoformat()}T00:00:00Z", "max_active_runs": 2,
        })
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
        states = [r["state"] for r in runs]
        log.info("runs: %s", states)
        if runs and all(s in ("success", "failed") for s in states):
            return
        time.sleep(10)
    raise RuntimeError(f"DAG runs not finished within {timeout:.0f} s")


class DevTools:
    """The smallest Chrome DevTools protocol client: send a command, wait for its answer."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024).__enter__()
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {expression!r} in the page")


def log_in(tab: DevTools, user: str, password: str) -> None:
    """Type the login into the form as a user would (real input events), then press Sign in."""
    for selector, text in (("input[type=text], input[name=username]", user), ("input[type=password]", password)):
        if not tab.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "if (!e) return false; e.focus(); return true; })()"
        ):
            raise RuntimeError(f"the login form has no {selector}")
        tab.call("Input.insertText", text=text)
    tab.evaluate("(document.querySelector('button[type=submit]') || [...document.querySelectorAll('button')]"
                 ".find(b => /sign in/i.test(b.textContent))).click()")


def screenshot(base_url: str, user: str, password: str, out: Path) -> None:
    """Log in through the UI's login form and save the DAG page (grid view) as a PNG."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("chromium not found: apt-get install -y chromium")
    profile = Path(tempfile.mkdtemp(prefix="recsys-chromium-"))
    port = free_port()
    browser = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    pages = [p for p in json.load(response) if p.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium's DevTools endpoint did not come up")
            time.sleep(0.5)
        tab = DevTools(pages[0]["webSocketDebuggerUrl"])
        tab.call("Page.enable")
        tab.call("Emulation.setDeviceMetricsOverride", width=1600, height=900, deviceScaleFactor=1, mobile=False)
        tab.call("Page.navigate", url=f"{base_url}/dags/{DAG_ID}")
        tab.wait_for("document.querySelector('input[type=password]') !== null", 60)
        log_in(tab, user, password)
        try:
            tab.wait_for("!document.querySelector('input[type=password]')", 60)
            tab.call("Page.navigate", url=f"{base_url}/dags/{DAG_ID}")
            tab.wait_for(
                f"document.body.innerText.includes('{DAG_ID}') && document.body.innerText.includes('extract')", 90
            )
        except RuntimeError:
            debug = out.with_suffix(".failed.png")
            debug.write_bytes(base64.b64decode(tab.call("Page.captureScreenshot", format="png")["data"]))
            log.error(
                "page %s says: %s (screenshot %s)",
                tab.evaluate("location.href"),
                tab.evaluate("document.body.innerText")[:1000],
                debug,
            )
            raise
        time.sleep(5)  # let the grid's queries and fonts settle
        data = tab.call("Page.captureScreenshot", format="png")["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        log.info("saved %s (%d bytes)", out, out.stat().st_size)
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "airflow-grid.png")
    parser.add_argument("--keep", action="store_true", help="leave the Airflow stack running")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "RECSYS_DYNAMODB_ENDPOINT" not in os.environ:  # a DynamoDB Local of its own, stopped at the end
        os.environ["RECSYS_DYNAMODB_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    for key, value in {
        "RECSYS_WINDOW_DAYS": "28", "RECSYS_TUNING_GRID": "factors=16,32;alpha=10", "RECSYS_GATE_MIN_LIFT": "0",
        "RECSYS_TABLE": "recsys_screenshot",
    }.items():
        os.environ.setdefault(key, value)
    settings = Settings.from_env()  # the source is the demo store under RECSYS_HOME
    prepare_data(settings)
    config = StackConfig.from_env(settings)
    if "RECSYS_AIRFLOW_PORT" not in os.environ:
        config = StackConfig(**{**config.__dict__, "port": free_port()})
    config = StackConfig(**{**config.__dict__, "extra_env": {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}})
    info = up(config)
    try:
        api = ApiClient(info["url"], info["user"], info["password"])
        run_dag_runs(api)
        screenshot(info["url"], info["user"], login_password(config), args.out)
    finally:
        if not args.keep:
            from recsys.dev import dynamodb_local

            down(config)
            dynamodb_local.stop(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
