"""The one settings object of recsys, and the only reader of ``RECSYS_*`` variables.

Every knob is a field of :class:`Settings`, read from one ``RECSYS_*`` environment variable
(``RECSYS_<FIELD>`` unless the field names another), with defaults that run the embedded
set-up (a local lake under ``RECSYS_HOME``, the demo store, DynamoDB Local). A field's
declaration holds everything about it: type, default, parsing, description (which
``docs/configuration.md`` is generated from, by ``scripts/config_docs.py``) and, for the knobs
a single run may change, the DAG Param (:func:`dag_params`); :meth:`Settings.with_overrides`
applies the Params of one run. Secrets do not live here: AWS credentials come from the standard
AWS chain (or dummy ones for DynamoDB Local), the PostgreSQL source from its Airflow connection;
the two secrets that do live here, the local Airflow stack's UI password and the API keys of
``recsys serve``, stay out of ``repr``.

Imported by the DAG file when it is parsed: only pydantic here, nothing heavy.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from recsys import datasets

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
# Grid keys: model fields (recsys.core.model.ModelParams), then what the confidence matrix is
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
    "ease_lambda": float,
    "rp3_alpha": float,
    "rp3_beta": float,
    "neighbours": int,
    "similarity": str,
    "weights": str,
    "half_life": float,
}
WEIGHT_KEY_PREFIX = "weight."
MODELS = ("als", "bpr", "ease", "rp3beta", "itemknn")
WEIGHTINGS = ("log", "bm25")
SIMILARITIES = ("cosine", "bm25", "tfidf")  # item-kNN: implicit's item-item recommenders
# DuckDB's memory_limit: a number and a unit (DuckDB spills to temp_directory beyond it).
DEADLINE = re.compile(r"([01]\d|2[0-3]):[0-5]\d")  # RECSYS_PUBLISH_DEADLINE, HH:MM
MEMORY_LIMIT = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
DEFAULT_PUBLISH_POOL = "recsys_dynamodb"
DEFAULT_SOURCE_CONN_ID = "recsys_source"
WEIGHT_PRESETS = ("configured", "uniform")
# ALS: each weighting with the alpha that scored best for it in the tuning runs of
# docs/benchmarks.md, three sizes, with and without a recency half-life. Then the item
# families, at values that did well on a real retail log (issue 17), for the hold-out to
# weigh against ALS: the demo store's low-rank tastes favour ALS, real logs often not.
# 28 candidates: more than a night's budget fully evaluates (screening and promotion pick the few).
DEFAULT_TUNING_GRID = (
    "weighting=log;alpha=10;factors=16,64;half_life=0,14"
    " | weighting=bm25;alpha=2,20;factors=16,64,128,256"
    " | model=ease;ease_lambda=50,200,500,1000"
    " | model=rp3beta;rp3_alpha=0.4,0.6,0.8;rp3_beta=0.3,0.5;neighbours=200"
    " | model=itemknn;similarity=bm25,cosine,tfidf;neighbours=100,300"
)
DEFAULT_REFRESH_SCHEDULE = "0 * * * *"  # hourly, on the hour
DEFAULT_SERVE_TIMEOUT = 0.5  # seconds for one API request's DynamoDB reads, retries included
DEFAULT_AIRFLOW_DB = "postgresql+psycopg2://postgres@127.0.0.1:5432/recsys_airflow"
DEFAULT_AIRFLOW_BROKER = "redis://127.0.0.1:6379/0"
AIRFLOW_EXECUTORS = ("LocalExecutor", "CeleryExecutor")
ENV_PREFIX = "RECSYS_"
_SOURCE_TREE = Path(__file__).resolve().parents[1]

# DAG Params that are not settings: they say which run this is, not how to compute it.
# They are not fields, so with_overrides ignores them like any other unknown key.
DAG_ONLY_PARAMS: dict[str, dict[str, Any]] = {
    "run_date": {
        "default": None,
        "type": ["null", "string"],
        "format": "date",
        "description": "Process this date instead of the data interval start",
    },
    "force_publish": {
        "default": False,
        "type": "boolean",
        "description": "Publish even if the table serves a newer run date",
    },
}
_JSON_TYPES: dict[Any, str] = {int: "integer", float: "number", str: "string", bool: "boolean"}


class ConfigError(ValueError):
    """A RECSYS_* variable has a value that cannot be used."""


# --------------------------------------------------------------------------- parsing helpers


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


def parse_grids(text: str) -> list[dict[str, list[Any]]]:
    """Parse a tuning grid that may be a union of grids, ``grid | grid``: one dict per grid.

    Each grid is a cartesian product; the union lets a family (e.g. ``model=bpr``) be tried
    without multiplying the other grid. Raises ConfigError like :func:`parse_grid`.
    """
    return [parse_grid(part) for part in text.split("|") if part.strip()]


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


# Variables are text; these turn the text of one field into its value. Values that are not
# text (defaults, DAG Params) go to pydantic's own validation as they are.


def _number(kind: type[int | float]) -> Callable[[Any, ValidationInfo], Any]:
    def parse(value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return kind(value)  # Python's reading, as before: " 30 " and "1_000" are numbers
        except ValueError:
            raise ConfigError(f"setting {info.field_name}: expected {kind.__name__}, got {value!r}") from None

    return parse


def _weights(value: Any) -> Any:
    return _parse_weights(value) if isinstance(value, str) else value


def _source_columns(value: Any) -> Any:
    return parse_mapping(value, "RECSYS_SOURCE_COLUMNS") if isinstance(value, str) else value


def _comma_list(value: Any) -> Any:
    return tuple(t.strip() for t in value.split(",") if t.strip()) if isinstance(value, str) else value


def _endpoint(value: Any) -> Any:
    if isinstance(value, str) and value.strip() in ("", "aws"):
        return None  # the real AWS endpoint of the region, standard credential chain
    return value.strip() if isinstance(value, str) else value


def _seconds(value: Any) -> Any:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"RECSYS_SERVE_TIMEOUT: expected seconds as a number (e.g. 0.5), got {value!r}") from None
    if not 0.0 < seconds <= 60.0:
        raise ConfigError(f"RECSYS_SERVE_TIMEOUT: expected seconds between 0 and 60 (e.g. 0.5), got {value!r}")
    return seconds


def _airflow_number(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"RECSYS_AIRFLOW_WORKERS, _WORKER_CONCURRENCY and _PORT must be integers: {exc}") from None


def _clock_time(value: Any) -> Any:
    """``HH:MM`` (UTC) -> a time; RECSYS_COMPLETE_AFTER."""
    if not isinstance(value, str):
        return value
    try:
        return dt.time.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"RECSYS_COMPLETE_AFTER: expected a UTC time of day as HH:MM (e.g. 23:00), got {value!r}"
        ) from None


DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", re.IGNORECASE)


def parse_duration(text: str, variable: str) -> float:
    """``6h``, ``90m``, ``30s`` or a plain number of seconds -> seconds; raises ConfigError naming the variable."""
    match = DURATION.fullmatch(text)
    if not match:
        raise ConfigError(f"{variable}: expected a duration such as 6h, 90m, 30s or a number of seconds, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2).lower()]


def _wait_timeout(value: Any) -> Any:
    return parse_duration(value, "RECSYS_WAIT_TIMEOUT") if isinstance(value, str) else value


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve()


def _under_home(*parts: str) -> Callable[[dict[str, Any]], str]:
    """A default below the (already validated) home folder."""
    return lambda data: str(Path(data.get("home") or _resolved(Path("var"))).joinpath(*parts))


Int = Annotated[int, BeforeValidator(_number(int))]
Float = Annotated[float, BeforeValidator(_number(float))]
AirflowInt = Annotated[int, BeforeValidator(_airflow_number)]


def _meta(
    group: str,
    *,
    env: tuple[str, ...] = (),
    param: dict[str, Any] | None = None,
    doc: str = "",
    default_doc: str = "",
    strip: bool = False,
    keep_empty: bool = False,
) -> dict[str, Any]:
    """What a field adds to its type, default and description (``json_schema_extra``).

    ``env``: the variables read, first set one wins (default ``RECSYS_<FIELD>``); ``param``: the
    DAG Param's bounds (the field is then a Param); ``doc``: more text for the documentation
    than the Param shows; ``default_doc``: the default as the documentation states it (when it
    depends on the machine or on other settings); ``strip``: surrounding blanks are dropped;
    ``keep_empty``: an empty variable is a value, not unset.
    """
    meta: dict[str, Any] = {"group": group}
    if env:
        meta["env"] = list(env)
    if param is not None:
        meta["param"] = param
    for key, value in (("doc", doc), ("default_doc", default_doc), ("strip", strip), ("keep_empty", keep_empty)):
        if value:
            meta[key] = value
    return meta


_PATHS = "Data and paths"
_WINDOW = "Window and evaluation"
_MODEL = "Model and tuning"
_LISTS = "Lists"
_CHECKS = "Input checks (validate)"
_PUBLISH = "DynamoDB and publishing"
_DUCKDB = "DuckDB"
_SERVE = "Storefront API (recsys serve)"
_STACK = "Local Airflow stack (recsys airflow)"
_RUNS = "Runs: timeouts and alerts"
_WAIT = "Waiting for the day's events (wait_for_data)"
_DEVELOPER = "Developer paths"


# --------------------------------------------------------------------------- the settings


class Settings(BaseSettings):
    """Every knob of recsys; build it with :meth:`from_env`, which raises ConfigError on a bad value.

    ``Settings(**values)`` works too (the values, then ``os.environ``) but raises pydantic's
    ValidationError. Frozen: a run's changes come as a copy from :meth:`with_overrides`.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore", validate_default=True)

    # Data and paths
    home: Annotated[Path, AfterValidator(_resolved)] = Field(
        default=Path("var"),
        description="All local state: the lake, the Airflow home, DynamoDB Local's data, DuckDB's spill folder "
        "and the working copy of an S3 lake",
        json_schema_extra=_meta(_PATHS, default_doc="`var` (in the working directory)"),
    )
    lake: str = Field(
        default_factory=_under_home("lake"),
        description="The lake root: a local folder, or `s3://bucket/prefix` (the bucket must exist)",
        json_schema_extra=_meta(_PATHS, default_doc="`$RECSYS_HOME/lake`"),
    )
    source: str = Field(
        default_factory=_under_home("demo", "interactions"),
        description="Where the events come from: a file or folder of Parquet, CSV or JSON-lines files with the "
        "columns `user_id, item_id, event_type, event_ts[, event_id]`, or `postgres://CONN_ID`, the storefront's "
        "PostgreSQL through the Airflow connection CONN_ID (`postgres://` alone means `recsys_source`)",
        json_schema_extra=_meta(_PATHS, default_doc="the demo store, `$RECSYS_HOME/demo/interactions`"),
    )
    source_columns: Annotated[dict[str, str], BeforeValidator(_source_columns)] = Field(
        default_factory=dict,
        description="Source column names that differ from the canonical ones, e.g. "
        "`user_id=USER_ID,event_ts=TIMESTAMP`. Without it names match case-insensitively and a few common "
        "names are recognised (`timestamp` for `event_ts`, ...)",
        json_schema_extra=_meta(_PATHS),
    )
    catalog: str | None = Field(
        default_factory=_under_home("demo", "catalog.parquet"),
        description="Catalog file (`item_id`, `name`, `category`, `active`; inactive items are never recommended)",
        json_schema_extra=_meta(
            _PATHS,
            default_doc="the demo catalog when the source is the demo store; none (every item active) "
            "when `RECSYS_SOURCE` is set",
        ),
    )
    source_table: str = Field(
        default="events",
        description="The PostgreSQL table (`schema.table`) holding the events",
        json_schema_extra=_meta(_PATHS),
    )
    source_query: str | None = Field(
        default=None,
        description="A SELECT to read the PostgreSQL events from instead of `RECSYS_SOURCE_TABLE` "
        "(the day filter is applied around it)",
        json_schema_extra=_meta(_PATHS),
    )
    s3_endpoint: str | None = Field(
        default=None,
        description="URL of an S3-compatible server for an `s3://` lake (MinIO, moto); unset for AWS S3. "
        "Credentials come from the standard AWS chain, never from `RECSYS_*`",
        json_schema_extra=_meta(_PATHS, strip=True),
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "recsys",
        description="Downloads kept between runs (the DynamoDB Local jar)",
        json_schema_extra=_meta(
            _PATHS, env=("RECSYS_CACHE",), default_doc="`$XDG_CACHE_HOME/recsys`, else `~/.cache/recsys`"
        ),
    )

    # Window and evaluation
    window_days: Int = Field(
        default=70,
        description="Days of history (default RECSYS_WINDOW_DAYS)",
        json_schema_extra=_meta(_WINDOW, param={"minimum": 2}, doc="The window ends at the run date."),
    )
    holdout_days: Int = Field(
        default=7,
        description="Newest days held out for evaluation",
        json_schema_extra=_meta(
            _WINDOW, param={"minimum": 1}, doc="Tuning candidates and the quality gate are scored on them."
        ),
    )
    holdout_max_users: Int = Field(
        default=20_000,
        description="At most this many warm hold-out users are scored per candidate (a seeded sample; 0 = all)",
        json_schema_extra=_meta(_WINDOW),
    )
    tune_max_users: Int = Field(
        default=200_000,
        description="Tuning candidates are fit on at most this many training users: every evaluated hold-out "
        "user and a seeded sample of the others (0 = all); the winner is trained on every user",
        json_schema_extra=_meta(_WINDOW),
    )
    k: Int = Field(
        default=20,
        description="List length",
        json_schema_extra=_meta(
            _WINDOW, param={"minimum": 1, "maximum": 100}, doc="Items in each user's list; also the k of NDCG@k."
        ),
    )

    # Model and tuning
    event_weights: Annotated[dict[str, float], BeforeValidator(_weights)] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight of each event type in the confidence, `type=weight,...`. Source values that spell a "
        "configured type another way (any case, `_`/`-`/spaces ignored, and common names: `transaction`/`order` "
        "for `Purchase`, `cart` for `AddToCart`, `checkout` for `StartCheckout`) are read as that type",
        json_schema_extra=_meta(_MODEL),
    )
    factors: Int = Field(
        default=64,
        description="ALS factors",
        json_schema_extra=_meta(_MODEL, param={"minimum": 1}, doc="Outside the grid; BPR uses it too."),
    )
    regularization: Float = Field(
        default=0.05,
        description="ALS regularization",
        json_schema_extra=_meta(_MODEL, param={"minimum": 0}, doc="Outside the grid."),
    )
    alpha: Float = Field(
        default=2.0,
        description="Confidence scaling: alpha * log1p(weight sum)",
        json_schema_extra=_meta(
            _MODEL, param={"minimum": 0}, doc="Outside the grid; with `bm25` weighting: alpha * BM25(weight sum)."
        ),
    )
    iterations: Int = Field(
        default=10,
        description="ALS iterations",
        json_schema_extra=_meta(_MODEL, param={"minimum": 1}, doc="Outside the grid."),
    )
    recency_half_life_days: Float = Field(
        default=0.0,
        description="Older events count less (0 = off)",
        json_schema_extra=_meta(
            _MODEL, param={"minimum": 0}, doc="Events this many days old count half; outside the grid (`half_life`)."
        ),
    )
    tuning_grid: str = Field(
        default=DEFAULT_TUNING_GRID,
        description="Candidates tried each night, e.g. "
        "factors=32,64;alpha=2,10;half_life=0,14;weights=configured,uniform | model=bpr;factors=64 "
        "(empty: no tuning)",
        json_schema_extra=_meta(
            _MODEL,
            param={},
            keep_empty=True,
            doc="One mapped `screen` task per candidate (then `tune` for the promoted ones). "
            "`name=v1,v2;name=v1` is a cartesian product (unnamed "
            "fields keep the settings outside the grid), `grid | grid` the union of two. Names: `model` (`als`, "
            "`bpr`, `ease`, `rp3beta`, `itemknn`), `factors`, `regularization`, `alpha`, `iterations`, "
            "`weighting` (`log`, `bm25`), "
            "`learning_rate` (BPR), `ease_lambda` (EASE), `rp3_alpha`, `rp3_beta` (RP3beta), `neighbours` (RP3beta, "
            "item-kNN), `similarity` (item-kNN: `cosine`, `bm25`, `tfidf`), `weights` (`configured` = "
            "`RECSYS_EVENT_WEIGHTS`, `uniform` = every type 1), "
            "`weight.<event type>` (one type's weight), `half_life` (recency half-life in days, 0 = off). "
            "Equal candidates are tried once.",
        ),
    )
    tune_budget_seconds: Int = Field(
        default=300,
        description="Seconds of candidate work tuning may spend (screening plus full evaluations, summed over the "
        "tune tasks); 0 = no budget: every candidate gets a full evaluation and nothing is screened",
        json_schema_extra=_meta(
            _MODEL,
            doc="With a budget, each candidate's fit is first estimated (each family is timed once on a small "
            "probe matrix and scaled to tonight's shape: EASE by items³, ALS by users and factors; "
            "`lake/tuning/dt=D/screening.json`). When the screening would spend more than half the budget, "
            "the costliest candidates are cut before they are screened, each family keeping its cheapest. "
            "The others are screened: fit and scored on a seeded "
            "1/`RECSYS_TUNE_HALVING` of the training and hold-out users. The best 1/`RECSYS_TUNE_HALVING` "
            "of them, in screening order, get a full evaluation while their estimated cost (screening seconds "
            "times the ratio of the two estimates: about the users ratio for ALS, about 1 for EASE) fits what "
            "the screening left of the budget; the best one always does. "
            "The others are cut early: the report lists them with their screening figures and why.",
        ),
    )
    tune_blend_weights: str = Field(
        default="0.25,0.5,0.75",
        description="Blends tried after tuning: the best candidate and the best of another family, their per-user "
        "standardised scores mixed with these weights of the first (empty: no blends)",
        json_schema_extra=_meta(
            _MODEL,
            keep_empty=True,
            doc="Both parts are fit once on the training days and every weight is scored on the hold-out like a "
            "candidate; a blend that beats every single candidate is trained and served (its `item#` lists are "
            "its first part's).",
        ),
    )
    tune_halving: Int = Field(
        default=3,
        description="Successive halving's eta: the screening sample is 1/eta of the users and the best 1/eta of the "
        "candidates are promoted to a full evaluation",
        json_schema_extra=_meta(_MODEL),
    )
    weighting: str = Field(
        default="log",
        description="How weighted events become ALS confidence outside the grid: `log` (alpha * log1p) or "
        "`bm25` (alpha * BM25, which damps items everybody touches and very long histories)",
        json_schema_extra=_meta(_MODEL),
    )
    model: str = Field(
        default="als",
        description="Model family outside the grid (als, bpr, ease, rp3beta or itemknn)",
        json_schema_extra=_meta(_MODEL, param={"enum": [None, *MODELS]}),
    )
    learning_rate: Float = Field(
        default=0.01, description="BPR learning rate outside the grid", json_schema_extra=_meta(_MODEL)
    )
    bpr_regularization: Float = Field(
        default=0.01,
        description="BPR regularization outside the grid (a grid's `regularization` applies to both families)",
        json_schema_extra=_meta(_MODEL),
    )
    bpr_iterations: Int = Field(
        default=100,
        description="BPR iterations outside the grid (a grid's `iterations` applies to both families)",
        json_schema_extra=_meta(_MODEL),
    )
    ease_max_items: Int = Field(
        default=30_000,
        description="EASE candidates take part only when the window has at most this many items; above it they "
        "step aside (scored as skipped, never picked) and the tune log says so",
        json_schema_extra=_meta(
            _MODEL,
            doc="EASE holds one items x items float32 matrix (4 bytes x items squared, fit and served in place): "
            "3.4 GiB at the default, 2.3 GiB for the 24,650 items of the scale-10 demo store, so a scale-10 run "
            "stays under 8 GiB with room for the rest of the run.",
        ),
    )
    random_state: Int = Field(
        default=42, description="Seed of the model fits and of the hold-out and tuning user samples",
        json_schema_extra=_meta(_MODEL),
    )
    gate_min_lift: Float = Field(
        default=0.05,
        description="The quality gate: the model's hold-out NDCG@k must beat popularity's by this share",
        json_schema_extra=_meta(_MODEL),
    )
    gate_max_drop: Float = Field(
        default=0.25,
        description="The quality gate: the model's hold-out NDCG@k must not fall more than this share below "
        "the served champion's",
        json_schema_extra=_meta(_MODEL),
    )

    # Lists
    exclude_seen: str = Field(
        default="all",
        description="`all`: never recommend an item the user touched; `purchased`: exclude only bought items "
        "(`RECSYS_PURCHASE_EVENT_TYPES`)",
        json_schema_extra=_meta(_LISTS),
    )
    purchase_event_types: Annotated[tuple[str, ...], BeforeValidator(_comma_list)] = Field(
        default=("Purchase",),
        description="Event types that are a purchase, comma-separated (for `RECSYS_EXCLUDE_SEEN=purchased`)",
        json_schema_extra=_meta(_LISTS),
    )
    max_per_category: Int = Field(
        default=0,
        description="At most this many items of one category in a list (0 = no cap)",
        json_schema_extra=_meta(_LISTS),
    )
    recommend_batch_users: Int = Field(
        default=50_000,
        description="Users scored at once by recommend; each batch's lists are written out before the next "
        "(memory: one batch of lists)",
        json_schema_extra=_meta(_LISTS),
    )

    # Input checks (validate)
    max_bad_share: Float = Field(
        default=0.01,
        description="Share of a day's rows (or of a file's rows that fit no day) allowed to break a row check "
        "and be quarantined; above it the run fails before aggregate",
        json_schema_extra=_meta(_CHECKS),
    )
    volume_min_ratio: Float = Field(
        default=0.1,
        description="A day's kept rows must be at least this multiple of the mean of the earlier days "
        "(`RECSYS_VOLUME_HISTORY_DAYS`; judged once at least 3 such days, averaging 10+ rows, exist)",
        json_schema_extra=_meta(_CHECKS),
    )
    volume_max_ratio: Float = Field(
        default=5.0,
        description="... and at most this multiple of it",
        json_schema_extra=_meta(_CHECKS),
    )
    volume_history_days: Int = Field(
        default=14,
        description="Earlier days with rows whose mean the volume band is taken around",
        json_schema_extra=_meta(_CHECKS),
    )
    max_unknown_item_share: Float = Field(
        default=0.05,
        description="Share of a day's kept rows whose item the catalog does not know (only with a catalog)",
        json_schema_extra=_meta(_CHECKS),
    )
    bot_max_user_share: Float = Field(
        default=0.5,
        description="On days of at least `RECSYS_BOT_MIN_DAY_ROWS` rows, a user above this share of the day is "
        "a bot: its rows are quarantined (`bot_user`) and the rest of the day is judged on its own",
        json_schema_extra=_meta(_CHECKS),
    )
    bot_min_day_rows: Int = Field(
        default=1000, description="Smaller days are not checked for bots", json_schema_extra=_meta(_CHECKS)
    )
    validate_chunk_rows: Int = Field(
        default=1_000_000,
        description="Staged rows validate holds at once: consecutive days are checked together up to this many "
        "rows (a bigger day alone), so its memory follows this, not the window",
        json_schema_extra=_meta(_CHECKS),
    )

    # Waiting for the day's events
    complete_after: Annotated[dt.time, BeforeValidator(_clock_time)] = Field(
        default=dt.time(23, 0),
        description="A day has fully landed once the source holds an event at or after this UTC time of that day "
        "(or an event of a later day); `wait_for_data` waits for it, `recsys run --date latest` picks the newest "
        "such day",
        json_schema_extra=_meta(_WAIT, default_doc="`23:00`"),
    )
    done_marker: str | None = Field(
        default=None,
        description="File sources: a file the exporter writes when a day is complete, relative to the source "
        "folder; `{date}` stands for the day (`dt={date}.done`, `dt={date}/_SUCCESS`). A marker without `{date}` "
        "(`_SUCCESS`) counts for a day when it was written after that day ended. Either rule makes a day complete",
        json_schema_extra=_meta(_WAIT, strip=True, default_doc="none (the events decide)"),
    )
    wait_poke_seconds: Int = Field(
        default=300,
        description="Seconds between two checks of the source while `wait_for_data` waits (in the triggerer, "
        "holding no worker slot)",
        json_schema_extra=_meta(_WAIT),
    )
    wait_timeout: Annotated[float, BeforeValidator(_wait_timeout)] = Field(
        default=6 * 3600.0,
        description="How long `wait_for_data` waits for the run date to land before the run fails (and the "
        "failure alert fires): `6h`, `90m`, `30s` or seconds; `0` checks once",
        json_schema_extra=_meta(_WAIT, default_doc="`6h`"),
    )
    source_asset: str | None = Field(
        default=None,
        description="An Asset URI (the outlet of the DAG that exports the events): the nightly is then scheduled "
        "on that Asset's events instead of at 00:00 UTC, for the day before the event, and still checks the day "
        "is complete",
        json_schema_extra=_meta(_WAIT, strip=True, default_doc="none (daily at 00:00 UTC)"),
    )

    # DynamoDB and publishing
    dynamodb_endpoint: Annotated[str | None, BeforeValidator(_endpoint)] = Field(
        default=DEFAULT_ENDPOINT,
        description="DynamoDB endpoint (the default is DynamoDB Local); empty or `aws` for real AWS with the "
        "standard credential chain",
        json_schema_extra=_meta(_PUBLISH, keep_empty=True),
    )
    aws_region: str = Field(
        default=DEFAULT_AWS_REGION,
        description="AWS region of DynamoDB and of an S3 lake",
        json_schema_extra=_meta(_PUBLISH, env=("RECSYS_AWS_REGION", "AWS_DEFAULT_REGION"), strip=True),
    )
    table: str = Field(
        default="recsys_user_recommendations",
        description="The DynamoDB serving table",
        json_schema_extra=_meta(_PUBLISH),
    )
    aws_conn_id: str | None = Field(
        default=None,
        description="The Airflow connection (type `aws`) the workers reach DynamoDB and an S3 lake through: "
        "credentials, `role_arn`, and `region_name` and `endpoint_url` from its extras, which then win over "
        "`RECSYS_AWS_REGION`, `RECSYS_DYNAMODB_ENDPOINT` and `RECSYS_S3_ENDPOINT`. A connection named here "
        "must exist. The storefront (`recsys serve`, `recsys lookup`) never uses it",
        json_schema_extra=_meta(
            _PUBLISH,
            strip=True,
            default_doc="`aws_default` when that connection is defined, else none (the standard AWS chain)",
        ),
    )
    create_table: bool = Field(
        default=True,
        description="Publish creates the serving table (on-demand, TTL on `expires_at`) when it is missing; "
        "`false` when infrastructure code (`deploy/cloudformation/recsys.yaml`) makes it: a missing table "
        "then fails the publish",
        json_schema_extra=_meta(_PUBLISH, strip=True, default_doc="`true`"),
    )
    ttl_days: Int = Field(
        default=14,
        description="Days until an item that is not refreshed expires (`expires_at`)",
        json_schema_extra=_meta(_PUBLISH),
    )
    publish_threads: Int = Field(
        default=8, description="Concurrent BatchWriteItem calls of one publish shard", json_schema_extra=_meta(_PUBLISH)
    )
    publish_shards: Int = Field(
        default=4,
        description="Publish tasks the users are split into (default RECSYS_PUBLISH_SHARDS)",
        json_schema_extra=_meta(
            _PUBLISH, param={"minimum": 1}, doc="Contiguous ranges of the sorted user ids, one mapped task each."
        ),
    )
    publish_pool: str = Field(
        default=DEFAULT_PUBLISH_POOL,
        description="The Airflow pool the publish shards run in: it bounds how many write to DynamoDB at once",
        json_schema_extra=_meta(_PUBLISH, strip=True),
    )
    publish_pool_slots: Int = Field(
        default=4,
        description="Slots of that pool when recsys creates it (an existing pool keeps its size)",
        json_schema_extra=_meta(_PUBLISH),
    )
    verify_sample: Int = Field(
        default=200,
        description="Users whose published lists verify reads back from DynamoDB",
        json_schema_extra=_meta(_PUBLISH),
    )

    # DuckDB
    duckdb_memory_limit: str = Field(
        default="4GB",
        description="DuckDB's `memory_limit` for every connection (a size such as 4GB or 512MiB); beyond it "
        "aggregations and sorts spill to the temp directory",
        json_schema_extra=_meta(_DUCKDB),
    )
    duckdb_threads: Int = Field(
        default=0, description="DuckDB's `threads` (0 = one per core)", json_schema_extra=_meta(_DUCKDB)
    )
    duckdb_temp_directory: str = Field(
        default="",
        description="Where DuckDB spills",
        json_schema_extra=_meta(_DUCKDB, env=("RECSYS_DUCKDB_TEMP_DIR",), default_doc="`$RECSYS_HOME/duckdb-tmp`"),
    )

    # Storefront API
    serve_timeout: Annotated[float, BeforeValidator(_seconds)] = Field(
        default=DEFAULT_SERVE_TIMEOUT,
        description="Seconds the API waits for DynamoDB per request, retries included (more than 0, at most 60)",
        json_schema_extra=_meta(_SERVE, strip=True),
    )
    serve_api_keys: str = Field(
        default="",
        repr=False,
        description="API keys the storefront sends as `Authorization: Bearer <key>` or `X-API-Key`: "
        "comma-separated, or the path of a file with one key per line; empty: no authentication",
        json_schema_extra=_meta(_SERVE, strip=True, default_doc="empty (every route open)"),
    )
    serve_popular_ttl_seconds: Float = Field(
        default=60.0,
        description="`recsys serve` keeps the popular and category lists it reads this many seconds (0 = every "
        "request reads them): an unknown user's request then costs one GetItem, not two",
        json_schema_extra=_meta(_SERVE),
    )
    serve_max_age_days: Int = Field(
        default=2,
        description="`/health` answers 503 when the served run date (`__meta__`) is more days before today (UTC)",
        json_schema_extra=_meta(_SERVE),
    )

    # Runs: timeouts and alerts
    task_timeout_minutes: Int = Field(
        default=120,
        description="A task that runs longer fails (Airflow's `execution_timeout`) and is retried: a hung AWS or "
        "database call cannot hold a night",
        json_schema_extra=_meta(_RUNS),
    )
    run_timeout_hours: Int = Field(
        default=20,
        description="A nightly run that has not finished fails (`dagrun_timeout`), so tomorrow's run can start "
        "(one run at a time); under 24 hours",
        json_schema_extra=_meta(_RUNS),
    )
    refresh_schedule: str = Field(
        default=DEFAULT_REFRESH_SCHEDULE,
        description="When the hourly DAG `recsys_refresh` runs: a cron expression (UTC); each run folds the "
        "events since the served night into the served model for the users active since then",
        json_schema_extra=_meta(_RUNS, strip=True),
    )
    alert_webhook: str | None = Field(
        default=None,
        description="Where alerts (a task of the nightly failed for good, the quality gate refused the model, "
        "the publish deadline passed) are POSTed as JSON (`{\"text\": ...}`, as Slack and Teams incoming "
        "webhooks take); every alert is logged at ERROR in any case",
        json_schema_extra=_meta(_RUNS, strip=True, default_doc="empty (log only)"),
    )
    alert_smtp_conn_id: str | None = Field(
        default=None,
        description="The Airflow connection (type `smtp`) that failure, quality-gate and deadline alerts are "
        "e-mailed through, to `RECSYS_ALERT_EMAIL_TO`; its extra `from_email` is the sender",
        json_schema_extra=_meta(_RUNS, strip=True, default_doc="empty (no e-mail)"),
    )
    alert_email_to: Annotated[tuple[str, ...], BeforeValidator(_comma_list)] = Field(
        default=(),
        description="Who the alert e-mails go to, comma-separated (needed with `RECSYS_ALERT_SMTP_CONN_ID`)",
        json_schema_extra=_meta(_RUNS, default_doc="empty"),
    )
    alert_slack_conn_id: str | None = Field(
        default=None,
        description="An Airflow Slack incoming-webhook connection (type `slackwebhook`) the alerts are posted "
        "to; needs the Slack provider (`apache-airflow-providers-slack`), which recsys does not install",
        json_schema_extra=_meta(_RUNS, strip=True, default_doc="empty (no Slack)"),
    )
    publish_deadline: str | None = Field(
        default=None,
        description="`HH:MM` (UTC): a nightly run whose lists are not published by then, on the day after its "
        "run date, sends a deadline alert (an Airflow DeadlineAlert); the run itself goes on",
        json_schema_extra=_meta(_RUNS, strip=True, default_doc="empty (no deadline)"),
    )

    # Local Airflow stack
    airflow_executor: str = Field(
        default="LocalExecutor",
        description="`LocalExecutor` or `CeleryExecutor` (with Celery workers on Redis)",
        json_schema_extra=_meta(_STACK),
    )
    airflow_workers: AirflowInt = Field(default=2, description="Celery workers", json_schema_extra=_meta(_STACK))
    airflow_worker_concurrency: AirflowInt = Field(
        default=2, description="Tasks each Celery worker runs at once", json_schema_extra=_meta(_STACK)
    )
    airflow_port: AirflowInt = Field(
        default=8080, description="Port of the api-server and UI", json_schema_extra=_meta(_STACK)
    )
    airflow_db: str = Field(
        default=DEFAULT_AIRFLOW_DB,
        description="SQLAlchemy URL of the metadata database (PostgreSQL; the database is created when missing)",
        json_schema_extra=_meta(_STACK),
    )
    airflow_broker: str = Field(
        default=DEFAULT_AIRFLOW_BROKER,
        description="Celery broker (results go to the metadata database)",
        json_schema_extra=_meta(_STACK),
    )
    airflow_user: str = Field(default="admin", description="UI and REST API login", json_schema_extra=_meta(_STACK))
    airflow_password: str | None = Field(
        default=None,
        repr=False,
        description="Password of that login",
        json_schema_extra=_meta(_STACK, default_doc="generated once, kept in `$RECSYS_HOME/airflow/stack/password`"),
    )

    # Developer paths
    sql_dir: Path = Field(
        default_factory=lambda: _SOURCE_TREE / "sql",
        description="Folder of the SQL files, one per output",
        json_schema_extra=_meta(_DEVELOPER, default_doc="`sql/` of the source tree"),
    )
    dags_folder: Path = Field(
        default_factory=lambda: _SOURCE_TREE / "dags",
        description="DAGs folder that `recsys run` and `recsys airflow` point Airflow at",
        json_schema_extra=_meta(_DEVELOPER, default_doc="`dags/` of the source tree"),
    )

    @property
    def source_conn_id(self) -> str | None:
        """The Airflow connection id when the source is PostgreSQL (``postgres://CONN_ID``), else None."""
        scheme, sep, rest = self.source.partition("://")
        if scheme.lower() in ("postgres", "postgresql") and (sep or not rest):
            return rest.strip("/") or DEFAULT_SOURCE_CONN_ID
        return None

    @property
    def blend_weights(self) -> tuple[float, ...]:
        """``tune_blend_weights`` as numbers (empty: no blends). Raises ConfigError on a word that is not one."""
        try:
            return tuple(float(w) for w in self.tune_blend_weights.split(",") if w.strip())
        except ValueError:
            raise ConfigError(f"tune_blend_weights must be comma-separated numbers like 0.25,0.5,0.75, got "
                              f"{self.tune_blend_weights!r}") from None

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
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``RECSYS_*`` variables (``os.environ`` by default); raises ConfigError on a bad value."""
        return _reading(os.environ if env is None else env, cls)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with the given fields replaced (e.g. from DAG Params); None values and unknown keys
        are ignored. Raises ConfigError like :meth:`from_env`."""
        fields = type(self).model_fields
        values = self.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None and k in fields})
        return _reading({}, lambda: type(self).model_validate(values))  # the values only, no variable

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Values given to ``Settings(...)`` first, then :class:`EnvironmentSource` (no .env or secret files)."""
        env = _ENVIRON.get()
        return init_settings, EnvironmentSource(settings_cls, os.environ if env is None else env)

    @model_validator(mode="before")
    @classmethod
    def _own_source_has_no_demo_catalog(cls, data: Any) -> Any:
        # The demo catalog only describes the demo store: a store of your own has no
        # catalog unless RECSYS_CATALOG names one (then every item counts as active).
        if isinstance(data, dict) and data.get("source") is not None and "catalog" not in data:
            return {**data, "catalog": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        """Check ranges and the tuning grid; raises ConfigError naming the field."""
        if self.window_days < 2:
            raise ConfigError(f"window_days must be at least 2, got {self.window_days}")
        if not 1 <= self.holdout_days < self.window_days:
            raise ConfigError(
                f"holdout_days must be between 1 and window_days-1 ({self.window_days - 1}), got {self.holdout_days}"
            )
        if self.tune_max_users < 0:
            raise ConfigError(f"tune_max_users must be 0 (every user) or more, got {self.tune_max_users}")
        if self.holdout_max_users < 0:
            raise ConfigError(f"holdout_max_users must be 0 (every warm user) or more, got {self.holdout_max_users}")
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.tune_budget_seconds < 0:
            raise ConfigError(f"tune_budget_seconds must be 0 (no budget) or more, got {self.tune_budget_seconds}")
        if any(not 0 < w < 1 for w in self.blend_weights):
            raise ConfigError(f"tune_blend_weights must be numbers between 0 and 1 (exclusive), got "
                              f"{self.tune_blend_weights!r}")
        if self.tune_halving < 2:
            raise ConfigError(f"tune_halving must be at least 2 (the screening keeps 1/eta), got {self.tune_halving}")
        if self.ease_max_items < 0:
            raise ConfigError(f"ease_max_items must be 0 (EASE never fits) or more, got {self.ease_max_items}")
        grids = parse_grids(self.tuning_grid)
        for name, allowed, default in (("weighting", WEIGHTINGS, self.weighting), ("model", MODELS, self.model),
                                       ("weights", WEIGHT_PRESETS, "configured"),
                                       ("similarity", SIMILARITIES, "bm25")):
            for value in [default, *(v for grid in grids for v in grid.get(name, []))]:
                if value not in allowed:
                    raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        for grid in grids:
            for name, values in grid.items():
                event_type = name[len(WEIGHT_KEY_PREFIX):]
                if name.startswith(WEIGHT_KEY_PREFIX) and event_type not in self.event_weights:
                    raise ConfigError(
                        f"tuning grid key {name}: {event_type!r} is not a configured event type "
                        f"(RECSYS_EVENT_WEIGHTS has {sorted(self.event_weights)})"
                    )
                if (name.startswith(WEIGHT_KEY_PREFIX) or name in ("half_life", "rp3_alpha", "rp3_beta")) and any(
                    v < 0 for v in values
                ):
                    raise ConfigError(f"tuning grid key {name}: values must be 0 or more, got {values}")
                if name == "ease_lambda" and any(v <= 0 for v in values):
                    raise ConfigError(f"tuning grid key {name}: values must be more than 0, got {values}")
                if name == "neighbours" and any(v < 1 for v in values):
                    raise ConfigError(f"tuning grid key {name}: values must be at least 1, got {values}")
        if self.recency_half_life_days < 0:
            raise ConfigError(f"recency_half_life_days must be 0 (off) or more, got {self.recency_half_life_days}")
        if self.exclude_seen not in ("all", "purchased"):
            raise ConfigError(f"exclude_seen must be 'all' or 'purchased', got {self.exclude_seen!r}")
        if self.max_per_category < 0:
            raise ConfigError(f"max_per_category must be 0 (off) or more, got {self.max_per_category}")
        for name, count in (("publish_threads", self.publish_threads), ("publish_shards", self.publish_shards),
                            ("publish_pool_slots", self.publish_pool_slots)):
            if count < 1:
                raise ConfigError(f"{name} must be at least 1, got {count}")
        if self.serve_popular_ttl_seconds < 0:
            raise ConfigError(f"serve_popular_ttl_seconds must be 0 or more, got {self.serve_popular_ttl_seconds}")
        if self.serve_max_age_days < 0:
            raise ConfigError(f"serve_max_age_days must be 0 or more, got {self.serve_max_age_days}")
        if self.task_timeout_minutes < 1:
            raise ConfigError(f"task_timeout_minutes must be at least 1, got {self.task_timeout_minutes}")
        if not 1 <= self.run_timeout_hours < 24:
            raise ConfigError(f"run_timeout_hours must be between 1 and 23, got {self.run_timeout_hours}")
        if self.wait_poke_seconds < 1:
            raise ConfigError(f"RECSYS_WAIT_POKE_SECONDS must be at least 1, got {self.wait_poke_seconds}")
        if self.wait_timeout < 0:
            raise ConfigError(f"RECSYS_WAIT_TIMEOUT must be 0 (check once) or more, got {self.wait_timeout}")
        if self.publish_deadline is not None and not DEADLINE.fullmatch(self.publish_deadline):
            raise ConfigError(
                f"RECSYS_PUBLISH_DEADLINE: expected a UTC time of day HH:MM such as 06:30, "
                f"got {self.publish_deadline!r}"
            )
        if self.alert_smtp_conn_id and not self.alert_email_to:
            raise ConfigError(
                f"RECSYS_ALERT_SMTP_CONN_ID is {self.alert_smtp_conn_id!r} but RECSYS_ALERT_EMAIL_TO is empty: "
                "set it to the addresses the alerts go to, comma-separated"
            )
        if len(self.refresh_schedule.split()) != 5:
            raise ConfigError(f"refresh_schedule must be a cron expression of 5 fields (minute hour day month "
                              f"weekday), e.g. {DEFAULT_REFRESH_SCHEDULE!r}; got {self.refresh_schedule!r}")
        if self.recommend_batch_users < 1:
            raise ConfigError(f"recommend_batch_users must be at least 1, got {self.recommend_batch_users}")
        if self.validate_chunk_rows < 1:
            raise ConfigError(f"validate_chunk_rows must be at least 1, got {self.validate_chunk_rows}")
        if not MEMORY_LIMIT.fullmatch(self.duckdb_memory_limit):
            raise ConfigError(
                f"RECSYS_DUCKDB_MEMORY_LIMIT: expected a size such as 4GB or 512MiB, got {self.duckdb_memory_limit!r}"
            )
        if self.duckdb_threads < 0:
            raise ConfigError(f"duckdb_threads must be 0 (one per core) or more, got {self.duckdb_threads}")
        if not 0.0 <= self.max_bad_share < 1.0:
            raise ConfigError(f"max_bad_share must be in [0, 1), got {self.max_bad_share}")
        if not 0.0 <= self.volume_min_ratio <= 1.0 <= self.volume_max_ratio:
            raise ConfigError(
                f"volume band must satisfy 0 <= volume_min_ratio <= 1 <= volume_max_ratio, "
                f"got {self.volume_min_ratio} and {self.volume_max_ratio}"
            )
        if self.volume_history_days < 1:
            raise ConfigError(f"volume_history_days must be at least 1, got {self.volume_history_days}")
        if not 0.0 < self.bot_max_user_share <= 1.0 or not 0.0 <= self.max_unknown_item_share <= 1.0:
            raise ConfigError(
                f"bot_max_user_share must be in (0, 1] and max_unknown_item_share in [0, 1], "
                f"got {self.bot_max_user_share} and {self.max_unknown_item_share}"
            )
        if self.airflow_executor not in AIRFLOW_EXECUTORS:
            raise ConfigError(
                f"RECSYS_AIRFLOW_EXECUTOR must be one of {AIRFLOW_EXECUTORS}, got {self.airflow_executor!r}"
            )
        if not self.airflow_db.startswith("postgresql"):
            raise ConfigError(f"RECSYS_AIRFLOW_DB must be a postgresql+psycopg2:// URL, got {self.airflow_db!r}")
        return self


# The environment that building a Settings reads: os.environ, the mapping given to from_env, or
# none at all for with_overrides. pydantic-settings builds its sources inside Settings.__init__
# (which model_validate calls too), so the mapping reaches them through this variable.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("recsys_settings_environ", default=None)


def _reading(env: Mapping[str, str], build: Callable[[], Settings]) -> Settings:
    """``build()`` with ``env`` as the environment, pydantic's ValidationError turned into the
    ConfigError that names the fix."""
    token = _ENVIRON.set(env)
    try:
        return build()
    except ValidationError as exc:
        first = exc.errors()[0]
        error = first.get("ctx", {}).get("error")
        if isinstance(error, ConfigError):
            raise error from None
        name = str(first["loc"][0]) if first["loc"] else "?"
        field = Settings.model_fields.get(name)
        kind = getattr(field.annotation, "__name__", str(field.annotation)) if field else "a value"
        raise ConfigError(f"setting {name}: expected {kind}, got {first['input']!r}") from None
    finally:
        _ENVIRON.reset(token)


# --------------------------------------------------------------------------- the reader


def _meta_of(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def _variables(name: str, field: FieldInfo) -> tuple[str, ...]:
    return tuple(_meta_of(field).get("env") or [ENV_PREFIX + name.upper()])


def field_meta(name: str) -> dict[str, Any]:
    """What the field ``name`` adds to its type, default and description (see :func:`_meta`)."""
    return _meta_of(Settings.model_fields[name])


def variables_of(name: str) -> tuple[str, ...]:
    """The environment variables a field is read from, in order: ``RECSYS_<FIELD>`` unless it names others."""
    return _variables(name, Settings.model_fields[name])


class EnvironmentSource(PydanticBaseSettingsSource):
    """Settings' values from one environment (a mapping of variable to text).

    Per field the first of its variables that is set wins. An empty variable counts as unset
    (unless the field keeps empty values: ``RECSYS_TUNING_GRID`` and ``RECSYS_DYNAMODB_ENDPOINT``,
    where empty means "no tuning" and "real AWS"); fields marked ``strip`` drop surrounding
    blanks first, so a blank value is unset too.
    """

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        meta = _meta_of(field)
        for variable in _variables(field_name, field):
            text = self.env.get(variable)
            if text is None:
                continue
            text = text.strip() if meta.get("strip") else text
            if text or meta.get("keep_empty"):
                return text, variable, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            text, _, _ = self.get_field_value(field, name)
            if text is not None:
                values[name] = text
        # XDG_CACHE_HOME names the parent of recsys' cache folder, not the folder itself.
        if "cache_dir" not in values and self.env.get("XDG_CACHE_HOME"):
            values["cache_dir"] = os.path.join(self.env["XDG_CACHE_HOME"], "recsys")
        return values


def _only(names: tuple[str, ...], env: Mapping[str, str] | None) -> Settings:
    """Settings read from just the variables of ``names``: another bad variable cannot fail it."""
    env = os.environ if env is None else env
    return Settings.from_env({v: env[v] for name in names for v in variables_of(name) if v in env})


# The *_from_env functions read one value where building (and possibly failing on) the whole
# settings object is not wanted: the DAG file when it is parsed, the S3 lake that is called with
# the lake root only, module constants set at import. They read through Settings' own fields, so
# the two cannot differ.


def publish_pool_from_env(env: Mapping[str, str] | None = None) -> str:
    """The Airflow pool the publish shards run in: ``RECSYS_PUBLISH_POOL`` or ``recsys_dynamodb``."""
    return _only(("publish_pool",), env).publish_pool


def refresh_schedule_from_env(env: Mapping[str, str] | None = None) -> str:
    """The cron of the refresh DAG: ``RECSYS_REFRESH_SCHEDULE`` or hourly on the hour."""
    return _only(("refresh_schedule",), env).refresh_schedule


def publish_pool_slots_from_env(env: Mapping[str, str] | None = None) -> int:
    """``RECSYS_PUBLISH_POOL_SLOTS``: the refresh's publish takes all of them, so it never
    writes while a publish shard of the nightly does."""
    return _only(("publish_pool_slots",), env).publish_pool_slots


def run_limits_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(task timeout in minutes, run timeout in hours): what the DAG file needs when it is parsed."""
    found = _only(("task_timeout_minutes", "run_timeout_hours"), env)
    return found.task_timeout_minutes, found.run_timeout_hours


def source_asset_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``RECSYS_SOURCE_ASSET``: the Asset URI the nightly is scheduled on, or None for the 00:00 UTC cron."""
    return _only(("source_asset",), env).source_asset


def publish_deadline_from_env(env: Mapping[str, str] | None = None) -> dt.timedelta | None:
    """``RECSYS_PUBLISH_DEADLINE`` as the time after a run's logical date (its run date, 00:00 UTC)
    by which its lists must be published: ``HH:MM`` on the following day; None when unset."""
    deadline = _only(("publish_deadline",), env).publish_deadline
    if deadline is None:
        return None
    hours, minutes = deadline.split(":")
    return dt.timedelta(days=1, hours=int(hours), minutes=int(minutes))


def serving_table_uri(settings: Settings) -> str:
    """The Asset URI of the serving table, ``dynamodb://<region>/<table>``: the Asset
    ``finish_publish`` updates and downstream DAGs are scheduled on."""
    return f"dynamodb://{settings.aws_region}/{settings.table}"


def recommendations_uri(settings: Settings) -> str:
    """The Asset URI of the lake's recommendations dataset (``recommend`` writes one partition of it
    per run date): ``s3://bucket/prefix/recommendations`` or ``file:///abs/lake/recommendations``."""
    if settings.lake.startswith("s3://"):
        return f"{settings.lake.rstrip('/')}/{datasets.RECOMMENDATIONS}"
    return (Path(settings.lake).resolve() / datasets.RECOMMENDATIONS).as_uri()


def asset_uris_from_env(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(serving table, recommendations) Asset URIs from just the variables they are built from,
    cheap enough for a DAG file at parse time."""
    found = _only(("home", "lake", "aws_region", "table"), env)
    return serving_table_uri(found), recommendations_uri(found)


def home_from_env(env: Mapping[str, str] | None = None) -> Path:
    """``RECSYS_HOME`` (default ``var``), resolved: where every local working folder lives."""
    return _only(("home",), env).home


def s3_endpoint_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``RECSYS_S3_ENDPOINT``: the URL of an S3-compatible server (MinIO, moto), or None for AWS S3."""
    return _only(("s3_endpoint",), env).s3_endpoint


def aws_region_from_env(env: Mapping[str, str] | None = None) -> str:
    """``RECSYS_AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``: the region of
    DynamoDB (:attr:`Settings.aws_region`) and of an S3 lake (:func:`recsys.io.lake.s3_client`).
    """
    return _only(("aws_region",), env).aws_region


def aws_conn_id_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``RECSYS_AWS_CONN_ID``: the Airflow connection AWS clients are built from, or None for
    ``aws_default`` when it is defined (see :mod:`recsys.io.aws`)."""
    return _only(("aws_conn_id",), env).aws_conn_id


def sql_dir_from_env(env: Mapping[str, str] | None = None) -> Path:
    """``RECSYS_SQL_DIR``, else ``sql/`` of the source tree: where the SQL runner finds its files."""
    return _only(("sql_dir",), env).sql_dir


def dags_folder_from_env(env: Mapping[str, str] | None = None) -> Path:
    """``RECSYS_DAGS_FOLDER``, else ``dags/`` of the source tree: the DAGs folder Airflow is pointed at."""
    return _only(("dags_folder",), env).dags_folder


# --------------------------------------------------------------------------- DAG Params


PARAM_FIELDS: tuple[str, ...] = tuple(name for name in Settings.model_fields if "param" in field_meta(name))


def dag_params() -> dict[str, dict[str, Any]]:
    """Keyword arguments of ``airflow.sdk.Param`` for each DAG Param: the DAG-only ones, then one per
    field in PARAM_FIELDS (default None, i.e. the setting from the environment; its bounds and
    description). The DAG does ``{name: Param(**kw) for name, kw in dag_params().items()}``.
    """
    params = copy.deepcopy(DAG_ONLY_PARAMS)
    for name in PARAM_FIELDS:
        field = Settings.model_fields[name]
        params[name] = {
            "default": None,
            "type": ["null", _JSON_TYPES[field.annotation]],
            **copy.deepcopy(field_meta(name)["param"]),
            "description": field.description,
        }
    return params
