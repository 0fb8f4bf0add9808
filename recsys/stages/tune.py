"""Tasks ``candidates`` and ``tune``: the candidates of tonight's grid, and one candidate
scored on the hold-out (``lake/tuning/dt=D/candidate-<hash>.json``)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from recsys import datasets
from recsys.config import Settings
from recsys.core.grid import tuning_candidates
from recsys.core.holdout import score_candidate
from recsys.core.model import fingerprint
from recsys.io import lake
from recsys.io.artifacts import load_holdout

log = logging.getLogger(__name__)


def candidates(settings: Settings, day: dt.date) -> list[dict[str, Any]]:
    """Tonight's candidates (:func:`recsys.core.grid.tuning_candidates`), one ``tune`` task each."""
    found = tuning_candidates(settings)
    log.info("tune: %d candidate(s) for %s", len(found), day)
    return found


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
