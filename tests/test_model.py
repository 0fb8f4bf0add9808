"""The implicit wrapper on tiny matrices with known answers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from recsys.core.lists import lists_table
from recsys.core.model import (
    ModelParams,
    build_user_item_matrix,
    recommend_factors,
    top_k_items,
    train_model,
)
from recsys.runtime import is_backfill, resolve_run_date
from recsys.stages.extract import _chunks
from tests.support import build_pair_events, recommend_popular


def test_build_user_item_matrix_sorts_ids_and_drops_unknown_rows() -> None:
    table = pa.table(
        {"user_id": ["b", "a", "b", "zz"], "item_id": ["y", "x", "x", "x"], "confidence": [2.0, 1.0, 3.0, 9.0]}
    )
    m = build_user_item_matrix(table)
    assert m.user_ids.to_pylist() == ["a", "b", "zz"] and m.item_ids.to_pylist() == ["x", "y"]
    assert m.matrix.toarray().tolist() == [[1.0, 0.0], [3.0, 2.0], [9.0, 0.0]]
    fixed = build_user_item_matrix(table, user_ids=pa.array(["b", "a"]), item_ids=pa.array(["x", "y"]))
    assert fixed.matrix.toarray().tolist() == [[3.0, 2.0], [1.0, 0.0]]  # "zz" is not a known user


def test_top_k_filters_seen_and_excluded_and_pads_short_lists() -> None:
    items = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=np.float32))
    ids, scores = top_k_items(items, np.ones((2, 1), dtype=np.float32), seen, 3, np.array([2]))
    assert ids.tolist() == [[1, 3, 4], [4, -1, -1]]
    assert scores[0].tolist() == [4.0, 2.0, 1.0] and np.isneginf(scores[1, 1:]).all()


def test_popularity_baseline_ranks_by_popularity_without_seen_items() -> None:
    seen = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0]], dtype=np.float32))
    ids, _ = recommend_popular(np.array([1.0, 3.0, 2.0]), seen, 2, None)
    assert ids.tolist() == [[2, 0], [1, 2]]


def test_als_learns_two_blocks() -> None:
    """Users who like items 0-4 get the unseen items of that block, not of the other one."""
    rng = np.random.default_rng(0)
    dense = np.zeros((40, 10), dtype=np.float32)
    for u in range(40):
        block = 0 if u < 20 else 5
        dense[u, block + rng.choice(5, size=3, replace=False)] = 1.0
    matrix = sp.csr_matrix(dense)
    model = train_model(matrix, ModelParams(factors=2, regularization=0.1, alpha=5.0, iterations=20))
    ids, _ = recommend_factors(model.user_factors, model.item_factors, matrix, 2, None)
    for u in range(40):
        block = range(5) if u < 20 else range(5, 10)
        assert set(ids[u].tolist()) <= set(block), (u, ids[u])
        assert not set(ids[u].tolist()) & set(np.flatnonzero(dense[u]).tolist())


def test_lists_table_is_long_and_skips_padding() -> None:
    ids = np.array([[1, 0], [1, -1]], dtype=np.int32)
    scores = np.array([[0.9, 0.5], [0.7, -np.inf]], dtype=np.float32)
    table = lists_table(pa.array(["u1", "u2"]), pa.array(["a", "b"]), ids, scores)
    assert table.to_pylist() == [
        {"user_id": "u1", "rank": 1, "item_id": "b", "score": np.float32(0.9)},
        {"user_id": "u1", "rank": 2, "item_id": "a", "score": 0.5},
        {"user_id": "u2", "rank": 1, "item_id": "b", "score": np.float32(0.7)},
    ]


def test_chunks_split_on_gaps_and_length() -> None:
    d = [dt.date(2026, 1, i) for i in (1, 2, 3, 5, 6)]
    assert _chunks(d, max_days=2) == [[d[0], d[1]], [d[2]], [d[3], d[4]]]


class _Run:
    def __init__(self, run_type: str, run_after: dt.datetime) -> None:
        self.run_type = run_type
        self.run_after = run_after


def test_resolve_run_date_in_every_kind_of_run() -> None:
    midnight = dt.datetime(2026, 3, 4, tzinfo=dt.UTC)
    assert resolve_run_date({"data_interval_start": midnight, "logical_date": midnight}) == dt.date(2026, 3, 4)
    manual = _Run("manual", dt.datetime(2026, 3, 9, 15, tzinfo=dt.UTC))
    assert resolve_run_date({"logical_date": None, "data_interval_start": None, "dag_run": manual}) == dt.date(
        2026, 3, 8
    )
    assert resolve_run_date({"params": {"run_date": "2026-01-02"}, "logical_date": midnight}) == dt.date(2026, 1, 2)
    # A manual run for 03-04 under the nightly timetable gets the interval [03-03, 03-04): it asked for 03-04.
    day_before = midnight - dt.timedelta(days=1)
    assert resolve_run_date({"data_interval_start": day_before, "logical_date": midnight}) == dt.date(2026, 3, 4)
    # Without a logical date, the interval Airflow inferred: the day before the trigger.
    assert resolve_run_date({"logical_date": None, "data_interval_start": day_before, "dag_run": manual}) == dt.date(
        2026, 3, 3
    )
    assert is_backfill({"dag_run": _Run("backfill", midnight)})
    assert not is_backfill({"dag_run": manual})


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
    assert als == [
        (configured, 0.0),
        (uniform, 0.0),
        (configured, 14.0),
        (uniform, 14.0),
        ({"view": 1.0, "buy": 20.0}, 28.0),
    ]
    bpr = [c for c in many if c["model"] == "bpr"]
    assert bpr == [{"model": "bpr", "factors": 64, "regularization": 0.01, "iterations": 100, "random_state": 42,
                    "learning_rate": 0.01, "event_weights": {"view": 1.0, "buy": 1.0}, "half_life_days": 0.0}]

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


END = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)


def _weighted_events() -> pa.Table:
    """What sql/weighted_events.sql returns (in no particular order) for: u1 viewed a twice (7
    and 14 days before END) and bought it once (just before END), u1 viewed b 21 days ago, u2
    bought b 7 days ago, and u3 viewed c at END (not before it: outside the window)."""
    def us(days_before: float) -> int:
        return int((END - dt.timedelta(days=days_before)).timestamp() * 1_000_000)

    return pa.table({
        "user_id": ["u2", "u1", "u1", "u1", "u1", "u3"],
        "item_id": ["b", "a", "b", "a", "a", "c"],
        "event_type": ["buy", "view", "view", "buy", "view", "view"],
        "event_us": [us(7), us(7), us(21), us(0.5), us(14), us(0)],
    })


def test_confidence_matrix_sums_weights_times_decayed_events() -> None:
    from recsys.core.model import confidence_matrix

    events = build_pair_events(_weighted_events(), [END])[0]
    assert events.user_ids.to_pylist() == ["u1", "u2"] and events.item_ids.to_pylist() == ["a", "b"]
    assert events.event_types == ["buy", "view"] and len(events.indices) == 3  # pairs (u1,a), (u1,b), (u2,b)
    assert events.ages.tolist() == [0.5, 7.0, 14.0, 21.0, 7.0]  # by pair, then type, then age
    assert events.counts.tolist() == [1, 2, 1, 1] and events.pair.tolist() == [0, 0, 1, 2]
    assert events.indptr.tolist() == [0, 2, 3] and events.indices.tolist() == [0, 1, 1]
    plain = confidence_matrix(events, {"view": 1.0, "buy": 10.0}, 0.0)
    assert plain.matrix.toarray().tolist() == [[12.0, 1.0], [0.0, 10.0]]
    decayed = confidence_matrix(events, {"view": 1.0, "buy": 10.0}, 7.0).matrix.toarray()
    # u1,a: 10 * 0.5^(0.5/7) + 1 * (0.5^1 + 0.5^2); u1,b: 0.5^3; u2,b: 10 * 0.5^1
    assert decayed[0] == pytest.approx([10 * 0.5 ** (0.5 / 7) + 0.75, 0.125])
    assert decayed[1].tolist() == [0.0, 5.0]
    # A weight of 0 (or a type left out) drops the pairs it alone made: u1 never bought b.
    bought = confidence_matrix(events, {"buy": 2.0}, 0.0).matrix
    assert bought.toarray().tolist() == [[2.0, 0.0], [0.0, 2.0]] and bought.nnz == 2


def test_pair_events_of_the_training_days_are_aged_at_their_own_end() -> None:
    """The same events cut at an earlier end: only what happened before it, aged at it, with
    rows and columns of the ids that remain."""

    split = END - dt.timedelta(days=7)
    train = build_pair_events(_weighted_events(), [split])[0]
    assert train.user_ids.to_pylist() == ["u1"] and train.item_ids.to_pylist() == ["a", "b"]
    assert train.ages.tolist() == [7.0, 14.0] and train.counts.tolist() == [1, 1]  # the two at the split are out
    assert train.indptr.tolist() == [0, 2]
    empty = build_pair_events(_weighted_events(), [END - dt.timedelta(days=30)])[0]
    assert empty.shape == (0, 0) and len(empty.ages) == 0 and empty.indptr.tolist() == [0]


def test_several_ends_at_once_equal_each_end_alone() -> None:

    ends = [END, END - dt.timedelta(days=7), END - dt.timedelta(days=10)]
    together = build_pair_events(_weighted_events(), ends)
    for end, events in zip(ends, together):
        alone = build_pair_events(_weighted_events(), [end])[0]
        assert events.user_ids.equals(alone.user_ids) and events.item_ids.equals(alone.item_ids)
        assert events.event_types == alone.event_types
        assert all(np.array_equal(events.arrays()[k], alone.arrays()[k]) for k in events.ARRAYS)


def test_take_users_keeps_their_pairs_entries_and_ages_with_rows_renumbered() -> None:
    from recsys.core.model import confidence_matrix, take_users

    table = pa.concat_tables([_weighted_events(), pa.table({
        "user_id": ["u0", "u0"], "item_id": ["c", "a"], "event_type": ["view", "buy"],
        "event_us": [int((END - dt.timedelta(days=d)).timestamp() * 1_000_000) for d in (2, 3)]})])
    events = build_pair_events(table, [END])[0]  # users u0, u1, u2; items a, b, c
    weights = {"view": 1.0, "buy": 10.0}
    full = confidence_matrix(events, weights, 7.0).matrix.toarray()
    some = take_users(events, np.array([0, 2]))
    assert some.user_ids.to_pylist() == ["u0", "u2"] and some.item_ids.equals(events.item_ids)
    assert np.array_equal(confidence_matrix(some, weights, 7.0).matrix.toarray(), full[[0, 2]])
    assert some.ages.tolist() == [3.0, 2.0, 7.0] and some.counts.tolist() == [1, 1, 1]
    middle = take_users(events, np.array([1]))
    assert np.array_equal(confidence_matrix(middle, weights, 7.0).matrix.toarray(), full[[1]])


def test_rows_in_any_order_give_the_same_pair_events() -> None:

    table = _weighted_events()
    one = build_pair_events(table, [END])[0].arrays()
    other = build_pair_events(table.take(pa.array([5, 3, 1, 4, 0, 2])), [END])[0].arrays()
    assert all(np.array_equal(one[k], other[k]) for k in one)


def test_weighted_events_sql_keeps_configured_types_in_the_window_with_their_time() -> None:
    """sql/weighted_events.sql on hand-made events: one row per weighted event of [$start, $end)."""
    from recsys.io.sql import connect, run_sql

    con = connect()
    stamps = [END - dt.timedelta(days=d) for d in (7, 14, 0.5, 3.25, 1, 40)]
    con.register("interaction_files", pa.table({
        "user_id": ["u1", "u1", "u1", "u2", "u2", "u2"],
        "item_id": ["a", "a", "a", "b", "b", "b"],
        "event_type": ["view", "view", "buy", "buy", "Teleport", "view"],
        "event_ts": pa.array(stamps, pa.timestamp("us", tz="UTC")),
    }))
    con.register("event_weights", pa.table({"event_type": ["view", "buy"], "weight": [1.0, 10.0]}))
    out = run_sql(con, "weighted_events", {"start": END - dt.timedelta(days=30), "end": END})
    got = sorted((r["user_id"], r["item_id"], r["event_type"], r["event_us"]) for r in out.to_pylist())
    expected = [("u1", "a", "buy", stamps[2]), ("u1", "a", "view", stamps[0]), ("u1", "a", "view", stamps[1]),
                ("u2", "b", "buy", stamps[3])]
    assert got == sorted((u, i, t, int(s.timestamp() * 1_000_000)) for u, i, t, s in expected)
    # Teleport has no weight and the 40-day-old view is outside the window: neither is kept.


def test_bpr_through_the_wrapper_learns_two_blocks_and_saves() -> None:
    """The same contract as ALS: Factors whose dot product ranks the unseen items of the user's block."""

    rng = np.random.default_rng(0)
    dense = np.zeros((60, 10), dtype=np.float32)
    for u in range(60):
        block = 0 if u < 30 else 5
        dense[u, block + rng.choice(5, size=3, replace=False)] = rng.integers(1, 50, size=3)  # values are ignored
    matrix = sp.csr_matrix(dense)
    params = ModelParams(model="bpr", factors=4, regularization=0.01, learning_rate=0.05, iterations=200)
    model = train_model(matrix, params)
    assert model.model == "bpr" and model.item_factors.shape == (10, 5)  # + the item bias column
    assert model.item_embeddings.shape == (10, 4) and np.all(model.user_factors[:, -1] == 1.0)
    ids, _ = recommend_factors(model.user_factors, model.item_factors, matrix, 2, None)
    blocks = [set(range(5) if u < 30 else range(5, 10)) for u in range(60)]
    assert all(ids[u, 0] in blocks[u] for u in range(60))  # every user's best item is of their block
    assert sum(set(ids[u].tolist()) <= blocks[u] for u in range(60)) >= 40  # by chance: ~3 of 60
    assert not any(set(ids[u].tolist()) & set(np.flatnonzero(dense[u]).tolist()) for u in range(60))
    again = train_model(matrix, params)
    assert np.array_equal(again.item_factors, model.item_factors)  # one thread: reruns give the same lists
    assert "learning_rate" in params.as_dict() and "alpha" not in params.as_dict()
    assert "alpha" in ModelParams().as_dict() and "learning_rate" not in ModelParams().as_dict()
    with pytest.raises(ValueError, match="unknown model family"):
        train_model(matrix, ModelParams(model="svd"))


def test_saved_factors_load_with_their_family(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from recsys.core.model import Factors
    from recsys.io.artifacts import load_model, save_model

    factors = Factors(np.ones((2, 3), np.float32), np.arange(12, dtype=np.float32).reshape(4, 3), "bpr")
    save_model(factors, tmp_path / "model.npz")
    loaded = load_model(tmp_path / "model.npz")
    assert loaded.model == "bpr" and np.array_equal(loaded.item_factors, factors.item_factors)
    assert loaded.item_embeddings.tolist() == [[0, 1], [3, 4], [6, 7], [9, 10]]


def test_cap_per_category_keeps_the_best_of_each_category_in_order() -> None:
    from recsys.core.model import cap_per_category

    categories = np.array([0, 0, 0, 1, 1, -1])  # item 5 has no category: never capped
    ids = np.array([[0, 1, 2, 3, 5, 4], [2, 0, -1, -1, -1, -1]], dtype=np.int32)
    scores = np.array([[6, 5, 4, 3, 2, 1], [2, 1, -np.inf, -np.inf, -np.inf, -np.inf]], dtype=np.float32)
    capped, capped_scores = cap_per_category(ids, scores, categories, cap=2, k=4)
    assert capped.tolist() == [[0, 1, 3, 5], [2, 0, -1, -1]]
    assert capped_scores[0].tolist() == [6, 5, 3, 2] and np.isneginf(capped_scores[1, 2:]).all()


def test_similar_items_are_nearest_by_cosine_and_never_the_item_itself() -> None:
    from recsys.core.model import similar_items

    factors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float32)
    ids, scores = similar_items(factors, 2, np.array([4]))
    assert ids[:4, 0].tolist() == [1, 0, 3, 2]
    assert all(i not in row for i, row in enumerate(ids.tolist()))
    assert 4 not in ids  # excluded (inactive) items are never similar items
    assert scores[0, 0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), rel=1e-5)


def test_bm25_weighting_damps_common_items_and_long_histories() -> None:
    from recsys.core.model import BM25_FLOOR, scale_confidence

    dense = np.zeros((12, 10), dtype=np.float32)
    dense[:6, 0] = 1  # item 0: half the users
    dense[0, 1] = dense[1, 5] = dense[1, 6] = dense[1, 7] = dense[3, 2] = 1  # rare items: one user each
    weighted = scale_confidence(sp.csr_matrix(dense), 1.0, "bm25").toarray()
    assert weighted.shape == dense.shape and ((weighted > 0) == (dense > 0)).all()
    assert weighted[1, 0] < weighted[1, 5] / 2  # same user: the common item weighs far less than the rare one
    assert weighted[2, 0] > weighted[1, 0]  # a user with one item keeps more weight on it than one with four
    assert weighted[0, 1] > weighted[1, 5]  # the same rare item weighs more in the shorter history
    # An item every user touched has idf log(N) - log1p(N) < 0 in implicit's BM25: it keeps a
    # small positive weight, not a negative one (ALS would read that as a dislike).
    everyone = np.ones((3, 2), dtype=np.float32)
    assert np.allclose(scale_confidence(sp.csr_matrix(everyone), 2.0, "bm25").toarray(), 2 * BM25_FLOOR)
    assert scale_confidence(sp.csr_matrix(dense), 2.0, "log").toarray()[0, 0] == pytest.approx(2 * np.log(2))
    with pytest.raises(ValueError, match="unknown weighting"):
        scale_confidence(sp.csr_matrix(dense), 1.0, "tfidf")


def test_bm25_damps_a_popular_item_by_its_idf_not_in_proportion_to_its_popularity() -> None:
    # Users as documents: an item half the users touched keeps about a fifth of a rare item's
    # weight (idf log(40) - log1p(20) against log(40) - log1p(1)). Items as documents damped it
    # in proportion to its popularity (a fifteenth here), which at scale 10 left popular items
    # almost no weight and the BM25 candidates at NDCG@20 0.0109.
    from recsys.core.model import scale_confidence

    dense = np.zeros((40, 41), dtype=np.float32)
    dense[:20, 0] = 1  # item 0: half the users
    dense[np.arange(40), 1 + np.arange(40)] = 1  # and one rare item each
    weighted = scale_confidence(sp.csr_matrix(dense), 1.0, "bm25").toarray()
    assert 0.15 < weighted[0, 0] / weighted[0, 1] < 0.3


def test_seen_matrix_excludes_everything_touched_or_only_purchases(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from recsys.config import Settings
    from recsys.core.lists import seen_matrix

    events = build_pair_events(_weighted_events(), [END])[0]  # u1: a (view, buy), b (view); u2: b (buy)
    everything = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_EVENT_WEIGHTS": "view=1,buy=10"})
    assert seen_matrix(everything, events).toarray().tolist() == [[1, 1], [0, 1]]
    bought = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_EVENT_WEIGHTS": "view=1,buy=10",
                                "RECSYS_EXCLUDE_SEEN": "purchased", "RECSYS_PURCHASE_EVENT_TYPES": "buy"})
    assert seen_matrix(bought, events).toarray().tolist() == [[1, 0], [0, 1]]


def test_sample_rows_is_seeded_sorted_and_keeps_small_sets_whole() -> None:
    from recsys.core.holdout import sample_rows

    rows = np.arange(100, 200)
    assert sample_rows(rows, 0, 1) is rows and sample_rows(rows, 100, 1) is rows
    picked = sample_rows(rows, 30, 7)
    assert len(picked) == 30 and len(set(picked.tolist())) == 30 and set(picked.tolist()) <= set(rows.tolist())
    assert picked.tolist() == sorted(picked.tolist()) and sample_rows(rows, 30, 7).tolist() == picked.tolist()
    assert sample_rows(rows, 30, 8).tolist() != picked.tolist()


def test_batched_lists_equal_one_batch_on_a_tiny_matrix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What recommend does batch by batch (top-k, filters, category cap) gives the lists of one batch."""
    from recsys.config import Settings
    from recsys.core.lists import ItemFilters, serve_lists

    rng = np.random.default_rng(3)
    items = rng.normal(size=(12, 3)).astype(np.float32)
    users = rng.normal(size=(7, 3)).astype(np.float32)
    dense = (rng.random((7, 12)) < 0.4).astype(np.float32)
    dense[6] = 1.0  # a user who has seen everything gets an empty (padded) list
    seen = sp.csr_matrix(dense)
    filters = ItemFilters(exclude=np.array([0, 5], dtype=np.int32), categories=np.arange(12, dtype=np.int32) % 3)
    settings = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_K": "4", "RECSYS_MAX_PER_CATEGORY": "2"})
    whole_ids, whole_scores = serve_lists(settings, users, items, seen, filters)
    for batch in (1, 2, 3):
        parts = [
            serve_lists(settings, users[i : i + batch], items, seen[i : i + batch], filters) for i in range(0, 7, batch)
        ]
        # BLAS may round a dot product differently with another batch shape: ids must match exactly.
        assert np.concatenate([ids for ids, _ in parts]).tolist() == whole_ids.tolist()
        assert np.allclose(np.concatenate([s for _, s in parts]), whole_scores, rtol=1e-5)
    assert whole_ids[6].tolist() == [-1, -1, -1, -1]
    assert (
        top_k_items(items, users, seen, 4, None, batch_users=2)[0].tolist()
        == top_k_items(items, users, seen, 4, None)[0].tolist()
    )


def test_duckdb_settings_reach_the_connection(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from recsys.config import ConfigError, Settings
    from recsys.io.sql import connect

    monkeypatch.setenv("RECSYS_DUCKDB_MEMORY_LIMIT", "512MiB")
    monkeypatch.setenv("RECSYS_DUCKDB_THREADS", "1")
    con = connect(temp_dir=tmp_path / "spill")
    [(limit, threads, temp)] = con.sql(
        "SELECT current_setting('memory_limit'), current_setting('threads'), current_setting('temp_directory')"
    ).fetchall()
    assert (limit, threads, temp) == ("512.0 MiB", 1, str(tmp_path / "spill"))
    with pytest.raises(ConfigError, match="RECSYS_DUCKDB_MEMORY_LIMIT"):
        Settings.from_env({"RECSYS_DUCKDB_MEMORY_LIMIT": "lots"})


@pytest.mark.parametrize("key_offset", [0, 1 << 50])  # packed into one int64 / too wide: lexsort
def test_events_sort_by_key_then_newest_first_on_both_paths(key_offset: int) -> None:
    from recsys.core.model import _sort_by_key_newest_first

    rng = np.random.default_rng(3)
    key = rng.integers(0, 50, size=5_000) + key_offset
    seconds = rng.integers(1_700_000_000, 1_700_000_000 + 86_400 * 70, size=5_000)
    got_key, got_seconds = _sort_by_key_newest_first(key.copy(), seconds.copy())
    order = np.lexsort((-seconds, key))
    assert np.array_equal(got_key, key[order]) and np.array_equal(got_seconds, seconds[order])


def test_pair_events_refuse_an_end_inside_a_second() -> None:

    with pytest.raises(ValueError, match="not a whole second"):
        build_pair_events(_weighted_events(), [END - dt.timedelta(microseconds=500)])
