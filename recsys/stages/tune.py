"""Tasks ``candidates``, ``screen``, ``promote`` and ``tune``: tonight's grid, a cheap score of
every candidate on a sample of the hold-out, the few promoted under the time budget
(successive halving), and a full score of each of those (``lake/tuning/dt=D/``)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from recsys import datasets
from recsys.config import Settings
from recsys.core.grid import promote_candidates, tuning_candidates
from recsys.core.holdout import score_candidate, screen_holdout
from recsys.core.model import fingerprint
from recsys.io import lake
from recsys.io.artifacts import load_holdout

log = logging.getLogger(__name__)


def candidates(settings: Settings, day: dt.date) -> list[dict[str, Any]]:
    """Tonight's candidates (:func:`recsys.core.grid.tuning_candidates`), one ``screen`` task each."""
    found = tuning_candidates(settings)
    log.info("tune: %d candidate(s) for %s", len(found), day)
    return found


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
    if budget <= 0 or any("metrics" not in r for r in screened):  # nothing was screened
        promoted = [r["params"] for r in screened]
    else:
        promoted, cut = promote_candidates(screened, budget, eta, float(eta))
    spent = sum(float(r.get("seconds") or 0.0) for r in screened)
    lake.write_lake_json(settings.lake, f"{lake.partition_key(datasets.TUNING, day)}/{datasets.PROMOTION}",
                         {"budget_seconds": budget, "halving": eta, "screening_seconds": round(spent, 2),
                          "promoted": promoted, "cut": cut})
    if budget > 0:
        log.info("promote: %d of %d candidate(s) go on to a full evaluation after %.1f s of screening "
                 "(budget %d s, 1/%d); %d cut early", len(promoted), len(screened), spent, budget, eta, len(cut))
        for entry in cut:
            log.info("cut early: %s: %s", entry["params"], entry.get("cut") or entry["metrics"].get("skipped"))
    return promoted


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
