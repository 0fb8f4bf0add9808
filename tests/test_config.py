"""Settings: every variable read into its field, defaults, bad values with their exact messages,
overrides, the DAG Params declared on the fields, and docs/configuration.md generated from them."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError

from recsys.config import (
    DEFAULT_EVENT_WEIGHTS,
    DEFAULT_TUNING_GRID,
    PARAM_FIELDS,
    ConfigError,
    Settings,
    asset_uris_from_env,
    aws_region_from_env,
    dag_params,
    dags_folder_from_env,
    home_from_env,
    publish_deadline_from_env,
    publish_pool_from_env,
    s3_endpoint_from_env,
    sql_dir_from_env,
    variables_of,
)

REPO = Path(__file__).resolve().parents[1]


def config_docs() -> ModuleType:
    """scripts/config_docs.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("config_docs", REPO / "scripts" / "config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- reading the environment


def test_defaults_follow_home(tmp_path: Path) -> None:
    s = Settings.from_env({"RECSYS_HOME": str(tmp_path)})
    assert s.home == tmp_path.resolve()
    assert s.lake == str(tmp_path / "lake")
    assert s.source == str(tmp_path / "demo" / "interactions")
    assert s.catalog == str(tmp_path / "demo" / "catalog.parquet")
    assert s.duckdb_temp_dir == tmp_path / "duckdb-tmp" and s.duckdb_temp_directory == ""
    assert (s.airflow_home, s.demo_dir, s.dynamodb_local_dir) == (
        tmp_path / "airflow", tmp_path / "demo", tmp_path / "dynamodb-local")
    assert s.cache_dir == Path.home() / ".cache" / "recsys"
    assert s.dynamodb_endpoint == "http://127.0.0.1:8000" and s.aws_region == "us-east-1"
    assert s.event_weights == DEFAULT_EVENT_WEIGHTS and s.event_weights is not DEFAULT_EVENT_WEIGHTS
    assert s.tuning_grid == DEFAULT_TUNING_GRID and s.source_columns == {} and s.purchase_event_types == ("Purchase",)
    assert (s.window_days, s.holdout_days, s.k, s.factors, s.alpha) == (70, 7, 20, 64, 2.0)
    assert s.publish_pool == "recsys_dynamodb"
    assert (s.serve_timeout, s.s3_endpoint, s.source_conn_id) == (0.5, None, None)
    assert (s.airflow_executor, s.airflow_workers, s.airflow_worker_concurrency) == ("LocalExecutor", 2, 2)
    assert s.airflow_port == 8080
    assert s.airflow_db == "postgresql+psycopg2://postgres@127.0.0.1:5432/recsys_airflow"
    assert (s.airflow_broker, s.airflow_user, s.airflow_password) == ("redis://127.0.0.1:6379/0", "admin", None)
    assert (s.sql_dir, s.dags_folder) == (REPO / "sql", REPO / "dags")


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"RECSYS_WINDOW_DAYS": " 30 "}, "window_days", 30),  # Python's int(): blanks around are fine
        ({"RECSYS_ALPHA": "1e1"}, "alpha", 10.0),
        ({"RECSYS_LAKE": "s3://bucket/lake"}, "lake", "s3://bucket/lake"),
        ({"RECSYS_SOURCE": "postgres://shop"}, "source_conn_id", "shop"),
        ({"RECSYS_SOURCE_COLUMNS": "user_id=USER, event_ts = TS"}, "source_columns",
         {"user_id": "USER", "event_ts": "TS"}),
        ({"RECSYS_EVENT_WEIGHTS": "view=1, buy=10"}, "event_weights", {"view": 1.0, "buy": 10.0}),
        ({"RECSYS_PURCHASE_EVENT_TYPES": "buy, order ,"}, "purchase_event_types", ("buy", "order")),
        ({"RECSYS_TUNING_GRID": ""}, "tuning_grid", ""),  # empty = no tuning
        ({"RECSYS_DYNAMODB_ENDPOINT": ""}, "dynamodb_endpoint", None),  # empty or aws = real AWS
        ({"RECSYS_DYNAMODB_ENDPOINT": " aws "}, "dynamodb_endpoint", None),
        ({"RECSYS_DYNAMODB_ENDPOINT": " http://127.0.0.1:8001 "}, "dynamodb_endpoint", "http://127.0.0.1:8001"),
        ({"RECSYS_DUCKDB_TEMP_DIR": "/spill"}, "duckdb_temp_dir", Path("/spill")),
        ({"RECSYS_CACHE": "/c", "XDG_CACHE_HOME": "/x"}, "cache_dir", Path("/c")),
        ({"XDG_CACHE_HOME": "/x"}, "cache_dir", Path("/x/recsys")),
        ({"RECSYS_AWS_REGION": " eu-west-1 ", "AWS_DEFAULT_REGION": "us-west-2"}, "aws_region", "eu-west-1"),
        ({"RECSYS_AWS_REGION": " ", "AWS_DEFAULT_REGION": "ap-south-1"}, "aws_region", "ap-south-1"),
        ({"RECSYS_PUBLISH_POOL": " shop_pool "}, "publish_pool", "shop_pool"),
        ({"RECSYS_PUBLISH_POOL": "  "}, "publish_pool", "recsys_dynamodb"),
        ({"RECSYS_S3_ENDPOINT": " http://127.0.0.1:9000 "}, "s3_endpoint", "http://127.0.0.1:9000"),
        ({"RECSYS_SERVE_TIMEOUT": " 0.25 "}, "serve_timeout", 0.25),
        ({"RECSYS_AIRFLOW_EXECUTOR": "CeleryExecutor"}, "airflow_executor", "CeleryExecutor"),
        ({"RECSYS_AIRFLOW_WORKER_CONCURRENCY": "4"}, "airflow_worker_concurrency", 4),
        ({"RECSYS_AIRFLOW_PASSWORD": "secret"}, "airflow_password", "secret"),
        ({"RECSYS_SQL_DIR": "/sql"}, "sql_dir", Path("/sql")),
        ({"RECSYS_DAGS_FOLDER": "/dags"}, "dags_folder", Path("/dags")),
    ],
)
def test_a_variable_sets_its_field(env: dict[str, str], field: str, value: Any) -> None:
    assert getattr(Settings.from_env(env), field) == value


def test_empty_variables_are_unset(tmp_path: Path) -> None:
    every = {variable: "" for name in Settings.model_fields for variable in variables_of(name)}
    s = Settings.from_env({**every, "RECSYS_HOME": str(tmp_path)})
    # Only the variables where empty means something differ from the defaults.
    defaults = Settings.from_env({"RECSYS_HOME": str(tmp_path)})
    assert (s.tuning_grid, s.dynamodb_endpoint, s.tune_blend_weights, s.blend_weights) == ("", None, "", ())
    restored = {"tuning_grid": defaults.tuning_grid, "dynamodb_endpoint": defaults.dynamodb_endpoint,
                "tune_blend_weights": defaults.tune_blend_weights}
    assert s.with_overrides(restored) == defaults


def test_a_store_of_your_own_has_no_demo_catalog(tmp_path: Path) -> None:
    assert Settings.from_env({"RECSYS_SOURCE": "/data"}).catalog is None
    assert Settings.from_env({"RECSYS_SOURCE": "/data", "RECSYS_CATALOG": "/items.csv"}).catalog == "/items.csv"
    assert Settings.from_env({"RECSYS_SOURCE": ""}).catalog == str(Settings.from_env({}).demo_dir / "catalog.parquet")


def test_settings_constructor_reads_the_environment_like_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_K", "7")
    monkeypatch.setenv("RECSYS_SOURCE", "/data")
    assert Settings() == Settings.from_env()
    assert Settings().k == 7 and Settings(k=9).k == 9 and Settings().catalog is None
    assert Settings.from_env({}).k == 20  # a mapping given replaces os.environ


def test_the_one_value_helpers_read_only_their_own_variables() -> None:
    # A bad variable elsewhere cannot fail them: the DAG file reads the pool while it is parsed.
    env = {"RECSYS_K": "many", "RECSYS_PUBLISH_POOL": " shop_pool ", "RECSYS_HOME": "~/recsys-home",
           "RECSYS_S3_ENDPOINT": " ", "AWS_DEFAULT_REGION": "eu-north-1"}
    assert publish_pool_from_env(env) == "shop_pool"
    assert home_from_env(env) == Path.home() / "recsys-home"
    assert s3_endpoint_from_env(env) is None
    assert s3_endpoint_from_env({"RECSYS_S3_ENDPOINT": "http://minio:9000"}) == "http://minio:9000"
    assert aws_region_from_env(env) == "eu-north-1"
    assert (publish_pool_from_env({}), aws_region_from_env({})) == ("recsys_dynamodb", "us-east-1")
    assert (sql_dir_from_env(env), dags_folder_from_env(env)) == (REPO / "sql", REPO / "dags")
    assert sql_dir_from_env({"RECSYS_SQL_DIR": "/q"}) == Path("/q")


def test_the_deadline_is_a_time_of_the_day_after_the_run_date_and_optional() -> None:
    import datetime as dt

    assert publish_deadline_from_env({}) is None and publish_deadline_from_env({"RECSYS_PUBLISH_DEADLINE": " "}) is None
    assert publish_deadline_from_env({"RECSYS_PUBLISH_DEADLINE": "06:30", "RECSYS_K": "many"}) == dt.timedelta(
        days=1, hours=6, minutes=30)


def test_the_asset_uris_name_the_region_and_table_and_the_lakes_dataset(tmp_path: Path) -> None:
    env = {"RECSYS_AWS_REGION": "eu-west-1", "RECSYS_TABLE": "shop_recs", "RECSYS_HOME": str(tmp_path),
           "RECSYS_K": "many"}  # a bad variable elsewhere cannot fail a DAG file's parse
    assert asset_uris_from_env(env) == ("dynamodb://eu-west-1/shop_recs", f"file://{tmp_path}/lake/recommendations")
    assert asset_uris_from_env({"RECSYS_LAKE": "s3://bucket/lake/"})[1] == "s3://bucket/lake/recommendations"
    assert Settings.from_env({"RECSYS_ALERT_EMAIL_TO": " a@example.com,, b@example.com "}).alert_email_to == (
        "a@example.com", "b@example.com")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RECSYS_WINDOW_DAYS": "many"}, "setting window_days: expected int, got 'many'"),
        ({"RECSYS_ALPHA": "high"}, "setting alpha: expected float, got 'high'"),
        ({"RECSYS_K": "3.0"}, "setting k: expected int, got '3.0'"),
        ({"RECSYS_WINDOW_DAYS": "1"}, "window_days must be at least 2, got 1"),
        ({"RECSYS_WINDOW_DAYS": "5", "RECSYS_HOLDOUT_DAYS": "5"},
         "holdout_days must be between 1 and window_days-1 (4), got 5"),
        ({"RECSYS_TUNE_MAX_USERS": "-1"}, "tune_max_users must be 0 (every user) or more, got -1"),
        ({"RECSYS_K": "0"}, "k must be at least 1, got 0"),
        ({"RECSYS_EVENT_WEIGHTS": "View=1,Buy"},
         "RECSYS_EVENT_WEIGHTS: expected 'name=value,name=value', got 'Buy' in 'View=1,Buy'"),
        ({"RECSYS_EVENT_WEIGHTS": "View=lots"}, "RECSYS_EVENT_WEIGHTS: weight of 'View' must be a number, got 'lots'"),
        ({"RECSYS_EVENT_WEIGHTS": " , "}, "RECSYS_EVENT_WEIGHTS: at least one event type is needed"),
        ({"RECSYS_SOURCE_COLUMNS": "user_id"},
         "RECSYS_SOURCE_COLUMNS: expected 'name=value,name=value', got 'user_id' in 'user_id'"),
        ({"RECSYS_MODEL": "svd"}, "model must be one of ('als', 'bpr', 'ease', 'rp3beta', 'itemknn'), got 'svd'"),
        ({"RECSYS_TUNING_GRID": "model=itemknn;similarity=jaccard"},
         "similarity must be one of ('cosine', 'bm25', 'tfidf'), got 'jaccard'"),
        ({"RECSYS_TUNING_GRID": "model=ease;ease_lambda=0,100"},
         "tuning grid key ease_lambda: values must be more than 0, got [0.0, 100.0]"),
        ({"RECSYS_TUNING_GRID": "neighbours=0"}, "tuning grid key neighbours: values must be at least 1, got [0]"),
        ({"RECSYS_TUNING_GRID": "rp3_beta=-0.5"}, "tuning grid key rp3_beta: values must be 0 or more, got [-0.5]"),
        ({"RECSYS_EASE_MAX_ITEMS": "-1"}, "ease_max_items must be 0 (EASE never fits) or more, got -1"),
        ({"RECSYS_TUNE_BLEND_WEIGHTS": "0.5,1"},
         "tune_blend_weights must be numbers between 0 and 1 (exclusive), got '0.5,1'"),
        ({"RECSYS_TUNE_BLEND_WEIGHTS": "half"},
         "tune_blend_weights must be comma-separated numbers like 0.25,0.5,0.75, got 'half'"),
        ({"RECSYS_TUNE_HALVING": "1"}, "tune_halving must be at least 2 (the screening keeps 1/eta), got 1"),
        ({"RECSYS_TUNE_BUDGET_SECONDS": "-1"}, "tune_budget_seconds must be 0 (no budget) or more, got -1"),
        ({"RECSYS_TUNING_GRID": "weighting=tfidf"}, "weighting must be one of ('log', 'bm25'), got 'tfidf'"),
        ({"RECSYS_TUNING_GRID": "half_life=-1"}, "tuning grid key half_life: values must be 0 or more, got [-1.0]"),
        ({"RECSYS_TUNING_GRID": "weight.Teleport=2"},
         ("tuning grid key weight.Teleport: 'Teleport' is not a configured event type (RECSYS_EVENT_WEIGHTS has "
          "['AddToCart', 'Purchase', 'StartCheckout', 'View', 'ViewCart'])")),
        ({"RECSYS_EXCLUDE_SEEN": "some"}, "exclude_seen must be 'all' or 'purchased', got 'some'"),
        ({"RECSYS_PUBLISH_POOL_SLOTS": "0"}, "publish_pool_slots must be at least 1, got 0"),
        ({"RECSYS_DUCKDB_MEMORY_LIMIT": "lots"},
         "RECSYS_DUCKDB_MEMORY_LIMIT: expected a size such as 4GB or 512MiB, got 'lots'"),
        ({"RECSYS_MAX_BAD_SHARE": "1"}, "max_bad_share must be in [0, 1), got 1.0"),
        ({"RECSYS_VOLUME_MAX_RATIO": "0.5"},
         "volume band must satisfy 0 <= volume_min_ratio <= 1 <= volume_max_ratio, got 0.1 and 0.5"),
        ({"RECSYS_SERVE_TIMEOUT": "soon"}, "RECSYS_SERVE_TIMEOUT: expected seconds as a number (e.g. 0.5), got 'soon'"),
        ({"RECSYS_SERVE_TIMEOUT": " 61 "},
         "RECSYS_SERVE_TIMEOUT: expected seconds between 0 and 60 (e.g. 0.5), got '61'"),
        ({"RECSYS_AIRFLOW_EXECUTOR": "KubernetesExecutor"},
         "RECSYS_AIRFLOW_EXECUTOR must be one of ('LocalExecutor', 'CeleryExecutor'), got 'KubernetesExecutor'"),
        ({"RECSYS_AIRFLOW_PORT": "http"},
         ("RECSYS_AIRFLOW_WORKERS, _WORKER_CONCURRENCY and _PORT must be integers: "
          "invalid literal for int() with base 10: 'http'")),
        ({"RECSYS_AIRFLOW_DB": "sqlite:///airflow.db"},
         "RECSYS_AIRFLOW_DB must be a postgresql+psycopg2:// URL, got 'sqlite:///airflow.db'"),
        ({"RECSYS_PUBLISH_DEADLINE": "6:30"},
         "RECSYS_PUBLISH_DEADLINE: expected a UTC time of day HH:MM such as 06:30, got '6:30'"),
        ({"RECSYS_PUBLISH_DEADLINE": "24:00"},
         "RECSYS_PUBLISH_DEADLINE: expected a UTC time of day HH:MM such as 06:30, got '24:00'"),
        ({"RECSYS_ALERT_SMTP_CONN_ID": "smtp_default"},
         ("RECSYS_ALERT_SMTP_CONN_ID is 'smtp_default' but RECSYS_ALERT_EMAIL_TO is empty: set it to the addresses "
          "the alerts go to, comma-separated")),
    ],
)
def test_a_bad_value_fails_with_a_message_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message


# --------------------------------------------------------------------------- one run's overrides


def test_overrides_replace_fields_and_ignore_none_unknown_and_run_params(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Settings.from_env({"RECSYS_FACTORS": "32"})
    monkeypatch.setenv("RECSYS_K", "many")  # overrides never read the environment
    run = base.with_overrides({"k": 5, "model": "bpr", "factors": None, "no_such_field": 1,
                               "run_date": "2026-06-01", "force_publish": True})
    assert (run.k, run.model, run.factors) == (5, "bpr", 32)
    assert run.with_overrides({"k": 20, "model": "als"}) == base and base.k == 20
    assert base.with_overrides({"tuning_grid": ""}).tuning_grid == ""
    with pytest.raises(ConfigError, match=r"^k must be at least 1, got 0$"):
        base.with_overrides({"k": 0})
    with pytest.raises(ConfigError, match=r"^setting k: expected int, got 2\.5$"):
        base.with_overrides({"k": 2.5})


def test_settings_are_frozen_and_picklable() -> None:
    s = Settings.from_env({"RECSYS_SOURCE": "/data", "RECSYS_AIRFLOW_PASSWORD": "secret"})
    with pytest.raises(ValidationError, match="frozen"):
        s.__setattr__("k", 5)
    assert pickle.loads(pickle.dumps(s)) == s
    assert "secret" not in repr(s)


def test_config_imports_nothing_heavy() -> None:
    # The DAG file imports recsys.config whenever it is parsed.
    heavy = "{'airflow', 'pandas', 'duckdb', 'numpy', 'boto3'}"
    code = f"import sys, recsys.config; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- DAG Params


def test_dag_params_come_from_the_fields() -> None:
    params = dag_params()
    assert set(PARAM_FIELDS) == {"window_days", "holdout_days", "k", "factors", "regularization", "alpha",
                                 "iterations", "recency_half_life_days", "tuning_grid", "publish_shards", "model"}
    assert list(params) == ["run_date", "force_publish", *PARAM_FIELDS]
    assert params["k"] == {"default": None, "type": ["null", "integer"], "minimum": 1, "maximum": 100,
                           "description": "List length"}
    assert params["alpha"] == {"default": None, "type": ["null", "number"], "minimum": 0,
                               "description": "Confidence scaling: alpha * log1p(weight sum)"}
    assert params["model"] == {"default": None, "type": ["null", "string"],
                               "enum": [None, "als", "bpr", "ease", "rp3beta", "itemknn"],
                               "description": "Model family outside the grid (als, bpr, ease, rp3beta or itemknn)"}
    assert params["run_date"] == {"default": None, "type": ["null", "string"], "format": "date",
                                  "description": "Process this date instead of the data interval start"}
    assert params["force_publish"] == {"default": False, "type": "boolean",
                                       "description": "Publish even if the table serves a newer run date"}
    for name in PARAM_FIELDS:
        assert params[name]["description"] == Settings.model_fields[name].description
    params["k"]["maximum"] = 5
    assert dag_params()["k"]["maximum"] == 100  # a copy each time


def test_dag_params_are_airflow_params() -> None:
    sdk = pytest.importorskip("airflow.sdk")
    params = {name: sdk.Param(**kw) for name, kw in dag_params().items()}
    assert params["window_days"].resolve(None) is None and params["window_days"].resolve(30) == 30
    with pytest.raises(Exception, match="minimum"):
        params["window_days"].resolve(1)


# --------------------------------------------------------------------------- docs/configuration.md


def test_committed_configuration_docs_are_what_settings_generate() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == config_docs().render(), (
        "docs/configuration.md is stale: regenerate it with '.venv/bin/python scripts/config_docs.py'"
    )


def test_configuration_docs_name_every_variable_and_check_fails_on_drift(tmp_path: Path) -> None:
    docs = config_docs()
    text = docs.render()
    for name in Settings.model_fields:
        assert all(f"`{variable}`" in text for variable in variables_of(name)), name
    out = tmp_path / "configuration.md"
    assert docs.main(["--check", "--out", str(out)]) == 1  # missing
    assert docs.main(["--out", str(out)]) == 0 and docs.main(["--check", "--out", str(out)]) == 0
    out.write_text(text.replace("`70`", "`60`"), encoding="utf-8")
    assert docs.main(["--check", "--out", str(out)]) == 1


def test_settings_from_env_defaults_and_errors(tmp_path: Path) -> None:
    s = Settings.from_env({"RECSYS_HOME": str(tmp_path)})
    assert s.lake == str(tmp_path / "lake")
    assert s.catalog == str(tmp_path / "demo" / "catalog.parquet")
    assert s.dynamodb_endpoint == "http://127.0.0.1:8000"
    own = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_SOURCE": "/data", "RECSYS_DYNAMODB_ENDPOINT": ""})
    assert own.catalog is None and own.dynamodb_endpoint is None
    assert Settings.from_env({"RECSYS_WINDOW_DAYS": "30"}).window_days == 30
    with pytest.raises(ConfigError, match="window_days"):
        Settings.from_env({"RECSYS_WINDOW_DAYS": "many"})
    with pytest.raises(ConfigError, match="holdout_days"):
        Settings.from_env({"RECSYS_WINDOW_DAYS": "5", "RECSYS_HOLDOUT_DAYS": "5"})
    with pytest.raises(ConfigError, match="RECSYS_EVENT_WEIGHTS"):
        Settings.from_env({"RECSYS_EVENT_WEIGHTS": "View=1,Buy"})


@pytest.mark.parametrize(
    ("env", "pool", "region"),
    [
        ({}, "recsys_dynamodb", "us-east-1"),  # every default
        ({"RECSYS_HOME": "~/recsys-home", "RECSYS_PUBLISH_POOL": " shop_dynamodb ", "RECSYS_AWS_REGION": " eu-west-1 ",
          "AWS_DEFAULT_REGION": "us-west-2"}, "shop_dynamodb", "eu-west-1"),
        ({"RECSYS_PUBLISH_POOL": " ", "RECSYS_AWS_REGION": "", "AWS_DEFAULT_REGION": "ap-south-1"},
         "recsys_dynamodb", "ap-south-1"),
    ],
)
def test_settings_and_the_one_value_helpers_agree(env: dict[str, str], pool: str, region: str) -> None:
    # The DAG file (pool) and the S3 lake (home, region) read one value without building Settings;
    # Settings.from_env parses those variables with the same helpers, so both paths agree.
    from recsys.config import aws_region_from_env, home_from_env, publish_pool_from_env

    settings = Settings.from_env(env)
    assert settings.home == home_from_env(env) and settings.home.is_absolute()
    assert settings.publish_pool == publish_pool_from_env(env) == pool
    assert settings.aws_region == aws_region_from_env(env) == region
