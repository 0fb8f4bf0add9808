"""Task ``train``: the best candidate, gated against popularity and the champion (re-scored on
tonight's hold-out), retrained on the whole window into ``lake/models/dt=D/``, with the
nightly report."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys import datasets
from recsys.config import Settings
from recsys.core.gate import QualityGateError, check_gate
from recsys.core.grid import make_candidate, split_candidate
from recsys.core.holdout import (
    ChampionUnavailable,
    Holdout,
    blend_parts,
    sample_rows,
    score_blends,
    score_candidate,
    score_champion,
    score_popularity,
)
from recsys.core.lists import ItemFilters, seen_matrix, serve_lists
from recsys.core.metrics import jaccard_at_k
from recsys.core.model import (
    Model,
    PairEvents,
    UserItemMatrix,
    confidence_matrix,
    fingerprint,
    needs_history,
    train_model,
)
from recsys.core.window import Window
from recsys.io import lake
from recsys.io.artifacts import (
    load_champion,
    load_holdout,
    load_window_events,
    read_champion,
    read_tuning_json,
    save_model,
)
from recsys.io.report import write_report
from recsys.io.sources.files import read_catalog

log = logging.getLogger(__name__)

GRID_METRICS = ("ndcg_at_k", "map_at_k", "precision_at_k", "recall_at_k", "catalog_coverage", "novelty_at_k",
                "intra_list_diversity_at_k")


def train(settings: Settings, day: dt.date, results: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Pick the best candidate on NDCG@k (never one that stepped aside; blends of the best two
    families join the results first, :func:`recsys.core.holdout.score_blends`), gate it against
    popularity, train it (its family, event weights and half-life) on the whole window and
    write ``lake/models/dt=D/`` (model.npz, users/items.parquet, params.json, metrics.json
    with every candidate).

    ``results`` are the tune tasks' outputs; without them the settings' own parameters are
    scored here. Returns {"model_version", "metrics"}. Raises QualityGateError when the best
    candidate does not beat the popularity baseline, ValueError when every candidate stepped aside.
    """

    started = time.perf_counter()
    data = load_holdout(settings, day)
    promotion = read_tuning_json(settings, day, datasets.PROMOTION) if results else None
    if not results:
        candidate = make_candidate(settings)
        results = [{"params": candidate, "metrics": score_candidate(settings, data, candidate),
                    "seconds": round(time.perf_counter() - started, 2)}]
    pair = blend_parts(results) if settings.blend_weights else None
    if pair is not None:
        results = [*results, *score_blends(settings, data, *pair, settings.blend_weights)]
    ranked = sorted(results, key=lambda r: (bool(r["metrics"].get("skipped")), -r["metrics"]["ndcg_at_k"]))
    if ranked[0]["metrics"].get("skipped"):
        raise ValueError(f"every candidate stepped aside ({ranked[0]['metrics']['skipped']}): add a family that can "
                         "fit this window to RECSYS_TUNING_GRID, or raise the limit named")
    best = ranked[0]["params"]
    params, weights, half_life = split_candidate(best)
    metrics = {
        "model": ranked[0]["metrics"],
        "popularity": score_popularity(settings, data),
        "grid": [grid_entry(r) for r in ranked] + [grid_entry(r) for r in (promotion or {}).get("cut", [])],
        **({"tuning": {k: promotion[k] for k in ("budget_seconds", "halving", "screening_seconds")}}
           if promotion else {}),
        "holdout_users_cold": data.cold_users,
        "holdout_users_warm": data.warm_users,
        "train_users": data.events.shape[0],  # of the candidates' fits (RECSYS_TUNE_MAX_USERS)
        "train_items": data.events.shape[1],
        "train_nonzeros": len(data.events.indices),
    }
    k = settings.k
    model_ndcg, pop_ndcg = metrics["model"]["ndcg_at_k"], metrics["popularity"]["ndcg_at_k"]
    log.info(
        "hold-out (%d of %d warm users evaluated, %d cold): best of %d %s ndcg@%d=%.4f map@%d=%.4f "
        "| popularity ndcg@%d=%.4f map@%d=%.4f",
        len(data.rows),
        data.warm_users,
        data.cold_users,
        len(ranked),
        best,
        k,
        model_ndcg,
        k,
        metrics["model"]["map_at_k"],
        k,
        pop_ndcg,
        k,
        metrics["popularity"]["map_at_k"],
    )

    metrics["champion"] = rescore_champion(settings, day, data)
    try:
        metrics["gate"] = check_gate(settings, day, metrics, metrics["champion"])
    except QualityGateError as exc:
        write_report(settings, day, metrics, model_version=None, gate_error=str(exc))
        raise
    events = load_window_events(settings, day)
    full = confidence_matrix(events, weights, half_life)
    model = train_model(full.matrix, params)
    metrics["churn"] = night_to_night_churn(settings, day, model, full, events)
    version = f"{day.isoformat()}-{fingerprint(best, full.matrix.indptr, full.matrix.indices, full.matrix.data)}"
    seconds = time.perf_counter() - started
    with lake.replace_partition(settings.lake, datasets.MODELS, day) as tmp:
        save_model(model, tmp / "model.npz")
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


def grid_entry(result: dict[str, Any]) -> dict[str, Any]:
    """One candidate as metrics.json and the report list it: params, metrics, seconds, and
    ``skipped`` (stepped aside) or ``cut`` (cut early by the screening: its figures are the
    screening sample's)."""
    metrics = result["metrics"]
    return {"params": result["params"], **{m: metrics[m] for m in GRID_METRICS if m in metrics},
            "seconds": result.get("seconds"),
            **({"skipped": metrics["skipped"]} if metrics.get("skipped") else {}),
            **({"cut": result["cut"]} if result.get("cut") else {})}


def rescore_champion(settings: Settings, day: dt.date, data: Holdout) -> dict[str, Any] | None:
    """The served champion (``models/champion.json``) scored on tonight's hold-out
    (:func:`recsys.core.holdout.score_champion`): its metrics, ``stored_ndcg_at_k`` (its figure
    when it was served) and ``holdout_days_trained_on`` (tonight's hold-out days its own
    window held: the model of a recent night has seen some of them, which favours it).
    None before the first verified publish. A champion that cannot be loaded or mapped, or
    whose run date is tonight's or later (trained on all of tonight's hold-out truth), gives
    ``unavailable`` with the reason, logged as a warning, instead of metrics."""
    try:
        record = read_champion(settings)
    except ValueError as exc:  # not JSON
        record = {"unavailable": f"{datasets.CHAMPION} is unreadable: {exc}"}
    if record is None:
        return None
    found: dict[str, Any] = {"model_version": record.get("model_version"), "run_date": record.get("run_date"),
                             "stored_ndcg_at_k": record.get("ndcg_at_k")}
    started = time.perf_counter()
    split = Window.of(settings, day).split.date()
    try:
        if record.get("unavailable"):
            raise ChampionUnavailable(record["unavailable"])
        if str(record.get("run_date", "")) >= day.isoformat():
            raise ChampionUnavailable(
                f"it was trained through {record['run_date']}, on every one of tonight's hold-out days "
                f"({split}..{day}) and so on their truth: a rerun or an older run date is not compared with it")
        champion = load_champion(settings, record)
        found.update(score_champion(settings, data, champion))
    except ChampionUnavailable as exc:
        log.warning("champion %s (run date %s) is not compared tonight: %s", found["model_version"],
                    found["run_date"], exc)
        return {**found, "unavailable": str(exc)}
    trained_until = dt.date.fromisoformat(str(record["run_date"]))
    found["holdout_days_trained_on"] = max(0, (min(trained_until, day) - split).days + 1)
    found["seconds"] = round(time.perf_counter() - started, 2)
    log.info("champion %s re-scored on tonight's hold-out: ndcg@%d=%.4f (%s when served), %d of tonight's "
             "hold-out days in its training window, in %.1f s", found["model_version"], settings.k,
             found["ndcg_at_k"], found["stored_ndcg_at_k"], found["holdout_days_trained_on"], found["seconds"])
    return found


def night_to_night_churn(
    settings: Settings, day: dt.date, model: Model, full: UserItemMatrix, events: PairEvents
) -> dict[str, Any] | None:
    """How much tonight's lists move: the mean Jaccard (:func:`jaccard_at_k`) of tonight's
    top-k, served as recommend will serve them (the window's seen items, the catalog's
    filters), against the newest earlier ``recommendations`` partition, for a seeded sample of
    the window's users (at most RECSYS_HOLDOUT_MAX_USERS; scoring every user is recommend's
    work) that both nights list. None when the lake holds no earlier lists."""
    earlier = [d for d in lake.list_days(settings.lake, datasets.RECOMMENDATIONS) if d < day]
    if not earlier:
        return None
    rows = sample_rows(np.arange(full.shape[0]), settings.holdout_max_users, settings.random_state)
    users = full.user_ids.take(pa.array(rows))
    before = lake.read_partition(settings.lake, datasets.RECOMMENDATIONS, earlier[-1],
                                 columns=["user_id", "rank", "item_id"],
                                 filters=pc.field("user_id").isin(users) & (pc.field("rank") <= settings.k))
    previous = np.full((len(rows), settings.k), -1, dtype=np.int64)
    row = pc.index_in(before["user_id"], value_set=users).to_numpy(zero_copy_only=False)
    column = pc.index_in(before["item_id"], value_set=full.item_ids)
    # An item tonight's columns do not hold still counts in the union: an id of its own.
    unknown = full.shape[1] + np.arange(len(before))
    column = np.where(pc.is_valid(column).to_numpy(zero_copy_only=False),
                      pc.fill_null(column, 0).to_numpy(zero_copy_only=False), unknown)
    previous[row.astype(np.int64), before["rank"].to_numpy().astype(np.int64) - 1] = column
    filters = ItemFilters.from_catalog(read_catalog(settings.catalog), full.item_ids)
    ids, _ = serve_lists(settings, model, rows, full.matrix if needs_history(model) else None,
                         seen_matrix(settings, events)[rows], filters)
    compared = int(np.count_nonzero((ids >= 0).any(axis=1) & (previous >= 0).any(axis=1)))
    churn = {"previous_run_date": earlier[-1].isoformat(), "jaccard_at_k": jaccard_at_k(ids, previous, settings.k),
             "users_compared": compared, "users_sampled": len(rows)}
    log.info("churn: mean jaccard@%d %.4f against the lists of %s over %d users", settings.k,
             churn["jaccard_at_k"], churn["previous_run_date"], compared)
    return churn
