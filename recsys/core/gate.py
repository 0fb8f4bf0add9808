"""The quality gate: tonight's model against popularity and the served champion."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from recsys.config import Settings

log = logging.getLogger(__name__)


class QualityGateError(RuntimeError):
    """The new model is not good enough to serve."""


def check_gate(
    settings: Settings, day: dt.date, metrics: dict[str, Any], champion: dict[str, Any] | None
) -> dict[str, Any]:
    """The quality gate: the model must beat popularity's hold-out NDCG@k by ``gate_min_lift``
    (relative) and not fall more than ``gate_max_drop`` (relative) below the served champion's
    score (``champion``: its record, or None before the first verified publish).

    Stores the gate's figures in ``metrics["gate"]`` and returns them; raises
    QualityGateError with them when the model fails.
    """
    k = settings.k
    model_ndcg, pop_ndcg = metrics["model"]["ndcg_at_k"], metrics["popularity"]["ndcg_at_k"]
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
