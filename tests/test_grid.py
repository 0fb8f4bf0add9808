"""recsys.core.grid: the candidates of a tuning grid."""

from __future__ import annotations


def test_tuning_candidates_are_the_grid_product_over_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from recsys.config import ConfigError, Settings
    from recsys.core.grid import tuning_candidates

    env = {"RECSYS_HOME": str(tmp_path), "RECSYS_EVENT_WEIGHTS": "view=1,buy=5"}
    s = Settings.from_env({**env, "RECSYS_TUNING_GRID": "factors=8,16;alpha=1.5", "RECSYS_ITERATIONS": "3"})
    configured = {"view": 1.0, "buy": 5.0}
    assert tuning_candidates(s) == [
        {"model": "als", "factors": 8, "regularization": 0.05, "alpha": 1.5, "iterations": 3, "random_state": 42,
         "weighting": "log", "event_weights": configured, "half_life_days": 0.0},
        {"model": "als", "factors": 16, "regularization": 0.05, "alpha": 1.5, "iterations": 3, "random_state": 42,
         "weighting": "log", "event_weights": configured, "half_life_days": 0.0},
    ]
    none = Settings.from_env({**env, "RECSYS_TUNING_GRID": "", "RECSYS_FACTORS": "12"})
    assert [c["factors"] for c in tuning_candidates(none)] == [12]

    # Weights, half-lives and families; BPR ignores confidence values, so its variants collapse.
    grid = "model=als,bpr;weights=configured,uniform;half_life=0,14 | weight.buy=20;half_life=28"
    many = tuning_candidates(Settings.from_env({**env, "RECSYS_TUNING_GRID": grid}))
    als = [(c["event_weights"], c["half_life_days"]) for c in many if c["model"] == "als"]
    uniform = {"view": 1.0, "buy": 1.0}
    assert als == [(configured, 0.0), (uniform, 0.0), (configured, 14.0), (uniform, 14.0), ({"view": 1.0, "buy": 20.0}, 28.0)]
    bpr = [c for c in many if c["model"] == "bpr"]
    assert bpr == [{"model": "bpr", "factors": 64, "regularization": 0.01, "iterations": 100, "random_state": 42,
                    "learning_rate": 0.01, "event_weights": {"view": 1.0, "buy": 1.0}, "half_life_days": 0.0}]

    # The item families: their own keys, binary input (weights 1/0), the settings' half-life.
    grid = ("model=ease;ease_lambda=100,500;half_life=0,14 | model=rp3beta;rp3_alpha=0.6;rp3_beta=0.5;neighbours=200"
            " | model=itemknn;similarity=bm25,cosine;neighbours=100;weight.buy=20")
    items = tuning_candidates(Settings.from_env({**env, "RECSYS_TUNING_GRID": grid, "RECSYS_RECENCY_HALF_LIFE_DAYS": "7"}))
    binary = {"view": 1.0, "buy": 1.0}
    assert items == [
        {"model": "ease", "ease_lambda": 100.0, "event_weights": binary, "half_life_days": 7.0},
        {"model": "ease", "ease_lambda": 500.0, "event_weights": binary, "half_life_days": 7.0},
        {"model": "rp3beta", "rp3_alpha": 0.6, "rp3_beta": 0.5, "neighbours": 200, "event_weights": binary,
         "half_life_days": 7.0},
        {"model": "itemknn", "similarity": "bm25", "neighbours": 100, "event_weights": binary, "half_life_days": 7.0},
        {"model": "itemknn", "similarity": "cosine", "neighbours": 100, "event_weights": binary, "half_life_days": 7.0},
    ]
    from recsys.core.grid import split_candidate

    params, _, _ = split_candidate(items[2])
    assert (params.model, params.rp3_alpha, params.rp3_beta, params.neighbours) == ("rp3beta", 0.6, 0.5, 200)
    families = {c["model"] for c in tuning_candidates(Settings.from_env({"RECSYS_HOME": str(tmp_path)}))}
    assert families == {"als", "ease", "rp3beta", "itemknn"}  # the default grid

    with pytest.raises(ConfigError, match="names among"):
        Settings.from_env({"RECSYS_TUNING_GRID": "depth=3"})
    with pytest.raises(ConfigError, match="must be numbers"):
        Settings.from_env({"RECSYS_TUNING_GRID": "factors=lots"})
    with pytest.raises(ConfigError, match="'Teleport' is not a configured event type"):
        Settings.from_env({"RECSYS_TUNING_GRID": "weight.Teleport=3"})
    with pytest.raises(ConfigError, match="model must be one of"):
        Settings.from_env({"RECSYS_TUNING_GRID": "model=svd"})
    with pytest.raises(ConfigError, match="weights must be one of"):
        Settings.from_env({"RECSYS_TUNING_GRID": "weights=heavy"})


def _screened(ndcgs: list[float], seconds: float = 2.0) -> list[dict]:  # type: ignore[type-arg]
    return [{"params": {"model": "als", "factors": i}, "metrics": {"ndcg_at_k": n}, "seconds": seconds}
            for i, n in enumerate(ndcgs)]


def test_promotion_keeps_the_best_third_that_fits_the_budget() -> None:
    from recsys.core.grid import promote_candidates

    screened = _screened([0.10, 0.30, 0.20, 0.25, 0.05, 0.30, 0.15])
    # 7 candidates, eta 3: 3 slots; ties keep grid order; the budget (100 s, 14 spent) fits them all.
    promoted, cut = promote_candidates(screened, 100, 3, 3.0)
    assert [p["factors"] for p in promoted] == [1, 5, 3]
    assert sorted(c["params"]["factors"] for c in cut) == [0, 2, 4, 6]
    assert all("screening rank" in c["cut"] and "only the best 3 (1/3)" in c["cut"] for c in cut)
    # 26 s budget: 12 s left after 14 s of screening, each full run about 6 s: two fit, the third is cut for it.
    promoted, cut = promote_candidates(screened, 26, 3, 3.0)
    assert [p["factors"] for p in promoted] == [1, 5]
    over = [c for c in cut if c["params"]["factors"] == 3]
    assert len(over) == 1 and "does not fit the 0 s left of RECSYS_TUNE_BUDGET_SECONDS" in over[0]["cut"]
    # A budget the screening alone used up: the best still goes on (a night needs a winner).
    promoted, cut = promote_candidates(screened, 1, 3, 3.0)
    assert [p["factors"] for p in promoted] == [1] and len(cut) == 6


def test_promotion_never_promotes_a_candidate_that_stepped_aside() -> None:
    from recsys.core.grid import promote_candidates

    screened = _screened([0.2, 0.1])
    screened.append({"params": {"model": "ease"}, "metrics": {"ndcg_at_k": 0.0, "skipped": "too many items"},
                     "seconds": 0.0})
    promoted, cut = promote_candidates(screened, 100, 2, 2.0)
    assert promoted == [{"model": "als", "factors": 0}]
    assert [c["params"] for c in cut] == [{"model": "als", "factors": 1}, {"model": "ease"}]
    assert "cut" not in cut[1] and cut[1]["metrics"]["skipped"] == "too many items"
