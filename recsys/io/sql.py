"""The one SQL runner: DuckDB connections, ``sql/<output>.sql`` files and bound parameters."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from recsys import datasets
from recsys.config import Settings, sql_dir_from_env
from recsys.core.window import Window
from recsys.io import lake

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

SQL_COMMENT = re.compile(r"--[^\n]*")
SQL_DIR = sql_dir_from_env()


def connect(
    temp_dir: Path | None = None, memory_limit: str | None = None, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC, spilling to ``temp_dir`` when memory runs short.

    ``memory_limit`` and ``threads`` default to the settings (RECSYS_DUCKDB_MEMORY_LIMIT,
    default 4GB, and RECSYS_DUCKDB_THREADS, 0 = one per core). DuckDB's own default limit is
    80% of the machine's memory, which lets one aggregation crowd out every other task on a
    shared worker; with a limit, large GROUP BYs and sorts spill to ``temp_dir`` instead.
    """
    import duckdb


    if memory_limit is None or threads is None:
        settings = Settings.from_env()
        memory_limit = settings.duckdb_memory_limit if memory_limit is None else memory_limit
        threads = settings.duckdb_threads if threads is None else threads
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET memory_limit = $limit", {"limit": memory_limit})
    if threads:
        con.execute("SET threads = $threads", {"threads": int(threads)})
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        con.execute("SET temp_directory = $dir", {"dir": str(temp_dir)})
    return con


@functools.cache
def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql``; raises FileNotFoundError naming the file."""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"SQL file {path} not found (RECSYS_SQL_DIR={SQL_DIR})")
    return path.read_text()


def used_params(text: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of ``params`` the statement binds: ``$name`` as a whole word outside ``--``
    comments (a file's header names the parameters it describes, and DuckDB refuses a
    parameter the statement does not use)."""
    code = SQL_COMMENT.sub("", text)
    return {k: v for k, v in (params or {}).items() if re.search(rf"\${re.escape(k)}\b", code)}


def run_sql(con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run ``sql/<name>.sql`` with named parameters bound (``$name``) and return an Arrow table."""
    text = load_sql(name)
    result = con.sql(text, params=used_params(text, params)).to_arrow_table()
    log.debug("sql/%s.sql: %d rows", name, result.num_rows)
    return result


def copy_to_parquet(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, params: Mapping[str, Any] | None = None
) -> int:
    """Run ``sql/<name>.sql`` (parameters bound as in :func:`run_sql`) straight into the
    Parquet file ``path`` (zstd), written by DuckDB's own threads without a trip through
    Python; returns the rows written."""
    text = load_sql(name)
    target = str(path).replace("'", "''")
    rows = int(con.execute(f"copy ({text}\n) to '{target}' (format parquet, compression zstd)",
                           used_params(text, params)).fetchall()[0][0])
    log.debug("sql/%s.sql: %d rows into %s", name, rows, path)
    return rows


def register_parquet(con: duckdb.DuckDBPyConnection, view: str, paths: Sequence[Path | str]) -> None:
    """Register Parquet files as a view named ``view`` (an empty list is an error)."""
    if not paths:
        raise ValueError(f"no Parquet files to register as view {view!r}")
    con.read_parquet([str(p) for p in paths]).create_view(view, replace=True)


def register_window(con: Any, settings: Settings, window: Window) -> int:
    """The views interaction_files (the window's day partitions) and event_weights (the weight
    of each configured event type) that the window's queries read; returns the partitions
    found."""
    paths = [
        lake.fetch_partition(settings.lake, datasets.INTERACTIONS, d, [datasets.DATA_FILE]) / datasets.DATA_FILE
        for d in window.days
        if lake.partition_exists(settings.lake, datasets.INTERACTIONS, d)
    ]
    register_parquet(con, "interaction_files", paths)
    weights = pa.table(
        {
            "event_type": pa.array(list(settings.event_weights), pa.string()),
            "weight": pa.array(list(settings.event_weights.values()), pa.float64()),
        }
    )
    con.register("event_weights", weights)
    return len(paths)
