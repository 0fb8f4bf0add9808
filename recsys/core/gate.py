"""The quality gate: tonight's model against popularity and the served champion, the latter
re-scored on tonight's hold-out."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from recsys.config import Settings

log = logging.getLogger(__name__)


class QualityGateError(RuntimeError):
    """The new model is not good enough to serve; ``figures`` holds what the gate compared
    (tonight's NDCG@k, popularity's, the champion's, the thresholds and the rules it broke)
    for the gate alert."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures: dict[str, Any] = figures or {}


def check_gate(
    settings: Settings, day: dt.date, metrics: dict[str, Any], champion: dict[str, Any] | None
) -> dict[str, Any]:
    """The quality gate: the model must beat popularity's hold-out NDCG@k by ``gate_min_lift``
    (relative) and not fall more than ``gate_max_drop`` (relative) below the served champion's
    NDCG@k re-scored on tonight's hold-out (``champion``: what
    :func:`recsys.core.holdout.score_champion` found, with ``model_version`` and ``run_date``;
    None before the first verified publish). A champion with ``unavailable`` (its model could
    not be loaded or mapped) is reported in the gate's figures and only the popularity rule
    applies. A champion whose own window held some of tonight's hold-out days
    (``holdout_days_trained_on`` > 0: the usual case, last night's model) has seen part of the
    truth it is re-scored on, which flatters it; the gate then compares with the figure stored
    when it was served (``stored_ndcg_at_k``) and reports the re-scored one beside it.

    Stores the gate's figures in ``metrics["gate"]`` and returns them; raises
    QualityGateError with them (and tonight's NDCG@k, the rules broken) when the model fails.
    """
    k = settings.k
    model_ndcg, pop_ndcg = metrics["model"]["ndcg_at_k"], metrics["popularity"]["ndcg_at_k"]
    rescored = champion is not None and not champion.get("unavailable")
    basis: float | None = None
    basis_text = ""
    if champion is not None and rescored:
        held = int(champion.get("holdout_days_trained_on") or 0)
        if held == 0 or champion.get("stored_ndcg_at_k") is None:
            basis, basis_text = float(champion["ndcg_at_k"]), "re-scored on tonight's hold-out"
        else:
            basis = float(champion["stored_ndcg_at_k"])
            basis_text = (f"as stored when served (its re-scored {champion['ndcg_at_k']:.4f} is not compared: its "
                          f"window held {held} of tonight's hold-out days)")
    gate = {
        "popularity_ndcg_at_k": pop_ndcg,
        "required_over_popularity": pop_ndcg * (1 + settings.gate_min_lift),
        "champion": champion,
        "champion_basis": basis_text or None,
        "required_over_champion": basis * (1 - settings.gate_max_drop) if basis is not None else None,
        "champion_unavailable": champion.get("unavailable") if champion is not None and not rescored else None,
    }
    problems = []
    if metrics["model"]["users_evaluated"] and model_ndcg < gate["required_over_popularity"]:
        problems.append(
            f"NDCG@{k} {model_ndcg:.4f} is below popularity's {pop_ndcg:.4f} + {settings.gate_min_lift:.0%} "
            f"= {gate['required_over_popularity']:.4f} (RECSYS_GATE_MIN_LIFT)"
        )
    if champion is not None and basis is not None and model_ndcg < gate["required_over_champion"]:
        problems.append(
            f"NDCG@{k} {model_ndcg:.4f} is more than {settings.gate_max_drop:.0%} below the served champion "
            f"{champion['model_version']}'s {basis:.4f}, {basis_text} (RECSYS_GATE_MAX_DROP)"
        )
    metrics["gate"] = gate  # the report shows the figures whether the gate passes or not
    if problems:
        figures = {
            "run_date": day.isoformat(), "k": k, "ndcg_at_k": model_ndcg,
            "users_evaluated": metrics["model"]["users_evaluated"], "min_lift": settings.gate_min_lift,
            "max_drop": settings.gate_max_drop, "champion_version": champion.get("model_version") if champion else None,
            "champion_ndcg_at_k": basis, "problems": problems,
            **{key: value for key, value in gate.items() if key != "champion"},
        }
        raise QualityGateError(
            f"quality gate for {day} over {metrics['model']['users_evaluated']} hold-out users: "
            + "; ".join(problems) + ". Nothing is published; the storefront keeps its current lists",
            figures,
        )
    if gate["champion_unavailable"]:
        tail = f" (champion not compared: {gate['champion_unavailable']})"
    elif basis is not None:
        tail = f", >= {gate['required_over_champion']:.4f} (champion {basis_text}, - drop)"
    else:
        tail = " (no champion yet)"
    log.info("quality gate passed: NDCG@%d %.4f >= %.4f (popularity + lift)%s", k, model_ndcg,
             gate["required_over_popularity"], tail)
    return gate
