"""The nightly report page and the Airflow plugin that serves it."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from recsys.config import Settings
from recsys.io import lake
from recsys.io.report import write_report

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "recsys_reports.py"


def metrics(ndcg: float, pop: float) -> dict:
    row = {"ndcg_at_k": ndcg, "map_at_k": ndcg / 2, "precision_at_k": 0.05, "recall_at_k": 0.3,
           "catalog_coverage": 0.4, "users_evaluated": 1234}
    base = {**row, "ndcg_at_k": pop, "map_at_k": pop / 2}
    grid = [
        {
            "params": {
                "model": "als",
                "factors": 32,
                "alpha": 2.0,
                "event_weights": {
                    "View": 1.0,
                    "AddToCart": 4.0,
                    "ViewCart": 2.0,
                    "StartCheckout": 6.0,
                    "Purchase": 10.0,
                },
                "half_life_days": 14.0,
            },
            "ndcg_at_k": ndcg,
            "map_at_k": ndcg / 2,
            "precision_at_k": 0.05,
            "recall_at_k": 0.3,
            "catalog_coverage": 0.4,
            "seconds": 3.25,
        },
        {
            "params": {
                "model": "bpr",
                "factors": 64,
                "learning_rate": 0.01,
                "event_weights": {"View": 1.0, "Purchase": 0.0},
                "half_life_days": 0.0,
            },
            "ndcg_at_k": ndcg * 0.8,
            "map_at_k": ndcg / 3,
            "recall_at_k": 0.2,
        },
    ]
    return {"model": row, "popularity": base, "grid": grid, "holdout_users_cold": 10, "train_users": 5000,
            "train_items": 300, "train_nonzeros": 40000,
            "gate": {"required_over_popularity": pop * 1.05, "champion": None, "popularity_ndcg_at_k": pop}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"RECSYS_HOME": str(tmp_path)})


def test_report_shows_metrics_grid_and_history(settings: Settings) -> None:
    first, second = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    models = lake.partition_dir(settings.lake, "models", first)
    models.mkdir(parents=True)
    lake.write_json(models / "metrics.json", {"run_date": first.isoformat(), **metrics(0.20, 0.07)})
    page = write_report(settings, second, metrics(0.25, 0.08), model_version="2026-03-02-abc", gate_error=None)
    page = Path(page).read_text()
    assert "Quality gate passed" in page and "2026-03-02-abc" in page
    assert "<td>ndcg@20</td><td>0.2500</td><td>0.0800</td><td>3.12×</td>" in page
    assert page.count("<rect") == 2  # a bar per candidate
    # Every candidate with its family, weights and half-life, and all its metrics and seconds
    assert ("<code>model=als, factors=32, alpha=2.0, weights=configured, half_life=14</code></td>"
            "<td>0.2500</td><td>0.1250</td><td>0.0500</td><td>0.3000</td><td>0.4000</td><td>—</td><td>—</td><td>3.2</td>"
            ) in page  # a result without novelty and diversity (written before they were measured): dashes
    assert "<code>model=bpr, factors=64, learning_rate=0.01, weights=View:1 Purchase:0, half_life=0</code>" in page
    assert "<polyline" in page and "2026-03-01" in page  # the chart of past nights starts at the first


def test_report_lists_the_newest_refresh_runs_newest_first(settings: Settings) -> None:
    assert "No refresh run has written lists yet" in Path(
        write_report(settings, dt.date(2026, 3, 2), metrics(0.25, 0.08), model_version="v", gate_error=None)
    ).read_text()
    start = dt.datetime(2026, 3, 2, 1, tzinfo=dt.UTC)
    for hour in range(30):  # more than the report shows
        until = start + dt.timedelta(hours=hour)
        lake.write_lake_json(settings.lake, f"refresh/runs/{until:%Y-%m-%dT%H%M%SZ}.json", {
            "until": until.isoformat(), "served_run_date": "2026-03-01", "users": 1000 + hour, "new_users": hour,
            "kept_newer": 0, "new_rows": 5000 + hour, "quarantined": 2,
            "seconds": {"collect_events": 7.5, "score_active": 1.25, "publish_refresh": 20.0 + hour}})
    (Path(settings.lake) / "refresh" / "runs" / ".2026-03-03T120000Z.json.0a1b2c3d").write_text("{")  # half-written
    page = Path(write_report(settings, dt.date(2026, 3, 3), metrics(0.25, 0.08), model_version="v",
                             gate_error=None)).read_text()
    assert "Hourly refresh: the last runs" in page and "No refresh run" not in page
    newest = ("<tr><td>2026-03-03T06:00:00+00:00</td><td>2026-03-01</td><td>1,029</td><td>29</td><td>0</td>"
              "<td>2 of 5,029</td><td>7.5</td><td>1.2</td><td>49.0</td><td>57.8</td></tr>")
    assert newest in page
    shown = [line for line in page.split("<tr>") if "</td><td>2026-03-01</td>" in line]
    assert len(shown) == 24 and shown[0].startswith("<td>2026-03-03T06:00") and shown[-1].startswith(
        "<td>2026-03-02T07:00")


def test_failed_gate_report_says_why(settings: Settings) -> None:
    page = write_report(settings, dt.date(2026, 3, 2), metrics(0.05, 0.08), model_version=None,
                        gate_error="NDCG@20 0.0500 is below popularity's 0.0800")
    page = Path(page).read_text()
    assert "Quality gate FAILED: NDCG@20 0.0500 is below popularity&#x27;s 0.0800" in page


def test_plugin_declares_its_app_and_views() -> None:
    spec = importlib.util.spec_from_file_location("recsys_reports_plugin", PLUGIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.RecsysReportsPlugin
    assert plugin.fastapi_apps[0]["url_prefix"] == "/recsys"
    assert {v["destination"] for v in plugin.external_views} == {"nav", "dag"}


@pytest.fixture(scope="module")
def api_server(airflow_env: Path) -> Any:
    """The api-server's own app (``airflow api-server`` serves the same), with the plugins of
    plugins/ mounted and the simple auth manager of the test Airflow home."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    return TestClient(create_app("core"))


def admin_token(api: Any, airflow_home: Path) -> str:
    """A JWT from the auth manager's token endpoint (``POST /auth/token``), as the UI or a REST
    client gets one: the simple auth manager's generated password of ``admin``."""
    passwords = json.loads((airflow_home / "simple_auth_manager_passwords.json.generated").read_text())
    answer = api.post("/auth/token", json={"username": "admin", "password": passwords["admin"]})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["access_token"])


def test_plugin_needs_a_logged_in_user_and_serves_the_reports(
    settings: Settings, api_server: Any, airflow_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(settings.home))
    write_report(settings, dt.date(2026, 3, 2), metrics(0.25, 0.08), model_version="v", gate_error=None)
    # Anonymous, or with a token the auth manager did not sign: refused, and no report leaks.
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        for path in ("/recsys/reports/", "/recsys/reports/2026-03-02"):
            refused = api_server.get(path, headers=headers)
            assert refused.status_code in (401, 403), (path, headers, refused.status_code)
            assert "recsys nightly report" not in refused.text and "2026-03-02" not in refused.text
    client = {"headers": {"Authorization": f"Bearer {admin_token(api_server, airflow_env)}"}}
    index = api_server.get("/recsys/reports/", **client)
    assert index.status_code == 200 and 'href="2026-03-02"' in index.text
    page = api_server.get("/recsys/reports/2026-03-02", **client)
    assert page.status_code == 200 and "recsys nightly report — 2026-03-02" in page.text
    assert api_server.get("/recsys/reports/2026-03-09", **client).status_code == 404
    assert api_server.get("/recsys/reports/yesterday", **client).status_code == 400
