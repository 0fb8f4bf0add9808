"""Tuning on a small generated store, without Airflow: the matrices every candidate builds
from index_events' event ages, and the hold-out every family is scored on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import Settings
from recsys.core.grid import make_candidate, split_candidate
from recsys.core.holdout import score_candidate, tuning_users
from recsys.core.lists import serve_lists
from recsys.core.model import Factors
from recsys.dev.datagen import generate_store
from recsys.io import lake
from recsys.io.artifacts import load_holdout
from recsys.io.sql import register_window
from recsys.stages.aggregate import aggregate
from recsys.stages.extract import extract
from recsys.stages.index_events import index_events
from recsys.stages.recommend import recommend
from recsys.stages.train import train
from recsys.stages.validate import validate

END = dt.date(2026, 5, 31)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("tuning")
    generate_store(home / "demo", users=1_500, items=150, events=30_000, days=21, seed=5, end_date=END, categories=6)
    s = Settings.from_env({"RECSYS_HOME": str(home), "RECSYS_SOURCE": str(home / "demo" / "interactions"),
                           "RECSYS_CATALOG": str(home / "demo" / "catalog.parquet"), "RECSYS_WINDOW_DAYS": "21",
                           "RECSYS_HOLDOUT_DAYS": "4", "RECSYS_TUNING_GRID": ""})

    validate(s, END, extract(s, END)["days"])
    aggregate(s, END)
    index_events(s, END)
    return s


def _sql_confidence(settings: Settings, half_life: float) -> pa.Table:
    """The training part's confidence the old way: sql/confidence.sql over the raw events."""
    from recsys.core.window import Window
    from recsys.io.sql import connect, run_sql

    window = Window.of(settings, END)
    con = connect()
    register_window(con, settings, window)
    return run_sql(con, "confidence", {**window.sql_params(settings), "end": window.split, "half_life_days": half_life})


@pytest.mark.parametrize("half_life", [0.0, 3.5])
def test_candidate_matrix_equals_the_sql_confidence(settings: Settings, half_life: float) -> None:
    from recsys.core.model import build_user_item_matrix, confidence_matrix

    data = load_holdout(settings, END)
    built = confidence_matrix(data.events, settings.event_weights, half_life)
    expected = build_user_item_matrix(_sql_confidence(settings, half_life))
    assert built.user_ids.equals(expected.user_ids) and built.item_ids.equals(expected.item_ids)
    assert (built.matrix != expected.matrix).nnz == 0 if half_life == 0 else np.allclose(
        built.matrix.toarray(), expected.matrix.toarray(), rtol=1e-6, atol=0)
    assert built.matrix.nnz == expected.matrix.nnz > 10_000


def test_candidates_fit_on_the_evaluated_users_and_a_sample_of_the_rest(settings: Settings) -> None:
    """With RECSYS_TUNE_MAX_USERS below the training users, a candidate's matrix has that many
    rows: every evaluated user's row, unchanged, and the same sample on every run."""
    from recsys.core.model import confidence_matrix

    data = load_holdout(settings, END)
    capped = settings.with_overrides({"tune_max_users": len(data.rows) + 100})
    events, rows = tuning_users(capped, data.events, data.rows)
    assert events.shape == (len(data.rows) + 100, data.events.shape[1])
    full = confidence_matrix(data.events, settings.event_weights, 3.5).matrix
    sub = confidence_matrix(events, settings.event_weights, 3.5).matrix
    assert (sub[rows] != full[data.rows]).nnz == 0
    assert events.user_ids.take(pa.array(rows)).equals(data.events.user_ids.take(pa.array(data.rows)))
    again, _ = tuning_users(capped, data.events, data.rows)
    assert again.user_ids.equals(events.user_ids)
    below = settings.with_overrides({"tune_max_users": len(data.rows) // 2})
    only, where = tuning_users(below, data.events, data.rows)
    assert only.shape[0] == len(data.rows) and where.tolist() == list(range(len(data.rows)))
    assert tuning_users(settings.with_overrides({"tune_max_users": 0}), data.events, data.rows)[0] is data.events


def test_every_family_is_scored_on_new_items_with_served_lists(settings: Settings) -> None:
    from recsys.core.model import confidence_matrix, train_model

    data = load_holdout(settings, END)
    train_pairs = confidence_matrix(data.events, settings.event_weights, 0.0).matrix[data.rows]
    n_items = data.events.shape[1]
    assert data.truth[:, :n_items].multiply(train_pairs).nnz == 0  # relevant = not touched before the hold-out
    assert (data.seen != (train_pairs > 0)).nnz == 0  # exclude_seen=all: every training pair is filtered
    users = None
    for choice in ({"model": "als", "factors": 8}, {"model": "bpr", "factors": 8},
                   {"model": "als", "factors": 8, "weights": "uniform", "half_life": 7.0},
                   {"model": "ease", "ease_lambda": 50.0}, {"model": "rp3beta", "neighbours": 50},
                   {"model": "itemknn", "similarity": "bm25", "neighbours": 50}):
        candidate = make_candidate(settings, choice)
        params, weights, half_life = split_candidate(candidate)
        matrix = confidence_matrix(data.events, weights, half_life).matrix
        ids, _ = serve_lists(settings, train_model(matrix, params), data.rows, matrix, data.seen, data.filters)
        listed = np.zeros(data.seen.shape, dtype=bool)
        np.put_along_axis(listed, np.maximum(ids, 0), ids >= 0, axis=1)
        assert listed.sum() > 0.9 * listed.size / 150 * settings.k  # lists are (nearly) full
        assert not (listed & (data.seen.toarray() > 0)).any() and not listed[:, data.filters.exclude].any()
        metrics = score_candidate(settings, data, candidate)
        assert users in (None, metrics["users_evaluated"])  # every family faces the same users and truth
        users = metrics["users_evaluated"]
        assert metrics["ndcg_at_k"] > 0.0
    assert users == len(data.rows) > 100


def test_train_keeps_the_winners_family_and_recommend_uses_it(settings: Settings) -> None:
    bpr = make_candidate(settings, {"model": "bpr", "factors": 8})
    data = load_holdout(settings, END)
    results = [{"params": bpr, "metrics": score_candidate(settings, data, bpr), "seconds": 1.0}]
    results[0]["metrics"]["ndcg_at_k"] = 1.0  # the winner whatever it scored: train must honour it
    train(settings, END, results)
    models = lake.partition_dir(settings.lake, "models", END)
    params = lake.read_json(models / "params.json")
    assert params["model"]["model"] == "bpr" and params["event_weights"] == bpr["event_weights"]
    from recsys.io.artifacts import load_model

    factors = load_model(models / "model.npz")
    assert isinstance(factors, Factors) and factors.model == "bpr" and factors.item_factors.shape[1] == 9
    out = recommend(settings, END)
    assert out["users"] == factors.user_factors.shape[0] and out["short_lists"] == 0
    metrics = lake.read_json(models / "metrics.json")
    assert metrics["grid"][0]["params"] == bpr and metrics["grid"][0]["seconds"] == 1.0
    assert set(metrics["grid"][0]) >= {"ndcg_at_k", "map_at_k", "precision_at_k", "recall_at_k", "catalog_coverage"}


def test_index_events_saves_the_capped_users_with_their_evaluated_rows(settings: Settings) -> None:
    """Through index_events and load_holdout (what tune reads): with RECSYS_TUNE_MAX_USERS below
    the training users, the saved events have that many users, and the evaluated rows point
    at the same users, with the same truth, as without the cap. Restores the partition."""
    full = load_holdout(settings, END)
    capped = settings.with_overrides({"tune_max_users": len(full.rows) + 50})
    try:
        index_events(capped, END)
        data = load_holdout(capped, END)
    finally:
        index_events(settings, END)
    assert data.events.shape == (len(full.rows) + 50, full.events.shape[1])
    assert data.events.user_ids.take(pa.array(data.rows)).equals(full.events.user_ids.take(pa.array(full.rows)))
    assert (data.truth != full.truth).nnz == 0 and (data.seen != full.seen).nnz == 0
    params, weights, half_life = split_candidate(make_candidate(settings, {"factors": 8}))
    from recsys.core.model import confidence_matrix

    sub = confidence_matrix(data.events, weights, half_life).matrix[data.rows]
    assert (sub != confidence_matrix(full.events, weights, half_life).matrix[full.rows]).nnz == 0


def test_an_item_family_wins_is_trained_and_served_and_a_skipped_one_never_wins(settings: Settings) -> None:
    """EASE (binary input, the settings' half-life) through train and recommend: its B is saved,
    every user gets a full list scored from the window's history and every item an item# list.
    A candidate that stepped aside is never the winner, however it is ranked; all of them
    stepping aside fails train naming why."""
    from recsys.core.families import ItemModel
    from recsys.core.holdout import skipped_metrics
    from recsys.io.artifacts import load_model

    ease = make_candidate(settings, {"model": "ease", "ease_lambda": 50.0})
    data = load_holdout(settings, END)
    skipped = {**skipped_metrics("RECSYS_EASE_MAX_ITEMS"), "ndcg_at_k": 2.0}  # ranked first if train looked only at NDCG
    results = [{"params": {**ease, "ease_lambda": 10.0}, "metrics": skipped, "seconds": 0.0},
               {"params": ease, "metrics": score_candidate(settings, data, ease), "seconds": 1.0}]
    out = train(settings, END, results)
    models = lake.partition_dir(settings.lake, "models", END)
    assert lake.read_json(models / "params.json")["model"] == {"model": "ease", "ease_lambda": 50.0}
    assert out["ndcg_at_k"] == results[1]["metrics"]["ndcg_at_k"] > 0
    metrics = lake.read_json(models / "metrics.json")
    assert [g.get("skipped") for g in metrics["grid"]] == [None, "RECSYS_EASE_MAX_ITEMS"]
    model = load_model(models / "model.npz")
    assert isinstance(model, ItemModel) and isinstance(model.item_matrix, np.ndarray)
    served = recommend(settings, END)
    assert served["short_lists"] == 0 and served["items"] == model.n_items
    lists = pq.read_table(lake.partition_file(settings.lake, "recommendations", END)).to_pylist()
    similar = [r for r in lists if r["user_id"].startswith("item#")]
    assert len({r["user_id"] for r in similar}) == model.n_items and len(similar) == model.n_items * settings.k
    with pytest.raises(ValueError, match="every candidate stepped aside"):
        train(settings, END, results[:1])


def test_screening_scores_a_share_of_the_users_with_their_own_truth(settings: Settings) -> None:
    from recsys.core.holdout import screen_holdout
    from recsys.core.model import confidence_matrix

    data = load_holdout(settings, END)
    cheap = screen_holdout(data, 1 / 3, seed=1)
    assert len(cheap.rows) == int(np.ceil(len(data.rows) / 3))
    assert abs(cheap.events.shape[0] - data.events.shape[0] / 3) <= 2 and cheap.events.shape[1] == data.events.shape[1]
    # Each screened user is the same user, with the same history, truth and seen items.
    users = cheap.events.user_ids.take(pa.array(cheap.rows))
    where = pc_index(data.events.user_ids, users)
    picked = np.searchsorted(data.rows, where)
    assert np.array_equal(data.rows[picked], where)
    full = confidence_matrix(data.events, settings.event_weights, 0.0).matrix
    sub = confidence_matrix(cheap.events, settings.event_weights, 0.0).matrix
    assert (sub[cheap.rows] != full[where]).nnz == 0
    assert (cheap.truth != data.truth[picked]).nnz == 0 and (cheap.seen != data.seen[picked]).nnz == 0
    assert screen_holdout(data, 1 / 3, seed=1).events.user_ids.equals(cheap.events.user_ids)  # seeded


def pc_index(values: pa.Array, of: pa.Array) -> np.ndarray:
    import pyarrow.compute as pc

    return np.asarray(pc.index_in(of, value_set=values).to_numpy(zero_copy_only=False), dtype=np.int64)


def test_the_budget_cuts_candidates_and_the_report_lists_them(settings: Settings) -> None:
    """screen → promote → tune → train as the DAG chains them: with a budget, every candidate
    is screened, the best third goes on, the rest are cut early and listed with why; the
    winner is a fully evaluated one."""
    from recsys.core.grid import tuning_candidates
    from recsys.io.report import report_uri
    from recsys.stages.tune import promote, screen, tune

    grid = "model=als;factors=8,16;alpha=2,10 | model=rp3beta;neighbours=50 | model=itemknn;neighbours=20,50"
    # This small store's lists do not beat popularity: the gate is opened, the promotion is what is tested.
    budgeted = settings.with_overrides({"tuning_grid": grid, "tune_budget_seconds": 3600, "tune_halving": 3,
                                        "gate_min_lift": -1.0, "tune_blend_weights": ""})
    found = tuning_candidates(budgeted)
    screened = [screen(budgeted, END, c) for c in found]
    assert all(r["metrics"]["users_evaluated"] < len(load_holdout(settings, END).rows) / 2 for r in screened)
    promoted = promote(budgeted, END, screened)
    assert len(promoted) == 3 == int(np.ceil(len(found) / 3))
    best = max(screened, key=lambda r: r["metrics"]["ndcg_at_k"])
    assert promoted[0] == best["params"]
    train(budgeted, END, [tune(budgeted, END, c) for c in promoted])
    metrics = lake.read_json(lake.partition_dir(settings.lake, "models", END) / "metrics.json")
    cut = [g for g in metrics["grid"] if g.get("cut")]
    assert len(cut) == len(found) - 3 and all("screening rank" in g["cut"] for g in cut)
    assert metrics["grid"][0]["params"] in promoted and "cut" not in metrics["grid"][0]
    assert metrics["tuning"]["budget_seconds"] == 3600 and metrics["tuning"]["screening_seconds"] > 0
    page = Path(report_uri(settings, END)).read_text()
    assert f"{len(found) - 3} were cut early" in page and page.count("cut early (screening rank") == len(found) - 3
    # Without a budget nothing is screened and every candidate goes on.
    free = budgeted.with_overrides({"tune_budget_seconds": 0})
    assert promote(free, END, [screen(free, END, c) for c in found]) == found


def test_the_budget_cuts_the_costliest_candidates_before_screening(settings: Settings) -> None:
    """candidates → screen → promote → train with a budget the screening's estimates do not fit:
    the costliest candidates are cut before they are screened (never a family's cheapest),
    screening.json keeps every estimate, and metrics.json and the report list the cut ones."""
    from recsys.core.grid import tuning_candidates
    from recsys.core.model import fingerprint
    from recsys.io.artifacts import read_tuning_json
    from recsys.io.report import report_uri
    from recsys.stages.tune import candidates, promote, screen, tune

    # 3,000 ALS iterations are estimated at ten times 300's: far over the 1 s the screening may spend.
    grid = "model=als;factors=8;iterations=300,3000 | model=itemknn;neighbours=20,50"
    budgeted = settings.with_overrides({"tuning_grid": grid, "tune_budget_seconds": 2, "tune_halving": 3,
                                        "gate_min_lift": -1.0, "tune_blend_weights": ""})
    found = tuning_candidates(budgeted)
    kept = candidates(budgeted, END)
    expensive = next(c for c in found if c.get("iterations") == 3000)
    assert expensive not in kept and next(c for c in found if c.get("iterations") == 300) in kept
    assert any(c["model"] == "itemknn" for c in kept) and all(c in found for c in kept)
    screening = read_tuning_json(settings, END, "screening.json")
    assert screening is not None and screening["allowed_seconds"] == 1.0
    estimates = screening["estimates"]
    assert set(estimates) == {fingerprint(c) for c in found}
    cheap = estimates[fingerprint(next(c for c in found if c.get("iterations") == 300))]
    # screening.json rounds to 0.01 s: ten times a rounded figure is off by up to 0.05 s.
    assert estimates[fingerprint(expensive)]["screen"] == pytest.approx(10 * cheap["screen"], abs=0.056)
    # ALS's full evaluation fits three times the screening's users: about three times the cost.
    assert 2.0 < cheap["full"] / cheap["screen"] < 4.0
    unscreened = [c["params"] for c in screening["cut"]]
    assert expensive in unscreened and len(unscreened) == len(found) - len(kept)
    assert all("not screened: its screening was estimated at" in c["cut"] for c in screening["cut"])

    promoted = promote(budgeted, END, [screen(budgeted, END, c) for c in kept])
    assert expensive not in promoted
    train(budgeted, END, [tune(budgeted, END, c) for c in promoted])
    metrics = lake.read_json(lake.partition_dir(settings.lake, "models", END) / "metrics.json")
    listed = [g for g in metrics["grid"] if g["params"] == expensive]
    assert len(listed) == 1 and "not screened" in listed[0]["cut"] and "ndcg_at_k" not in listed[0]
    page = Path(report_uri(settings, END)).read_text()
    assert f"{len(unscreened)} of them were not screened at all" in page


def test_a_blend_of_the_two_best_families_is_scored_trained_and_served(settings: Settings) -> None:
    """After tuning, the best candidate and the best of another family are blended at each
    weight and scored like candidates; a winning blend is trained on the window, saved,
    reloaded and served by recommend, with its first part's item# lists."""
    from recsys.core.holdout import blend_parts, score_blends
    from recsys.io.artifacts import load_model
    from recsys.io.report import params_text

    data = load_holdout(settings, END)
    candidates = [make_candidate(settings, c) for c in ({"model": "rp3beta", "neighbours": 50},
                                                        {"model": "als", "factors": 8},
                                                        {"model": "rp3beta", "neighbours": 20})]
    results = [{"params": c, "metrics": score_candidate(settings, data, c), "seconds": 1.0} for c in candidates]
    first, second = blend_parts(results)  # type: ignore[misc]
    assert {first["model"], second["model"]} == {"rp3beta", "als"}
    blends = score_blends(settings, data, first, second, (0.3, 0.7))
    assert [b["params"]["blend_weight"] for b in blends] == [0.3, 0.7]
    assert blends[0]["params"]["event_weights"] == candidates[1]["event_weights"]  # ALS reads the weights
    assert all(b["metrics"]["users_evaluated"] == results[0]["metrics"]["users_evaluated"] for b in blends)
    assert blends[0]["metrics"]["ndcg_at_k"] != blends[1]["metrics"]["ndcg_at_k"]
    assert params_text(blends[0]["params"]).startswith("blend 0.3 x (model=")

    lenient = settings.with_overrides({"gate_min_lift": -1.0, "tune_blend_weights": "0.3,0.7"})
    forced = [{**r, "metrics": {**r["metrics"], "ndcg_at_k": 0.0}} for r in results]  # any blend wins
    train(lenient, END, forced)
    models = lake.partition_dir(settings.lake, "models", END)
    metrics = lake.read_json(models / "metrics.json")
    assert metrics["grid"][0]["params"]["model"] == "blend" and sum(
        g["params"]["model"] == "blend" for g in metrics["grid"]) == 2
    model = load_model(models / "model.npz")
    from recsys.core.model import Blend

    assert isinstance(model, Blend) and {model.first.model, model.second.model} == {"rp3beta", "als"}
    assert lake.read_json(models / "params.json")["model"]["model"] == "blend"
    out = recommend(lenient, END)
    assert out["users"] > 1_000 and out["short_lists"] == 0


def test_blend_parts_need_two_families() -> None:
    from recsys.core.holdout import blend_parts

    one = [{"params": {"model": "als"}, "metrics": {"ndcg_at_k": 0.2}},
           {"params": {"model": "als"}, "metrics": {"ndcg_at_k": 0.1}},
           {"params": {"model": "ease"}, "metrics": {"ndcg_at_k": 0.3}, "cut": "screening rank 3"},
           {"params": {"model": "rp3beta"}, "metrics": {"ndcg_at_k": 0.0, "skipped": "no"}}]
    assert blend_parts(one) is None  # the other families were cut or stepped aside
    two = [*one, {"params": {"model": "itemknn"}, "metrics": {"ndcg_at_k": 0.05}}]
    assert blend_parts(two) == ({"model": "als"}, {"model": "itemknn"})
