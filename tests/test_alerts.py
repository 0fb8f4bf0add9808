"""recsys.alerts: the nightly's alerts (a failed task, a refused model, a missed deadline),
built from Airflow contexts and delivered to a real HTTP endpoint and a real SMTP server."""

from __future__ import annotations

import datetime as dt
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from recsys.alerts import Alert, FailureAlert, build_alert, notify_missed_deadline, post_webhook, send_alert
from recsys.config import Settings
from recsys.core.gate import QualityGateError, check_gate
from tests.support import SmtpReceiver, WebhookReceiver

RUN_DATE = dt.datetime(2026, 5, 31, tzinfo=dt.UTC)


def context(error: BaseException) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="recsys_nightly", task_id="publish_shard", map_index=2, try_number=3,
                         log_url="http://airflow/log")
    return {"ti": ti, "dag_run": SimpleNamespace(run_id="scheduled__2026-06-01"), "exception": error,
            "logical_date": RUN_DATE, "params": {}}


def gate_error() -> BaseException:
    """A refusal as train raises it: the gate's own error, wrapped the way run_stage wraps it."""
    from airflow.sdk.exceptions import AirflowFailException

    settings = Settings.from_env({"RECSYS_GATE_MIN_LIFT": "0.05", "RECSYS_GATE_MAX_DROP": "0.1"})
    metrics = {"model": {"ndcg_at_k": 0.25, "users_evaluated": 400}, "popularity": {"ndcg_at_k": 0.2}}
    champion = {"model_version": "2026-05-30-abc", "run_date": "2026-05-30", "ndcg_at_k": 0.31,
                "stored_ndcg_at_k": 0.3, "holdout_days_trained_on": 2}
    try:
        check_gate(settings, RUN_DATE.date(), metrics, champion)
    except QualityGateError as exc:
        try:
            raise AirflowFailException(f"train failed for 2026-05-31: QualityGateError: {exc}") from exc
        except AirflowFailException as wrapped:
            return wrapped
    raise AssertionError("the gate passed a model 0.25 against a champion at 0.30")


def test_a_failure_names_the_dag_task_run_date_try_error_and_log() -> None:
    alert = build_alert(context(ValueError("table throttled\nTraceback line that is not the summary")))
    assert alert.subject == "recsys: recsys_nightly.publish_shard[2] failed for run date 2026-05-31"
    lines = alert.body.splitlines()
    assert lines[0] == "recsys_nightly.publish_shard[2] failed in run scheduled__2026-06-01 (run date 2026-05-31, try 3)."
    assert lines[1] == "Error: ValueError: table throttled"
    assert "keeps its current lists" in lines[2] and lines[-1] == "Log: http://airflow/log"


def test_a_refused_model_gets_the_gates_figures() -> None:
    alert = build_alert(context(gate_error()))
    assert alert.subject == "recsys: the quality gate refused tonight's model for run date 2026-05-31"
    body = alert.body
    assert "Tonight's model: NDCG@20 0.2500 over 400 users." in body
    assert "Popularity: NDCG@20 0.2000; the model needs at least 0.2100 (+5%, RECSYS_GATE_MIN_LIFT)." in body
    assert "Champion 2026-05-30-abc: NDCG@20 0.3000 (as stored when served" in body
    assert "the model needs at least 0.2700 (-10%, RECSYS_GATE_MAX_DROP)." in body
    assert "Refused: NDCG@20 0.2500 is more than 10% below the served champion" in body
    assert body.splitlines()[-1] == "Log: http://airflow/log"


def test_the_notifier_logs_and_posts_to_the_webhook(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver() as hook:
        monkeypatch.setenv("RECSYS_ALERT_WEBHOOK", hook.url)
        with caplog.at_level(logging.ERROR, logger="recsys.alerts"):
            FailureAlert().notify(context(RuntimeError("boom")))
    assert len(hook.received) == 1 and "RuntimeError: boom" in hook.received[0]["text"]
    assert hook.received[0]["text"].startswith("recsys: recsys_nightly.publish_shard[2] failed for run date 2026-05-31\n")
    assert any("RuntimeError: boom" in r.getMessage() for r in caplog.records)


def test_without_channels_it_only_logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        for name in ("RECSYS_ALERT_WEBHOOK", "RECSYS_ALERT_SMTP_CONN_ID", "RECSYS_ALERT_SLACK_CONN_ID"):
            monkeypatch.delenv(name, raising=False)
        with caplog.at_level(logging.ERROR, logger="recsys.alerts"):
            FailureAlert().notify(context(RuntimeError("quiet")))
    assert hook.received == [] and smtp.received == []
    assert any("quiet" in r.getMessage() for r in caplog.records)


def test_the_alert_is_e_mailed_through_the_smtp_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    with SmtpReceiver() as smtp:
        for name, value in {**smtp.env, "RECSYS_ALERT_SMTP_CONN_ID": smtp.conn_id,
                            "RECSYS_ALERT_EMAIL_TO": "oncall@example.com, ml@example.com"}.items():
            monkeypatch.setenv(name, value)
        FailureAlert().notify(context(gate_error()))
    assert len(smtp.received) == 1
    mail = smtp.received[0]
    assert mail["to"] == ["oncall@example.com", "ml@example.com"]
    message = mail["message"]
    assert message["Subject"] == "recsys: the quality gate refused tonight's model for run date 2026-05-31"
    assert message["From"] == "recsys@example.com"
    html = next(part for part in message.walk() if part.get_content_type() == "text/html").get_content()
    assert "Popularity: NDCG@20 0.2000; the model needs at least 0.2100" in html
    assert '<a href="http://airflow/log">http://airflow/log</a>' in html


def test_an_undeliverable_alert_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        closed, conn = hook.url, smtp.env  # the servers stop when the block ends: nothing listens there afterwards
    settings = Settings.from_env({"RECSYS_ALERT_WEBHOOK": closed, "RECSYS_ALERT_SMTP_CONN_ID": "recsys_test_smtp",
                                  "RECSYS_ALERT_EMAIL_TO": "oncall@example.com",
                                  "RECSYS_ALERT_SLACK_CONN_ID": "recsys_slack"})
    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.ERROR, logger="recsys.alerts"):
        for name, value in conn.items():
            patch.setenv(name, value)
        post_webhook(closed, "hello")
        send_alert(Alert("subject", "body"), settings)
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not be delivered to RECSYS_ALERT_WEBHOOK" in m for m in messages)
    assert any("could not be e-mailed through the connection recsys_test_smtp" in m for m in messages)
    # The Slack provider is not a dependency: without it the alert says so instead of failing.
    assert any("Slack provider is not installed" in m or "Slack connection recsys_slack" in m for m in messages)


def test_a_missed_deadline_names_the_run_and_links_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    run = {"dag_id": "recsys_nightly", "run_id": "scheduled__2026-05-31T00:00:00+00:00", "run_type": "scheduled",
           "logical_date": "2026-05-31T00:00:00Z", "state": "running"}
    deadline = {"id": "d1", "deadline_time": "2026-06-01T06:30:00+00:00"}
    alert = build_alert({"dag_run": run, "deadline": deadline})
    assert alert.subject == "recsys: the lists of run date 2026-05-31 were not published by 2026-06-01T06:30:00+00:00"
    assert "RECSYS_PUBLISH_DEADLINE" in alert.body and "/dags/recsys_nightly/runs/scheduled__2026-05-31T00" in alert.body
    with WebhookReceiver() as hook:
        monkeypatch.setenv("RECSYS_ALERT_WEBHOOK", hook.url)
        notify_missed_deadline({"dag_run": run, "deadline": deadline})
        notify_missed_deadline({"dag_run": {**run, "run_type": "backfill"}, "deadline": deadline})
    assert [m["text"].split("\n")[0] for m in hook.received] == [alert.subject]  # a backfill never publishes
