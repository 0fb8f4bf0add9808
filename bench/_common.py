"""What the bench scripts share: logging, Ctrl-C/SIGTERM, argument types, DynamoDB Local, test lists.

Imported as ``_common`` (each script's own folder is first on ``sys.path``). Heavy imports
(numpy, pyarrow, recsys) stay inside the functions, so a child process of bench/pipeline.py
that only sets up logging does not pay for them in its measured memory.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger("bench")

K = 20
CATALOG_SIZE = 49_999  # prime, so the stepped item picks of make_lists never repeat within a list


# --------------------------------------------------------------------------- running a script


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines with a timestamp and the logger's name to stderr (stdout keeps the table)."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def start_run() -> None:
    """Set up logging, and make SIGTERM end the run like Ctrl-C (KeyboardInterrupt), so the
    script's ``finally`` stops the servers it started."""
    setup_logging()
    signal.signal(signal.SIGTERM, _interrupt)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, e.g. ``1,10,50``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,10,50, got {text!r}")
    return values


# --------------------------------------------------------------------------- processes


def stop_process(name: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM ``process`` unless it has ended, then SIGKILL it after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    log.info("stopping %s (pid %d)", name, process.pid)
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class DynamoDBLocal:
    """A DynamoDB Local this script started, or (``process`` None) one it was pointed at."""

    endpoint: str
    process: subprocess.Popen[bytes] | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        """Stop the server (if this script started it) and remove its working folder."""
        if self.process is not None:
            stop_process("DynamoDB Local", self.process)
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None


def start_dynamodb_local(db_path: Path | None = None) -> DynamoDBLocal:
    """DynamoDB Local on a free port of 127.0.0.1 (``-sharedDb``; in memory when ``db_path`` is None),
    once it answers; its log is in a temporary folder removed by :meth:`DynamoDBLocal.stop`."""
    from recsys.config import Settings
    from recsys.dev.dynamodb_local import (
        ensure_jar,
        free_port,
        start_process,
        wait_until_ready,
    )

    jar_dir = ensure_jar(Settings.from_env().cache_dir)
    workdir = tempfile.TemporaryDirectory(prefix="bench-dynamodb-local-")
    log_path = Path(workdir.name) / "dynamodb-local.log"
    port = free_port()
    server = DynamoDBLocal(f"http://127.0.0.1:{port}", None, workdir)
    try:
        server.process = start_process(jar_dir, port, db_path, log_path)
        wait_until_ready(server.endpoint, 60.0, process=server.process, log_path=log_path)
    except BaseException:
        server.stop()
        raise
    log.info("DynamoDB Local pid %d at %s (%s)", server.process.pid, server.endpoint, db_path or "in memory")
    return server


# --------------------------------------------------------------------------- data


def make_lists(keys: Sequence[str] | np.ndarray, seed: int, k: int = K) -> pa.Table:
    """``k`` distinct items with descending scores for each key, in the order of ``keys``.

    The rows of the publisher's input (RECOMMENDATIONS_SCHEMA: ``user_id`` is the key, rank
    1..k). Items are picked in random steps through a catalog of CATALOG_SIZE ids
    ``i000000``..; numpy and Arrow kernels only, no per-row Python.
    """
    import numpy as np
    import pyarrow as pa

    from recsys.schemas import RECOMMENDATIONS_SCHEMA

    rng = np.random.default_rng(seed)
    n = len(keys)
    first = rng.integers(0, CATALOG_SIZE, size=n)
    step = rng.integers(1, CATALOG_SIZE // k, size=n)
    picks = (first[:, None] + step[:, None] * np.arange(k)[None, :]) % CATALOG_SIZE
    scores = -np.sort(-rng.random((n, k)), axis=1)  # best first
    catalog = pa.array(np.strings.add("i", np.strings.zfill(np.arange(CATALOG_SIZE).astype(str), 6)))
    return pa.table(
        {
            "user_id": pa.array(keys).take(pa.array(np.repeat(np.arange(n), k))),
            "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int16), n)),
            "item_id": catalog.take(pa.array(picks.ravel())),
            "score": pa.array(scores.ravel().astype(np.float32)),
        },
        schema=RECOMMENDATIONS_SCHEMA,
    )
