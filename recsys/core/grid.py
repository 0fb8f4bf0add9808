"""Tuning candidates: the grid's cartesian products, and one candidate's model parameters,
event weights and half-life."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from recsys.config import WEIGHT_KEY_PREFIX, Settings, parse_grids
from recsys.core.families import ITEM_FAMILIES
from recsys.core.model import ModelParams

BINARY_FAMILIES = ("bpr", *ITEM_FAMILIES)  # fit on which pairs exist, not on their weights

log = logging.getLogger(__name__)


def make_candidate(settings: Settings, choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """One candidate: model family and parameters, event weights and recency half-life.

    ``choice`` holds grid values (keys of config.TUNABLE and ``weight.<type>``); what it does
    not name comes from the settings, with each family's own defaults (BPR: ``bpr_iterations``,
    ``bpr_regularization``, ``learning_rate``; the item families: ModelParams'). BPR and the
    item families (EASE, RP3beta, item-kNN) only see which pairs have a weighted event, so
    their weights are reduced to 1/0 and their half-life to the settings' (equal candidates
    then collapse into one). Only the fields that matter to the family are kept
    (``ModelParams.as_dict``).
    """

    choice = choice or {}
    family = choice.get("model", settings.model)
    values: dict[str, Any] = {"model": family, "factors": settings.factors, "random_state": settings.random_state}
    if family == "bpr":
        values.update(regularization=settings.bpr_regularization, iterations=settings.bpr_iterations,
                      learning_rate=settings.learning_rate)
    elif family == "als":
        values.update(regularization=settings.regularization, alpha=settings.alpha, iterations=settings.iterations,
                      weighting=settings.weighting)
    fields = {f.name for f in dataclasses.fields(ModelParams)}
    values.update({k: v for k, v in choice.items() if k in fields})
    params = ModelParams(**values)
    if choice.get("weights", "configured") == "uniform":
        weights = dict.fromkeys(settings.event_weights, 1.0)
    else:
        weights = {t: float(w) for t, w in settings.event_weights.items()}
    weights.update({k[len(WEIGHT_KEY_PREFIX):]: float(v) for k, v in choice.items() if k.startswith(WEIGHT_KEY_PREFIX)})
    half_life = float(choice.get("half_life", settings.recency_half_life_days))
    if family in BINARY_FAMILIES:
        weights = {t: float(w > 0) for t, w in weights.items()}
        half_life = float(settings.recency_half_life_days)
    return {**params.as_dict(), "event_weights": weights, "half_life_days": half_life}


def split_candidate(candidate: dict[str, Any]) -> tuple[Any, dict[str, float], float]:
    """(ModelParams, event weights, half-life days) of a candidate made by :func:`make_candidate`."""

    fields = {f.name for f in dataclasses.fields(ModelParams)}
    params = ModelParams(**{k: v for k, v in candidate.items() if k in fields})
    return params, dict(candidate["event_weights"]), float(candidate["half_life_days"])


def tuning_candidates(settings: Settings) -> list[dict[str, Any]]:
    """The candidate settings of this run: the cartesian product of each tuning grid (a grid
    ``a | b`` is the union of two products), equal candidates once, in grid order.

    The grid is ``name=v1,v2;name=v1`` over model fields (model, factors, regularization,
    alpha, iterations, weighting, learning_rate, ease_lambda, rp3_alpha, rp3_beta,
    neighbours, similarity), ``weights`` (configured, uniform),
    ``weight.<event type>`` and ``half_life``; what it does not name keeps its settings
    value. An empty grid is one candidate: the settings themselves.
    """
    from itertools import product


    candidates: list[dict[str, Any]] = []
    for grid in parse_grids(settings.tuning_grid) or [{}]:
        names = sorted(grid)
        for values in product(*(grid[n] for n in names)):
            candidate = make_candidate(settings, dict(zip(names, values)))
            if candidate not in candidates:
                candidates.append(candidate)
    return candidates


def promote_candidates(
    screened: list[dict[str, Any]], budget_seconds: float, eta: int, cost_ratio: float | list[float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Successive halving's promotion, under a budget: which screened candidates get a full
    evaluation.

    ``screened``: {"params", "metrics", "seconds"} per candidate, scored on the screening
    sample (``metrics["skipped"]`` when it stepped aside). The best ``ceil(n / eta)`` by
    screening NDCG@k (ties: grid order) are promoted in that order while their estimated full
    cost (``seconds * cost_ratio``; one ratio for all, or one per screened candidate) fits what
    the screening left of ``budget_seconds``; the
    best is promoted whatever it costs (a night needs a winner). Returns (the promoted
    candidates' params, best first; the others, each with ``cut`` saying why).
    """
    import math

    fit = [(i, r) for i, r in enumerate(screened) if not r["metrics"].get("skipped")]
    ranked = sorted(fit, key=lambda pair: (-pair[1]["metrics"]["ndcg_at_k"], pair[0]))
    slots = math.ceil(len(ranked) / eta) if ranked else 0
    left = budget_seconds - sum(float(r.get("seconds") or 0.0) for r in screened)
    promoted: list[dict[str, Any]] = []
    cut: list[dict[str, Any]] = []
    ratios = cost_ratio if isinstance(cost_ratio, list) else [cost_ratio] * len(screened)
    for place, (index, result) in enumerate(ranked, start=1):
        cost = float(result.get("seconds") or 0.0) * ratios[index]
        if place > slots:
            reason = f"screening rank {place} of {len(ranked)}: only the best {slots} (1/{eta}) go on"
        elif promoted and cost > left:
            reason = (f"screening rank {place} of {len(ranked)}, but its full evaluation (about {cost:.0f} s) "
                      f"does not fit the {max(left, 0.0):.0f} s left of RECSYS_TUNE_BUDGET_SECONDS")
        else:
            promoted.append(result["params"])
            left -= cost
            continue
        cut.append({**result, "cut": reason})
    cut.extend(r for r in screened if r["metrics"].get("skipped"))
    return promoted, cut
