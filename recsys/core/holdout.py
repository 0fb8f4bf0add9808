"""The hold-out of one run (training events, truth, filters) and the scoring of a candidate,
of popularity or of the served champion on it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys.config import Settings
from recsys.core.grid import split_candidate
from recsys.core.lists import ItemFilters, seen_matrix, serve_lists
from recsys.core.metrics import evaluate_lists, intra_list_diversity_at_k, novelty_at_k
from recsys.core.model import (
    Blend,
    Factors,
    Model,
    ModelParams,
    PairEvents,
    build_user_item_matrix,
    confidence_matrix,
    fold_in,
    model_items,
    reindex_items,
    take_users,
    train_model,
)

log = logging.getLogger(__name__)


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

    events: PairEvents  # of the training days (at most tune_max_users users): each candidate's matrix
    rows: np.ndarray  # rows of ``events`` of the users evaluated (all warm users, or a sample of them)
    truth: sp.csr_matrix  # (len(rows) x items incl. hold-out-only items): what each should have found
    seen: sp.csr_matrix  # (len(rows) x training items): what their lists must not repeat
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
    settings: Settings, events: PairEvents, holdout: pa.Table, popular_train: pa.Table, filters: ItemFilters
) -> Holdout:
    """The hold-out of one run from aggregate's tables: truth = the items each user touched in
    the hold-out days and not before (``holdout_relevant.sql``), for the users the training
    days know (at most ``holdout_max_users`` of them, a seeded sample: scoring grows with
    users x items, while the mean's standard error shrinks with the square root of the users
    sampled); ``seen`` = what their served lists leave out."""

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


def tuning_users(settings: Settings, events: PairEvents, rows: np.ndarray) -> tuple[PairEvents, np.ndarray]:
    """The training events every tuning candidate fits on, and where the evaluated ``rows``
    are in them: all users, or when there are more than ``tune_max_users`` (> 0), the
    evaluated users plus a seeded sample of the others up to that many. A candidate's fit
    then costs the same whatever the store's size; the winner is trained on every user.
    Returns (PairEvents, rows in it)."""

    n_users, cap = events.shape[0], settings.tune_max_users
    if cap <= 0 or n_users <= max(cap, len(rows)):
        return events, rows
    others = np.setdiff1d(np.arange(n_users), rows, assume_unique=True)
    extra = cap - len(rows)  # the evaluated users are always in, even beyond the cap
    keep = rows if extra <= 0 else np.union1d(rows, sample_rows(others, extra, settings.random_state + 1))
    log.info("tuning: candidates fit on %d of %d training users (RECSYS_TUNE_MAX_USERS), %d of them evaluated",
             len(keep), n_users, len(rows))
    return take_users(events, keep), np.searchsorted(keep, rows)


def screen_holdout(data: Holdout, share: float, seed: int) -> Holdout:
    """The hold-out of a cheap evaluation (tuning's screening): a seeded ``share`` of the
    evaluated users, with their truth and seen items, and the same share of the other
    training users, so a candidate's fit and scoring cost about ``share`` of a full one.
    Filters, popularity and the item space are the full hold-out's; at least one evaluated
    user is kept."""
    n_rows = len(data.rows)
    picked = sample_rows(np.arange(n_rows), max(1, int(np.ceil(n_rows * share))), seed)
    evaluated = data.rows[picked]
    others = np.setdiff1d(np.arange(data.events.shape[0]), data.rows, assume_unique=True)
    kept_others = sample_rows(others, int(np.ceil(len(others) * share)), seed + 1)
    keep = np.union1d(evaluated, kept_others)
    return Holdout(events=take_users(data.events, keep), rows=np.searchsorted(keep, evaluated),
                   truth=data.truth[picked], seen=data.seen[picked], filters=data.filters,
                   popularity=data.popularity, cold_users=data.cold_users, warm_users=data.warm_users)


def evaluate_holdout_lists(settings: Settings, data: Holdout, ids: np.ndarray) -> dict[str, Any]:
    """The :func:`evaluate_lists` metrics of the hold-out users' lists (training item columns),
    with novelty (popularity: the share of the training users who touched each item) and
    intra-list diversity (the catalog's categories)."""
    item_users = np.bincount(data.events.indices, minlength=data.events.shape[1])
    return {**evaluate_lists(ids, data.truth, settings.k, data.eligible_items),
            "novelty_at_k": novelty_at_k(ids, item_users, max(data.events.shape[0], 1), settings.k),
            "intra_list_diversity_at_k": intra_list_diversity_at_k(ids, data.filters.categories, settings.k)}


def score_candidate(settings: Settings, data: Holdout, candidate: dict[str, Any]) -> dict[str, Any]:
    """Train the candidate (its family and parameters, on the training days' matrix built with
    its event weights and half-life); metrics of its lists on the hold-out.

    Lists are made the way they are served (seen and inactive items filtered, category cap).
    A candidate that steps aside (:func:`steps_aside`) is not fit: its metrics are 0 with
    ``skipped`` saying why, and train never picks it.
    """

    params, weights, half_life = split_candidate(candidate)
    reason = steps_aside(settings, params.model, data.truth.shape[1])  # truth's columns: the window's items
    if reason:
        log.warning("tune: %s steps aside: %s", params.as_dict(), reason)
        return skipped_metrics(reason)
    matrix = confidence_matrix(data.events, weights, half_life).matrix
    model = train_model(matrix, params)
    ids, _ = serve_lists(settings, model, data.rows, matrix, data.seen, data.filters)
    return evaluate_holdout_lists(settings, data, ids)


def blend_parts(results: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The two candidates tonight's blends mix: the best fully evaluated one and the best fully
    evaluated one of another family, or None when the results hold one family only."""
    full = [r for r in results if not r["metrics"].get("skipped") and not r.get("cut")]
    ranked = sorted(full, key=lambda r: -r["metrics"]["ndcg_at_k"])
    if not ranked:
        return None
    first = ranked[0]
    second = next((r for r in ranked[1:] if r["params"]["model"] != first["params"]["model"]), None)
    return (first["params"], second["params"]) if second is not None else None


def blend_candidate(first: dict[str, Any], second: dict[str, Any], weight: float) -> dict[str, Any]:
    """The candidate of the blend ``weight`` x first + (1 - weight) x second. Its matrix is built
    with the event weights and half-life of the part that reads them (ALS: the other families
    see which pairs exist, the same pairs whatever the weights), else the first's."""
    reads_weights = next((part for part in (first, second) if part["model"] == "als"), first)
    parts = [split_candidate(part)[0].as_dict() for part in (first, second)]
    return {"model": "blend", "blend_weight": float(weight), "parts": parts,
            "event_weights": dict(reads_weights["event_weights"]),
            "half_life_days": float(reads_weights["half_life_days"])}


def score_blends(settings: Settings, data: Holdout, first: dict[str, Any], second: dict[str, Any],
                 weights: tuple[float, ...]) -> list[dict[str, Any]]:
    """Each blend of the two candidates (:func:`blend_candidate`, one per weight) scored on the
    hold-out like a candidate: both parts are fit once, on the training days' matrix, and
    every weight mixes their standardised scores. Returns {"params", "metrics", "seconds"} per
    weight (seconds: the fits shared out, plus its own scoring)."""
    started = time.perf_counter()
    base = blend_candidate(first, second, weights[0])
    params, event_weights, half_life = split_candidate(base)
    matrix = confidence_matrix(data.events, event_weights, half_life).matrix
    fitted = train_model(matrix, params)
    assert isinstance(fitted, Blend)
    fit_seconds = (time.perf_counter() - started) / len(weights)
    results = []
    for weight in weights:
        scoring = time.perf_counter()
        model = Blend(fitted.first, fitted.second, weight, fitted.first_params, fitted.second_params)
        ids, _ = serve_lists(settings, model, data.rows, matrix, data.seen, data.filters)
        metrics = evaluate_holdout_lists(settings, data, ids)
        results.append({"params": blend_candidate(first, second, weight), "metrics": metrics,
                        "seconds": round(fit_seconds + time.perf_counter() - scoring, 2)})
        log.info("blend %.2f x %s + %.2f x %s: ndcg@%d=%.4f", weight, first["model"], 1 - weight, second["model"],
                 settings.k, metrics["ndcg_at_k"])
    return results


def steps_aside(settings: Settings, family: str, items: int) -> str | None:
    """Why the family cannot be fit on a window of ``items`` items, or None when it can: EASE
    holds an items x items matrix, so it takes part only up to RECSYS_EASE_MAX_ITEMS items."""
    if family == "ease" and items > settings.ease_max_items:
        return (f"EASE needs an items x items matrix and the window has {items} items, more than "
                f"RECSYS_EASE_MAX_ITEMS={settings.ease_max_items}")
    return None


def skipped_metrics(reason: str) -> dict[str, Any]:
    """The metrics of a candidate that was not fit: every figure 0, and why."""
    return {"map_at_k": 0.0, "ndcg_at_k": 0.0, "precision_at_k": 0.0, "recall_at_k": 0.0, "catalog_coverage": 0.0,
            "novelty_at_k": 0.0, "intra_list_diversity_at_k": 0.0, "users_evaluated": 0, "skipped": reason}


def score_popularity(settings: Settings, data: Holdout) -> dict[str, Any]:
    """Metrics of the popularity baseline (most popular unseen active items) on the hold-out."""

    popularity = Factors(np.ones((len(data.rows), 1), dtype=np.float32), data.popularity.reshape(-1, 1))
    ids, _ = serve_lists(settings, popularity, np.arange(len(data.rows)), None, data.seen, data.filters)
    return evaluate_holdout_lists(settings, data, ids)


class ChampionUnavailable(RuntimeError):
    """The served champion cannot be re-scored tonight; the message says why."""


@dataclass
class Champion:
    """The served model as train re-scores it: the model, its row and column ids, and its
    ``params.json`` (family parameters, event weights, half-life)."""

    model: Model
    user_ids: pa.Array
    item_ids: pa.Array
    params: dict[str, Any]


def score_champion(settings: Settings, data: Holdout, champion: Champion) -> dict[str, Any]:
    """Metrics of the served champion's lists on tonight's hold-out: the same users, truth,
    seen items, filters and serve path as tonight's candidates, in tonight's item space (an
    item the champion does not know is never recommended).

    Every family is scored from the hold-out users' history over tonight's training days,
    built with the champion's own event weights and half-life, never from what it learnt
    about them beyond those days: the history is folded in (:func:`recsys.core.model.fold_in`:
    item models multiply it by their item matrix, ALS and BPR solve each user's vector
    against their item factors), so a user it was not trained on is scored too.

    Returns the :func:`evaluate_lists` metrics with ``items_mapped`` (tonight's training
    items the champion knows). Raises ChampionUnavailable when none of tonight's items is
    the champion's.
    """
    items = data.events.item_ids
    mapped = champion_history(champion, data.events, data.rows)
    known = mapped.known
    if not known.any():
        raise ChampionUnavailable(f"its item space does not map: none of tonight's {len(items)} training items is "
                                  f"among its {len(champion.item_ids)}")
    filters = ItemFilters(exclude=np.union1d(data.filters.exclude, np.flatnonzero(~known)).astype(np.int32),
                          categories=data.filters.categories)
    folded = fold_in(champion.model, champion_params(champion), mapped.own)
    model = reindex_items(folded, mapped.columns, mapped.their, len(items))
    ids, _ = serve_lists(settings, model, np.arange(len(data.rows)), mapped.history, data.seen, filters)
    return {**evaluate_holdout_lists(settings, data, ids), "items_mapped": int(known.sum())}


def champion_params(champion: Champion) -> ModelParams:
    """The family parameters the champion was fit with (its ``params.json``), for fold-in."""
    return ModelParams(**champion.params["model"])


@dataclass
class ChampionHistory:
    """Users' histories as the champion scores them: built with its own event weights and
    half-life, in the events' item space and in the champion's."""

    history: sp.csr_matrix  # rows x the events' items: confidences with the champion's weights, half-life
    own: sp.csr_matrix  # the same rows x the champion's items (the events' items it does not know dropped)
    known: np.ndarray  # per item of the events: whether the champion knows it
    columns: np.ndarray  # the events' item columns the champion knows ...
    their: np.ndarray  # ... and where each is among the champion's items
    projection: sp.csr_matrix  # the events' items x the champion's: ``matrix @ projection`` maps any matrix


def champion_history(champion: Champion, events: PairEvents, rows: np.ndarray) -> ChampionHistory:
    """The histories of the users at ``rows`` of ``events`` (any PairEvents: tonight's training
    days, or a refresh's new events), with the champion's own event weights and half-life,
    mapped onto the champion's item space for :func:`recsys.core.model.fold_in`. Items the
    champion does not know have no column there (``known`` says which)."""
    index = pc.index_in(events.item_ids, value_set=champion.item_ids)
    known = np.asarray(pc.is_valid(index).to_numpy(zero_copy_only=False), dtype=bool)
    columns = np.flatnonzero(known)
    their = np.asarray(pc.filter(index, pa.array(known)).to_numpy(zero_copy_only=False), dtype=np.int64)
    history = confidence_matrix(events, champion.params["event_weights"],
                                float(champion.params["half_life_days"])).matrix[rows]
    # The champion's own item space: the columns it knows, in its order (the others have no vector).
    projection = sp.csr_matrix((np.ones(len(columns), dtype=np.float32), (columns, their)),
                               shape=(len(events.item_ids), model_items(champion.model)))
    return ChampionHistory(history=history, own=sp.csr_matrix(history @ projection), known=known, columns=columns,
                           their=their, projection=projection)
