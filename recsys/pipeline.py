"""The modelling and serving stages of one nightly run (extract and validate are in
:mod:`recsys.ingest`), each a function of (settings, run date) that the DAG calls.

Every stage reads the lake and writes only its own partition ``dt=D`` (atomically), and
returns a small dict for XCom: counts, paths, timings — never the data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys import lake
from recsys.config import POPULAR_USER_ID, Settings
from recsys.schemas import RECOMMENDATIONS_SCHEMA
from recsys.window import Window

log = logging.getLogger(__name__)


class QualityGateError(RuntimeError):
    """The new model is not good enough to serve."""


# --------------------------------------------------------------------------- aggregate


def _register_window(con: Any, settings: Settings, window: Window) -> int:
    """The views interaction_files (the window's day partitions) and event_weights (the weight
    of each configured event type) that the window's queries read; returns the partitions
    found."""
    from recsys.sqlrun import register_parquet

    paths = [
        lake.fetch_partition(settings.lake, "interactions", d, [lake.DATA_FILE]) / lake.DATA_FILE
        for d in window.days
        if lake.partition_exists(settings.lake, "interactions", d)
    ]
    register_parquet(con, "interaction_files", paths)
    weights = pa.table(
        {
            "event_type": pa.array(list(settings.event_weights), pa.string()),
            "weight": pa.array(list(settings.event_weights.values()), pa.float64()),
        }
    )
    con.register("event_weights", weights)
    return len(paths)


def aggregate(settings: Settings, day: dt.date) -> dict[str, Any]:
    """The window's events aggregated with DuckDB SQL into ``lake/confidence/dt=D/``: one
    GROUP BY (user, item) over the day partitions, written by DuckDB straight to
    ``part-0.parquet`` (``sql/confidence.sql``: confidence, events and training
    events per pair), and from that file the hold-out truth (``holdout.parquet``) and the
    popularity (``sql/item_counts.sql``, counted once) over the window, over its training
    days and per category (``popular.parquet``, ``popular_train.parquet``,
    ``popular_by_category.parquet``).
    Returns row counts."""
    from recsys.source import register_catalog
    from recsys.sqlrun import connect, copy_to_parquet, register_parquet, run_sql

    window = Window.of(settings, day)
    started = time.perf_counter()
    with connect(temp_dir=settings.duckdb_temp_dir) as con, \
            lake.replace_partition(settings.lake, "confidence", day) as tmp:
        partitions = _register_window(con, settings, window)
        counts = {"part-0": copy_to_parquet(con, "confidence", tmp / lake.DATA_FILE, window.sql_params(settings))}
        register_parquet(con, "confidence", [tmp / lake.DATA_FILE])
        register_catalog(con, settings.catalog)
        con.register("item_counts", run_sql(con, "item_counts"))
        outputs = {
            "holdout.parquet": run_sql(con, "holdout_relevant"),
            "popular.parquet": run_sql(con, "popular_items", {"training": False}),
            "popular_train.parquet": run_sql(con, "popular_items", {"training": True}),
        }
        con.register("popular_items", outputs["popular.parquet"])
        outputs["popular_by_category.parquet"] = run_sql(con, "popular_by_category")
        for name, table in outputs.items():
            pq.write_table(table, tmp / name, compression="zstd")
    seconds = time.perf_counter() - started
    counts.update({name.removesuffix(".parquet"): t.num_rows for name, t in outputs.items()})
    log.info("aggregate: %d day partition(s) of the window -> %s in %.1f s", partitions, counts, seconds)
    return {"partitions": partitions, "rows": counts, "seconds": round(seconds, 2)}


def index_events(settings: Settings, day: dt.date) -> dict[str, Any]:
    """What every model task of the run loads, built once into ``lake/pair_events/dt=D/``: the
    window's weighted events (``sql/weighted_events.sql``, one row each) indexed by (user,
    item) pair and event type with their ages (:class:`recsys.model.PairEvents`): of the
    whole window (``events.npz``, ids in ``users/items.parquet``: train fits the winner on
    them, recommend takes the seen items from them) and of the training days' users the
    candidates fit on (``train_events.npz``, ids in ``train_users/train_items.parquet``; see
    :func:`tuning_users`), with the hold-out every candidate is scored on (``holdout.npz``,
    from aggregate's hold-out truth and training popularity). Returns counts."""
    from recsys.model import SortedEvents
    from recsys.sqlrun import connect, run_sql

    window = Window.of(settings, day)
    started = time.perf_counter()
    aggregated = lake.fetch_partition(settings.lake, "confidence", day, ["holdout.parquet", "popular_train.parquet"])
    holdout_truth = pq.read_table(aggregated / "holdout.parquet")
    popular_train = pq.read_table(aggregated / "popular_train.parquet")
    with connect(temp_dir=settings.duckdb_temp_dir) as con:
        partitions = _register_window(con, settings, window)
        weighted = run_sql(con, "weighted_events", window.sql_params(settings))
    sorted_events = SortedEvents.of(weighted)
    del weighted  # the Arrow strings go before the indexes are built
    events, train_events = sorted_events.before(window.end), sorted_events.before(window.split)
    del sorted_events
    holdout = build_holdout(settings, train_events, holdout_truth, popular_train,
                            ItemFilters.load(settings, train_events.item_ids))
    with lake.replace_partition(settings.lake, "pair_events", day) as tmp:
        save_pair_events(tmp, "train_", holdout.events)  # the users tuning fits on
        save_pair_events(tmp, "", events)
        save_holdout(tmp, holdout)
    seconds = time.perf_counter() - started
    counts = {"events": len(events.ages), "pairs": len(events.indices), "train_events": len(train_events.ages),
              "tuning_users": holdout.events.shape[0], "holdout_users": len(holdout.rows),
              "holdout_users_warm": holdout.warm_users}
    log.info("index_events: %d day partition(s) of the window -> %s in %.1f s", partitions, counts, seconds)
    return {"partitions": partitions, "rows": counts, "seconds": round(seconds, 2)}


# --------------------------------------------------------------------------- train + evaluate


@dataclass
class ItemFilters:
    """What the catalog says about the matrix columns: never-recommend items and categories."""

    exclude: np.ndarray  # column indexes of inactive items
    categories: np.ndarray  # category code per column (-1: unknown)

    @classmethod
    def load(cls, settings: Settings, item_ids: pa.Array) -> "ItemFilters":
        from recsys.source import read_catalog

        catalog = read_catalog(settings.catalog)
        index = pc.index_in(catalog["item_id"], value_set=item_ids)
        known = pc.is_valid(index)
        inactive = pc.and_(known, pc.invert(pc.fill_null(catalog["active"], True)))
        exclude = np.asarray(pc.filter(index, inactive).to_numpy(zero_copy_only=False), dtype=np.int32)
        categories = np.full(len(item_ids), -1, dtype=np.int32)
        with_category = pc.and_(known, pc.is_valid(catalog["category"]))
        codes = pc.filter(catalog["category"], with_category).dictionary_encode().combine_chunks().indices
        categories[pc.filter(index, with_category).to_numpy(zero_copy_only=False)] = codes.to_numpy(zero_copy_only=False)
        return cls(exclude=np.unique(exclude), categories=categories)


def serve_lists(
    settings: Settings, user_factors: np.ndarray, item_factors: np.ndarray, seen: Any, filters: ItemFilters
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists the way they are served: seen and inactive items out, category cap applied."""
    from recsys.model import cap_per_category, recommend_factors

    cap = settings.max_per_category
    width = settings.k * 3 if cap else settings.k
    ids, scores = recommend_factors(user_factors, item_factors, seen, width, filters.exclude)
    if cap:
        ids, scores = cap_per_category(ids, scores, filters.categories, cap, settings.k)
    return ids, scores


def seen_matrix(settings: Settings, events: Any) -> Any:
    """The users x items matrix (rows and columns those of ``events``, a PairEvents) of what a
    list must not repeat: every item the user touched (exclude_seen=all) or only what they
    bought (exclude_seen=purchased: an event of a purchase type)."""
    from recsys.model import pairs_matrix

    return pairs_matrix(events, settings.purchase_event_types if settings.exclude_seen == "purchased" else None)


def _popularity_vector(popular: pa.Table, item_ids: pa.Array) -> np.ndarray:
    """Popularity score per matrix column (higher = more popular; 0 for items not ranked)."""
    scores = np.zeros(len(item_ids), dtype=np.float32)
    index = pc.index_in(popular["item_id"], value_set=item_ids)
    keep = pc.is_valid(index)
    cols = pc.filter(index, keep).to_numpy()
    ranks = pc.filter(popular["popularity_rank"], keep).to_numpy()
    scores[cols] = (len(item_ids) + 1 - ranks).astype(np.float32)
    return scores


@dataclass
class Holdout:
    """What every hold-out evaluation of one run shares: the training events and the truth."""

    events: Any  # PairEvents of the training days (at most tune_max_users users): each candidate's matrix
    rows: np.ndarray  # rows of ``events`` of the users evaluated (all warm users, or a sample of them)
    truth: Any  # csr (len(rows) x items incl. hold-out-only items): what each should have found
    seen: Any  # csr (len(rows) x training items): what their lists must not repeat
    filters: ItemFilters  # inactive items and categories of the training items
    popularity: np.ndarray  # popularity score per training item
    cold_users: int  # hold-out users the training days do not know (served __popular__)
    warm_users: int  # hold-out users the training days know (rows holds all of them or a sample)

    @property
    def eligible_items(self) -> int:
        return int(self.events.shape[1] - len(self.filters.exclude))


def sample_rows(rows: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    """``rows`` itself, or when there are more than ``max_users`` (> 0), that many of them drawn
    without replacement with ``seed`` (the same sample on every run of the same data), sorted."""
    if max_users <= 0 or len(rows) <= max_users:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=max_users, replace=False))


def build_holdout(
    settings: Settings, events: Any, holdout: pa.Table, popular_train: pa.Table, filters: ItemFilters
) -> Holdout:
    """The hold-out of one run from aggregate's tables: truth = the items each user touched in
    the hold-out days and not before (``holdout_relevant.sql``), for the users the training
    days know (at most ``holdout_max_users`` of them, a seeded sample: scoring grows with
    users x items, and a mean over 20,000 users is within about ±0.004 NDCG, two standard
    errors, per-user NDCG@20 having a standard deviation of 0.26 on the demo store);
    ``seen`` = what their served lists leave out."""
    from recsys.model import build_user_item_matrix

    # Item space: training items first, then items only the hold-out has (still relevant, never hit).
    holdout_items = pc.unique(holdout["item_id"])
    extra = pc.filter(holdout_items, pc.invert(pc.is_in(holdout_items, value_set=events.item_ids)))
    all_items = pa.concat_arrays([events.item_ids, extra.sort()])
    relevant = build_user_item_matrix(holdout, item_ids=all_items, user_ids=events.user_ids).matrix
    warm = np.flatnonzero(np.diff(relevant.indptr) > 0)
    rows = sample_rows(warm, settings.holdout_max_users, settings.random_state)
    if len(rows) < len(warm):
        log.info("hold-out: %d of %d warm users evaluated (RECSYS_HOLDOUT_MAX_USERS)", len(rows), len(warm))
    tune_events, tune_rows = tuning_users(settings, events, rows)
    return Holdout(
        events=tune_events,
        rows=tune_rows,
        truth=relevant[rows],
        seen=seen_matrix(settings, tune_events)[tune_rows],  # the same rows, from the smaller set
        filters=filters,
        popularity=_popularity_vector(popular_train, events.item_ids),
        cold_users=int(pc.count_distinct(holdout["user_id"]).as_py()) - len(warm),
        warm_users=len(warm),
    )


def tuning_users(settings: Settings, events: Any, rows: np.ndarray) -> tuple[Any, np.ndarray]:
    """The training events every tuning candidate fits on, and where the evaluated ``rows``
    are in them: all users, or when there are more than ``tune_max_users`` (> 0), the
    evaluated users plus a seeded sample of the others up to that many. A candidate's fit
    then costs the same whatever the store's size; the winner is trained on every user.
    Returns (PairEvents, rows in it)."""
    from recsys.model import take_users

    n_users, cap = events.shape[0], settings.tune_max_users
    if cap <= 0 or n_users <= max(cap, len(rows)):
        return events, rows
    others = np.setdiff1d(np.arange(n_users), rows, assume_unique=True)
    extra = cap - len(rows)  # the evaluated users are always in, even beyond the cap
    keep = rows if extra <= 0 else np.union1d(rows, sample_rows(others, extra, settings.random_state + 1))
    log.info("tuning: candidates fit on %d of %d training users (RECSYS_TUNE_MAX_USERS), %d of them evaluated",
             len(keep), n_users, len(rows))
    return take_users(events, keep), np.searchsorted(keep, rows)


def _csr_arrays(name: str, matrix: Any) -> dict[str, np.ndarray]:
    return {f"{name}_indptr": matrix.indptr, f"{name}_indices": matrix.indices, f"{name}_data": matrix.data,
            f"{name}_shape": np.array(matrix.shape)}


def _csr_from(arrays: Any, name: str) -> Any:
    import scipy.sparse as sp

    return sp.csr_matrix((arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]),
                         shape=tuple(arrays[f"{name}_shape"]))


def pair_event_files(prefix: str) -> list[str]:
    """The files :func:`save_pair_events` writes with ``prefix``."""
    return [f"{prefix}events.npz", f"{prefix}users.parquet", f"{prefix}items.parquet"]


def save_pair_events(folder: Any, prefix: str, events: Any) -> None:
    """``<prefix>events.npz`` and the row and column ids (``<prefix>users/items.parquet``)."""
    np.savez(folder / f"{prefix}events.npz", **events.arrays())
    pq.write_table(pa.table({"user_id": events.user_ids}), folder / f"{prefix}users.parquet")
    pq.write_table(pa.table({"item_id": events.item_ids}), folder / f"{prefix}items.parquet")


def load_pair_events(folder: Any, prefix: str) -> Any:
    """What :func:`save_pair_events` wrote; raises FileNotFoundError naming the file."""
    from recsys.model import PairEvents

    path = folder / f"{prefix}events.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rerun index_events for this date (it writes the event index)")
    users = pq.read_table(folder / f"{prefix}users.parquet")["user_id"].combine_chunks()
    items = pq.read_table(folder / f"{prefix}items.parquet")["item_id"].combine_chunks()
    with np.load(path, allow_pickle=False) as arrays:
        return PairEvents.from_arrays({k: arrays[k] for k in arrays.files}, users, items)


def load_window_events(settings: Settings, day: dt.date) -> Any:
    """The PairEvents of the whole window that index_events wrote for ``day`` (``events.npz``):
    what train fits the winner on and recommend takes the seen items from."""
    return load_pair_events(lake.fetch_partition(settings.lake, "pair_events", day, pair_event_files("")), "")


def save_holdout(folder: Any, holdout: Holdout) -> None:
    """``holdout.npz``: rows, truth, seen, filters and popularity (the events are saved apart)."""
    np.savez(
        folder / "holdout.npz", rows=holdout.rows, **_csr_arrays("truth", holdout.truth),
        **_csr_arrays("seen", holdout.seen), exclude=holdout.filters.exclude, categories=holdout.filters.categories,
        popularity=holdout.popularity, cold_users=np.array(holdout.cold_users),
        warm_users=np.array(holdout.warm_users),
    )


def load_holdout(settings: Settings, day: dt.date) -> Holdout:
    """The training events and hold-out truth written by index_events for ``day``."""
    folder = lake.fetch_partition(settings.lake, "pair_events", day, [*pair_event_files("train_"), "holdout.npz"])
    events = load_pair_events(folder, "train_")
    with np.load(folder / "holdout.npz", allow_pickle=False) as arrays:
        return Holdout(
            events=events,
            rows=arrays["rows"],
            truth=_csr_from(arrays, "truth"),
            seen=_csr_from(arrays, "seen"),
            filters=ItemFilters(exclude=arrays["exclude"], categories=arrays["categories"]),
            popularity=arrays["popularity"],
            cold_users=int(arrays["cold_users"]),
            warm_users=int(arrays["warm_users"]),
        )


def score_candidate(settings: Settings, data: Holdout, candidate: dict[str, Any]) -> dict[str, Any]:
    """Train the candidate (its family and parameters, on the training days' matrix built with
    its event weights and half-life); metrics of its lists on the hold-out.

    Lists are made the way they are served (seen and inactive items filtered, category cap).
    """
    from recsys.metrics import evaluate_lists
    from recsys.model import confidence_matrix, train_model

    params, weights, half_life = split_candidate(candidate)
    matrix = confidence_matrix(data.events, weights, half_life).matrix
    factors = train_model(matrix, params)
    ids, _ = serve_lists(settings, factors.user_factors[data.rows], factors.item_factors, data.seen, data.filters)
    return evaluate_lists(ids, data.truth, settings.k, data.eligible_items)


def score_popularity(settings: Settings, data: Holdout) -> dict[str, Any]:
    """Metrics of the popularity baseline (most popular unseen active items) on the hold-out."""
    from recsys.metrics import evaluate_lists

    item_vectors = data.popularity.reshape(-1, 1).astype(np.float32)
    users = np.ones((len(data.rows), 1), dtype=np.float32)
    ids, _ = serve_lists(settings, users, item_vectors, data.seen, data.filters)
    return evaluate_lists(ids, data.truth, settings.k, data.eligible_items)


def make_candidate(settings: Settings, choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """One candidate: model family and parameters, event weights and recency half-life.

    ``choice`` holds grid values (keys of config.TUNABLE and ``weight.<type>``); what it does
    not name comes from the settings, with each family's own defaults (BPR: ``bpr_iterations``,
    ``bpr_regularization``, ``learning_rate``). BPR only sees which pairs have a weighted event,
    so its weights are reduced to 1/0 and its half-life to the settings' (equal candidates
    then collapse into one).
    """
    from recsys.config import WEIGHT_KEY_PREFIX
    from recsys.model import ModelParams

    choice = choice or {}
    family = choice.get("model", settings.model)
    values: dict[str, Any] = {"model": family, "factors": settings.factors, "random_state": settings.random_state}
    if family == "bpr":
        values.update(regularization=settings.bpr_regularization, iterations=settings.bpr_iterations,
                      learning_rate=settings.learning_rate)
    else:
        values.update(regularization=settings.regularization, alpha=settings.alpha, iterations=settings.iterations,
                      weighting=settings.weighting)
    fields = {f.name for f in dataclasses.fields(ModelParams)}
    values.update({k: v for k, v in choice.items() if k in fields})
    params = ModelParams(**values)
    if choice.get("weights", "configured") == "uniform":
        weights = {t: 1.0 for t in settings.event_weights}
    else:
        weights = {t: float(w) for t, w in settings.event_weights.items()}
    weights.update({k[len(WEIGHT_KEY_PREFIX):]: float(v) for k, v in choice.items() if k.startswith(WEIGHT_KEY_PREFIX)})
    half_life = float(choice.get("half_life", settings.recency_half_life_days))
    if family == "bpr":
        weights = {t: float(w > 0) for t, w in weights.items()}
        half_life = float(settings.recency_half_life_days)
    return {**params.as_dict(), "event_weights": weights, "half_life_days": half_life}


def split_candidate(candidate: dict[str, Any]) -> tuple[Any, dict[str, float], float]:
    """(ModelParams, event weights, half-life days) of a candidate made by :func:`make_candidate`."""
    from recsys.model import ModelParams

    fields = {f.name for f in dataclasses.fields(ModelParams)}
    params = ModelParams(**{k: v for k, v in candidate.items() if k in fields})
    return params, dict(candidate["event_weights"]), float(candidate["half_life_days"])


def tuning_candidates(settings: Settings) -> list[dict[str, Any]]:
    """The candidate settings of this run: the cartesian product of each tuning grid (a grid
    ``a | b`` is the union of two products), equal candidates once, in grid order.

    The grid is ``name=v1,v2;name=v1`` over model fields (model, factors, regularization,
    alpha, iterations, weighting, learning_rate), ``weights`` (configured, uniform),
    ``weight.<event type>`` and ``half_life``; what it does not name keeps its settings
    value. An empty grid is one candidate: the settings themselves.
    """
    from itertools import product

    from recsys.config import parse_grids

    candidates: list[dict[str, Any]] = []
    for grid in parse_grids(settings.tuning_grid) or [{}]:
        names = sorted(grid)
        for values in product(*(grid[n] for n in names)):
            candidate = make_candidate(settings, dict(zip(names, values)))
            if candidate not in candidates:
                candidates.append(candidate)
    return candidates


def tune(settings: Settings, day: dt.date, candidate: dict[str, Any]) -> dict[str, Any]:
    """Score one candidate on the hold-out; writes ``lake/tuning/dt=D/<hash>.json`` and returns it."""
    from recsys.model import fingerprint

    started = time.perf_counter()
    data = load_holdout(settings, day)
    loaded = time.perf_counter() - started
    metrics = score_candidate(settings, data, candidate)
    result = {"params": candidate, "metrics": metrics, "seconds": round(time.perf_counter() - started, 2)}
    lake.write_lake_json(settings.lake, f"{lake.partition_key('tuning', day)}/candidate-{fingerprint(candidate)}.json", result)
    log.info("tune %s: ndcg@%d=%.4f map@%d=%.4f on %d hold-out users in %.1f s (%.1f s loading)", candidate,
             settings.k, metrics["ndcg_at_k"], settings.k, metrics["map_at_k"], metrics["users_evaluated"],
             result["seconds"], loaded)
    return result


CHAMPION = "models/champion.json"  # under the lake root: the model the storefront is being served (set by verify)


def read_champion(settings: Settings) -> dict[str, Any] | None:
    """``lake/models/champion.json``, or None before the first verified publish."""
    return lake.read_lake_json(settings.lake, CHAMPION)  # type: ignore[no-any-return]


def check_gate(settings: Settings, day: dt.date, metrics: dict[str, Any]) -> dict[str, Any]:
    """The quality gate: the model must beat popularity's hold-out NDCG@k by ``gate_min_lift``
    (relative) and not fall more than ``gate_max_drop`` (relative) below the champion's score.

    Stores the gate's figures in ``metrics["gate"]`` and returns them; raises
    QualityGateError with them when the model fails.
    """
    k = settings.k
    model_ndcg, pop_ndcg = metrics["model"]["ndcg_at_k"], metrics["popularity"]["ndcg_at_k"]
    champion = read_champion(settings)
    gate = {
        "popularity_ndcg_at_k": pop_ndcg,
        "required_over_popularity": pop_ndcg * (1 + settings.gate_min_lift),
        "champion": champion,
        "required_over_champion": champion["ndcg_at_k"] * (1 - settings.gate_max_drop) if champion else None,
    }
    problems = []
    if metrics["model"]["users_evaluated"] and model_ndcg < gate["required_over_popularity"]:
        problems.append(
            f"NDCG@{k} {model_ndcg:.4f} is below popularity's {pop_ndcg:.4f} + {settings.gate_min_lift:.0%} "
            f"= {gate['required_over_popularity']:.4f} (RECSYS_GATE_MIN_LIFT)"
        )
    if champion and model_ndcg < gate["required_over_champion"]:
        problems.append(
            f"NDCG@{k} {model_ndcg:.4f} is more than {settings.gate_max_drop:.0%} below the served champion "
            f"{champion['model_version']}'s {champion['ndcg_at_k']:.4f} (RECSYS_GATE_MAX_DROP)"
        )
    metrics["gate"] = gate  # the report shows the figures whether the gate passes or not
    if problems:
        raise QualityGateError(
            f"quality gate for {day} over {metrics['model']['users_evaluated']} hold-out users: "
            + "; ".join(problems) + ". Nothing is published; the storefront keeps its current lists"
        )
    log.info("quality gate passed: NDCG@%d %.4f >= %.4f (popularity + lift)%s", k, model_ndcg,
             gate["required_over_popularity"],
             f", >= {gate['required_over_champion']:.4f} (champion - drop)" if champion else " (no champion yet)")
    return gate


GRID_METRICS = ("ndcg_at_k", "map_at_k", "precision_at_k", "recall_at_k", "catalog_coverage")


def train(settings: Settings, day: dt.date, results: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Pick the best candidate on NDCG@k, gate it against popularity, train it (its family,
    event weights and half-life) on the whole window and write ``lake/models/dt=D/``
    (model.npz, users/items.parquet, params.json, metrics.json with every candidate).

    ``results`` are the tune tasks' outputs; without them the settings' own parameters are
    scored here. Returns {"model_version", "metrics"}. Raises QualityGateError when the best
    candidate does not beat the popularity baseline.
    """
    from recsys.model import confidence_matrix, fingerprint, save_model, train_model

    started = time.perf_counter()
    data = load_holdout(settings, day)
    if not results:
        candidate = make_candidate(settings)
        results = [{"params": candidate, "metrics": score_candidate(settings, data, candidate),
                    "seconds": round(time.perf_counter() - started, 2)}]
    ranked = sorted(results, key=lambda r: -r["metrics"]["ndcg_at_k"])
    best = ranked[0]["params"]
    params, weights, half_life = split_candidate(best)
    metrics = {
        "model": ranked[0]["metrics"],
        "popularity": score_popularity(settings, data),
        "grid": [{"params": r["params"], **{m: r["metrics"][m] for m in GRID_METRICS}, "seconds": r.get("seconds")}
                 for r in ranked],
        "holdout_users_cold": data.cold_users,
        "holdout_users_warm": data.warm_users,
        "train_users": data.events.shape[0],  # of the candidates' fits (RECSYS_TUNE_MAX_USERS)
        "train_items": data.events.shape[1],
        "train_nonzeros": len(data.events.indices),
    }
    k = settings.k
    model_ndcg, pop_ndcg = metrics["model"]["ndcg_at_k"], metrics["popularity"]["ndcg_at_k"]
    log.info(
        "hold-out (%d of %d warm users evaluated, %d cold): best of %d %s ndcg@%d=%.4f map@%d=%.4f | popularity ndcg@%d=%.4f map@%d=%.4f",
        len(data.rows), data.warm_users, data.cold_users, len(ranked), best, k, model_ndcg, k, metrics["model"]["map_at_k"],
        k, pop_ndcg, k, metrics["popularity"]["map_at_k"],
    )
    from recsys.report import write_report

    try:
        metrics["gate"] = check_gate(settings, day, metrics)
    except QualityGateError as exc:
        write_report(settings, day, metrics, model_version=None, gate_error=str(exc))
        raise
    events = load_window_events(settings, day)
    full = confidence_matrix(events, weights, half_life)
    factors = train_model(full.matrix, params)
    version = f"{day.isoformat()}-{fingerprint(best, full.matrix.indptr, full.matrix.indices, full.matrix.data)}"
    seconds = time.perf_counter() - started
    with lake.replace_partition(settings.lake, "models", day) as tmp:
        save_model(factors, tmp / "model.npz")
        pq.write_table(pa.table({"user_id": full.user_ids}), tmp / "users.parquet")
        pq.write_table(pa.table({"item_id": full.item_ids}), tmp / "items.parquet")
        lake.write_json(tmp / "params.json", {"model_version": version, "model": params.as_dict(), "k": k,
                                              "window_days": settings.window_days,
                                              "holdout_days": settings.holdout_days,
                                              "event_weights": weights, "half_life_days": half_life})
        lake.write_json(tmp / "metrics.json", {"model_version": version, "run_date": day.isoformat(),
                                               "k": k, **metrics, "seconds": round(seconds, 2)})
    report = write_report(settings, day, metrics, model_version=version, gate_error=None)
    log.info("train: model %s written in %.1f s; report: %s", version, seconds, report)
    return {"model_version": version, "ndcg_at_k": model_ndcg, "popularity_ndcg_at_k": pop_ndcg}


# --------------------------------------------------------------------------- recommend


def recommend(settings: Settings, day: dt.date) -> dict[str, Any]:
    """Every list the storefront reads, into ``lake/recommendations/dt=D/``.

    Top-k for every user of the window (filtered as configured); ``__popular__`` for unknown
    users; ``__popular__#<category>`` for each catalog category; ``item#<item_id>`` with the
    item's most similar items (cosine of the model's item factors) for every item.

    Users are scored ``recommend_batch_users`` at a time and each batch's lists go straight
    into the Parquet file, so memory holds the factors, the seen matrix and one batch of
    lists, whatever the number of users.
    """
    from recsys.model import load_model, similar_items

    started = time.perf_counter()
    models = lake.fetch_partition(settings.lake, "models", day)
    confidence_dir = lake.fetch_partition(settings.lake, "confidence", day, ["popular.parquet", "popular_by_category.parquet"])
    users = pq.read_table(models / "users.parquet")["user_id"].combine_chunks()
    items = pq.read_table(models / "items.parquet")["item_id"].combine_chunks()
    version = lake.read_json(models / "params.json")["model_version"]
    factors = load_model(models / "model.npz")
    user_factors, item_factors = factors.user_factors, factors.item_factors
    events = load_window_events(settings, day)
    if not (events.user_ids.equals(users) and events.item_ids.equals(items)):
        raise ValueError(f"the model of {day} ({models}) was not trained on the events of "
                         f"{lake.partition_uri(settings.lake, 'pair_events', day)}: rerun the run from index_events")
    seen = seen_matrix(settings, events)
    del events
    filters = ItemFilters.load(settings, items)
    batch = settings.recommend_batch_users
    rows = short = 0
    last_log = time.perf_counter()
    with lake.replace_partition(settings.lake, "recommendations", day) as tmp:
        with pq.ParquetWriter(tmp / lake.DATA_FILE, RECOMMENDATIONS_SCHEMA, compression="zstd") as writer:
            for first in range(0, len(users), batch):
                last = min(first + batch, len(users))
                ids, scores = serve_lists(settings, user_factors[first:last], item_factors, seen[first:last], filters)
                lists = _lists_table(users.slice(first, last - first), items, ids, scores)
                writer.write_table(lists)
                rows += lists.num_rows
                short += int(np.sum((ids >= 0).sum(axis=1) < settings.k))
                if time.perf_counter() - last_log >= 10.0 or last == len(users):
                    last_log = time.perf_counter()
                    log.info("recommend: %d / %d users (%.0f users/s)", last, len(users),
                             last / max(last_log - started, 1e-9))
            popular = _popular_lists(
                settings, pq.read_table(confidence_dir / "popular.parquet"),
                pq.read_table(confidence_dir / "popular_by_category.parquet"),
            )
            similar_ids, similar_scores = similar_items(factors.item_embeddings, settings.k, filters.exclude)
            item_keys = pc.binary_join_element_wise(pa.scalar("item#"), items, "")
            similar = _lists_table(item_keys, items, similar_ids, similar_scores)
            writer.write_table(popular)
            writer.write_table(similar)
            rows += popular.num_rows + similar.num_rows
        lake.write_json(tmp / "_meta.json", {"model_version": version})
    seconds = time.perf_counter() - started
    categories = popular.num_rows and int(pc.count_distinct(popular["user_id"]).as_py()) - 1
    log.info(
        "recommend: %d users (%d with fewer than %d items), %d similar-item lists, popular list + %d category "
        "lists, %d rows in %.1f s (%.0f users/s)",
        len(users), short, settings.k, len(items), categories, rows, seconds, len(users) / max(seconds, 1e-9),
    )
    return {"users": len(users), "items": len(items), "category_lists": categories, "rows": rows,
            "short_lists": short, "model_version": version, "seconds": round(seconds, 2)}


def _popular_lists(settings: Settings, popular: pa.Table, by_category: pa.Table) -> pa.Table:
    """``__popular__`` and ``__popular__#<category>`` rows; score = users / the top item's users."""
    overall = popular.slice(0, settings.k)
    keys = pa.array([POPULAR_USER_ID] * overall.num_rows, pa.string())
    ranks = pa.array(np.arange(1, overall.num_rows + 1), pa.int16())
    top = by_category.filter(pc.less_equal(by_category["category_rank"], settings.k))
    category_keys = pc.binary_join_element_wise(pa.scalar(POPULAR_USER_ID + "#"), top["category"], "")
    users = np.concatenate([overall["users"].to_numpy(), top["users"].to_numpy()]).astype(np.float32)
    best = np.concatenate([np.full(overall.num_rows, users[: overall.num_rows].max(initial=1.0)),
                           _first_of_group(top["users"].to_numpy(), top["category_rank"].to_numpy())])
    return pa.table(
        {
            "user_id": pa.concat_arrays([keys, category_keys.combine_chunks()]),
            "rank": pa.concat_arrays([ranks, top["category_rank"].cast(pa.int16()).combine_chunks()]),
            "item_id": pa.concat_arrays([overall["item_id"].combine_chunks(), top["item_id"].combine_chunks()]),
            "score": pa.array(users / np.maximum(best, 1.0), pa.float32()),
        },
        schema=RECOMMENDATIONS_SCHEMA,
    )


def _first_of_group(values: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """For rows sorted by group then rank (rank 1 starts a group): each row's group's first value."""
    starts = np.flatnonzero(ranks == 1)
    group = np.cumsum(ranks == 1) - 1
    return values[starts][group].astype(np.float32) if len(starts) else values.astype(np.float32)


def _lists_table(users: pa.Array, items: pa.Array, ids: np.ndarray, scores: np.ndarray) -> pa.Table:
    """Long (user_id, rank, item_id, score) rows from (n_users, k) id and score arrays."""
    n, k = ids.shape
    valid = ids >= 0
    user_index = np.repeat(np.arange(n), k)[valid.ravel()]
    ranks = np.tile(np.arange(1, k + 1, dtype=np.int16), n)[valid.ravel()]
    return pa.table(
        {
            "user_id": users.take(pa.array(user_index)),
            "rank": pa.array(ranks, pa.int16()),
            "item_id": items.take(pa.array(ids[valid].astype(np.int64))),
            "score": pa.array(scores[valid].astype(np.float32), pa.float32()),
        },
        schema=RECOMMENDATIONS_SCHEMA,
    )


# --------------------------------------------------------------------------- publish + verify


def plan_publish(settings: Settings, day: dt.date, is_backfill: bool = False, force: bool = False) -> list[dict[str, Any]]:
    """Decide whether this run publishes, and split its lists into shards.

    Backfill runs never publish. A run whose date is older than the date the table serves
    (a late retry, a rerun of an old date) is skipped unless ``force``: the storefront never
    goes back to older lists by accident. Both return [] (the shard tasks are then skipped).
    Otherwise creates the table when missing and returns one small dict per shard
    (``settings.publish_shards`` contiguous ranges of the sorted user ids, see
    :func:`recsys.dynamodb.shard_ranges`) carrying what every shard writes alike: model
    version, generated_at and expires_at, fixed here so a retried shard writes the same items.
    """
    from recsys import dynamodb

    if is_backfill:
        log.info("publish: %s is a backfill run; lake partitions rebuilt, nothing published", day)
        return []
    client = dynamodb.make_client(settings)
    dynamodb.ensure_table(client, settings.table)
    served = dynamodb.read_served(client, settings.table)
    if served and served["run_date"] > day.isoformat() and not force:
        log.warning(
            "publish: table %s serves run date %s (model %s), newer than %s: NOT published "
            "(set the Param force_publish to replace newer lists with these)",
            settings.table, served["run_date"], served["model_version"], day,
        )
        return []
    version = lake.read_partition_json(settings.lake, "recommendations", day, "_meta.json")["model_version"]
    users = lake.read_partition(settings.lake, "recommendations", day, columns=["user_id"])["user_id"]
    generated_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    expires_at = int((generated_at + dt.timedelta(days=settings.ttl_days)).timestamp())
    common = {
        "run_date": day.isoformat(),
        "model_version": version,
        "generated_at": generated_at.isoformat(),
        "expires_at": expires_at,
    }
    shards = [{**common, **shard} for shard in dynamodb.shard_ranges(users, settings.publish_shards)]
    log.info(
        "publish: model %s to table %s in %d shard(s) of about %d users (pool %s)",
        version, settings.table, len(shards), max(s["users"] for s in shards), settings.publish_pool,
    )
    return shards


def publish_shard(settings: Settings, day: dt.date, shard: dict[str, Any]) -> dict[str, Any]:
    """Write one shard's users (the ids in [first, end)) to DynamoDB, overwriting what was there.

    Idempotent: the shard's users, versions and timestamps are fixed by :func:`plan_publish`,
    so a retry rewrites exactly the same items. Returns the shard's range with "items",
    "seconds", "items_per_second", "retries", "started", "finished" (epoch seconds).
    Raises PublicationError (retried by Airflow) when DynamoDB cannot take the items.
    """
    from recsys import dynamodb

    started = time.time()
    label = f"publish shard {shard['shard'] + 1}/{shard['shards']}"
    where = dynamodb.key_range(shard["first"], shard["end"])
    recs = lake.read_partition(settings.lake, "recommendations", day, filters=where)
    client = dynamodb.make_client(settings)
    stats = dynamodb.publish_recommendations(
        client,
        settings.table,
        recs,
        model_version=shard["model_version"],
        generated_at=dt.datetime.fromisoformat(shard["generated_at"]),
        expires_at=int(shard["expires_at"]),
        threads=settings.publish_threads,
        label=label,
    )
    if stats["items"] != shard["users"]:
        raise dynamodb.PublicationError(
            f"{label}: wrote {stats['items']} users but the plan counted {shard['users']} in "
            f"[{shard['first']!r}, {shard['end']!r}) of partition {lake.partition_uri(settings.lake, 'recommendations', day)}; "
            f"the partition changed after plan_publish: rerun the run from recommend"
        )
    keep = ("shard", "shards", "first", "end")
    return {**{k: shard[k] for k in keep}, **stats, "started": started, "finished": time.time()}


def finish_publish(
    settings: Settings, day: dt.date, shards: list[dict[str, Any]], results: list[dict[str, Any]], force: bool = False
) -> dict[str, Any]:
    """Mark the run served (``__meta__``) once every shard has written its users.

    Airflow runs this only when every shard task succeeded; it checks that anyway (one
    result per planned shard). Logs and returns the totals: items, wall seconds from the
    first shard's start to the last one's end, items/s over that wall time, and each
    shard's range and count for verify. Raises PublicationError when a shard is missing and
    OlderRunError when the table meanwhile serves a newer date (unless ``force``).
    """
    from recsys import dynamodb

    done = sorted(results, key=lambda r: r["shard"])
    if [r["shard"] for r in done] != [s["shard"] for s in shards]:
        raise dynamodb.PublicationError(
            f"publish for {day}: shards {[s['shard'] for s in shards]} were planned but results came from "
            f"{[r['shard'] for r in done]}; __meta__ not written. Clear the failed publish_shard tasks to rerun them"
        )
    version = shards[0]["model_version"]
    client = dynamodb.make_client(settings)
    dynamodb.mark_served(client, settings.table, run_date=day, model_version=version, force=force)
    items = sum(r["items"] for r in done)
    wall = max(r["finished"] for r in done) - min(r["started"] for r in done)
    busy = sum(r["seconds"] for r in done)
    rate = items / wall if wall > 0 else 0.0
    log.info(
        "publish: %d items in %d shard(s) to %s, %.1f s wall (%.1f s of shard work), %.0f items/s; "
        "__meta__ now serves %s (model %s)",
        items, len(done), settings.table, wall, busy, rate, day, version,
    )
    return {
        "published": True,
        "model_version": version,
        "items": items,
        "seconds": round(wall, 3),
        "shard_seconds": round(busy, 3),
        "items_per_second": round(rate, 1),
        "retries": sum(r["retries"] for r in done),
        "shards": [{k: r[k] for k in ("shard", "first", "end", "items")} for r in done],
    }


def verify(settings: Settings, day: dt.date, published: dict[str, Any]) -> dict[str, Any]:
    """Check what :func:`finish_publish` reports against the partition (users written per
    shard), then read back a sample of users, ``__popular__`` and ``__meta__``; raises
    PublicationError when a count differs or any item read back is missing or stale."""
    from recsys import dynamodb

    if not published.get("published"):
        log.info("verify: nothing was published for %s (%s), nothing to verify", day, published.get("reason"))
        return {"verified": False}
    recs = lake.read_partition(settings.lake, "recommendations", day)
    _check_shard_counts(settings, day, recs, published["shards"])
    client = dynamodb.make_client(settings)
    result = dynamodb.verify_publication(
        client, settings.table, recs, model_version=published["model_version"], sample=settings.verify_sample
    )
    served = dynamodb.read_served(client, settings.table) or {}
    if served.get("model_version") != published["model_version"]:
        raise dynamodb.PublicationError(
            f"table {settings.table} marks model {served.get('model_version')} (run date {served.get('run_date')}) "
            f"as served, not {published['model_version']} just published for {day}"
        )
    metrics = lake.read_partition_json(settings.lake, "models", day, "metrics.json")
    lake.write_lake_json(settings.lake, CHAMPION, {
        "model_version": published["model_version"], "run_date": day.isoformat(),
        "ndcg_at_k": metrics["model"]["ndcg_at_k"], "map_at_k": metrics["model"]["map_at_k"],
    })
    return {"verified": True, **result, "served": served}


def _check_shard_counts(settings: Settings, day: dt.date, recs: pa.Table, shards: list[dict[str, Any]]) -> None:
    """Raise PublicationError unless every shard wrote as many items as its range has users."""
    from recsys import dynamodb

    wrong = []
    for shard in shards:
        where = dynamodb.key_range(shard["first"], shard["end"])
        users = recs["user_id"] if where is None else recs.filter(where)["user_id"]
        expected = int(pc.count_distinct(users).as_py()) if len(users) else 0
        if expected != shard["items"]:
            wrong.append(f"shard {shard['shard']}: {shard['items']} written, {expected} in the partition")
    if wrong:
        raise dynamodb.PublicationError(
            f"publish of {day} to {settings.table} does not match {lake.partition_uri(settings.lake, 'recommendations', day)}: "
            + "; ".join(wrong) + ". Rerun the publish for this date"
        )
    log.info("verify: users written per shard match the partition (%d shard(s))", len(shards))
