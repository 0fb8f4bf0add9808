"""Great Expectations as an edge: an ephemeral context, one validation run of a suite on a
pandas frame, and the Data Docs written into the lake. GX is imported only inside these
functions (never at DAG parse time)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from recsys import datasets
from recsys.config import Settings
from recsys.io import lake

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DOCS_SITE = "recsys"


def gx_context() -> Any:
    """An ephemeral GX context (no project folder), without its default Data Docs site."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    # Typed as ProgressBarsConfig, read by GX with ``[key]``, which a dict serves as well.
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}  # type: ignore[assignment]
    for name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(name)
    return context


def run_suite(context: Any, name: str, suite: Any, frame: pd.DataFrame) -> Any:
    """Validate ``frame`` against ``suite`` (added to ``context`` once) as the stored validation
    definition ``name``; returns the result. GX keeps the result, not the frame."""
    import great_expectations as gx

    batch_definition = (
        context.data_sources.add_pandas(f"interactions_{name}")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
    # The data source's execution engine caches the batch: without this, every chunk's frame
    # would stay in memory until the run ends. Data Docs need only the stored result.
    context.data_sources.delete(f"interactions_{name}")
    return result


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame.from_records(records)
    for column in frame.columns:
        if column.endswith(("_share", "_ratio")):
            frame[column] = frame[column].astype("float64")  # None -> NaN, which GX skips
    if "quarantined" in frame:
        frame["quarantined"] = frame["quarantined"].map(lambda v: json.dumps(v, sort_keys=True))
    return frame


def write_docs(settings: Settings, context: Any, run_date: dt.date, summary: dict[str, Any]) -> str:
    """Build the GX Data Docs (and summary.json) into ``lake/validation/dt=D/``; returns index.html's path."""
    with lake.replace_partition(settings.lake, datasets.VALIDATION, run_date) as tmp:
        context.add_data_docs_site(
            DOCS_SITE,
            {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(tmp)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        context.build_data_docs(site_names=[DOCS_SITE])
        lake.write_json(tmp / "summary.json", {"run_date": run_date.isoformat(), **summary})
    return f"{lake.partition_uri(settings.lake, datasets.VALIDATION, run_date)}/index.html"
