"""Airflow UI plugin: the nightly model reports of recsys, one click from the Airflow UI.

A FastAPI app mounted on the api-server at ``/recsys``, behind the api-server's login (read
access to the recsys_nightly DAG), serves the reports that the train task writes to
``lake/reports/dt=D/report.html`` (a local lake or S3, read through :mod:`recsys.io.lake`); an
external view adds "Recsys reports" to the navigation and a "Model report" tab to the DAG's page.
"""

from __future__ import annotations

import datetime as dt
import html

from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from recsys import datasets
from recsys.config import Settings
from recsys.io import lake

# Every route needs a user the api-server's auth manager knows (a JWT, as the Authorization
# bearer or the UI's session cookie) who may read the recsys_nightly DAG: 401 without a token,
# 403 with an invalid one or without that permission. The reports show the model's figures and
# the lake's layout, which are not for anyone who can reach the api-server's port.
app = FastAPI(
    title="recsys reports",
    description="Nightly model reports of the recsys_nightly DAG",
    dependencies=[Depends(requires_access_dag("GET", param_dag_id="recsys_nightly"))],
)


def _lake() -> str:
    return Settings.from_env().lake


@app.get("/reports/", response_class=HTMLResponse)
def list_reports() -> str:
    """An index of every night's report, newest first."""
    days = [d.isoformat() for d in reversed(lake.list_days(_lake(), datasets.REPORTS))]
    items = "".join(f'<li><a href="{html.escape(d)}">{html.escape(d)}</a></li>' for d in days)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>recsys reports</title></head>"
        "<body style='font-family: system-ui, sans-serif; margin: 2rem'><h1>recsys nightly reports</h1>"
        f"<ul>{items or '<li>No report yet: run the recsys_nightly DAG.</li>'}</ul></body></html>"
    )


@app.get("/reports/{day}")
def get_report(day: str) -> FileResponse:
    """One night's report; 400 for a malformed date, 404 when that night has none."""
    try:
        parsed = dt.date.fromisoformat(day)
    except ValueError:
        raise HTTPException(status_code=400, detail=f"expected a date YYYY-MM-DD, got {day!r}") from None
    try:  # an S3 lake: the report is downloaded to this machine's working copy first
        path = lake.fetch_partition(_lake(), datasets.REPORTS, parsed, [datasets.REPORT_FILE]) / datasets.REPORT_FILE
    except FileNotFoundError:
        path = None
    if path is None or not path.exists():
        raise HTTPException(status_code=404, detail=f"no report for {parsed}: was recsys_nightly run for that date?")
    return FileResponse(path, media_type="text/html")


class RecsysReportsPlugin(AirflowPlugin):
    name = "recsys_reports"
    fastapi_apps = [{"app": app, "url_prefix": "/recsys", "name": "recsys reports"}]
    external_views = [
        {"name": "Recsys reports", "href": "recsys/reports/", "destination": "nav", "category": "browse",
         "url_route": "recsys_reports"},
        {"name": "Model report", "href": "recsys/reports/", "destination": "dag", "url_route": "recsys_dag_reports"},
    ]
