"""docker-compose.yaml and the Dockerfile cannot be built or started here (no Docker engine);
check what they promise."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
# Every service that parses DAGs or runs tasks, and the storefront's API: built from the Dockerfile.
BUILT = (
    "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "airflow-worker-1", "airflow-worker-2", "storefront-api",
)


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_their_health_checks() -> None:
    services = load()["services"]
    expected = {
        "postgres", "redis", "dynamodb-local", "minio", "airflow-init", "airflow-apiserver",
        "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker-1", "airflow-worker-2",
        "storefront-api",
    }
    assert set(services) == expected
    for name, service in services.items():
        assert "image" in service, name
        if name != "airflow-init":
            assert "healthcheck" in service and service["healthcheck"]["test"], name


def test_airflow_runs_celery_on_postgres_and_redis_with_the_project_mounted() -> None:
    services = load()["services"]
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker-1", "airflow-worker-2"):
        service = services[name]
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379")
        assert env["RECSYS_DYNAMODB_ENDPOINT"] == "http://dynamodb-local:8000"
        assert service["volumes"] == ["./var:/opt/recsys/var"]  # the code comes from the image
        assert {"postgres", "redis"} <= set(service["depends_on"])
        # Every component signs and checks the same tokens (as `recsys airflow up` arranges locally).
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] and env["AIRFLOW__API__SECRET_KEY"]
    assert services["airflow-worker-1"]["command"] == services["airflow-worker-2"]["command"] == "celery worker"
    assert services["airflow-apiserver"]["ports"] == ["8080:8080"]


def test_dynamodb_local_is_shared_and_persistent() -> None:
    service = load()["services"]["dynamodb-local"]
    assert "-sharedDb" in service["command"] and "-dbPath" in service["command"]
    assert service["ports"] == ["8000:8000"]
    volumes = load()["volumes"]
    assert {"postgres-db", "dynamodb-data", "minio-data"} <= set(volumes)


def pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_every_service_that_runs_recsys_code_is_built_from_the_dockerfile() -> None:
    services = load()["services"]
    images = {services[name]["image"] for name in BUILT}
    assert len(images) == 1, images  # one image, tagged once
    for name in BUILT:
        assert services[name]["build"] == ".", name
    for name in set(services) - set(BUILT):
        assert "build" not in services[name], name  # postgres, redis, dynamodb-local, minio: upstream images
    init = " ".join(services["airflow-init"]["command"])
    assert "pip install" not in init and "airflow db migrate" in init and "recsys.dev.cli pool" in init
    api = services["storefront-api"]
    assert api["command"][0] == "serve" and "curl" in api["healthcheck"]["test"]
    assert any("/health" in part for part in api["healthcheck"]["test"])


def test_the_dockerfile_extends_the_pinned_airflow_image_with_exactly_the_pinned_set() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    base = next(line for line in lines if line.startswith("FROM "))
    assert base == f"FROM apache/airflow:{pinned('apache-airflow')}-python3.11"
    text = "\n".join(lines)
    installs = [part for part in text.replace("\\\n", " ").split("RUN ")[1:] if "pip install" in part]
    assert installs, "the Dockerfile installs nothing"
    for install in installs:
        command = install.split("&&")[0]
        assert "-c constraints.txt" in command, command  # every install is held to the pinned set
    assert any("COPY" in line and "constraints.txt" in line for line in lines)
    for folder in ("recsys", "sql", "dags", "plugins"):
        assert any(line.startswith(f"COPY --chown=airflow:0 {folder} ") for line in lines), folder
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)

