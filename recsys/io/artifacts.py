"""What one task of a run leaves for the next in the lake as files: the pair-event index and
hold-out (``npz``), the model, and the champion record."""

from __future__ import annotations

import datetime as dt
import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsys import datasets
from recsys.config import Settings
from recsys.core.families import ItemModel
from recsys.core.holdout import Champion, ChampionUnavailable, Holdout
from recsys.core.lists import ItemFilters
from recsys.core.model import Blend, Factors, Model, ModelParams, PairEvents, model_items
from recsys.io import lake

log = logging.getLogger(__name__)


def _csr_arrays(name: str, matrix: Any) -> dict[str, np.ndarray]:
    return {f"{name}_indptr": matrix.indptr, f"{name}_indices": matrix.indices, f"{name}_data": matrix.data,
            f"{name}_shape": np.array(matrix.shape)}


def _csr_from(arrays: Mapping[str, np.ndarray], name: str) -> sp.csr_matrix:
    return sp.csr_matrix((arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]),
                         shape=tuple(arrays[f"{name}_shape"]))


def pair_event_files(prefix: str) -> list[str]:
    """The files :func:`save_pair_events` writes with ``prefix``."""
    return [f"{prefix}events.npz", f"{prefix}users.parquet", f"{prefix}items.parquet"]


def save_pair_events(folder: Path, prefix: str, events: PairEvents) -> None:
    """``<prefix>events.npz`` and the row and column ids (``<prefix>users/items.parquet``)."""
    # mypy matches a ``**dict`` of arrays against savez's keyword-only ``allow_pickle: bool`` too.
    np.savez(folder / f"{prefix}events.npz", **events.arrays())  # type: ignore[arg-type]
    pq.write_table(pa.table({"user_id": events.user_ids}), folder / f"{prefix}users.parquet")
    pq.write_table(pa.table({"item_id": events.item_ids}), folder / f"{prefix}items.parquet")


def load_pair_events(folder: Path, prefix: str) -> PairEvents:
    """What :func:`save_pair_events` wrote; raises FileNotFoundError naming the file."""

    path = folder / f"{prefix}events.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rerun index_events for this date (it writes the event index)")
    users = pq.read_table(folder / f"{prefix}users.parquet")["user_id"].combine_chunks()
    items = pq.read_table(folder / f"{prefix}items.parquet")["item_id"].combine_chunks()
    with np.load(path, allow_pickle=False) as arrays:
        return PairEvents.from_arrays({k: arrays[k] for k in arrays.files}, users, items)


def load_window_events(settings: Settings, day: dt.date) -> PairEvents:
    """The PairEvents of the whole window that index_events wrote for ``day`` (``events.npz``):
    what train fits the winner on and recommend takes the seen items from."""
    return load_pair_events(lake.fetch_partition(settings.lake, datasets.PAIR_EVENTS, day, pair_event_files("")), "")


def save_holdout(folder: Path, holdout: Holdout) -> None:
    """``holdout.npz``: rows, truth, seen, filters and popularity (the events are saved apart)."""
    np.savez(  # the **dicts against allow_pickle again (see save_pair_events)
        folder / "holdout.npz", rows=holdout.rows, **_csr_arrays("truth", holdout.truth),  # type: ignore[arg-type]
        **_csr_arrays("seen", holdout.seen), exclude=holdout.filters.exclude, categories=holdout.filters.categories,  # type: ignore[arg-type]
        popularity=holdout.popularity, cold_users=np.array(holdout.cold_users),
        warm_users=np.array(holdout.warm_users),
    )


def load_holdout(settings: Settings, day: dt.date) -> Holdout:
    """The training events and hold-out truth written by index_events for ``day``."""
    folder = lake.fetch_partition(
        settings.lake, datasets.PAIR_EVENTS, day, [*pair_event_files("train_"), "holdout.npz"]
    )
    events = load_pair_events(folder, "train_")
    with np.load(folder / "holdout.npz", allow_pickle=False) as arrays:
        return Holdout(
            events=events,
            rows=arrays["rows"],
            truth=_csr_from(arrays, "truth"),
            seen=_csr_from(arrays, "seen"),
            filters=ItemFilters(exclude=arrays["exclude"], categories=arrays["categories"]),
            popularity=arrays["popularity"],
            cold_users=int(arrays["cold_users"]),
            warm_users=int(arrays["warm_users"]),
        )


def read_champion(settings: Settings) -> dict[str, Any] | None:
    """``lake/models/champion.json``, or None before the first verified publish."""
    return lake.read_lake_json(settings.lake, datasets.CHAMPION)


def read_tuning_json(settings: Settings, day: dt.date, name: str) -> dict[str, Any] | None:
    """A JSON file of ``lake/tuning/dt=D/``, or None when the run wrote none: ``promotion.json``
    (what promote sent on to tune and what it cut), ``screening.json`` (candidates' estimated
    seconds and the ones cut before screening; written only under a budget)."""
    found = lake.read_lake_json(settings.lake, f"{lake.partition_key(datasets.TUNING, day)}/{name}")
    return dict(found) if found is not None else None


def load_champion(settings: Settings, record: dict[str, Any]) -> Champion:
    """The model ``record`` (``champion.json``) names, from ``models/dt=<its run date>/``.

    Raises ChampionUnavailable saying why when the record has no run date, the partition or
    one of its files is missing or unreadable, or the partition holds another model (that
    date was retrained after the champion was served).
    """
    version = record.get("model_version")
    try:
        day = dt.date.fromisoformat(str(record["run_date"]))
    except (KeyError, ValueError) as exc:
        raise ChampionUnavailable(f"{datasets.CHAMPION} names no valid run_date ({exc})") from exc
    where = lake.partition_uri(settings.lake, datasets.MODELS, day)
    try:
        folder = lake.fetch_partition(settings.lake, datasets.MODELS, day,
                                      ["model.npz", "users.parquet", "items.parquet", "params.json"])
        params = lake.read_json(folder / "params.json")
        model = load_model(folder / "model.npz")
        users = pq.read_table(folder / "users.parquet")["user_id"].combine_chunks()
        items = pq.read_table(folder / "items.parquet")["item_id"].combine_chunks()
    except FileNotFoundError as exc:
        raise ChampionUnavailable(f"its model is missing: {exc}") from exc
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, pa.ArrowException) as exc:
        raise ChampionUnavailable(f"its model in {where} is unreadable: {type(exc).__name__}: {exc}") from exc
    if params.get("model_version") != version:
        raise ChampionUnavailable(f"{where} holds model {params.get('model_version')}, not the champion {version}: "
                                  "that date was retrained after the champion was served")
    if model_items(model) != len(items):
        raise ChampionUnavailable(f"its model in {where} scores {model_items(model)} items but items.parquet lists "
                                  f"{len(items)}")
    return Champion(model=model, user_ids=users, item_ids=items, params=params)


def save_model(model: Model, path: Path) -> None:
    """Save a model as ``.npz`` with its family: factors (``user_factors``, ``item_factors``), an
    item model's matrix, dense (EASE's B, float32) or as CSR arrays (``item_matrix_*``), or a
    blend's two parts under ``first.`` and ``second.`` with its weight and their parameters."""
    np.savez(path, **_model_arrays(model, ""))  # type: ignore[arg-type]  # the **dict against allow_pickle


def _model_arrays(model: Model, prefix: str) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {f"{prefix}model": np.array(model.model)}
    if isinstance(model, Blend):
        arrays[f"{prefix}blend_weight"] = np.array(model.weight)
        arrays[f"{prefix}blend_params"] = np.array(json.dumps([model.first_params.as_dict(),
                                                               model.second_params.as_dict()]))
        return {**arrays, **_model_arrays(model.first, f"{prefix}first."),
                **_model_arrays(model.second, f"{prefix}second.")}
    if isinstance(model, Factors):
        return {**arrays, f"{prefix}user_factors": model.user_factors, f"{prefix}item_factors": model.item_factors}
    if isinstance(model.item_matrix, np.ndarray):
        return {**arrays, f"{prefix}item_matrix": model.item_matrix.astype(np.float32, copy=False)}
    return {**arrays, **_csr_arrays(f"{prefix}item_matrix", model.item_matrix)}


def load_model(path: Path) -> Model:
    """The model saved by :func:`save_model` (a file without a family is ALS)."""
    with np.load(path, allow_pickle=False) as saved:
        return _model_from(saved, "")


def _model_from(saved: Any, prefix: str) -> Model:
    model = str(saved[f"{prefix}model"]) if f"{prefix}model" in saved.files else "als"
    if model == "blend":
        first, second = (ModelParams(**params) for params in json.loads(str(saved[f"{prefix}blend_params"])))
        return Blend(_model_from(saved, f"{prefix}first."), _model_from(saved, f"{prefix}second."),
                     float(saved[f"{prefix}blend_weight"]), first, second)
    if f"{prefix}item_matrix" in saved.files:
        return ItemModel(saved[f"{prefix}item_matrix"], model)
    if f"{prefix}item_matrix_indptr" in saved.files:
        return ItemModel(_csr_from(saved, f"{prefix}item_matrix"), model)
    return Factors(saved[f"{prefix}user_factors"], saved[f"{prefix}item_factors"], model)
