"""Peak memory and time of validate alone, on a staged first-run window, per chunk budget.

    RECSYS_HOME=/tmp/validate-home .venv/bin/python bench/validate.py --chunk-rows 100000000,1000000,100000

Makes the demo store under ``$RECSYS_HOME/demo`` when it is missing (``recsys datagen``'s
defaults: 800,000 events over 70 days ending 2026-10-31) and stages it when staging is empty
(``extract`` for its last day on an empty lake: the whole window, as on a first run).
Then it runs ``validate_partitions`` over the staged days once per ``RECSYS_VALIDATE_CHUNK_ROWS``
budget, each in a fresh process, and prints per budget the chunks, the wall seconds, the RSS
before validate and the process's peak RSS (its VmHWM). It is a benchmark, not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import int_list, setup_logging  # noqa: E402  (after the path)
from pipeline import mib, rss_kib  # noqa: E402  (bench/pipeline.py's /proc/self/status readers)

log = logging.getLogger("bench.validate")
END_DATE = dt.date(2026, 10, 31)


def child(budget: int, out: Path) -> int:
    """Validate every staged day with ``budget`` rows a chunk; write the figures to ``out``."""
    os.environ["RECSYS_VALIDATE_CHUNK_ROWS"] = str(budget)
    from recsys import datasets
    from recsys.config import Settings
    from recsys.core.checks import plan_chunks
    from recsys.io import lake
    from recsys.stages.validate import validate_partitions

    settings = Settings.from_env()
    days = lake.list_days(settings.lake, datasets.STAGING)
    chunks = plan_chunks({d: lake.partition_rows(settings.lake, datasets.STAGING, d) for d in days}, budget)
    start_kib = rss_kib()
    started = time.perf_counter()
    summary = validate_partitions(settings, days, max(days))
    out.write_text(json.dumps({"chunks": len(chunks), "rows": summary["rows"], "seconds": time.perf_counter() - started,
                               "start_kib": start_kib, "peak_kib": rss_kib("VmHWM")}))
    return 0


def ensure_staged() -> int:
    """Generate and stage the demo store unless staging already holds days; returns its row count."""
    from recsys import datasets
    from recsys.config import Settings
    from recsys.dev.datagen import generate_store
    from recsys.io import lake

    settings = Settings.from_env()
    if not lake.list_days(settings.lake, datasets.STAGING):
        if not settings.demo_dir.exists():
            generate_store(settings.demo_dir, end_date=END_DATE)
        from recsys.stages.extract import extract

        extract(settings, END_DATE)
    return sum(
        lake.partition_rows(settings.lake, datasets.STAGING, d) for d in lake.list_days(settings.lake, datasets.STAGING)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-rows", type=int_list, default=[100_000_000, 1_000_000, 200_000, 100_000, 50_000],
                        help="comma-separated RECSYS_VALIDATE_CHUNK_ROWS budgets, one child process each")
    args = parser.parse_args(argv)
    setup_logging()
    rows = ensure_staged()
    log.info("staged window: %s rows in %s", f"{rows:,}", os.environ.get("RECSYS_HOME", "var"))
    results = []
    for budget in args.chunk_rows:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "validate.json"
            subprocess.run([sys.executable, __file__, "_child", str(budget), str(out)], check=True)
            results.append({"budget": budget, **json.loads(out.read_text())})
    print(f"{'chunk rows':>12} {'chunks':>6} {'rows':>10} {'wall s':>7} {'RSS at start MiB':>16} {'peak RSS MiB':>12}")
    for r in results:
        print(
            f"{r['budget']:>12,} {r['chunks']:>6} {r['rows']:>10,} {r['seconds']:>7.1f} "
            f"{mib(r['start_kib']):>16} {mib(r['peak_kib']):>12}"
        )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        sys.exit(child(int(sys.argv[2]), Path(sys.argv[3])))
    sys.exit(main())
