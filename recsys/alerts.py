"""Alerts of the nightly: a task that failed for good, a quality gate that refused tonight's
model, a run whose lists were not published by ``RECSYS_PUBLISH_DEADLINE``.

One message builder (:func:`build_alert`) reads the Airflow context of any of the three; one
sender (:func:`send_alert`) logs the alert at ERROR and delivers it through every channel that
is configured: an e-mail through the Airflow SMTP connection ``RECSYS_ALERT_SMTP_CONN_ID`` to
``RECSYS_ALERT_EMAIL_TO``, a Slack incoming-webhook connection ``RECSYS_ALERT_SLACK_CONN_ID``
(only when the Slack provider is installed: recsys does not depend on it), and a POST of
``{"text": ...}`` to ``RECSYS_ALERT_WEBHOOK``. A channel that fails is logged, never raised: an
alert must not hide the failure it reports. :class:`FailureAlert` is the tasks' failure
notifier; :func:`notify_missed_deadline` the DAG's DeadlineAlert callback.
"""

from __future__ import annotations

import html
import importlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from airflow.sdk.bases.notifier import BaseNotifier

from recsys.config import ConfigError, Settings
from recsys.core.gate import QualityGateError
from recsys.runtime import resolve_run_date

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0  # seconds: an alert must never hold the worker
NOT_SERVED = "Nothing of this run is served; the storefront keeps its current lists."


@dataclass(frozen=True)
class Alert:
    """One alert: a subject line and a plain-text body; ``link`` is where to look (a task's log
    or the run's page), also the body's last line."""

    subject: str
    body: str
    link: str | None = None

    @property
    def text(self) -> str:
        """Subject and body: what the log line, the webhook and Slack carry."""
        return f"{self.subject}\n{self.body}"

    def html(self) -> str:
        """The e-mail's body: the text, with the link clickable."""
        lines = [html.escape(line) for line in self.body.splitlines()]
        if self.link:
            lines[-1] = f'Log: <a href="{html.escape(self.link)}">{html.escape(self.link)}</a>'
        return "<html><body><p>" + "<br>\n".join(lines) + "</p></body></html>"


def first_line(error: BaseException | None) -> str:
    """``Type: first line of the message`` of an error (at most 500 characters)."""
    if error is None:
        return "no exception recorded"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:500] if lines else ''}".rstrip(": ")


def gate_refusal(error: BaseException | None) -> QualityGateError | None:
    """The QualityGateError behind a task's error (run_stage wraps it in AirflowFailException)."""
    while error is not None:
        if isinstance(error, QualityGateError):
            return error
        error = error.__cause__ or error.__context__
    return None


def build_alert(context: Mapping[str, Any]) -> Alert:
    """The alert for an Airflow context: a deadline callback's (it has ``deadline``), a failed
    task's whose error is the quality gate's (the gate's figures), or any other failed task's
    (DAG, task, run, run date, try, the error's first line, the log's link)."""
    if "deadline" in context:
        return _deadline_alert(context)
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    map_index = getattr(ti, "map_index", -1)
    task = f"{task_id}[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else task_id
    run_id = getattr(context.get("dag_run"), "run_id", None) or context.get("run_id", "?")
    try:
        day: str = resolve_run_date(context).isoformat()
    except (TypeError, ValueError, AttributeError):
        day = "?"
    error = context.get("exception")
    link = getattr(ti, "log_url", None)
    tail = [f"Log: {link}"] if link else []
    refusal = gate_refusal(error)
    if refusal is not None:
        return Alert(
            subject=f"recsys: the quality gate refused tonight's model for run date {day}",
            body="\n".join([f"{dag_id}.{task} refused the model of run {run_id} (run date {day}). {NOT_SERVED}",
                            *gate_lines(refusal.figures), f"Error: {first_line(refusal)}", *tail]),
            link=link,
        )
    tries = getattr(ti, "try_number", "?")
    return Alert(
        subject=f"recsys: {dag_id}.{task} failed for run date {day}",
        body="\n".join([f"{dag_id}.{task} failed in run {run_id} (run date {day}, try {tries}).",
                        f"Error: {first_line(error)}", NOT_SERVED, *tail]),
        link=link,
    )


def gate_lines(figures: Mapping[str, Any]) -> list[str]:
    """The gate's figures, one comparison a line: tonight's NDCG@k, popularity's and the
    champion's with the threshold each sets, and the rules broken."""
    if not figures:
        return []
    k = figures.get("k", "k")
    lines = [f"Tonight's model: NDCG@{k} {figures['ndcg_at_k']:.4f} over {figures.get('users_evaluated')} users."]
    lines.append(f"Popularity: NDCG@{k} {figures['popularity_ndcg_at_k']:.4f}; the model needs at least "
                 f"{figures['required_over_popularity']:.4f} (+{figures['min_lift']:.0%}, RECSYS_GATE_MIN_LIFT).")
    if figures.get("champion_ndcg_at_k") is not None:
        lines.append(f"Champion {figures.get('champion_version')}: NDCG@{k} {figures['champion_ndcg_at_k']:.4f} "
                     f"({figures.get('champion_basis')}); the model needs at least "
                     f"{figures['required_over_champion']:.4f} (-{figures['max_drop']:.0%}, RECSYS_GATE_MAX_DROP).")
    elif figures.get("champion_unavailable"):
        lines.append(f"Champion not compared: {figures['champion_unavailable']}")
    else:
        lines.append("No champion yet (nothing verified has been served).")
    lines += [f"Refused: {problem}." for problem in figures.get("problems", [])]
    return lines


def _deadline_alert(context: Mapping[str, Any]) -> Alert:
    run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id, run_id = run.get("dag_id", "?"), run.get("run_id", "?")
    logical = run.get("logical_date")
    day = str(logical)[:10] if logical else "?"
    link = run_url(dag_id, run_id)
    return Alert(
        subject=f"recsys: the lists of run date {day} were not published by {deadline.get('deadline_time')}",
        body="\n".join([
            (f"{dag_id} run {run_id} (run date {day}, {run.get('state', '?')}) had not published its lists by "
             f"the deadline {deadline.get('deadline_time')} (RECSYS_PUBLISH_DEADLINE). The storefront still "
             f"serves the previous night's lists; the run goes on."),
            f"Log: {link}",
        ]),
        link=link,
    )


def run_url(dag_id: str, run_id: str) -> str:
    """The Airflow UI page of a DAG run (``[api] base_url``)."""
    from airflow.sdk.configuration import conf

    base = str(conf.get("api", "base_url", fallback="http://localhost:8080/")).rstrip("/")
    return f"{base}/dags/{quote(dag_id)}/runs/{quote(run_id)}"


# --------------------------------------------------------------------------- the channels


def send_alert(alert: Alert, settings: Settings | None) -> None:
    """Log ``alert`` at ERROR and deliver it through every configured channel (none without
    ``settings``); a channel that fails is logged, never raised."""
    log.error("%s", alert.text.replace("\n", " | "))
    if settings is None:
        return
    if settings.alert_webhook:
        post_webhook(settings.alert_webhook, alert.text)
    if settings.alert_smtp_conn_id:
        send_email(settings.alert_smtp_conn_id, settings.alert_email_to, alert)
    if settings.alert_slack_conn_id:
        post_slack(settings.alert_slack_conn_id, alert.text)


def post_webhook(url: str, text: str) -> None:
    """POST ``{"text": text}`` to ``url``; a failure to deliver is logged, never raised."""
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        log.error("the alert could not be delivered to RECSYS_ALERT_WEBHOOK (%s): %s", type(exc).__name__, exc)


def send_email(conn_id: str, to: tuple[str, ...], alert: Alert) -> None:
    """E-mail ``alert`` to ``to`` through the Airflow SMTP connection ``conn_id``; a failure
    (no such connection, server down, refused) is logged, never raised."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    try:
        with SmtpHook(smtp_conn_id=conn_id) as hook:
            hook.send_email_smtp(to=list(to), subject=alert.subject, html_content=alert.html())
    except Exception as exc:  # any failure of the SMTP hook: logged, the alert is in the log anyway
        log.error("the alert could not be e-mailed through the connection %s (%s): %s",
                  conn_id, type(exc).__name__, exc)


def post_slack(conn_id: str, text: str) -> None:
    """Post ``text`` through the Slack incoming-webhook connection ``conn_id``; needs the Slack
    provider. A missing provider or a failure is logged, never raised."""
    try:  # not a dependency of recsys: imported by name, so neither mypy nor the image needs it
        slack = importlib.import_module("airflow.providers.slack.hooks.slack_webhook")
    except ImportError:
        log.error("RECSYS_ALERT_SLACK_CONN_ID is %s but the Slack provider is not installed "
                  "(pip install apache-airflow-providers-slack): the alert was not posted to Slack", conn_id)
        return
    try:
        slack.SlackWebhookHook(slack_webhook_conn_id=conn_id).send(text=text)
    except Exception as exc:  # any failure of the Slack hook: logged, the alert is in the log anyway
        log.error("the alert could not be posted through the Slack connection %s (%s): %s",
                  conn_id, type(exc).__name__, exc)


def _settings() -> Settings | None:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        log.error("alert channels not read (%s): the alert is only logged", exc)
        return None


# --------------------------------------------------------------------------- what Airflow calls


class FailureAlert(BaseNotifier):
    """The nightly's failure notifier (every task's ``on_failure_callback``): a failed task's
    alert, or the quality gate's when that is why ``train`` failed."""

    def notify(self, context: Any) -> None:
        send_alert(build_alert(context), _settings())


def notify_missed_deadline(context: dict[str, Any]) -> None:
    """The DeadlineAlert callback: a run has not published by ``RECSYS_PUBLISH_DEADLINE``.

    Airflow runs it on an executor with a small context (``dag_run`` as JSON, ``deadline``). A
    backfill run never publishes, so its missed deadline is only logged.
    """
    run = context.get("dag_run") or {}
    if str(run.get("run_type", "")).lower().endswith("backfill"):
        log.info("deadline of backfill run %s passed: a backfill does not publish, no alert", run.get("run_id"))
        return
    send_alert(build_alert(context), _settings())

