"""The tuning's cost estimates: shapes, the probe's scaling per family, and which candidates
a budget keeps."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.core.cost import PROBE_ITEMS, Probe, Shape, probe_matrix, within_budget, work
from recsys.core.model import ModelParams


def test_a_shape_counts_users_items_pairs_and_the_squared_degrees() -> None:
    matrix = sp.csr_matrix(np.array([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    assert Shape.of(matrix) == Shape(users=3, items=4, pairs=4, co_pairs=3 * 3 + 0 + 1)
    assert Shape.of_indptr(matrix.indptr, 4) == Shape.of(matrix)
    probe = probe_matrix()
    assert probe.shape == (4_000, PROBE_ITEMS) and set(probe.data) == {1.0} and probe.nnz == 4_000 * 12


def test_work_grows_with_each_familys_own_terms() -> None:
    small, wide = Shape(1_000, 1_000, 10_000, 100_000), Shape(1_000, 4_000, 10_000, 100_000)
    more_users = Shape(3_000, 1_000, 30_000, 300_000)
    # EASE's work beside its inversion: items² passes and the Gram products, not the users as such.
    assert work(ModelParams(model="ease"), wide) == 4_000**2 + 100_000
    # ALS: iterations x (pairs x factors + a share of (users + items) x factors²), linear in iterations.
    als = ModelParams(model="als", factors=10, iterations=4)
    assert work(als, small) == 4 * (10_000 * 10 + 0.1 * 2_000 * 100)
    assert work(ModelParams(model="als", factors=10, iterations=8), small) == 2 * work(als, small)
    assert work(ModelParams(model="bpr", factors=10, iterations=4), more_users) == 4 * 30_000 * 10
    assert work(ModelParams(model="rp3beta"), more_users) == 300_000 + 1_000**2
    assert work(ModelParams(model="itemknn", neighbours=50), small) == 100_000 + 1_000 * 50
    with pytest.raises(ValueError, match="no cost model for the family 'svd'"):
        work(ModelParams(model="svd"), small)


def test_the_probe_scales_ease_by_items_cubed_and_als_by_its_users() -> None:
    """The screening's sample has a third of the users and every item: EASE's estimate hardly
    moves with the users at a store's item count, ALS's falls with them."""
    probe = Probe()
    full, screening = Shape(300_000, 25_000, 3_000_000, 60_000_000), Shape(100_000, 25_000, 1_000_000, 20_000_000)
    ease = ModelParams(model="ease", ease_lambda=200.0)
    assert probe.seconds(ease, screening) / probe.seconds(ease, full) > 0.9
    twice_the_items = Shape(100_000, 50_000, 1_000_000, 20_000_000)
    assert 7.0 < probe.seconds(ease, twice_the_items) / probe.seconds(ease, screening) <= 8.0
    als = ModelParams(model="als", factors=16, iterations=10)
    assert 0.3 < probe.seconds(als, screening) / probe.seconds(als, full) < 0.35
    doubled = ModelParams(model="als", factors=16, iterations=20)
    assert probe.seconds(doubled, full) == pytest.approx(2 * probe.seconds(als, full))
    blend = ModelParams(model="blend", parts=(ease.as_dict(), als.as_dict()))
    assert probe.seconds(blend, full) == pytest.approx(probe.seconds(ease, full) + probe.seconds(als, full))
    # EASE's λ does not change what it costs: one probe serves every λ.
    assert probe.seconds(ModelParams(model="ease", ease_lambda=900.0), full) == probe.seconds(ease, full)


def test_within_budget_cuts_the_costliest_and_keeps_each_familys_cheapest() -> None:
    families = ["als", "als", "als", "ease", "ease", "itemknn"]
    estimates = [1.0, 30.0, 5.0, 100.0, 100.0, 0.5]
    assert within_budget(estimates, families, 1_000.0) == ([0, 1, 2, 3, 4, 5], [])
    # 236.5 s against 120: the second EASE goes (equal costs: the later one), then the 30 s ALS.
    assert within_budget(estimates, families, 120.0) == ([0, 2, 3, 5], [1, 4])
    # Less than the cheapest of each family: those are all that stay.
    assert within_budget(estimates, families, 10.0) == ([0, 3, 5], [1, 2, 4])
