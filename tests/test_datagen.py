"""The demo-store generator: layout, schema, determinism, atomic replace and the planted shape.

Most tests share one small store (2,000 users, 200 items, 30,000 events, 30 days); the
product-line tests share a wider one (600 items in 10 categories, ten lines or so each); one
test builds the default size and checks the event mix and the shape at that scale.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.dev import datagen
from recsys.dev.datagen import (
    EVENT_SHARES,
    EVENT_TYPES,
    LINE_NEIGHBOURS,
    LINE_SIZE_RANGE,
    Catalog,
    add_datagen_parser,
    co_viewed_items,
    generate_store,
    make_catalog,
)

SMALL: dict[str, Any] = dict(users=2_000, items=200, events=30_000, days=30, seed=7, end_date=dt.date(2026, 10, 31))
WIDE: dict[str, Any] = {**SMALL, "users": 3_000, "items": 600, "events": 45_000, "categories": 10}
EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")),
        ("event_id", pa.string()),
    ]
)
CATALOG_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("name", pa.string()), ("category", pa.string()), ("active", pa.bool_())]
)
US_PER_DAY = 86_400 * 1_000_000


@dataclass
class Store:
    """A generated store read back as integer arrays, one entry per event."""

    path: Path
    summary: dict
    events: pa.Table
    catalog: pa.Table
    user: np.ndarray
    item: np.ndarray
    category: np.ndarray  # category code of the event's item
    day: np.ndarray  # day index from the first day, taken from the file name
    n_users: int
    n_items: int
    n_categories: int
    days: int


def read_store(path: Path, summary: dict, users: int, items: int, days: int) -> Store:
    files = sorted((path / "interactions").glob("events-*.parquet"))
    first = dt.date.fromisoformat(summary["first_date"])
    tables, day_index = [], []
    for f in files:
        table = pq.read_table(f)
        tables.append(table)
        day = dt.date.fromisoformat(f.name[len("events-") : -len(".parquet")])
        day_index.append(np.full(table.num_rows, (day - first).days))
    events = pa.concat_tables(tables)
    catalog = pq.read_table(path / "catalog.parquet")
    user = pc.cast(pc.utf8_slice_codeunits(events["user_id"], 1), pa.int64()).to_numpy()
    item = pc.cast(pc.utf8_slice_codeunits(events["item_id"], 1), pa.int64()).to_numpy()
    catalog_item = pc.cast(pc.utf8_slice_codeunits(catalog["item_id"], 1), pa.int64()).to_numpy()
    encoded = pc.dictionary_encode(catalog["category"]).combine_chunks()
    category_of = np.empty(items, dtype=np.int64)
    category_of[catalog_item] = encoded.indices.to_numpy()
    return Store(
        path, summary, events, catalog, user, item, category_of[item], np.concatenate(day_index),
        users, items, len(encoded.dictionary), days,
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Store:
    path = tmp_path_factory.mktemp("datagen") / "store"
    summary = generate_store(path, **SMALL)
    return read_store(path, summary, SMALL["users"], SMALL["items"], SMALL["days"])


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Catalog]:
    """A store with ten or so product lines per category, and its catalog as the generator drew it."""
    path = tmp_path_factory.mktemp("datagen-wide") / "store"
    summary = generate_store(path, **WIDE)
    store = read_store(path, summary, WIDE["users"], WIDE["items"], WIDE["days"])
    # The catalog is the first draw of the seed's stream, so the same seed gives the store's catalog.
    catalog = make_catalog(np.random.default_rng(WIDE["seed"]), WIDE["items"], WIDE["categories"])
    names = np.array(catalog.category_names)[catalog.category]
    assert (store.catalog["category"].to_numpy(zero_copy_only=False) == names).all()
    return store, catalog


def tables_of(path: Path) -> dict[str, pa.Table]:
    files = [path / "catalog.parquet", *sorted((path / "interactions").iterdir())]
    return {str(f.relative_to(path)): pq.read_table(f) for f in files}


def top2_category_share(user: np.ndarray, category: np.ndarray, n_users: int, n_categories: int) -> float:
    """Mean over users with >= 5 events of the share of their events in their two busiest categories."""
    counts = np.bincount(user * n_categories + category, minlength=n_users * n_categories).reshape(
        n_users, n_categories
    )
    total = counts.sum(axis=1)
    busy = total >= 5
    top2 = np.sort(counts[busy], axis=1)[:, -2:].sum(axis=1)
    return float((top2 / total[busy]).mean())


# --------------------------------------------------------------------------- layout


def test_one_file_per_day_and_catalog_with_exact_schemas(small: Store) -> None:
    files = sorted(p.name for p in (small.path / "interactions").iterdir())
    expected = [f"events-{dt.date(2026, 10, 2) + dt.timedelta(days=i)}.parquet" for i in range(30)]
    assert files == expected
    assert sorted(p.name for p in small.path.iterdir()) == ["catalog.parquet", "interactions"]
    for name in files:
        assert pq.read_schema(small.path / "interactions" / name).remove_metadata() == EVENTS_SCHEMA, name
    assert pq.read_schema(small.path / "catalog.parquet").remove_metadata() == CATALOG_SCHEMA
    assert small.summary["first_date"] == "2026-10-02" and small.summary["last_date"] == "2026-10-31"
    assert small.summary["events"] == small.events.num_rows == SMALL["events"]
    assert small.summary["files"] == 30


def test_ids_are_zero_padded_and_in_range(small: Store) -> None:
    assert pc.all(pc.match_substring_regex(small.events["user_id"], r"^u\d{6}$")).as_py()
    assert pc.all(pc.match_substring_regex(small.events["item_id"], r"^i\d{5}$")).as_py()
    assert small.user.min() >= 0 and small.user.max() < small.n_users
    assert small.item.min() >= 0 and small.item.max() < small.n_items
    # Every event's item is in the catalog.
    assert pc.all(pc.is_in(small.events["item_id"], value_set=small.catalog["item_id"])).as_py()
    assert small.summary["users"] == len(np.unique(small.user))


def test_every_event_lies_in_its_files_utc_day_sorted(small: Store) -> None:
    for f in sorted((small.path / "interactions").iterdir()):
        table = pq.read_table(f)
        assert table.num_rows > 0, f.name
        assert table.schema.field("event_ts").type.tz == "UTC"
        ts = table["event_ts"].combine_chunks().cast(pa.int64()).to_numpy()
        day = dt.datetime.combine(dt.date.fromisoformat(f.name[7:17]), dt.time(), tzinfo=dt.UTC)
        start = int((day - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds()) * 1_000_000
        assert ts.min() >= start and ts.max() < start + US_PER_DAY, f.name
        assert np.all(np.diff(ts) >= 0), f"{f.name} is not sorted by event_ts"
    assert (small.day.min(), small.day.max()) == (0, 29)


def test_event_ids_are_unique_across_the_store(small: Store) -> None:
    ids = small.events["event_id"]
    assert ids.null_count == 0
    assert pc.count_distinct(ids).as_py() == small.events.num_rows
    assert pc.all(
        pc.match_substring_regex(ids, r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    ).as_py()


def test_catalog_columns_categories_and_inactive_items(small: Store) -> None:
    catalog = small.catalog
    assert catalog.num_rows == SMALL["items"]
    assert pc.count_distinct(catalog["item_id"]).as_py() == SMALL["items"]
    assert pc.count_distinct(catalog["name"]).as_py() == SMALL["items"]
    assert small.n_categories == 20
    inactive = int(pc.sum(pc.invert(catalog["active"])).as_py())
    assert 1 <= inactive <= 0.06 * SMALL["items"]
    assert small.summary["inactive_items"] == inactive
    # Category sizes differ: an even split would make the taste tests easier than real data.
    sizes = pc.value_counts(catalog["category"]).field("counts").to_numpy()
    assert len(sizes) == 20 and sizes.max() >= 2 * sizes.min()


# --------------------------------------------------------------------------- determinism, atomicity


def test_same_seed_same_tables_other_seed_different(tmp_path: Path, small: Store) -> None:
    again = tmp_path / "again"
    generate_store(again, **SMALL)
    first, second = tables_of(small.path), tables_of(again)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].equals(second[name]), f"{name} differs between two runs with seed 7"

    other = tmp_path / "other"
    generate_store(other, **{**SMALL, "seed": 8})
    third = tables_of(other)
    assert not third["catalog.parquet"].equals(first["catalog.parquet"])
    for name in first:
        if name.startswith("interactions"):
            assert not third[name].equals(first[name]), f"{name} is the same for seeds 7 and 8"


def test_rerun_replaces_the_whole_store_and_leaves_no_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "store"
    generate_store(out, **{**SMALL, "days": 10, "events": 3_000})
    (out / "interactions" / "stray.parquet").write_bytes(b"left over")
    summary = generate_store(out, **{**SMALL, "days": 5, "events": 2_000, "end_date": dt.date(2026, 1, 5)})
    names = sorted(p.name for p in (out / "interactions").iterdir())
    assert names == [f"events-2026-01-0{d}.parquet" for d in range(1, 6)]
    assert summary["first_date"] == "2026-01-01"
    assert pq.read_table(out / "interactions").num_rows == 2_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_crash_while_writing_keeps_the_old_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "store"
    generate_store(out, **{**SMALL, "days": 3, "events": 1_000})
    before = tables_of(out)

    def fail(*args: object, **kwargs: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(datagen, "_write_daily_files", fail)
    with pytest.raises(OSError, match="disk full"):
        generate_store(out, **{**SMALL, "days": 5, "events": 2_000, "seed": 9})
    after = tables_of(out)
    assert before.keys() == after.keys()
    assert all(before[name].equals(after[name]) for name in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_folder_that_is_not_a_store_is_never_replaced(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty and holds no demo store"):
        generate_store(precious, **{**SMALL, "days": 2, "events": 500})
    assert (precious / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_store(empty, **{**SMALL, "days": 2, "events": 500})["files"] == 2


@pytest.mark.parametrize(
    "change, message",
    [({"users": 0}, "users"), ({"days": 0}, "days"), ({"events": -1}, "events"), ({"categories": 300}, "categories")],
)
def test_sizes_that_cannot_make_a_store_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_store(tmp_path / "store", **{**SMALL, **change})
    assert not (tmp_path / "store").exists()


# --------------------------------------------------------------------------- shape


def test_event_mix_is_the_retail_funnel(small: Store) -> None:
    types = small.events["event_type"].to_numpy(zero_copy_only=False)
    for name, share in zip(EVENT_TYPES, EVENT_SHARES):
        assert abs(np.mean(types == name) - share) < 0.01, name
    assert set(np.unique(types)) == set(EVENT_TYPES)


def test_carts_checkouts_and_purchases_follow_a_view_of_the_same_item(small: Store) -> None:
    types = small.events["event_type"].to_numpy(zero_copy_only=False)
    ts = small.events["event_ts"].combine_chunks().cast(pa.int64()).to_numpy()
    pair = small.user * small.n_items + small.item
    view = types == "View"
    # Earliest view per (user, item); every later funnel event needs one at or before it.
    first_view = np.full(small.n_users * small.n_items, np.iinfo(np.int64).max)
    np.minimum.at(first_view, pair[view], ts[view])
    funnel = ~view
    assert funnel.sum() > 0.1 * len(types)
    assert np.all(first_view[pair[funnel]] <= ts[funnel])
    carted = np.unique(pair[types == "AddToCart"])
    assert np.isin(carted, pair[view]).all()


def test_item_popularity_has_a_long_tail(small: Store) -> None:
    counts = np.sort(np.bincount(small.item, minlength=small.n_items))[::-1]
    share = counts / counts.sum()
    top10 = share[: small.n_items // 10].sum()
    bottom_half = share[small.n_items // 2 :].sum()
    assert top10 > 0.40, f"top 10% of items hold only {top10:.2f} of events"
    assert bottom_half < 0.20, f"bottom half of items hold {bottom_half:.2f} of events"
    assert share[0] > 5 * np.median(share)


def test_user_activity_is_long_tailed_and_not_every_user_appears(small: Store) -> None:
    per_user = np.bincount(small.user, minlength=small.n_users)
    active = per_user[per_user > 0]
    assert 0.5 * small.n_users < len(active) < small.n_users
    assert active.max() > 10 * np.median(active)
    top10_users = np.sort(active)[::-1][: len(active) // 10].sum() / active.sum()
    assert top10_users > 0.3, f"top 10% of users hold only {top10_users:.2f} of events"


def test_users_have_a_planted_taste_for_one_or_two_categories(small: Store) -> None:
    observed = top2_category_share(small.user, small.category, small.n_users, small.n_categories)
    # The same events with items shuffled across users: the same category sizes, no taste.
    shuffled = np.random.default_rng(0).permutation(small.category)
    baseline = top2_category_share(small.user, shuffled, small.n_users, small.n_categories)
    assert observed > 0.7, f"only {observed:.2f} of a user's events are in their top-2 categories"
    assert observed - baseline > 0.25, f"taste {observed:.2f} is barely above no taste {baseline:.2f}"
    # Two categories picked at random per user hold about 2/20 of their events.
    rng = np.random.default_rng(1)
    pick = np.stack([rng.permutation(small.n_categories)[:2] for _ in range(small.n_users)])
    in_pick = (small.category == pick[small.user, 0]) | (small.category == pick[small.user, 1])
    random_share = np.bincount(small.user, weights=in_pick, minlength=small.n_users)
    totals = np.bincount(small.user, minlength=small.n_users)
    busy = totals >= 5
    assert (random_share[busy] / totals[busy]).mean() < 0.2


def test_last_days_are_predictable_from_the_earlier_days(small: Store) -> None:
    cut = int(small.days * 0.8)
    early, late = small.day < cut, small.day >= cut
    warm = np.intersect1d(np.unique(small.user[early]), np.unique(small.user[late]))
    assert len(warm) > 100
    keep = late & np.isin(small.user, warm)

    def repeat_shares(item: np.ndarray, category: np.ndarray) -> tuple[float, float]:
        """Of late (user, item) pairs: share touched early, share in the user's top-2 early categories."""
        seen_pairs = np.unique(small.user[early] * small.n_items + item[early])
        counts = np.bincount(
            small.user[early] * small.n_categories + category[early], minlength=small.n_users * small.n_categories
        ).reshape(small.n_users, small.n_categories)
        top2 = np.argsort(-counts, axis=1, kind="stable")[:, :2]
        late_pairs, first = np.unique(small.user[keep] * small.n_items + item[keep], return_index=True)
        users, cats = small.user[keep][first], category[keep][first]
        in_top2 = (top2[users, 0] == cats) | (top2[users, 1] == cats)
        return float(np.isin(late_pairs, seen_pairs).mean()), float(in_top2.mean())

    same_item, same_category = repeat_shares(small.item, small.category)
    # The same events with items shuffled across users and days: activity kept, taste gone.
    order = np.random.default_rng(0).permutation(len(small.item))
    shuffled_item, shuffled_category = repeat_shares(small.item[order], small.category[order])
    assert same_item > 0.4, f"only {same_item:.2f} of late (user, item) pairs were touched before"
    assert same_item > shuffled_item + 0.15, f"{same_item:.2f} vs {shuffled_item:.2f} without taste"
    assert same_category > 0.6, f"only {same_category:.2f} of late items are in the user's top-2 early categories"
    assert same_category > shuffled_category + 0.4, f"{same_category:.2f} vs {shuffled_category:.2f} without taste"


def new_item_lists(store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A hold-out as the nightly makes one, on a store's first 80% of days against the rest.

    Returns ``seen`` and ``truth`` (warm users × items: touched before the cut; touched after it
    for the first time), the users' early events per category, and the items' categories.
    """
    cut = int(store.days * 0.8)
    early, late = store.day < cut, store.day >= cut
    warm = np.intersect1d(np.unique(store.user[early]), np.unique(store.user[late]))
    row = np.full(store.n_users, -1)
    row[warm] = np.arange(len(warm))
    seen = np.zeros((len(warm), store.n_items), dtype=bool)
    e_warm = early & (row[store.user] >= 0)
    seen[row[store.user[e_warm]], store.item[e_warm]] = True
    truth = np.zeros_like(seen)
    l_warm = late & (row[store.user] >= 0)
    truth[row[store.user[l_warm]], store.item[l_warm]] = True
    truth &= ~seen
    cat_counts = np.zeros((len(warm), store.n_categories))
    np.add.at(cat_counts, (row[store.user[e_warm]], store.category[e_warm]), 1.0)
    item_category = np.zeros(store.n_items, dtype=np.int64)
    item_category[store.item] = store.category
    return seen, truth, cat_counts, item_category


def hit_rate(scores: np.ndarray, seen: np.ndarray, truth: np.ndarray, k: int = 20) -> float:
    """Mean over users with new items of the share of them (at most k) in the top-k unseen items."""
    has_new = truth.any(axis=1)
    scores = np.where(seen, -np.inf, scores)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
    return float((hits[has_new] / np.minimum(truth.sum(axis=1)[has_new], k)).mean())


def taste_scores(seen: np.ndarray, cat_counts: np.ndarray, item_category: np.ndarray) -> np.ndarray:
    """Popular items weighted by how much the user used their category: what a few factors hold."""
    popularity = seen.sum(axis=0).astype(float)  # distinct early users per item
    return (cat_counts / cat_counts.sum(axis=1, keepdims=True))[:, item_category] * (popularity + 1.0)


def test_a_taste_aware_list_beats_global_popularity_on_new_items(small: Store) -> None:
    """What the nightly model must do: find items a user touches for the first time in the last days."""
    seen, truth, cat_counts, item_category = new_item_lists(small)
    popularity = seen.sum(axis=0).astype(float)
    global_rate = hit_rate(np.broadcast_to(popularity, seen.shape), seen, truth)
    taste_rate = hit_rate(taste_scores(seen, cat_counts, item_category), seen, truth)
    assert taste_rate > 1.3 * global_rate, f"taste {taste_rate:.3f} vs popularity {global_rate:.3f}"


def test_an_item_to_item_list_beats_the_category_taste_on_new_items(wide: tuple[Store, Catalog]) -> None:
    """The point of product lines: a user's new items follow from the items they touched (item
    co-occurrence, what EASE, RP3beta and item-kNN learn) far better than from their categories'
    popular items (the low-rank part of a taste). With pools of single items drawn by popularity
    (the store before product lines) both lists scored the same here: 0.434 and 0.437."""
    store, _ = wide
    seen, truth, cat_counts, item_category = new_item_lists(store)
    history = seen.astype(float)
    gram = history.T @ history
    norm = np.sqrt(np.maximum(np.diag(gram), 1.0))
    cosine = gram / norm[:, None] / norm[None, :]
    np.fill_diagonal(cosine, 0.0)
    item_rate = hit_rate(history @ cosine, seen, truth)
    taste_rate = hit_rate(taste_scores(seen, cat_counts, item_category), seen, truth)
    assert item_rate > 1.15 * taste_rate, f"item-to-item {item_rate:.3f} vs category taste {taste_rate:.3f}"


# --------------------------------------------------------------------------- product lines


def test_product_lines_are_small_random_runs_of_one_category() -> None:
    catalog = make_catalog(np.random.default_rng(7), 2_465, 20)
    lines = np.unique(catalog.line)
    assert (lines == np.arange(lines.size)).all() and 300 <= lines.size <= 600
    line_category = np.zeros(lines.size, dtype=np.int64)
    line_category[catalog.line] = catalog.category
    assert (line_category[catalog.line] == catalog.category).all(), "a line spans two categories"
    sizes = np.bincount(catalog.line)
    low, high = LINE_SIZE_RANGE
    # A short last run joins the line before it, so a line holds up to high + low - 1 items.
    assert sizes.min() >= low and sizes.max() <= high + low - 1 and low + 1 <= sizes.mean() <= high
    # Lines ignore popularity: a category's most popular items are spread over its lines.
    for c in range(20):
        members = np.flatnonzero(catalog.category == c)
        top = members[np.argsort(-catalog.within_category[members])[:4]]
        assert np.unique(catalog.line[top]).size >= 2, f"category {c}: its 4 most popular items make one line"
    again = make_catalog(np.random.default_rng(7), 2_465, 20)
    other = make_catalog(np.random.default_rng(8), 2_465, 20)
    assert (again.line == catalog.line).all() and not np.array_equal(other.line, catalog.line)


def test_a_category_smaller_than_a_line_is_one_line() -> None:
    catalog = make_catalog(np.random.default_rng(3), 30, 10)
    line_category = np.zeros(catalog.line.max() + 1, dtype=np.int64)
    line_category[catalog.line] = catalog.category
    for c in range(10):
        members = np.flatnonzero(catalog.category == c)
        if members.size < 2 * LINE_SIZE_RANGE[0]:
            assert np.unique(catalog.line[members]).size == 1, f"category {c} of {members.size} items split"


def test_items_of_a_product_line_are_touched_by_the_same_shoppers(wide: tuple[Store, Catalog]) -> None:
    """Pools are whole lines: of the users who touched an item, many more touched a line-mate of
    it than another item of the same category (pools of single items make the two alike)."""
    store, catalog = wide
    touched = np.zeros((store.n_users, store.n_items))
    touched[store.user, store.item] = 1.0
    both = touched.T @ touched
    given = both / np.maximum(touched.sum(axis=0)[:, None], 1.0)  # P(touched j | touched i)
    same_category = catalog.category[:, None] == catalog.category[None, :]
    mates = catalog.line[:, None] == catalog.line[None, :]
    np.fill_diagonal(same_category, False)
    np.fill_diagonal(mates, False)
    mate_rate, other_rate = given[mates].mean(), given[same_category & ~mates].mean()
    assert mate_rate > 2.5 * other_rate, f"line-mates {mate_rate:.3f} vs same category {other_rate:.3f}"


def test_co_viewed_variants_are_line_mates_and_complements_another_category() -> None:
    catalog = make_catalog(np.random.default_rng(7), 2_465, 20)
    neighbours = co_viewed_items(np.random.default_rng(0), catalog)
    variants, complements = neighbours[:, :LINE_NEIGHBOURS], neighbours[:, LINE_NEIGHBOURS:]
    items = np.arange(catalog.line.size)
    assert (catalog.line[variants] == catalog.line[:, None]).all()
    assert (variants != items[:, None]).all()  # every line here has more than LINE_NEIGHBOURS items
    assert (np.sort(variants, axis=1)[:, 1:] != np.sort(variants, axis=1)[:, :-1]).all()  # distinct
    assert (catalog.category[complements] != catalog.category[:, None]).all()


# --------------------------------------------------------------------------- CLI


def test_cli_subcommand_generates_and_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="recsys")
    add_datagen_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli-store"
    args = parser.parse_args(
        ["datagen", "--out", str(out), "--users", "300", "--items", "50", "--events", "2000", "--days", "4",
         "--seed", "3", "--end-date", "2026-02-03"]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "2000 events" in printed[0] and "2026-01-31..2026-02-03" in printed[0]
    assert sorted(p.name for p in (out / "interactions").iterdir())[0] == "events-2026-01-31.parquet"
    assert pq.read_table(out / "catalog.parquet").num_rows == 50


# --------------------------------------------------------------------------- default size


@pytest.mark.slow
def test_default_size_has_the_retail_shape(tmp_path: Path) -> None:
    summary = generate_store(tmp_path / "store")
    store = read_store(tmp_path / "store", summary, 100_000, 2_465, 70)
    assert summary["files"] == 70 and summary["events"] == 800_000
    assert (summary["first_date"], summary["last_date"]) == ("2026-08-23", "2026-10-31")
    types = store.events["event_type"].to_numpy(zero_copy_only=False)
    for name, share in zip(EVENT_TYPES, EVENT_SHARES):
        assert abs(np.mean(types == name) - share) < 0.01, name
    counts = np.sort(np.bincount(store.item, minlength=store.n_items))[::-1]
    assert counts[: store.n_items // 100].sum() / counts.sum() > 0.10  # top 1% of items
    assert np.median(counts) < counts.mean() / 2  # most items get few events
    taste = top2_category_share(store.user, store.category, store.n_users, store.n_categories)
    assert 0.8 < taste < 0.95, taste
    assert 50_000 < summary["users"] < 100_000
    assert pc.count_distinct(store.events["event_id"]).as_py() == 800_000


def test_sessions_go_on_to_co_viewed_items(small: Store) -> None:
    """Item-to-item structure: the view that follows another within a session is often one of
    a few items that usually follow that item (its co-viewed variants and complements), far
    more often than the same next items shuffled would be."""
    views = pc.equal(small.events["event_type"], "View").to_numpy(zero_copy_only=False)
    ts = small.events["event_ts"].cast(pa.int64()).to_numpy()[views]
    user, item, day = small.user[views], small.item[views], small.day[views]
    order = np.lexsort((ts, user))
    user, item, ts, day = user[order], item[order], ts[order], day[order]
    follows = (user[1:] == user[:-1]) & (ts[1:] - ts[:-1] <= 30 * 60 * 1_000_000)
    prev, nxt, when = item[:-1][follows], item[1:][follows], day[1:][follows]
    early, late = when < small.days // 2, when >= small.days // 2
    counts = np.bincount(prev[early] * small.n_items + nxt[early], minlength=small.n_items**2).reshape(
        small.n_items, small.n_items)
    np.fill_diagonal(counts, 0)
    top4 = np.argsort(-counts, axis=1, kind="stable")[:, :4]

    def share(next_items: np.ndarray) -> float:
        return float((top4[prev[late]] == next_items[:, None]).any(axis=1).mean())

    observed = share(nxt[late])
    shuffled = share(np.random.default_rng(0).permutation(nxt[late]))
    # Seen on the store before co-viewing (taste alone): 0.24 against 0.07 shuffled.
    assert observed > 0.3, f"only {observed:.2f} of in-session next views are a usual successor"
    assert observed > shuffled + 0.25, f"{observed:.2f} vs {shuffled:.2f} with the next items shuffled"
