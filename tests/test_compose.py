"""docker-compose.yaml cannot be started here (no Docker engine); check what it promises."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yaml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_their_health_checks() -> None:
    services = load()["services"]
    expected = {
        "postgres", "redis", "dynamodb-local", "minio", "airflow-init", "airflow-apiserver",
        "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker-1", "airflow-worker-2",
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
        assert service["image"].startswith("apache/airflow:3.")
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379")
        assert env["RECSYS_DYNAMODB_ENDPOINT"] == "http://dynamodb-local:8000"
        assert "./:/opt/recsys" in service["volumes"]
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
