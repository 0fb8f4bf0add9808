"""The demo store and the settings on it, shared by the whole-run tests: a small generated
store per test module and, per test, RECSYS_* pointing at it, a fresh home and its own table."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from recsys.config import Settings
from recsys.dev.datagen import generate_store

END = dt.date(2026, 5, 31)
SMALL = dict(users=3_000, items=300, events=60_000, days=35, seed=11, end_date=END, categories=10)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "demo"
    generate_store(out, **SMALL)  # type: ignore[arg-type]
    return out


@pytest.fixture
def recsys_env(store: Path, dynamodb_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    values = {
        "RECSYS_HOME": str(tmp_path / "home"),
        "RECSYS_SOURCE": str(store / "interactions"),
        "RECSYS_CATALOG": str(store / "catalog.parquet"),
        "RECSYS_WINDOW_DAYS": "28",
        "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
        "RECSYS_TABLE": f"recs_{uuid.uuid4().hex[:8]}",
        "RECSYS_VERIFY_SAMPLE": "300",
        "RECSYS_RECOMMEND_BATCH_USERS": "700",  # several batches of lists, each written as it is made
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()
