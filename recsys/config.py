"""The one settings object of recsys.

Every knob is read from a ``RECSYS_*`` environment variable, with defaults that run the
embedded set-up (a local lake under ``RECSYS_HOME``, the demo store, DynamoDB Local).
The DAG's Params mirror the model and window knobs; :meth:`Settings.with_overrides`
applies them for one run. Secrets never live here: AWS credentials come from the standard
AWS chain (or dummy ones for DynamoDB Local).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "View": 1.0,
    "AddToCart": 4.0,
    "ViewCart": 2.0,
    "StartCheckout": 6.0,
    "Purchase": 10.0,
}
DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
DEFAULT_AWS_REGION = "us-east-1"
CANONICAL_COLUMNS = ("user_id", "item_id", "event_type", "event_ts")
OPTIONAL_COLUMNS = ("event_id",)
POPULAR_USER_ID = "__popular__"
# Grid keys: model fields (recsys.model.ModelParams), then what the confidence matrix is
# built from: the event weights (a preset, or one event type's weight: weight.<type>) and
# the recency half-life in days (0 = off).
TUNABLE: dict[str, type] = {
    "model": str,
    "factors": int,
    "regularization": float,
    "alpha": float,
    "iterations": int,
    "weighting": str,
    "learning_rate": float,
    "weights": str,
    "half_life": float,
}
WEIGHT_KEY_PREFIX = "weight."
MODELS = ("als", "bpr")
WEIGHTINGS = ("log", "bm25")
# DuckDB's memory_limit: a number and a unit (DuckDB spills to temp_directory beyond it).
MEMORY_LIMIT = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
DEFAULT_PUBLISH_POOL = "recsys_dynamodb"
DEFAULT_SOURCE_CONN_ID = "recsys_source"
WEIGHT_PRESETS = ("configured", "uniform")
# 12 candidates, as many as the grid had before recency: on the demo store log weighting
# scored best with alpha 10 at every size and BM25 with alpha 2 (or equal at 128 factors), so
# the grid spends the two other pairs on a recency half-life instead (see README, Tuning).
# BM25 with users as documents, as now, also scores best with alpha 2 (0.2512 against 0.2290
# at 16 factors) and wins the demo store.
DEFAULT_TUNING_GRID = (
    "weighting=log;alpha=10;factors=16,64,128;half_life=0,14"
    " | weighting=bm25;alpha=2;factors=16,64,128;half_life=0,14"
)


class ConfigError(ValueError):
    """A RECSYS_* variable has a value that cannot be used."""


def parse_mapping(text: str, variable: str) -> dict[str, str]:
    """Parse ``a=b,c=d`` into a dict; raises ConfigError naming the variable."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{variable}: expected 'name=value,name=value', got {part!r} in {text!r}")
        out[key.strip()] = value.strip()
    return out


def parse_grid(text: str) -> dict[str, list[Any]]:
    """Parse one tuning grid ``factors=32,64;alpha=2,10`` into {name: [values]}.

    Names are the keys of TUNABLE or ``weight.<event type>``. Raises ConfigError naming the
    grid when a name is not tunable or a value not a number.
    """
    grid: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, values = part.partition("=")
        name = name.strip()
        weight_key = name.startswith(WEIGHT_KEY_PREFIX) and len(name) > len(WEIGHT_KEY_PREFIX)
        if not sep or not (name in TUNABLE or weight_key):
            raise ConfigError(
                f"tuning grid {text!r}: expected 'name=v1,v2;...' with names among {sorted(TUNABLE)} "
                f"or {WEIGHT_KEY_PREFIX}<event type>, got {part!r}"
            )
        kind = float if weight_key else TUNABLE[name]
        try:
            grid[name] = [kind(v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"tuning grid {text!r}: values of {name} must be numbers, got {values!r}") from None
    return grid


def publish_pool_from_env(env: Mapping[str, str] | None = None) -> str:
    """The Airflow pool the publish shards run in: ``RECSYS_PUBLISH_POOL`` or ``recsys_dynamodb``.

    A function of its own because the DAG file needs the name when it is parsed, without
    building (and possibly failing on) the whole settings object.
    """
    env = os.environ if env is None else env
    return (env.get("RECSYS_PUBLISH_POOL") or "").strip() or DEFAULT_PUBLISH_POOL


def parse_grids(text: str) -> list[dict[str, list[Any]]]:
    """Parse a tuning grid that may be a union of grids, ``grid | grid``: one dict per grid.

    Each grid is a cartesian product; the union lets a family (e.g. ``model=bpr``) be tried
    without multiplying the other grid. Raises ConfigError like :func:`parse_grid`.
    """
    return [parse_grid(part) for part in text.split("|") if part.strip()]


def home_from_env(env: Mapping[str, str] | None = None) -> Path:
    """``RECSYS_HOME`` (default ``var``), resolved: where every local working folder lives."""
    env = os.environ if env is None else env
    return Path(env.get("RECSYS_HOME") or "var").expanduser().resolve()


def s3_endpoint_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``RECSYS_S3_ENDPOINT``: the URL of an S3-compatible server (MinIO, moto), or None for AWS S3.

    A function of its own, like :func:`publish_pool_from_env`, because :mod:`recsys.lake` is
    called with the lake root string only; credentials come from the standard AWS chain.
    """
    env = os.environ if env is None else env
    return (env.get("RECSYS_S3_ENDPOINT") or "").strip() or None


def aws_region_from_env(env: Mapping[str, str] | None = None) -> str:
    """``RECSYS_AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``: the region of
    DynamoDB (:attr:`Settings.aws_region`) and of an S3 lake (:func:`recsys.lake.s3_client`,
    which, like :func:`s3_endpoint_from_env`, has only the environment to go on).
    """
    env = os.environ if env is None else env
    return (
        (env.get("RECSYS_AWS_REGION") or "").strip() or (env.get("AWS_DEFAULT_REGION") or "").strip()
        or DEFAULT_AWS_REGION
    )


def _parse_weights(text: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for key, value in parse_mapping(text, "RECSYS_EVENT_WEIGHTS").items():
        try:
            weights[key] = float(value)
        except ValueError:
            raise ConfigError(f"RECSYS_EVENT_WEIGHTS: weight of {key!r} must be a number, got {value!r}") from None
    if not weights:
        raise ConfigError("RECSYS_EVENT_WEIGHTS: at least one event type is needed")
    return weights


@dataclass(frozen=True)
class Settings:
    home: Path
    lake: str
    source: str
    source_columns: dict[str, str]
    catalog: str | None
    source_table: str = "events"
    source_query: str | None = None
    window_days: int = 70
    holdout_days: int = 7
    holdout_max_users: int = 20_000
    tune_max_users: int = 200_000
    k: int = 20
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    recency_half_life_days: float = 0.0
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 10
    random_state: int = 42
    tuning_grid: str = DEFAULT_TUNING_GRID
    weighting: str = "log"
    model: str = "als"
    learning_rate: float = 0.01
    bpr_regularization: float = 0.01
    bpr_iterations: int = 100
    gate_min_lift: float = 0.05
    gate_max_drop: float = 0.25
    exclude_seen: str = "all"
    purchase_event_types: tuple[str, ...] = ("Purchase",)
    max_per_category: int = 0
    max_bad_share: float = 0.01
    volume_min_ratio: float = 0.1
    volume_max_ratio: float = 5.0
    volume_history_days: int = 14
    max_unknown_item_share: float = 0.05
    bot_max_user_share: float = 0.5
    bot_min_day_rows: int = 1000
    validate_chunk_rows: int = 1_000_000
    dynamodb_endpoint: str | None = DEFAULT_ENDPOINT
    aws_region: str = DEFAULT_AWS_REGION
    table: str = "recsys_user_recommendations"
    ttl_days: int = 14
    publish_threads: int = 8
    publish_shards: int = 4
    publish_pool: str = DEFAULT_PUBLISH_POOL
    publish_pool_slots: int = 4
    recommend_batch_users: int = 50_000
    duckdb_memory_limit: str = "4GB"
    duckdb_threads: int = 0
    duckdb_temp_directory: str = ""
    verify_sample: int = 200
    cache_dir: Path = Path.home() / ".cache" / "recsys"

    @property
    def source_conn_id(self) -> str | None:
        """The Airflow connection id when the source is PostgreSQL (``postgres://CONN_ID``), else None."""
        scheme, sep, rest = self.source.partition("://")
        if scheme.lower() in ("postgres", "postgresql") and (sep or not rest):
            return rest.strip("/") or DEFAULT_SOURCE_CONN_ID
        return None

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def duckdb_temp_dir(self) -> Path:
        """Where DuckDB spills when a query outgrows ``duckdb_memory_limit``."""
        return Path(self.duckdb_temp_directory) if self.duckdb_temp_directory else self.home / "duckdb-tmp"

    @property
    def demo_dir(self) -> Path:
        return self.home / "demo"

    @property
    def dynamodb_local_dir(self) -> Path:
        return self.home / "dynamodb-local"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``RECSYS_*`` variables; raises ConfigError on a bad value.

        A variable that code outside the settings also needs on its own (the DAG file, the S3
        lake) is parsed by its ``*_from_env`` function, here as there, so the two cannot differ.
        """
        env = os.environ if env is None else env
        home = home_from_env(env)
        demo = home / "demo"
        source_set = bool(env.get("RECSYS_SOURCE"))
        source = env.get("RECSYS_SOURCE") or str(demo / "interactions")
        # The demo catalog only describes the demo store: a store of your own has no
        # catalog unless RECSYS_CATALOG names one (then every item counts as active).
        catalog = env.get("RECSYS_CATALOG") or (None if source_set else str(demo / "catalog.parquet"))
        endpoint_raw = env.get("RECSYS_DYNAMODB_ENDPOINT")
        endpoint: str | None
        if endpoint_raw is None:
            endpoint = DEFAULT_ENDPOINT
        elif endpoint_raw.strip() in ("", "aws"):
            endpoint = None  # the real AWS endpoint of the region, standard credential chain
        else:
            endpoint = endpoint_raw.strip()
        cache = env.get("RECSYS_CACHE") or os.path.join(
            env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "recsys"
        )
        values: dict[str, Any] = dict(
            home=home,
            lake=env.get("RECSYS_LAKE") or str(home / "lake"),
            source=source,
            source_columns=parse_mapping(env.get("RECSYS_SOURCE_COLUMNS", ""), "RECSYS_SOURCE_COLUMNS"),
            catalog=catalog,
            dynamodb_endpoint=endpoint,
            cache_dir=Path(cache),
            publish_pool=publish_pool_from_env(env),
            aws_region=aws_region_from_env(env),
        )
        if env.get("RECSYS_EVENT_WEIGHTS"):
            values["event_weights"] = _parse_weights(env["RECSYS_EVENT_WEIGHTS"])
        simple = {
            "RECSYS_WINDOW_DAYS": "window_days",
            "RECSYS_HOLDOUT_DAYS": "holdout_days",
            "RECSYS_HOLDOUT_MAX_USERS": "holdout_max_users",
            "RECSYS_TUNE_MAX_USERS": "tune_max_users",
            "RECSYS_K": "k",
            "RECSYS_RECENCY_HALF_LIFE_DAYS": "recency_half_life_days",
            "RECSYS_FACTORS": "factors",
            "RECSYS_REGULARIZATION": "regularization",
            "RECSYS_ALPHA": "alpha",
            "RECSYS_ITERATIONS": "iterations",
            "RECSYS_WEIGHTING": "weighting",
            "RECSYS_MODEL": "model",
            "RECSYS_LEARNING_RATE": "learning_rate",
            "RECSYS_BPR_REGULARIZATION": "bpr_regularization",
            "RECSYS_BPR_ITERATIONS": "bpr_iterations",
            "RECSYS_GATE_MIN_LIFT": "gate_min_lift",
            "RECSYS_GATE_MAX_DROP": "gate_max_drop",
            "RECSYS_EXCLUDE_SEEN": "exclude_seen",
            "RECSYS_MAX_PER_CATEGORY": "max_per_category",
            "RECSYS_MAX_BAD_SHARE": "max_bad_share",
            "RECSYS_VOLUME_MIN_RATIO": "volume_min_ratio",
            "RECSYS_VOLUME_MAX_RATIO": "volume_max_ratio",
            "RECSYS_VOLUME_HISTORY_DAYS": "volume_history_days",
            "RECSYS_MAX_UNKNOWN_ITEM_SHARE": "max_unknown_item_share",
            "RECSYS_BOT_MAX_USER_SHARE": "bot_max_user_share",
            "RECSYS_BOT_MIN_DAY_ROWS": "bot_min_day_rows",
            "RECSYS_VALIDATE_CHUNK_ROWS": "validate_chunk_rows",
            "RECSYS_TABLE": "table",
            "RECSYS_TTL_DAYS": "ttl_days",
            "RECSYS_PUBLISH_THREADS": "publish_threads",
            "RECSYS_PUBLISH_SHARDS": "publish_shards",
            "RECSYS_PUBLISH_POOL_SLOTS": "publish_pool_slots",
            "RECSYS_RECOMMEND_BATCH_USERS": "recommend_batch_users",
            "RECSYS_DUCKDB_MEMORY_LIMIT": "duckdb_memory_limit",
            "RECSYS_DUCKDB_THREADS": "duckdb_threads",
            "RECSYS_DUCKDB_TEMP_DIR": "duckdb_temp_directory",
            "RECSYS_VERIFY_SAMPLE": "verify_sample",
            "RECSYS_SOURCE_TABLE": "source_table",
            "RECSYS_SOURCE_QUERY": "source_query",
        }
        for variable, name in simple.items():
            if env.get(variable):
                values[name] = env[variable]
        if env.get("RECSYS_PURCHASE_EVENT_TYPES"):
            values["purchase_event_types"] = tuple(
                t.strip() for t in env["RECSYS_PURCHASE_EVENT_TYPES"].split(",") if t.strip()
            )
        if "RECSYS_TUNING_GRID" in env:  # empty = no tuning: the settings' own ALS parameters
            values["tuning_grid"] = env["RECSYS_TUNING_GRID"]
        return cls._checked(values)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """A copy with the given fields replaced (e.g. from DAG Params); None values are ignored."""
        values = dataclasses.asdict(self)
        values.update({k: v for k, v in overrides.items() if v is not None and k in values})
        return self._checked(values)

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> "Settings":
        """Coerce field types and check ranges; raises ConfigError naming the field."""
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            try:
                if f.type in ("int",):
                    values[f.name] = int(value)
                elif f.type in ("float",):
                    values[f.name] = float(value)
                elif f.type == "Path":
                    values[f.name] = Path(value)
            except (TypeError, ValueError):
                raise ConfigError(f"setting {f.name}: expected {f.type}, got {value!r}") from None
        settings = cls(**values)
        if settings.window_days < 2:
            raise ConfigError(f"window_days must be at least 2, got {settings.window_days}")
        if not 1 <= settings.holdout_days < settings.window_days:
            raise ConfigError(
                f"holdout_days must be between 1 and window_days-1 ({settings.window_days - 1}), "
                f"got {settings.holdout_days}"
            )
        if settings.tune_max_users < 0:
            raise ConfigError(f"tune_max_users must be 0 (every user) or more, got {settings.tune_max_users}")
        if settings.holdout_max_users < 0:
            raise ConfigError(f"holdout_max_users must be 0 (every warm user) or more, got {settings.holdout_max_users}")
        if settings.k < 1:
            raise ConfigError(f"k must be at least 1, got {settings.k}")
        grids = parse_grids(settings.tuning_grid)
        for name, allowed, default in (("weighting", WEIGHTINGS, settings.weighting), ("model", MODELS, settings.model),
                                       ("weights", WEIGHT_PRESETS, "configured")):
            for value in [default, *(v for grid in grids for v in grid.get(name, []))]:
                if value not in allowed:
                    raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        for grid in grids:
            for name, values in grid.items():
                event_type = name[len(WEIGHT_KEY_PREFIX):]
                if name.startswith(WEIGHT_KEY_PREFIX) and event_type not in settings.event_weights:
                    raise ConfigError(
                        f"tuning grid key {name}: {event_type!r} is not a configured event type "
                        f"(RECSYS_EVENT_WEIGHTS has {sorted(settings.event_weights)})"
                    )
                if (name.startswith(WEIGHT_KEY_PREFIX) or name == "half_life") and any(v < 0 for v in values):
                    raise ConfigError(f"tuning grid key {name}: values must be 0 or more, got {values}")
        if settings.recency_half_life_days < 0:
            raise ConfigError(f"recency_half_life_days must be 0 (off) or more, got {settings.recency_half_life_days}")
        if settings.exclude_seen not in ("all", "purchased"):
            raise ConfigError(f"exclude_seen must be 'all' or 'purchased', got {settings.exclude_seen!r}")
        if settings.max_per_category < 0:
            raise ConfigError(f"max_per_category must be 0 (off) or more, got {settings.max_per_category}")
        for name in ("publish_threads", "publish_shards", "publish_pool_slots"):
            if getattr(settings, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(settings, name)}")
        if settings.recommend_batch_users < 1:
            raise ConfigError(f"recommend_batch_users must be at least 1, got {settings.recommend_batch_users}")
        if settings.validate_chunk_rows < 1:
            raise ConfigError(f"validate_chunk_rows must be at least 1, got {settings.validate_chunk_rows}")
        if not MEMORY_LIMIT.fullmatch(settings.duckdb_memory_limit):
            raise ConfigError(
                f"RECSYS_DUCKDB_MEMORY_LIMIT: expected a size such as 4GB or 512MiB, got {settings.duckdb_memory_limit!r}"
            )
        if settings.duckdb_threads < 0:
            raise ConfigError(f"duckdb_threads must be 0 (one per core) or more, got {settings.duckdb_threads}")
        if not 0.0 <= settings.max_bad_share < 1.0:
            raise ConfigError(f"max_bad_share must be in [0, 1), got {settings.max_bad_share}")
        if not 0.0 <= settings.volume_min_ratio <= 1.0 <= settings.volume_max_ratio:
            raise ConfigError(
                f"volume band must satisfy 0 <= volume_min_ratio <= 1 <= volume_max_ratio, "
                f"got {settings.volume_min_ratio} and {settings.volume_max_ratio}"
            )
        if settings.volume_history_days < 1:
            raise ConfigError(f"volume_history_days must be at least 1, got {settings.volume_history_days}")
        if not 0.0 < settings.bot_max_user_share <= 1.0 or not 0.0 <= settings.max_unknown_item_share <= 1.0:
            raise ConfigError(
                f"bot_max_user_share must be in (0, 1] and max_unknown_item_share in [0, 1], "
                f"got {settings.bot_max_user_share} and {settings.max_unknown_item_share}"
            )
        return settings
