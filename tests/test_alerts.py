"""recsys.io.alerts: the failure notifier of the nightly, against a real HTTP endpoint."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from recsys.io.alerts import FailureAlert, failure_text, post_webhook
from tests.support import WebhookReceiver


def context(error: Exception) -> dict[str, object]:
    ti = SimpleNamespace(dag_id="recsys_nightly", task_id="publish_shard", map_index=2, try_number=3,
                         log_url="http://airflow/log")
    return {"ti": ti, "dag_run": SimpleNamespace(run_id="scheduled__2026-05-31"), "exception": error}


def test_the_text_names_the_task_run_try_error_and_log() -> None:
    text = failure_text(context(ValueError("table throttled")))
    assert text.startswith("recsys: recsys_nightly.publish_shard[2] failed in run scheduled__2026-05-31 (try 3): ")
    assert "ValueError: table throttled" in text and "keeps its current lists" in text
    assert text.endswith("Log: http://airflow/log")


def test_the_notifier_logs_and_posts_to_the_webhook(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver() as hook:
        monkeypatch.setenv("RECSYS_ALERT_WEBHOOK", hook.url)
        with caplog.at_level(logging.ERROR, logger="recsys.io.alerts"):
            FailureAlert().notify(context(RuntimeError("boom")))
    assert len(hook.received) == 1 and "RuntimeError: boom" in hook.received[0]["text"]
    assert any("RuntimeError: boom" in r.getMessage() for r in caplog.records)


def test_without_a_webhook_it_only_logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver() as hook:
        monkeypatch.delenv("RECSYS_ALERT_WEBHOOK", raising=False)
        with caplog.at_level(logging.ERROR, logger="recsys.io.alerts"):
            FailureAlert().notify(context(RuntimeError("quiet")))
    assert hook.received == [] and any("quiet" in r.getMessage() for r in caplog.records)


def test_an_undeliverable_alert_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver() as hook:
        closed = hook.url  # the server stops when the block ends: nothing listens there afterwards
    with caplog.at_level(logging.ERROR, logger="recsys.io.alerts"):
        post_webhook(closed, "hello")
    assert any("could not be delivered" in r.getMessage() for r in caplog.records)
