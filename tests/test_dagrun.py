"""The command line's Airflow edges: the publish pool, the timing table and the quiet run view."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from recsys.config import Settings
from recsys.dev.dagrun import QuietView, ensure_publish_pool, format_task_line, stage_times, summarize_result


def test_ensure_publish_pool_creates_it_once_and_keeps_an_operators_size(airflow_env: Path, tmp_path: Path) -> None:
    from airflow.models.pool import Pool

    name = f"recsys_test_{tmp_path.name[-8:]}"
    env = {"RECSYS_HOME": str(tmp_path), "RECSYS_PUBLISH_POOL": name, "RECSYS_PUBLISH_POOL_SLOTS": "3"}
    settings = Settings.from_env(env)
    assert settings.publish_pool == name
    assert ensure_publish_pool(settings) == f"Airflow pool {name} created with 3 slot(s)"
    assert Pool.get_pool(name).slots == 3  # type: ignore[union-attr]
    Pool.create_or_update_pool(name, 6, "resized by an operator", False)
    line = ensure_publish_pool(Settings.from_env({**env, "RECSYS_PUBLISH_POOL_SLOTS": "2"}))
    assert line.startswith(f"Airflow pool {name} exists with 6 slot(s)") and "only sizes a new pool" in line
    assert "publish_refresh, which asks for that many slots, can run beside a publish shard" in line
    assert "RECSYS_PUBLISH_POOL_SLOTS=6" in line
    line = ensure_publish_pool(Settings.from_env({**env, "RECSYS_PUBLISH_POOL_SLOTS": "8"}))
    assert "publish_refresh, which asks for that many slots, is never scheduled" in line
    assert f"airflow pools set {name} 8" in line
    assert Pool.get_pool(name).slots == 6  # type: ignore[union-attr]


def test_stage_times_sums_mapped_tasks_and_spans_the_publish_tasks() -> None:
    t0 = dt.datetime(2026, 6, 1, 3, 0, tzinfo=dt.UTC)

    def ti(task_id: str, start: float, end: float, map_index: int = -1, state: str = "success") -> SimpleNamespace:
        return SimpleNamespace(task_id=task_id, map_index=map_index, state=state,
                               start_date=t0 + dt.timedelta(seconds=start), end_date=t0 + dt.timedelta(seconds=end))

    tis = [ti("recommend", 0, 3), ti("plan_publish", 3, 4),
           ti("publish_shard", 4, 14, 0), ti("publish_shard", 5, 12, 1), ti("publish_shard", 14, 20, 2),
           ti("finish_publish", 20, 21), ti("verify", 21, 22)]
    run = SimpleNamespace(start_date=t0, get_task_instances=lambda: tis)
    rows = {line[4:24].strip(): line[24:].split() for line in stage_times(run).splitlines()[1:]}
    assert rows["publish_shard x3"] == ["success", "23.0", "16.0"]  # 10 + 7 + 6 s of work, 4 s to 20 s wall
    assert rows["publish (all)"] == ["success", "25.0", "18.0"]  # plan + shards + finish, 3 s to 21 s
    assert rows["recommend"] == ["success", "3.0", "3.0"]
    assert list(rows)[-1] == "publish (all)"


def test_quiet_view_prints_one_line_per_task_start_and_end_and_the_failed_tasks_last_log_lines(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "run.log"
    log_path.write_text("migrating the metadata DB\n", encoding="utf-8")
    out = io.StringIO()
    view = QuietView(out, log_path)
    view.started("extract", -1)
    view.ended("extract", -1, "TaskInstanceState.SUCCESS", {"rows": 800_000, "duplicates_dropped": 0, "seconds": 3})
    view.started("tune", 3)
    view.ended("tune", 3, "success", {"params": {}, "metrics": {"ndcg_at_k": 0.24422, "map_at_k": 0.15}})
    view.started("train", -1)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("".join(f"train line {n}\n" for n in range(40)) + "ValueError: the gate failed\n")
    view.ended("train", -1, "failed", None)
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["extract", "running"], ["extract", "success"], ["tune[3]", "success"],  # a mapped instance: its end
        ["train", "running"], ["train", "failed"],
    ]
    assert lines[1].endswith("s  800,000 rows") and lines[2].endswith("s  NDCG 0.2442")
    assert lines[4].split()[2:] == [lines[4].split()[2], "s"]  # no summary for a failed task
    tail = view.failure_tail(lines=5).splitlines()
    assert tail[0] == f"  last lines of train (full log {log_path}):"
    assert [line.strip() for line in tail[1:]] == [
        "train line 36", "train line 37", "train line 38", "train line 39", "ValueError: the gate failed"
    ]


@pytest.mark.parametrize(
    "result, summary",
    [
        ({"rows": 800_000, "rows_kept": 799_000, "quarantined": 1_000}, "799,000 rows, 1,000 quarantined"),
        ({"partitions": 70, "rows": {"part-0": 493_769, "holdout": 47_135}}, "493,769 rows"),
        ({"users": 82_438, "items": 2_465, "category_lists": 20}, "82,438 users, 2,465 items"),
        ({"candidates": [{"factors": 16}, {"factors": 64}]}, "2 candidates"),
        ({"verified": True, "checked": 201}, "201 checked"),
        ({"publish": False, "reason": "backfill"}, "not published"),
        (["a", "b"], ""),
        (None, ""),
    ],
)
def test_summarize_result_picks_the_counts_a_person_wants(result: object, summary: str) -> None:
    assert summarize_result(result) == summary


def test_format_task_line_without_seconds_is_a_start() -> None:
    assert format_task_line("publish_shard", 2, "running") == "  publish_shard[2]   running"
    assert format_task_line("verify", -1, "success", 0.61, {}) == "  verify             success      0.6 s"


def test_a_run_before_the_dags_start_date_is_refused_not_an_empty_success(airflow_env: Path) -> None:
    """dag.test() of a date before start_date runs no task and reports success; the nightly
    starts in 2000 so that any store's history can be run, and earlier is refused by name."""
    from recsys.dev.dagrun import check_start, load_dag

    dag = load_dag()
    check_start(dag, dt.datetime(2017, 12, 24, tzinfo=dt.UTC))  # a real log's old day: runs
    with pytest.raises(ValueError, match=r"recsys_nightly starts on 2000-01-01: a run for 1999-12-31 would run no task"):
        check_start(dag, dt.datetime(1999, 12, 31, tzinfo=dt.UTC))
