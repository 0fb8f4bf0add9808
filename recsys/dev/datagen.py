"""A deterministic demo store shaped like a real retail event log.

The output mimics the Amazon "Retail Demo Store" interactions data: one Parquet file of
events per day plus a small catalog. The data is synthetic but has the structure a
recommender needs to prove itself on:

* a funnel mix of event types (View 86%, AddToCart 7%, ViewCart 4%, StartCheckout 2%,
  Purchase 1%), where every cart, checkout and purchase follows a view of the same item
  by the same user a little earlier;
* long-tailed popularity: Zipf-like within each category, categories of uneven appeal;
* long-tailed user activity, events grouped into sessions spread over the days;
* product lines: each category's items are cut at random (not by popularity) into lines
  of 4–8 items (a short last run joins the line before it), 406 over the default catalog;
* planted taste of high rank, as in a real shop's log: each user prefers one or two
  categories and keeps returning to a personal pool made of a few whole product lines in
  them (drawn by the line's popularity, damped so the tail's lines are chosen too). A user
  who touched some items of a line goes on to touch its others later, so the items a user
  touches in the last days follow from the earlier days through item-to-item co-occurrence
  (which item models learn), far less through the user's categories alone (which a
  low-rank factor model holds), and far better than by a global popularity list;
* item-to-item structure within sessions: a shopper often goes on to an item co-viewed with
  the one before (another item of its product line, or a complement from another category);
* a little drift: some shoppers take up a new category partway through the period.

Everything is drawn from one ``numpy.random.default_rng(seed)`` stream in a fixed order,
so the same arguments give the same tables. The work is vectorised: there are loops per
category and per day, never per user or per event.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.io.lake import replace_dir
from recsys.schemas import INTERACTIONS_SCHEMA

log = logging.getLogger(__name__)

# The funnel, in order; each stage after the first is anchored on an event of the stage before.
EVENT_TYPES: tuple[str, ...] = ("View", "AddToCart", "ViewCart", "StartCheckout", "Purchase")
EVENT_SHARES: tuple[float, ...] = (0.86, 0.07, 0.04, 0.02, 0.01)

# The Retail Demo Store's own category names; more categories than these get numbered names.
CATEGORY_NAMES: tuple[str, ...] = (
    "apparel", "footwear", "electronics", "books", "beauty", "jewelry", "accessories",
    "homedecor", "housewares", "furniture", "groceries", "outdoors", "tools", "instruments",
    "floral", "seasonal", "salty snacks", "hot dispensed", "cold dispensed", "food service",
)

INACTIVE_SHARE = 0.03
ZIPF_EXPONENT = 1.2  # within-category popularity: rank r gets weight 1 / r**s
# Product lines: each category's items cut at random (not by popularity) into lines of a few
# items; a shopper's pool is whole lines, so the items of a line are touched by the same people.
LINE_SIZE_RANGE = (4, 8)
SEED_LINES_RANGE = (2, 6)  # lines per pool, split over the preferred categories by their weights
LINE_POPULARITY_EXPONENT = 0.25  # seed lines are drawn by (the line's popularity) ** this
# Where a view's item comes from. Pool + category keep ~85% of a user's events in their
# preferred categories; exploration is what keeps a pure taste model from being perfect. A pick
# by the category's popularity is the low-rank part of a taste, which a few factors hold; the
# pool's lines are the high-rank part, learnt from co-occurrence, so it gets most of the picks.
SOURCE_SHARES = {"pool": 0.78, "category": 0.04, "explore": 0.18}
EXPLORE_UNIFORM_SHARE = 0.3  # part of exploration that ignores popularity (reaches the tail)
MEAN_EVENTS_PER_SESSION = 4.0
# Co-viewed items: a view that follows another of the same user within CO_VIEW_GAP_SECONDS is,
# with this probability, one of that item's co-viewed items instead of an independent pick.
CO_VIEW_SHARE = 0.4
CO_VIEW_GAP_SECONDS = 30 * 60
LINE_NEIGHBOURS = 3  # co-viewed variants: the items after it in its product line
COMPLEMENTS = 1  # co-viewed complements: popular items of one other category
DRIFT_SHARE = 0.25  # shoppers who take up a new category at a random time of the period
MEAN_SESSION_SECONDS = 15 * 60.0
MEAN_FUNNEL_DELAY_SECONDS = 90.0
# Shoppers come in the evening more than at night (UTC treated as the store's local time).
HOUR_WEIGHTS = np.array(
    [2, 1.2, 0.8, 0.6, 0.6, 0.8, 1.5, 2.5, 3.5, 4, 4.2, 4.5,
     5, 4.8, 4.5, 4.5, 4.8, 5.5, 6.5, 7.5, 8, 7, 5, 3.2],
    dtype=np.float64,
)
US_PER_SECOND = 1_000_000
GUMBEL_BLOCK = 8_000_000  # noise values drawn at once for the personal pools (64 MB)
US_PER_DAY = 86_400 * US_PER_SECOND


@dataclass(frozen=True)
class Catalog:
    """Items with their category and popularity; item ``i`` is row ``i`` everywhere."""

    category: np.ndarray  # int64 per item
    popularity: np.ndarray  # float64 per item, sums to 1 over the catalog
    within_category: np.ndarray  # float64 per item, sums to 1 within each category
    category_weight: np.ndarray  # float64 per category, sums to 1
    active: np.ndarray  # bool per item
    category_names: list[str]
    line: np.ndarray  # int64 per item: its product line, numbered across the catalog, lines within a category


@dataclass(frozen=True)
class Events:
    """Generated events as parallel arrays, sorted by timestamp."""

    user: np.ndarray  # int64 user index
    item: np.ndarray  # int64 item index
    event_type: np.ndarray  # int8 index into EVENT_TYPES
    ts_us: np.ndarray  # int64 microseconds since the epoch, UTC
    event_id: np.ndarray  # bytes 'S36', uuid4-formatted


def generate_store(
    out_dir: Path,
    users: int = 100_000,
    items: int = 2_465,
    events: int = 800_000,
    days: int = 70,
    seed: int = 7,
    end_date: dt.date = dt.date(2026, 10, 31),
    categories: int = 20,
) -> dict[str, Any]:
    """Write a demo store to ``out_dir``, replacing whatever was there.

    Layout: ``out_dir/interactions/events-YYYY-MM-DD.parquet`` (one file per day, the last
    one ``end_date``) and ``out_dir/catalog.parquet``. The store is built in a temporary
    sibling folder and swapped in, so a crash leaves the old store or the new one.

    Returns a small summary: counts, first and last date, paths, seconds taken.
    Raises ValueError when a size is out of range.
    """
    _check_sizes(users=users, items=items, events=events, days=days, categories=categories)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    first_date = end_date - dt.timedelta(days=days - 1)
    rng = np.random.default_rng(seed)

    catalog = make_catalog(rng, items, categories)
    table = generate_events(rng, catalog, users=users, events=events, days=days, first_date=first_date)
    generated = time.perf_counter() - started
    log.info("generated %d events for %d users in %.2f s (%.0f events/s)",
             len(table.user), users, generated, len(table.user) / max(generated, 1e-9))

    # The whole store is written aside and swapped in: a crash never leaves half a store.
    with replace_dir(out_dir) as tmp:
        (tmp / "interactions").mkdir()
        pq.write_table(catalog_table(catalog), tmp / "catalog.parquet", compression="zstd")
        files = _write_daily_files(table, tmp / "interactions", first_date, days, users, items)

    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "out_dir": str(out_dir),
        "interactions": str(out_dir / "interactions"),
        "catalog": str(out_dir / "catalog.parquet"),
        "events": int(len(table.user)),
        "users": int(np.unique(table.user).size),
        "items": int(items),
        "items_with_events": int(np.unique(table.item).size),
        "inactive_items": int((~catalog.active).sum()),
        "categories": int(categories),
        "files": files,
        "first_date": first_date.isoformat(),
        "last_date": end_date.isoformat(),
        "seconds": round(seconds, 2),
    }
    log.info(
        "wrote demo store %s: %d events in %d daily files, %d users, %d items, in %.2f s (%.0f events/s)",
        out_dir,
        summary["events"],
        files,
        summary["users"],
        items,
        seconds,
        summary["events"] / max(seconds, 1e-9),
    )
    return summary


def _check_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first size that cannot make a store."""
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"datagen: {name} must be at least 1, got {value}")
    if sizes["categories"] > sizes["items"]:
        raise ValueError(
            f"datagen: categories ({sizes['categories']}) cannot exceed items ({sizes['items']}); "
            f"lower --categories or raise --items"
        )


def _check_replaceable(out_dir: Path) -> None:
    """Raise FileExistsError when ``out_dir`` holds something other than a demo store.

    The store replaces ``out_dir`` whole; a typo such as ``--out ~`` must not delete a home folder.
    """
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"datagen: {out_dir} is a file; --out must name a folder")
    looks_like_store = (out_dir / "interactions").is_dir() or (out_dir / "catalog.parquet").is_file()
    if not looks_like_store and any(out_dir.iterdir()):
        raise FileExistsError(
            f"datagen: {out_dir} is not empty and holds no demo store (no interactions/ or catalog.parquet); "
            f"it would be replaced whole, so pick a new or empty folder"
        )


# --------------------------------------------------------------------------- catalog


def make_catalog(rng: np.random.Generator, items: int, categories: int) -> Catalog:
    """Assign items to categories and give them Zipf-like popularity; returns the Catalog."""
    category_weight = rng.gamma(2.0, 1.0, size=categories)
    category_weight /= category_weight.sum()
    # Category sizes are uneven but independent of appeal: a big category is not a popular one.
    size_weight = rng.gamma(3.0, 1.0, size=categories)
    spare = rng.multinomial(items - categories, size_weight / size_weight.sum())
    sizes = spare + 1  # every category has at least one item
    category = rng.permutation(np.repeat(np.arange(categories, dtype=np.int64), sizes))

    # Rank within a category follows the item's position among its category's items, which
    # the permutation above made random; popularity 1/rank**s gives each category a long tail.
    order = np.argsort(category, kind="stable")
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.empty(items, dtype=np.int64)
    rank[order] = np.arange(items) - np.repeat(starts, sizes)
    raw = 1.0 / (rank + 1.0) ** ZIPF_EXPONENT
    within = raw / np.bincount(category, weights=raw, minlength=categories)[category]
    popularity = within * category_weight[category]
    popularity /= popularity.sum()

    active = np.ones(items, dtype=bool)
    n_inactive = min(items - 1, max(1, round(INACTIVE_SHARE * items))) if items > 1 else 0
    active[rng.choice(items, size=n_inactive, replace=False)] = False

    names = [
        CATEGORY_NAMES[c] if categories <= len(CATEGORY_NAMES) else f"category-{c:02d}" for c in range(categories)
    ]
    return Catalog(category, popularity, within, category_weight, active, names, _product_lines(rng, category))


def _product_lines(rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
    """Each item's product line: its category's items, in a random order independent of
    popularity, cut into runs of LINE_SIZE_RANGE items (a short last run joins the one before;
    a category smaller than a line is one line). Returns the line number per item."""
    line = np.empty(category.size, dtype=np.int64)
    low, high = LINE_SIZE_RANGE
    next_line = 0
    for c in range(int(category.max()) + 1):
        members = rng.permutation(np.flatnonzero(category == c))
        n = members.size
        if n == 0:
            continue
        ends = np.cumsum(rng.integers(low, high + 1, size=n // low + 1))
        cuts = ends[ends < n]
        if cuts.size and n - cuts[-1] < low:
            cuts = cuts[:-1]
        line[members] = next_line + np.searchsorted(cuts, np.arange(n), side="right")
        next_line += cuts.size + 1
    return line


def catalog_table(catalog: Catalog) -> pa.Table:
    """The catalog as an Arrow table ``item_id, name, category, active`` (one row per item)."""
    n = catalog.category.size
    item_ids = _id_strings("i", np.arange(n), _id_width(n, 5))
    names_arr = pa.array(catalog.category_names, pa.string())
    category = names_arr.take(pa.array(catalog.category))
    # "Apparel 0042": readable, unique, and the number ties it back to the item id.
    title = pa.array([name.title() + " " for name in catalog.category_names], pa.string()).take(
        pa.array(catalog.category)
    )
    number = _id_strings("", np.arange(n), 4)
    name = pc.binary_join_element_wise(title, number, "")
    return pa.table(
        {"item_id": item_ids, "name": name, "category": category, "active": pa.array(catalog.active, pa.bool_())}
    )


# --------------------------------------------------------------------------- events


def generate_events(
    rng: np.random.Generator, catalog: Catalog, users: int, events: int, days: int, first_date: dt.date
) -> Events:
    """Draw ``events`` events for up to ``users`` users over ``days`` days; returns them sorted by time."""
    counts = _event_type_counts(events)
    end_us = _epoch_us(first_date) + days * US_PER_DAY
    n_views = int(counts[0])

    # Users: long-tailed activity (lognormal), one or two preferred categories, a pool each.
    activity = rng.lognormal(0.0, 1.3, size=users)
    views_per_user = rng.multinomial(n_views, activity / activity.sum())
    prefs, pref_weight = _preferred_categories(rng, catalog.category_weight, users)
    pool_ptr, pool_item, pool_cum = _personal_pools(rng, catalog, prefs, pref_weight)

    view_user = np.repeat(np.arange(users, dtype=np.int64), views_per_user)
    view_ts = _draw_view_times(rng, view_user, views_per_user, days, first_date)
    drifted = _drift(rng, catalog.category_weight, prefs, view_user, view_ts, first_date, days)
    view_item = _draw_view_items(rng, catalog, view_user, prefs, pref_weight, pool_ptr, pool_item, pool_cum,
                                 drifted)
    view_item = _co_view(rng, co_viewed_items(rng, catalog), catalog.within_category, view_user, view_item,
                         view_ts)

    # The funnel: each later stage picks distinct events of the stage before and follows
    # them on the same user and item after a short delay.
    users_out, items_out, ts_out, types_out = [view_user], [view_item], [view_ts], [np.zeros(n_views, np.int8)]
    prev_user, prev_item, prev_ts = view_user, view_item, view_ts
    for stage in range(1, len(EVENT_TYPES)):
        n = int(counts[stage])
        anchor = rng.choice(prev_user.size, size=n, replace=False)
        delay = ((5.0 + rng.exponential(MEAN_FUNNEL_DELAY_SECONDS, size=n)) * US_PER_SECOND).astype(np.int64)
        prev_user, prev_item = prev_user[anchor], prev_item[anchor]
        prev_ts = _keep_before_end(rng, prev_ts[anchor], delay, end_us)
        users_out.append(prev_user)
        items_out.append(prev_item)
        ts_out.append(prev_ts)
        types_out.append(np.full(n, stage, np.int8))

    user = np.concatenate(users_out)
    item = np.concatenate(items_out)
    ts = np.concatenate(ts_out)
    event_type = np.concatenate(types_out)
    order = np.argsort(ts, kind="stable")
    return Events(user[order], item[order], event_type[order], ts[order], _uuid4_strings(rng, ts.size))


def _event_type_counts(events: int) -> np.ndarray:
    """Exact counts per funnel stage (largest remainder), each stage no bigger than the one before."""
    raw = np.asarray(EVENT_SHARES) * events
    counts: np.ndarray = np.floor(raw).astype(np.int64)
    rest = events - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    for stage in range(1, counts.size):  # tiny stores: a purchase needs a checkout to follow
        counts[stage] = min(counts[stage], counts[stage - 1])
    counts[0] = events - counts[1:].sum()
    return counts


def _preferred_categories(
    rng: np.random.Generator, category_weight: np.ndarray, users: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per user two distinct categories and their weights; returns (prefs (users, 2), weights (users, 2)).

    A user with one preferred category has weight 0 on the second slot.
    """
    categories = category_weight.size
    # Gumbel top-2 draws two distinct categories in proportion to their appeal, all users at once.
    keys = np.log(category_weight)[None, :] + rng.gumbel(size=(users, categories))
    if categories == 1:
        prefs = np.zeros((users, 2), dtype=np.int64)
    else:
        prefs = np.argsort(-keys, axis=1)[:, :2].astype(np.int64)
    first = rng.uniform(0.5, 0.8, size=users)
    single = (rng.random(users) < 0.4) | (categories == 1)
    first[single] = 1.0
    return prefs, np.stack([first, 1.0 - first], axis=1)


def _personal_pools(
    rng: np.random.Generator, catalog: Catalog, prefs: np.ndarray, pref_weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's pool of favourite items: every item of a few seed product lines per
    preferred category, the lines drawn without replacement by their popularity damped by
    LINE_POPULARITY_EXPONENT (so the tail's lines are chosen too).

    Returns CSR-like arrays: ``pool_ptr`` (users + 1 offsets), ``pool_item`` and
    ``pool_cum``, the running sum of the user's pick weights, going from ``u`` to ``u + 1``
    over user ``u``'s entries so that one ``searchsorted`` serves every user at once.
    """
    users = prefs.shape[0]
    total_lines = np.asarray(rng.integers(SEED_LINES_RANGE[0], SEED_LINES_RANGE[1] + 1, size=users))
    slot_lines = np.maximum(1, np.rint(total_lines[:, None] * pref_weight)).astype(np.int64)
    slot_lines[pref_weight == 0] = 0
    by_line = np.argsort(catalog.line, kind="stable")  # items grouped by line
    line_size = np.bincount(catalog.line)
    line_ptr = np.concatenate(([0], np.cumsum(line_size)))
    line_weight = np.bincount(catalog.line, weights=catalog.within_category)
    line_category = catalog.category[by_line[line_ptr[:-1]]]
    entry_user, entry_item, entry_weight = [], [], []
    for c in range(catalog.category_weight.size):
        lines = np.flatnonzero(line_category == c)
        slot_user, slot = np.nonzero((prefs == c) & (slot_lines > 0))
        if slot_user.size == 0 or lines.size == 0:
            continue
        k = np.minimum(slot_lines[slot_user, slot], lines.size)
        top = _gumbel_top_k(rng, LINE_POPULARITY_EXPONENT * np.log(line_weight[lines]), slot_user.size, int(k.max()))
        keep = np.arange(top.shape[1])[None, :] < k[:, None]
        seed = lines[top][keep]  # (slot, line) pairs, slot by slot
        seed_slot = np.repeat(np.arange(slot_user.size), k)
        # Every member of every seed line: a run of line_size entries per seed line.
        size = line_size[seed]
        first = np.repeat(np.cumsum(size) - size, size)
        picked = by_line[np.repeat(line_ptr[seed], size) + np.arange(int(size.sum())) - first]
        entry_slot = np.repeat(seed_slot, size)
        # A user favours the popular items of their pool, each to a personal degree. The seed
        # lines hardly favour popular items, so the pick weights keep the catalog's long tail.
        affinity = catalog.within_category[picked] * rng.gamma(1.5, 1.0, size=picked.size)
        per_slot = np.bincount(entry_slot, weights=affinity, minlength=slot_user.size)[entry_slot]
        entry_user.append(slot_user[entry_slot])
        entry_item.append(picked)
        entry_weight.append(affinity / per_slot * pref_weight[slot_user, slot][entry_slot])
    owner_all = np.concatenate(entry_user)
    order = np.argsort(owner_all, kind="stable")
    owner_all = owner_all[order]
    pool_item = np.concatenate(entry_item)[order]
    weight = np.concatenate(entry_weight)[order]
    pool_ptr = np.concatenate(([0], np.cumsum(np.bincount(owner_all, minlength=users))))
    pool_cum = _segment_cumsum(weight, owner_all, users)
    return pool_ptr, pool_item, pool_cum


def _gumbel_top_k(rng: np.random.Generator, log_weight: np.ndarray, rows: int, k_max: int) -> np.ndarray:
    """For each of ``rows`` rows, ``k_max`` column indexes drawn without replacement by weight,
    in draw order (Gumbel top-k: the largest keys of log-weight + Gumbel noise).

    The noise is drawn in blocks of rows of at most GUMBEL_BLOCK values, so memory stays
    bounded for a million users on a large category; a Generator fills an array row by row,
    so the blocks draw the very same numbers as one big array would.
    """
    columns = log_weight.size
    block = max(1, GUMBEL_BLOCK // max(columns, 1))
    out = np.empty((rows, min(k_max, columns)), dtype=np.int64)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        keys = log_weight[None, :] + rng.gumbel(size=(stop - start, columns))
        if k_max < columns:
            top = np.argpartition(-keys, k_max - 1, axis=1)[:, :k_max]
        else:
            top = np.broadcast_to(np.arange(columns), (stop - start, columns))
        out[start:stop] = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
    return out


def _segment_cumsum(weight: np.ndarray, segment: np.ndarray, segments: int) -> np.ndarray:
    """Running sums that rise from ``s`` to ``s + 1`` across segment ``s`` (entries grouped by segment)."""
    norm = weight / np.bincount(segment, weights=weight, minlength=segments)[segment]
    cum = np.cumsum(norm)
    # Rebase every segment on its own index so float error cannot leak from one to the next.
    before = np.concatenate(([0.0], cum))[np.searchsorted(segment, segment, side="left")]
    rebased: np.ndarray = segment + (cum - before)
    return rebased


def _pick_in_segments(rng: np.random.Generator, cum: np.ndarray, ptr: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """For each entry of ``segment``, a position inside that segment drawn by its weights."""
    target = segment + rng.random(segment.size)
    pos = np.searchsorted(cum, target, side="right")
    return np.clip(pos, ptr[segment], ptr[segment + 1] - 1)


def _draw_view_items(
    rng: np.random.Generator,
    catalog: Catalog,
    view_user: np.ndarray,
    prefs: np.ndarray,
    pref_weight: np.ndarray,
    pool_ptr: np.ndarray,
    pool_item: np.ndarray,
    pool_cum: np.ndarray,
    drifted: np.ndarray,
) -> np.ndarray:
    """The item of each view: from the user's pool, their categories (``drifted``: the category
    a view's category pick goes to instead, -1 for none), or exploration."""
    n = view_user.size
    shares = np.array(list(SOURCE_SHARES.values()))
    source = np.searchsorted(np.cumsum(shares), rng.random(n) * shares.sum(), side="right")
    item = np.empty(n, dtype=np.int64)

    from_pool = source == 0
    users_p = view_user[from_pool]
    item[from_pool] = pool_item[_pick_in_segments(rng, pool_cum, pool_ptr, users_p)]

    # Elsewhere in a preferred category, by the category's own popularity.
    from_cat = source == 1
    users_c = view_user[from_cat]
    slot = (rng.random(users_c.size) >= pref_weight[users_c, 0]).astype(np.int64)
    category = np.where(drifted[from_cat] >= 0, drifted[from_cat], prefs[users_c, slot])
    by_category = np.argsort(catalog.category, kind="stable")
    cat_ptr = np.concatenate(([0], np.cumsum(np.bincount(catalog.category, minlength=catalog.category_weight.size))))
    cat_cum = _segment_cumsum(
        catalog.within_category[by_category], catalog.category[by_category], catalog.category_weight.size
    )
    item[from_cat] = by_category[_pick_in_segments(rng, cat_cum, cat_ptr, category)]

    # Exploration: mostly what is popular overall, some of it anything at all.
    explore = source == 2
    n_items = catalog.popularity.size
    mix = (1 - EXPLORE_UNIFORM_SHARE) * catalog.popularity + EXPLORE_UNIFORM_SHARE / n_items
    item[explore] = np.minimum(np.searchsorted(np.cumsum(mix), rng.random(int(explore.sum())) * mix.sum()), n_items - 1)
    return item


def co_viewed_items(rng: np.random.Generator, catalog: Catalog) -> np.ndarray:
    """Each item's co-viewed items, (items, LINE_NEIGHBOURS + COMPLEMENTS): the items after it
    in its product line (cyclically, so every line-mate is someone's variant; a line shorter
    than LINE_NEIGHBOURS + 1 repeats some, an item alone in its line lists itself) and popular
    items of one other category, its category's complement (drawn by that category's popularity)."""
    categories = catalog.category_weight.size
    by_line = np.argsort(catalog.line, kind="stable")
    line_size = np.bincount(catalog.line)
    line_start = np.concatenate(([0], np.cumsum(line_size)[:-1]))
    position = np.empty(catalog.line.size, dtype=np.int64)
    position[by_line] = np.arange(catalog.line.size) - np.repeat(line_start, line_size)
    size, start = line_size[catalog.line], line_start[catalog.line]
    neighbours = np.empty((catalog.line.size, LINE_NEIGHBOURS + COMPLEMENTS), dtype=np.int64)
    for column in range(LINE_NEIGHBOURS):
        neighbours[:, column] = by_line[start + (position + 1 + column) % size]
    complement_of = (np.arange(categories) + 1 + rng.integers(0, max(categories - 1, 1), size=categories)) % categories
    sizes = np.bincount(catalog.category, minlength=categories)
    by_category = np.argsort(catalog.category, kind="stable")
    cat_ptr = np.concatenate(([0], np.cumsum(sizes)))
    cat_cum = _segment_cumsum(catalog.within_category[by_category], catalog.category[by_category], categories)
    for column in range(LINE_NEIGHBOURS, LINE_NEIGHBOURS + COMPLEMENTS):
        neighbours[:, column] = by_category[_pick_in_segments(rng, cat_cum, cat_ptr, complement_of[catalog.category])]
    return neighbours


def _co_view(
    rng: np.random.Generator, neighbours: np.ndarray, appeal: np.ndarray, view_user: np.ndarray,
    view_item: np.ndarray, view_ts: np.ndarray,
) -> np.ndarray:
    """The views with co-viewing: a view that follows one of the same user within
    CO_VIEW_GAP_SECONDS becomes, with probability CO_VIEW_SHARE, a co-viewed item of the item
    drawn for the view before it (one step from the independent picks, so no long chains),
    chosen among its co-viewed items by their ``appeal`` (an item's popularity within its
    category: a line's popular variants draw more of the co-views, which keeps the long tail)."""
    order = np.lexsort((view_ts, view_user))
    user, item, ts = view_user[order], view_item[order], view_ts[order]
    follows = np.zeros(user.size, dtype=bool)
    follows[1:] = (user[1:] == user[:-1]) & (ts[1:] - ts[:-1] <= CO_VIEW_GAP_SECONDS * US_PER_SECOND)
    switch = follows & (rng.random(user.size) < CO_VIEW_SHARE)
    previous = np.concatenate(([0], item[:-1]))
    picked = item.copy()
    choices = neighbours[previous[switch]]
    cum = np.cumsum(appeal[choices], axis=1)
    column = (cum < rng.random((choices.shape[0], 1)) * cum[:, -1:]).sum(axis=1)
    picked[switch] = choices[np.arange(choices.shape[0]), np.minimum(column, choices.shape[1] - 1)]
    out = np.empty_like(view_item)
    out[order] = picked
    return out


def _drift(
    rng: np.random.Generator, category_weight: np.ndarray, prefs: np.ndarray, view_user: np.ndarray,
    view_ts: np.ndarray, first_date: dt.date, days: int,
) -> np.ndarray:
    """Per view, the category a drifting shopper has taken up by then, or -1: DRIFT_SHARE of the
    users get a new category (by appeal, not one of theirs) from a random moment of the period;
    from then on their category picks go to it (with two categories or fewer nobody drifts)."""
    users, categories = prefs.shape[0], category_weight.size
    drifting = np.asarray(rng.random(users) < DRIFT_SHARE, dtype=bool)
    keys = np.log(category_weight)[None, :] + rng.gumbel(size=(users, categories))
    if categories > 2:
        np.put_along_axis(keys, prefs, -np.inf, axis=1)  # a category they do not already like
    new = np.argmax(keys, axis=1)
    start = _epoch_us(first_date) + np.asarray(rng.random(users) * days * US_PER_DAY, dtype=np.int64)
    taken_up = drifting[view_user] & (view_ts >= start[view_user]) & (categories > 2)
    return np.asarray(np.where(taken_up, new[view_user], -1), dtype=np.int64)


def _draw_view_times(
    rng: np.random.Generator, view_user: np.ndarray, views_per_user: np.ndarray, days: int, first_date: dt.date
) -> np.ndarray:
    """Timestamps (µs, UTC) of the views: grouped into sessions on random days and hours."""
    users = views_per_user.size
    has = views_per_user > 0
    sessions = np.zeros(users, dtype=np.int64)
    sessions[has] = 1 + rng.binomial(views_per_user[has] - 1, 1.0 / MEAN_EVENTS_PER_SESSION)
    session_ptr = np.concatenate(([0], np.cumsum(sessions)))
    n_sessions = int(session_ptr[-1])

    # Traffic grows a little over the window and peaks at weekends.
    day_index = np.arange(days)
    weekday = np.array([(first_date + dt.timedelta(days=int(d))).weekday() for d in range(min(days, 7))])
    weekend = np.isin(weekday[day_index % weekday.size], (5, 6))
    day_weight = (1.0 + 0.3 * day_index / max(days - 1, 1)) * np.where(weekend, 1.2, 1.0)
    day_weight *= rng.uniform(0.9, 1.1, size=days)
    session_day = np.searchsorted(np.cumsum(day_weight), rng.random(n_sessions) * day_weight.sum(), side="right")
    session_day = np.minimum(session_day, days - 1)
    hour = np.minimum(
        np.searchsorted(np.cumsum(HOUR_WEIGHTS), rng.random(n_sessions) * HOUR_WEIGHTS.sum(), side="right"), 23
    )
    session_start = (
        _epoch_us(first_date)
        + session_day * US_PER_DAY
        + hour * 3600 * US_PER_SECOND
        + rng.integers(0, 3600 * US_PER_SECOND, size=n_sessions)
    )
    session_length = rng.exponential(MEAN_SESSION_SECONDS, size=n_sessions) * US_PER_SECOND

    # Each view falls in one of its user's sessions, somewhere along the session.
    session = session_ptr[view_user] + (rng.random(view_user.size) * sessions[view_user]).astype(np.int64)
    offset = (rng.random(view_user.size) * session_length[session]).astype(np.int64)
    return _keep_before_end(rng, session_start[session], offset, _epoch_us(first_date) + days * US_PER_DAY)


def _keep_before_end(rng: np.random.Generator, after: np.ndarray, delay: np.ndarray, end_us: int) -> np.ndarray:
    """``after + delay``, except that times past ``end_us`` are redrawn between ``after`` and the end.

    A session late on the last day would otherwise spill into a day that has no file;
    redrawing (instead of clipping) keeps the order after ``after`` without piling events up
    at the last microsecond.
    """
    ts: np.ndarray = after + delay
    over = ts >= end_us
    room = end_us - 1 - after[over]
    ts[over] = after[over] + (rng.random(int(over.sum())) * room).astype(np.int64)
    return ts


def _uuid4_strings(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uuid4-formatted ids from the generator (fixed-width bytes 'S36')."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hex_digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = np.stack([raw >> 4, raw & 0x0F], axis=2).reshape(n, 32)
    chars = hex_digits[nibbles]
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    out = np.concatenate([chars[:, :8], dash, chars[:, 8:12], dash, chars[:, 12:16], dash,
                          chars[:, 16:20], dash, chars[:, 20:]], axis=1)
    return np.ascontiguousarray(out).view("S36").ravel()


# --------------------------------------------------------------------------- writing


def _epoch_us(day: dt.date) -> int:
    """Microseconds since the epoch at midnight UTC of ``day``."""
    return (day - dt.date(1970, 1, 1)).days * US_PER_DAY


def _id_width(count: int, minimum: int) -> int:
    return max(minimum, len(str(max(count - 1, 0))))


def _id_strings(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded ids such as ``u000123`` for every number, built without a Python loop."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (numbers[:, None] // powers[None, :]) % 10 + ord("0")
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    chars = np.concatenate([np.broadcast_to(head, (numbers.size, head.size)), digits.astype(np.uint8)], axis=1)
    fixed = np.ascontiguousarray(chars).view(f"S{head.size + width}").ravel()
    return _bytes_to_strings(fixed)


def _bytes_to_strings(fixed: np.ndarray) -> pa.Array:
    """An Arrow string array from numpy fixed-width ASCII bytes (no padding inside)."""
    width = fixed.dtype.itemsize
    offsets = pa.py_buffer((np.arange(fixed.size + 1, dtype=np.int32) * width).tobytes())
    return pa.Array.from_buffers(pa.string(), fixed.size, [None, offsets, pa.py_buffer(fixed.tobytes())])




def _write_daily_files(events: Events, folder: Path, first_date: dt.date, days: int, users: int, items: int) -> int:
    """Write ``events-YYYY-MM-DD.parquet`` per day into ``folder``; returns the number of files."""
    started = time.perf_counter()
    user_ids = _id_strings("u", np.arange(users), _id_width(users, 6))
    item_ids = _id_strings("i", np.arange(items), _id_width(items, 5))
    type_names = pa.array(EVENT_TYPES, pa.string())
    start_us = _epoch_us(first_date)
    bounds = np.searchsorted(events.ts_us, start_us + np.arange(days + 1) * US_PER_DAY, side="left")
    for d in range(days):
        lo, hi = int(bounds[d]), int(bounds[d + 1])
        part = pa.table(
            [
                user_ids.take(pa.array(events.user[lo:hi])),
                item_ids.take(pa.array(events.item[lo:hi])),
                type_names.take(pa.array(events.event_type[lo:hi])),
                pa.array(events.ts_us[lo:hi], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                _bytes_to_strings(events.event_id[lo:hi]),
            ],
            schema=INTERACTIONS_SCHEMA,
        )
        day = first_date + dt.timedelta(days=d)
        pq.write_table(part, folder / f"events-{day.isoformat()}.parquet", compression="zstd")
    seconds = time.perf_counter() - started
    log.info("wrote %d daily files, %d events in %.2f s (%.0f events/s)",
             days, events.ts_us.size, seconds, events.ts_us.size / max(seconds, 1e-9))
    return days


# --------------------------------------------------------------------------- CLI


def add_datagen_parser(subparsers: Any) -> None:
    """Register the ``datagen`` subcommand on an argparse ``add_subparsers()`` object."""
    parser = subparsers.add_parser("datagen", help="write a deterministic demo store (daily Parquet events + catalog)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="store folder (replaced if present)")
    parser.add_argument("--users", type=int, default=100_000, metavar="N")
    parser.add_argument("--items", type=int, default=2_465, metavar="N")
    parser.add_argument("--events", type=int, default=800_000, metavar="N")
    parser.add_argument("--days", type=int, default=70, metavar="N")
    parser.add_argument("--categories", type=int, default=20, metavar="N")
    parser.add_argument("--seed", type=int, default=7, metavar="N")
    parser.add_argument("--end-date", type=dt.date.fromisoformat, default=dt.date(2026, 10, 31),
                        metavar="YYYY-MM-DD", help="the last day of events (default 2026-10-31)")
    parser.set_defaults(func=run_datagen_command)


def run_datagen_command(args: argparse.Namespace) -> int:
    """Run ``recsys datagen``: generate the store and print a one-line summary; returns 0."""
    summary = generate_store(
        args.out,
        users=args.users,
        items=args.items,
        events=args.events,
        days=args.days,
        seed=args.seed,
        end_date=args.end_date,
        categories=args.categories,
    )
    print(
        f"recsys datagen: {summary['events']} events by {summary['users']} users on {summary['items']} items, "
        f"{summary['first_date']}..{summary['last_date']} ({summary['files']} files) in {summary['out_dir']} "
        f"in {summary['seconds']:.1f} s"
    )
    return 0
