"""The whole DAG through Airflow's dag.test(), on a small generated store, against DynamoDB Local."""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.config import POPULAR_USER_ID, Settings, recommendations_uri, serving_table_uri
from recsys.core.grid import tuning_candidates
from recsys.io import lake
from tests.support import ONE_MODEL, SMALL_GRID, SmtpReceiver, WebhookReceiver, asset_events, lists_of, scan
from tests.support import STORE_END as END

pytestmark = pytest.mark.slow  # whole-DAG runs: make test, not make test-fast


def run(settings: Settings, day: dt.date) -> Any:
    from recsys.dev.dagrun import run_dag

    return run_dag(settings, day)


def test_nightly_run_serves_every_user_and_reruns_identically(
    recsys_env: Settings, dynamodb_client: Any, airflow_env: Path
) -> None:
    settings = recsys_env
    dag_run = run(settings, END)
    assert str(dag_run.state).endswith("success")
    # The store's last day has landed (events up to 23:59): wait_for_data checked once and went on.
    (wait,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == "wait_for_data"]
    assert wait.xcom_pull(task_ids="wait_for_data")["deferred"] is False
    shards = sorted(ti.map_index for ti in dag_run.get_task_instances() if ti.task_id == "publish_shard")
    assert shards == list(range(settings.publish_shards)) == [0, 1, 2, 3]

    recs = lake.read_partition(settings.lake, "recommendations", END)
    confidence = lake.read_partition(settings.lake, "confidence", END)
    users = set(pc.unique(confidence["user_id"]).to_pylist())
    per_user = recs.group_by("user_id").aggregate([("item_id", "list")]).to_pylist()
    every_list = {row["user_id"]: row["item_id_list"] for row in per_user}
    assert all(len(set(items)) == len(items) for items in every_list.values())
    # A category list holds the category's active items that anyone touched: up to 20.
    assert all(0 < len(items) <= 20 for u, items in every_list.items() if u.startswith(POPULAR_USER_ID + "#"))
    lists = {u: items for u, items in every_list.items() if not u.startswith(("item#", POPULAR_USER_ID + "#"))}
    assert all(len(items) == 20 for items in lists.values())
    assert set(lists) == users | {POPULAR_USER_ID}
    catalog_rows = pq.read_table(Path(settings.catalog or "")).to_pylist()
    categories = {r["category"] for r in catalog_rows}
    category_of = {r["item_id"]: r["category"] for r in catalog_rows}
    assert {u for u in every_list if u.startswith(POPULAR_USER_ID + "#")} == {f"{POPULAR_USER_ID}#{c}" for c in categories}
    for category in categories:
        assert {category_of[i] for i in every_list[f"{POPULAR_USER_ID}#{category}"]} == {category}
    similar = {u[len("item#"):]: items for u, items in every_list.items() if u.startswith("item#")}
    assert set(similar) == set(pc.unique(confidence["item_id"]).to_pylist())
    assert all(item not in items and len(items) == 20 for item, items in similar.items())

    seen: dict[str, set[str]] = {}
    for row in confidence.select(["user_id", "item_id"]).to_pylist():
        seen.setdefault(row["user_id"], set()).add(row["item_id"])
    assert all(not (set(lists[u]) & seen[u]) for u in users), "a list holds an item the user already touched"
    inactive = {r["item_id"] for r in catalog_rows if not r["active"]}
    assert inactive and not any(set(items) & inactive for items in every_list.values())

    metrics = json.loads((lake.partition_dir(settings.lake, "models", END) / "metrics.json").read_text())
    assert metrics["model"]["ndcg_at_k"] > metrics["popularity"]["ndcg_at_k"]
    assert metrics["model"]["users_evaluated"] > 100

    served = scan(dynamodb_client, settings.table)
    ranked = {
        row["user_id"]: row
        for row in recs.sort_by([("user_id", "ascending"), ("rank", "ascending")])
        .group_by("user_id", use_threads=False)
        .aggregate([("item_id", "list")])
        .to_pylist()
    }
    assert lists_of(served) == {u: r["item_id_list"] for u, r in ranked.items()}
    champion = json.loads((Path(settings.lake) / "models" / "champion.json").read_text())
    assert champion["model_version"] == metrics["model_version"] and champion["run_date"] == END.isoformat()
    version = lake.read_json(lake.partition_dir(settings.lake, "recommendations", END) / "_meta.json")["model_version"]
    assert {item["model_version"]["S"] for item in served.values()} == {version}
    assert all(int(item["expires_at"]["N"]) > dt.datetime.now(dt.UTC).timestamp() for item in served.values())
    meta = scan(dynamodb_client, settings.table, with_meta=True)["__meta__"]
    assert (meta["run_date"]["S"], meta["model_version"]["S"]) == (END.isoformat(), version)
    # finish_publish updated the serving table's Asset: downstream DAGs learn the run date and model.
    published = {"run_date": END.isoformat(), "model_version": version, "source": "recsys_nightly.finish_publish"}
    assert asset_events(serving_table_uri(settings)) == [published]
    assert asset_events(recommendations_uri(settings)) == [{
        "run_date": END.isoformat(), "model_version": version, "source": "recsys_nightly.recommend",
        "partition": lake.partition_uri(settings.lake, "recommendations", END)}]

    # A second run of the same date leaves the same partitions and the same served lists.
    # (confidence: the same rows, in no particular order.)
    def partition(name: str) -> pa.Table:
        table = lake.read_partition(settings.lake, name, END)
        return table.sort_by([("user_id", "ascending"), ("item_id", "ascending")]) if name == "confidence" else table

    before = {name: partition(name) for name in ("interactions", "confidence", "recommendations")}
    assert str(run(settings, END).state).endswith("success")
    for name, table in before.items():
        assert partition(name).equals(table), f"{name} changed on rerun"
    again = scan(dynamodb_client, settings.table)
    assert lists_of(again) == lists_of(served)
    assert {item["model_version"]["S"] for item in again.values()} == {version}
    assert asset_events(serving_table_uri(settings)) == [published, published]  # served again, announced again


def test_broken_batch_fails_before_anything_is_served(
    one_model_env: Settings, dynamodb_client: Any, airflow_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = one_model_env
    assert str(run(settings, END).state).endswith("success")
    served = scan(dynamodb_client, settings.table, with_meta=True)

    # The next day arrives with an event type nobody configured, in 5 rows.
    bad = tmp_path / "bad-source"
    bad.mkdir()
    next_day = END + dt.timedelta(days=1)
    rows = ["user_id,item_id,event_type,event_ts"] + [
        f"u00000{i},i0000{i},Teleport,{next_day.isoformat()}T10:0{i}:00Z" for i in range(5)
    ]
    (bad / "next-day.csv").write_text("\n".join(rows) + "\n")
    os.symlink(Path(settings.source), bad / "history")
    monkeypatch.setenv("RECSYS_SOURCE", str(bad))
    monkeypatch.setenv("RECSYS_COMPLETE_AFTER", "10:00")  # the batch has landed: wait_for_data lets it through
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        for name, value in {"RECSYS_ALERT_WEBHOOK": hook.url, **smtp.env, "RECSYS_ALERT_SMTP_CONN_ID": smtp.conn_id,
                            "RECSYS_ALERT_EMAIL_TO": "oncall@example.com"}.items():
            monkeypatch.setenv(name, value)
        dag_run = run(Settings.from_env(), next_day)
    assert not str(dag_run.state).endswith("success")
    # The failure callback told someone: validate, failed for good (bad input is not retried).
    assert [m["text"] for m in hook.received if ".validate failed" in m["text"]], hook.received
    # ... by e-mail too, through the SMTP connection: the DAG, task, run date, the error's first
    # line and a link to the task's log.
    [mail] = [m for m in smtp.received if ".validate failed" in m["message"]["Subject"]]
    assert mail["to"] == ["oncall@example.com"]
    assert mail["message"]["Subject"] == f"recsys: recsys_nightly.validate failed for run date {next_day}"
    body = html.unescape(next(p for p in mail["message"].walk() if p.get_content_type() == "text/html").get_content())
    assert f"recsys_nightly.validate failed in run {dag_run.run_id} (run date {next_day}, try 1)." in body
    error = next(line.strip() for line in body.split("<br>") if "Error: " in line)
    assert error.startswith(f"Error: AirflowFailException: validate failed for {next_day}: ValidationError: "
                            "validation failed for 2 check(s) of 5 staged rows"), error
    assert "\n" not in error and "Teleport" not in error  # the first line only: the checks follow in the log
    assert f'/dags/recsys_nightly/runs/{quote(dag_run.run_id, safe="")}/tasks/validate?try_number=1">' in body, body
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert states["validate"].endswith("failed")
    assert not any(states[t].endswith("success") for t in ("aggregate", "train", "recommend", "plan_publish",
                                                           "publish_shard", "finish_publish"))
    assert not lake.partition_exists(settings.lake, "recommendations", next_day)
    assert scan(dynamodb_client, settings.table, with_meta=True) == served


def test_quality_gate_passes_a_good_model_and_blocks_a_bad_one(
    recsys_env: Settings, dynamodb_client: Any, airflow_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.dev.dagrun import run_dag

    settings = recsys_env
    good = run_dag(settings, END)
    assert str(good.state).endswith("success")
    metrics = json.loads((lake.partition_dir(settings.lake, "models", END) / "metrics.json").read_text())
    gate = metrics["gate"]
    assert metrics["model"]["ndcg_at_k"] >= gate["required_over_popularity"] > gate["popularity_ndcg_at_k"]
    served = scan(dynamodb_client, settings.table, with_meta=True)
    assert served["__meta__"]["model_version"]["S"] == metrics["model_version"]

    # The same date again with a model regularised to nothing: it scores every item alike.
    with SmtpReceiver() as smtp:
        for name, value in {**smtp.env, "RECSYS_ALERT_SMTP_CONN_ID": smtp.conn_id,
                            "RECSYS_ALERT_EMAIL_TO": "ml@example.com"}.items():
            monkeypatch.setenv(name, value)
        bad = run_dag(settings, END, {"tuning_grid": "", "regularization": 1e6})
    assert not str(bad.state).endswith("success")
    # The gate's own alert, with its figures: tonight's NDCG against popularity and the champion.
    [mail] = [m["message"] for m in smtp.received]
    assert mail["Subject"] == f"recsys: the quality gate refused tonight's model for run date {END}"
    body = html.unescape(next(p for p in mail.walk() if p.get_content_type() == "text/html").get_content())
    assert "Tonight's model: NDCG@20 " in body and "(+5%, RECSYS_GATE_MIN_LIFT)" in body
    # The champion is tonight's own good model (same run date): only the popularity rule applies.
    assert "Champion not compared: it was trained through" in body and "is below popularity's" in body, body
    states = {ti.task_id: str(ti.state) for ti in bad.get_task_instances()}
    assert states["train"].endswith("failed")
    assert not any(states[t].endswith("success") for t in ("plan_publish", "publish_shard", "finish_publish"))
    after = json.loads((lake.partition_dir(settings.lake, "models", END) / "metrics.json").read_text())
    assert after == metrics  # the registry still holds the good model
    assert scan(dynamodb_client, settings.table, with_meta=True) == served  # the storefront keeps its lists


def test_an_older_date_never_replaces_newer_lists_unless_forced(
    one_model_env: Settings, dynamodb_client: Any, airflow_env: Path
) -> None:
    from recsys.dev.dagrun import run_dag

    settings = one_model_env
    assert str(run(settings, END).state).endswith("success")
    served = scan(dynamodb_client, settings.table, with_meta=True)

    older = END - dt.timedelta(days=1)
    skipped = run(settings, older)
    assert str(skipped.state).endswith("success")  # lake rebuilt for that date ...
    states = {ti.task_id: str(ti.state) for ti in skipped.get_task_instances()}
    assert all(states[t].endswith("skipped") for t in ("publish_shard", "finish_publish", "verify")), states
    assert lake.partition_exists(settings.lake, "recommendations", older)
    assert scan(dynamodb_client, settings.table, with_meta=True) == served  # ... the table untouched
    # ... and no event of the table's Asset: only the run that published announced itself.
    assert [e["run_date"] for e in asset_events(serving_table_uri(settings))] == [END.isoformat()]

    forced = run_dag(settings, older, {"force_publish": True})
    assert str(forced.state).endswith("success")
    meta = scan(dynamodb_client, settings.table, with_meta=True)["__meta__"]
    assert meta["run_date"]["S"] == older.isoformat()
    older_version = lake.read_json(lake.partition_dir(settings.lake, "recommendations", older) / "_meta.json")
    assert meta["model_version"]["S"] == older_version["model_version"] != served["__meta__"]["model_version"]["S"]
    assert [e["run_date"] for e in asset_events(serving_table_uri(settings))] == [END.isoformat(), older.isoformat()]


def test_command_line_run_and_lookup(
    store: Path, recsys_env: Settings, airflow_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SMALL_GRID:  # the default grid and blends, as a new user's first run tunes them
        monkeypatch.delenv(name)
    recsys_env = Settings.from_env()
    recsys = str(Path(sys.executable).with_name("recsys"))
    env = os.environ.copy()
    done = subprocess.run([recsys, "run", "--date", "latest"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"recsys run {END}: published and verified" in done.stdout
    candidates = len(tuning_candidates(recsys_env))  # the default grid: every one screened, a third tuned
    screens, tunes = f"screen x{candidates}", f"tune x{math.ceil(candidates / recsys_env.tune_halving)}"
    assert screens in done.stdout and tunes in done.stdout and "verify" in done.stdout  # the per-task timing table
    assert "publish_shard x4" in done.stdout and "publish (all)" in done.stdout
    # The quiet view: one line per task start and end, Airflow's own output in the full log.
    assert "  extract            success" in done.stdout and "  publish_shard[3]   success" in done.stdout
    assert "[DAG TEST]" not in done.stdout + done.stderr
    assert len((done.stdout + done.stderr).splitlines()) <= 150
    log_path = Path(done.stdout.split("full log:", 1)[1].split()[0])
    full_log = log_path.read_text(encoding="utf-8")
    assert "[DAG TEST] end task task_id=verify" in full_log
    # A clean night logs no error: Airflow's "XCom not found" for reading tune's or the shards'
    # results one past the end was one in every run.
    errors = [line for line in (done.stdout + done.stderr + full_log).splitlines()
              if "[error" in line or " ERROR " in line]
    assert not errors, errors[:5]

    # The day before is older than what is served: built, not published, and the exit says so.
    older = subprocess.run([recsys, "run", "--date", (END - dt.timedelta(days=1)).isoformat()], env={**env, **ONE_MODEL},
                           capture_output=True, text=True, timeout=600)
    assert older.returncode == 3 and "NOT published" in older.stderr

    known = pq.read_table(store / "interactions" / f"events-{END.isoformat()}.parquet")["user_id"][0].as_py()
    out = subprocess.run([recsys, "lookup", known, "--json"], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert set(result) == {"user_id", "items", "model_version", "generated_at", "source", "filled"}
    assert result["source"] == "user" and result["user_id"] == known and len(result["items"]) == 20
    assert result["model_version"].startswith(END.isoformat())

    out = subprocess.run([recsys, "lookup", "nobody-at-all", "--json"], env=env, capture_output=True, text=True, check=True)
    cold = json.loads(out.stdout)
    assert cold["source"] == "popular" and len(cold["items"]) == 20
    assert cold["items"] != result["items"]

    # A date that has not landed is a clear failure, not a silent success: with RECSYS_WAIT_TIMEOUT=0
    # wait_for_data checks once and fails, naming the day, what it found and the settings to change.
    done = subprocess.run([recsys, "run", "--date", "2030-01-01"], env={**env, "RECSYS_WAIT_TIMEOUT": "0"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "the run date 2030-01-01 has not fully landed" in done.stderr and "RECSYS_WAIT_TIMEOUT" in done.stderr
    assert "last lines of wait_for_data (full log " in done.stderr  # the failing task's tail
    # Once the exporter marks it done, the day goes on to extract, which finds no events in it.
    marker = Path(recsys_env.source) / "dt=2030-01-01.done"
    marker.write_text("")
    try:
        done = subprocess.run([recsys, "run", "--date", "2030-01-01"],
                              env={**env, "RECSYS_DONE_MARKER": "dt={date}.done"},
                              capture_output=True, text=True, timeout=600)
    finally:
        marker.unlink()
    assert done.returncode != 0
    assert "no events" in done.stderr and "last lines of extract (full log " in done.stderr
