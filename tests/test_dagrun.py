"""The command line's Airflow edges: the publish pool and the timing table."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

from recsys.config import Settings
from recsys.dev.dagrun import ensure_publish_pool, stage_times


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
