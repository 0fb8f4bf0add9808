"""Alerts: a nightly task that failed for good is logged at ERROR and, with
``RECSYS_ALERT_WEBHOOK`` set, POSTed to that URL as ``{"text": ...}`` (the shape Slack's and
Teams' incoming webhooks take). An Airflow notifier, used as the DAG's failure callback.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from recsys.config import Settings

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0  # seconds: an alert must never hold the worker


def failure_text(context: Any) -> str:
    """One line an on-call person can act on: DAG, task, run, try, the error, where the log is."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    map_index = getattr(ti, "map_index", -1)
    task = f"{task_id}[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else task_id
    run_id = getattr(context.get("dag_run"), "run_id", None) or context.get("run_id", "?")
    error = context.get("exception")
    reason = f"{type(error).__name__}: {error}" if error is not None else "no exception recorded"
    tries = getattr(ti, "try_number", "?")
    log_url = getattr(ti, "log_url", None)
    return (f"recsys: {dag_id}.{task} failed in run {run_id} (try {tries}): {reason}. Nothing of this run is "
            f"served; the storefront keeps its current lists." + (f" Log: {log_url}" if log_url else ""))


def post_webhook(url: str, text: str) -> None:
    """POST ``{"text": text}`` to ``url``; a failure to deliver is logged, never raised."""
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        log.error("the alert could not be delivered to RECSYS_ALERT_WEBHOOK (%s): %s", type(exc).__name__, exc)


class FailureAlert(BaseNotifier):
    """The nightly's failure notifier: logs the failure and posts it to ``RECSYS_ALERT_WEBHOOK``."""

    def notify(self, context: Any) -> None:
        text = failure_text(context)
        log.error("%s", text)
        webhook = Settings.from_env().alert_webhook
        if webhook:
            post_webhook(webhook, text)
