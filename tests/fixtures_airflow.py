"""Airflow for the tests: a private AIRFLOW_HOME with a migrated SQLite metadata DB.

Imported by conftest.py before anything imports airflow, because Airflow reads its
configuration once, at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_ROOT = Path(tempfile.mkdtemp(prefix="recsys-tests-"))
os.environ["AIRFLOW_HOME"] = str(TEST_ROOT / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def airflow_env() -> Path:
    """Migrate the test metadata DB once per session; returns AIRFLOW_HOME."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True, capture_output=True, env=os.environ.copy(),
    )
    return home
