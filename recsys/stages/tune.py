"""Tasks ``candidates``, ``screen``, ``promote`` and ``tune``: tonight's grid (its costliest
candidates cut when their estimated screening would not fit the budget), a cheap score of
every candidate on a sample of the hold-out, the few promoted under the time budget
(successive halving), and a full score of each of those (``lake/tuning/dt=D/``)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from recsys import datasets
from recsys.config import Settings
from recsys.core.cost import Probe, Shape, within_budget
from recsys.core.grid import promote_candidates, split_candidate, tuning_candidates
from recsys.core.holdout import score_candidate, screen_holdout, steps_aside
from recsys.core.model import fingerprint
from recsys.io import lake
from recsys.io.artifacts import load_holdout, read_tuning_json

log = logging.getLogger(__name__)

SCREENING_SHARE = 0.5  # of RECSYS_TUNE_BUDGET_SECONDS the screening may spend; the rest is the full evaluations'


def candidates(settings: Settings, day: dt.date) -> list[dict[str, Any]]:
    """Tonight's candidates (:func:`recsys.core.grid.tuning_candidates`), one ``screen`` task each.

    With a budget, each candidate's screening fit and its full one are estimated first
    (:class:`recsys.core.cost.Probe`, on the shapes of the screening sample and of the whole
    hold-out) and written to ``lake/tuning/dt=D/screening.json``. When the screening would
    cost more than SCREENING_SHARE of RECSYS_TUNE_BUDGET_SECONDS, the costliest candidates are
    cut before they are screened, each family keeping its cheapest
    (:func:`recsys.core.cost.within_budget`); the report lists them with their estimates."""
    found = tuning_candidates(settings)
    budget = settings.tune_budget_seconds
    if budget <= 0 or len(found) <= 1:
        log.info("tune: %d candidate(s) for %s", len(found), day)
        return found
    data = load_holdout(settings, day)
    sample = screen_holdout(data, 1.0 / settings.tune_halving, settings.random_state)
    items = data.events.shape[1]
    full, screening = Shape.of_indptr(data.events.indptr, items), Shape.of_indptr(sample.events.indptr, items)
    probe = Probe()
    estimates = []
    for candidate in found:
        params = split_candidate(candidate)[0]
        stepping_aside = steps_aside(settings, params.model, data.truth.shape[1])
        estimates.append((0.0, 0.0) if stepping_aside else (probe.seconds(params, screening),
                                                            probe.seconds(params, full)))
    allowed = budget * SCREENING_SHARE
    kept, cut = within_budget([e[0] for e in estimates], [c["model"] for c in found], allowed)
    total = sum(e[0] for e in estimates)
    cut_entries = [{"params": found[i], "metrics": {}, "seconds": None,
                    "cut": (f"not screened: its screening was estimated at {estimates[i][0]:.0f} s, and the grid's "
                            f"at {total:.0f} s, more than the {allowed:.0f} s the screening may spend "
                            f"({SCREENING_SHARE:g} of RECSYS_TUNE_BUDGET_SECONDS={budget})")}
                   for i in cut]
    lake.write_lake_json(settings.lake, f"{lake.partition_key(datasets.TUNING, day)}/{datasets.SCREENING}", {
        "allowed_seconds": allowed, "estimated_seconds": round(total, 2),
        "shapes": {"screening": vars(screening), "full": vars(full)},
        "estimates": {fingerprint(c): {"screen": round(e[0], 2), "full": round(e[1], 2)}
                      for c, e in zip(found, estimates)},
        "cut": cut_entries})
    log.info("tune: %d candidate(s) for %s; screening estimated at %.0f s (%d users x %d items, %d pairs), "
             "%.0f s allowed", len(found), day, total, screening.users, screening.items, screening.pairs, allowed)
    for entry in cut_entries:
        log.info("cut before screening: %s: %s", entry["params"], entry["cut"])
    return [found[i] for i in kept]


def screen(settings: Settings, day: dt.date, candidate: dict[str, Any]) -> dict[str, Any]:
    """Score one candidate cheaply: fit and scored on a seeded 1/RECSYS_TUNE_HALVING of the
    training and hold-out users (:func:`recsys.core.holdout.screen_holdout`); writes
    ``lake/tuning/dt=D/screen-<hash>.json`` and returns {"params", "metrics", "seconds"}
    (seconds of fit and scoring, without loading). Without a budget
    (RECSYS_TUNE_BUDGET_SECONDS=0), or for a grid of one candidate, nothing is screened:
    returns {"params"} at once."""
    if settings.tune_budget_seconds <= 0 or len(tuning_candidates(settings)) <= 1:
        return {"params": candidate}
    data = screen_holdout(load_holdout(settings, day), 1.0 / settings.tune_halving, settings.random_state)
    started = time.perf_counter()
    metrics = score_candidate(settings, data, candidate)
    result = {"params": candidate, "metrics": metrics, "seconds": round(time.perf_counter() - started, 2)}
    lake.write_lake_json(
        settings.lake, f"{lake.partition_key(datasets.TUNING, day)}/screen-{fingerprint(candidate)}.json", result
    )
    log.info("screen %s: ndcg@%d=%.4f on %d of the hold-out users (1/%d) in %.1f s", candidate, settings.k,
             metrics["ndcg_at_k"], metrics["users_evaluated"], settings.tune_halving, result["seconds"])
    return result


def promote(settings: Settings, day: dt.date, screened: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates that get a full ``tune``: every one without a budget, else the best
    1/RECSYS_TUNE_HALVING on the screening that fit RECSYS_TUNE_BUDGET_SECONDS
    (:func:`recsys.core.grid.promote_candidates`; a full evaluation is estimated at
    RECSYS_TUNE_HALVING times its screening). Writes ``lake/tuning/dt=D/promotion.json``
    (promoted, cut with their screening figures and why) and returns the promoted."""
    budget, eta = settings.tune_budget_seconds, settings.tune_halving
    cut: list[dict[str, Any]] = []
    screening = read_tuning_json(settings, day, datasets.SCREENING) if budget > 0 else None
    if budget <= 0 or any("metrics" not in r for r in screened):  # nothing was screened
        promoted = [r["params"] for r in screened]
    else:
        estimates = (screening or {}).get("estimates", {})
        ratios = [full_cost_ratio(estimates.get(fingerprint(r["params"])), float(eta)) for r in screened]
        promoted, cut = promote_candidates(screened, budget, eta, ratios)
    cut.extend((screening or {}).get("cut", []))
    spent = sum(float(r.get("seconds") or 0.0) for r in screened)
    lake.write_lake_json(settings.lake, f"{lake.partition_key(datasets.TUNING, day)}/{datasets.PROMOTION}",
                         {"budget_seconds": budget, "halving": eta, "screening_seconds": round(spent, 2),
                          "promoted": promoted, "cut": cut})
    if budget > 0:
        log.info("promote: %d of %d candidate(s) go on to a full evaluation after %.1f s of screening "
                 "(budget %d s, 1/%d); %d cut early", len(promoted), len(screened), spent, budget, eta, len(cut))
        if screening:
            screened_estimate = sum(screening["estimates"].get(fingerprint(r["params"]), {}).get("screen", 0.0)
                                    for r in screened)
            log.info("promote: the screening took %.1f s, estimated at %.1f s", spent, screened_estimate)
        for entry in cut:
            log.info("cut early: %s: %s", entry["params"], entry.get("cut") or entry["metrics"].get("skipped"))
    return promoted


def full_cost_ratio(estimate: dict[str, float] | None, default: float) -> float:
    """How many times its screening a candidate's full evaluation is estimated to cost: the
    ratio of its two estimates in ``screening.json`` (EASE: about 1, its inversion does not
    shrink with the users), else ``default`` (RECSYS_TUNE_HALVING, the users' ratio)."""
    if not estimate or estimate.get("screen", 0.0) <= 0.0:
        return default
    return float(estimate["full"]) / float(estimate["screen"])


def tune(settings: Settings, day: dt.date, candidate: dict[str, Any]) -> dict[str, Any]:
    """Score one candidate on the hold-out; writes ``lake/tuning/dt=D/<hash>.json`` and returns it."""

    started = time.perf_counter()
    data = load_holdout(settings, day)
    loaded = time.perf_counter() - started
    metrics = score_candidate(settings, data, candidate)
    result = {"params": candidate, "metrics": metrics, "seconds": round(time.perf_counter() - started, 2)}
    lake.write_lake_json(
        settings.lake, f"{lake.partition_key(datasets.TUNING, day)}/candidate-{fingerprint(candidate)}.json", result
    )
    log.info("tune %s: ndcg@%d=%.4f map@%d=%.4f on %d hold-out users in %.1f s (%.1f s loading)", candidate,
             settings.k, metrics["ndcg_at_k"], settings.k, metrics["map_at_k"], metrics["users_evaluated"],
             result["seconds"], loaded)
    return result
