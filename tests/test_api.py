"""recsys.serving.api (the storefront's HTTP API) against the session's real DynamoDB Local.

Items are put with the low-level client into tables of their own; requests go through
FastAPI's TestClient, and one test starts the real ``recsys serve`` command on a free port.
DynamoDB failures are real too: a port where nothing listens, and a socket that accepts
connections but never answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recsys.config import POPULAR_USER_ID, Settings
from recsys.dev import dynamodb_local
from recsys.io import dynamodb
from recsys.serving.api import create_app, openapi_json

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENAPI_FILE = REPO_ROOT / "docs" / "openapi.json"
MODEL_VERSION = "2026-06-01-abc123"
GENERATED_AT = "2026-06-01T03:00:00Z"
KNOWN_USER = "user/42 ü"  # a slash and a non-ASCII letter: the id travels URL-encoded
USER_ITEMS = [("i-001", 0.9), ("i-002", 0.5), ("i-003", 0.25)]
POPULAR_ITEMS = [(f"p-{n:03d}", round(1.0 - n / 100, 2)) for n in range(25)]
ITEM = "sku-7"
SIMILAR_ITEMS = [("sku-8", 0.75), ("sku-9", 0.5)]
META = {"run_date": "2026-06-01", "model_version": MODEL_VERSION, "published_at": "2026-06-01T03:10:00Z"}


def put_list(client: Any, table: str, key: str, items: list[tuple[str, float]]) -> None:
    client.put_item(
        TableName=table,
        Item={
            "user_id": {"S": key},
            "items": {"L": [{"M": {"item_id": {"S": i}, "score": {"N": str(s)}}} for i, s in items]},
            "model_version": {"S": MODEL_VERSION},
            "generated_at": {"S": GENERATED_AT},
        },
    )


def new_table(client: Any) -> str:
    table = f"serve_{uuid.uuid4().hex[:10]}"
    dynamodb.ensure_table(client, table)
    return table


def settings_for(endpoint: str, table: str) -> Settings:
    return Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": endpoint, "RECSYS_TABLE": table})


@pytest.fixture(scope="module")
def served_table(dynamodb_client: Any) -> str:
    """A table with one user, __popular__, one similar-items list and __meta__."""
    table = new_table(dynamodb_client)
    put_list(dynamodb_client, table, KNOWN_USER, USER_ITEMS)
    put_list(dynamodb_client, table, POPULAR_USER_ID, POPULAR_ITEMS)
    put_list(dynamodb_client, table, f"item#{ITEM}", SIMILAR_ITEMS)
    dynamodb_client.put_item(  # not the item contract: list entries are strings, not maps
        TableName=table, Item={"user_id": {"S": "broken"}, "items": {"L": [{"S": "i-001"}]}}
    )
    dynamodb_client.put_item(
        TableName=table, Item={"user_id": {"S": dynamodb.META_KEY}, **{k: {"S": v} for k, v in META.items()}}
    )
    return table


@pytest.fixture(scope="module")
def api(dynamodb_endpoint: str, served_table: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(dynamodb_endpoint, served_table), timeout=2.0)) as client:
        yield client


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def as_pairs(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(entry["item_id"], entry["score"]) for entry in body["items"]]


def assert_error(response: Any, status: int, error: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    for word in words:
        assert word in body["detail"], body
    return body


# --------------------------------------------------------------------------- users


def test_known_user_gets_their_own_list(api: TestClient) -> None:
    response = api.get(f"/users/{quoted(KNOWN_USER)}/recommendations")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "user_id": KNOWN_USER,
        "items": [{"item_id": i, "score": s} for i, s in USER_ITEMS],
        "model_version": MODEL_VERSION,
        "generated_at": GENERATED_AT,
        "source": "user",
    }


def test_unknown_user_falls_back_to_the_popular_list(api: TestClient) -> None:
    body = api.get("/users/someone-new/recommendations").json()
    assert body["user_id"] == "someone-new" and body["source"] == "popular"
    assert as_pairs(body) == POPULAR_ITEMS[:20]  # the default limit


@pytest.mark.parametrize("limit, expected", [(1, 1), (2, 2), (100, 25)])
def test_limit_cuts_the_list(api: TestClient, limit: int, expected: int) -> None:
    body = api.get("/users/nobody/recommendations", params={"limit": limit}).json()
    assert as_pairs(body) == POPULAR_ITEMS[:expected]


def test_longest_allowed_user_id_is_served(api: TestClient) -> None:
    longest = "é" * 1024  # 2,048 bytes in UTF-8
    body = api.get(f"/users/{quoted(longest)}/recommendations").json()
    assert body["user_id"] == longest and body["source"] == "popular"


@pytest.mark.parametrize(
    "user_id, words",
    [
        ("", ["non-empty"]),
        ("é" * 1024 + "x", ["2049 bytes", "2048"]),
        (dynamodb.META_KEY, ["reserved"]),
    ],
    ids=["empty", "over-2048-bytes", "meta"],
)
def test_bad_user_id_is_a_400(api: TestClient, user_id: str, words: list[str]) -> None:
    assert_error(api.get(f"/users/{quoted(user_id)}/recommendations"), 400, "invalid_user_id", *words)


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "2.5", ""])
def test_bad_limit_is_a_400(api: TestClient, limit: str) -> None:
    response = api.get(f"/users/{quoted(KNOWN_USER)}/recommendations?limit={limit}")
    assert_error(response, 400, "invalid_limit", "limit must be an integer from 1 to 100")


# --------------------------------------------------------------------------- similar items


def test_similar_items_of_an_item(api: TestClient) -> None:
    response = api.get(f"/items/{ITEM}/similar")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "item_id": ITEM,
        "items": [{"item_id": i, "score": s} for i, s in SIMILAR_ITEMS],
        "model_version": MODEL_VERSION,
        "generated_at": GENERATED_AT,
    }
    assert as_pairs(api.get(f"/items/{ITEM}/similar", params={"limit": 1}).json()) == SIMILAR_ITEMS[:1]


def test_item_without_a_list_is_a_404(api: TestClient) -> None:
    assert_error(api.get("/items/sku-unknown/similar"), 404, "no_similar_items", "sku-unknown", "item#sku-unknown")


@pytest.mark.parametrize("item_id, error", [("", "invalid_item_id"), ("x" * 2044, "invalid_item_id")])
def test_bad_item_id_is_a_400(api: TestClient, item_id: str, error: str) -> None:
    assert_error(api.get(f"/items/{quoted(item_id)}/similar"), 400, error, "item_id")


def test_bad_limit_on_similar_items_is_a_400(api: TestClient) -> None:
    assert_error(api.get(f"/items/{ITEM}/similar?limit=0"), 400, "invalid_limit")


# --------------------------------------------------------------------------- health, routes


def test_health_names_the_table_and_what_it_serves(api: TestClient, served_table: str) -> None:
    response = api.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "table": served_table, "served": META}


def test_unknown_route_and_method_answer_json(api: TestClient) -> None:
    assert_error(api.get("/nothing/here"), 404, "not_found", "/users/{user_id}/recommendations")
    assert_error(api.post("/health"), 405, "method_not_allowed")


def test_an_unexpected_failure_is_a_json_500(dynamodb_endpoint: str, served_table: str) -> None:
    app = create_app(settings_for(dynamodb_endpoint, served_table), timeout=2.0)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert_error(client.get("/users/broken/recommendations"), 500, "internal_error", "server log")


# --------------------------------------------------------------------------- nothing published


def test_missing_table_is_a_503_not_published(dynamodb_endpoint: str) -> None:
    app = create_app(settings_for(dynamodb_endpoint, f"missing_{uuid.uuid4().hex[:8]}"), timeout=2.0)
    with TestClient(app) as client:
        assert_error(client.get("/users/u1/recommendations"), 503, "not_published", "recsys run")
        assert_error(client.get(f"/items/{ITEM}/similar"), 503, "not_published", "does not exist")
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["served"] is None


def test_empty_table_is_a_503_not_published(dynamodb_endpoint: str, dynamodb_client: Any) -> None:
    table = new_table(dynamodb_client)
    with TestClient(create_app(settings_for(dynamodb_endpoint, table), timeout=2.0)) as client:
        assert_error(client.get("/users/u1/recommendations"), 503, "not_published", POPULAR_USER_ID)
        assert_error(client.get(f"/items/{ITEM}/similar"), 404, "no_similar_items")
        assert client.get("/health").json() == {"status": "ok", "table": table, "served": None}


# --------------------------------------------------------------------------- DynamoDB does not answer


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts TCP connections and never sends a byte back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(128)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("path", [f"/users/{quoted(KNOWN_USER)}/recommendations", f"/items/{ITEM}/similar", "/health"])
def test_silent_dynamodb_is_a_504_within_the_timeout(silent_endpoint: str, path: str) -> None:
    with TestClient(create_app(settings_for(silent_endpoint, "t"), timeout=0.2)) as client:
        started = time.monotonic()
        response = client.get(path)
        seconds = time.monotonic() - started
    assert_error(response, 504, "dynamodb_timeout", "0.2 s", "RECSYS_SERVE_TIMEOUT")
    assert seconds < 1.0, f"answered after {seconds:.2f} s, timeout 0.2 s"


@pytest.mark.parametrize("path", ["/users/u1/recommendations", f"/items/{ITEM}/similar", "/health"])
def test_closed_port_is_a_503_or_504_quickly(path: str) -> None:
    endpoint = f"http://127.0.0.1:{dynamodb_local.free_port()}"  # nothing listens there
    with TestClient(create_app(settings_for(endpoint, "t"), timeout=0.3)) as client:
        started = time.monotonic()
        response = client.get(path)
        seconds = time.monotonic() - started
    assert response.status_code in (503, 504), response.text
    assert response.json()["error"] in ("dynamodb_unavailable", "dynamodb_timeout")
    assert seconds < 2.0, f"answered after {seconds:.2f} s, timeout 0.3 s"


def test_a_queue_of_requests_to_a_silent_dynamodb_all_end_in_time(silent_endpoint: str) -> None:
    """More concurrent requests than read threads: the queued ones also get their 504 at the deadline."""
    import concurrent.futures

    app = create_app(settings_for(silent_endpoint, "t"), timeout=0.3)
    with TestClient(app) as client:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
            statuses = list(pool.map(lambda _: client.get("/users/u/recommendations").status_code, range(30)))
        seconds = time.monotonic() - started
    assert statuses == [504] * 30
    assert seconds < 2.0, f"30 requests took {seconds:.2f} s with a 0.3 s timeout"


# --------------------------------------------------------------------------- settings, OpenAPI


def test_committed_openapi_document_is_what_the_app_generates(api: TestClient) -> None:
    generated = openapi_json()
    assert OPENAPI_FILE.read_text(encoding="utf-8") == generated, (
        "docs/openapi.json is stale: regenerate it with '.venv/bin/recsys serve --openapi-out docs/openapi.json'"
    )
    served = api.get("/openapi.json").json()
    assert served == json.loads(generated)
    assert set(served["paths"]) == {"/users/{user_id}/recommendations", "/items/{item_id}/similar", "/health"}
    responses = {path: set(operation["get"]["responses"]) for path, operation in served["paths"].items()}
    assert responses == {
        "/users/{user_id}/recommendations": {"200", "400", "503", "504"},
        "/items/{item_id}/similar": {"200", "400", "404", "503", "504"},
        "/health": {"200", "503", "504"},
    }


# --------------------------------------------------------------------------- the real command


def test_recsys_serve_command_answers_over_http(dynamodb_endpoint: str, served_table: str, tmp_path: Path) -> None:
    port = dynamodb_local.free_port()
    env = {**os.environ, "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint, "RECSYS_TABLE": served_table,
           "RECSYS_HOME": str(tmp_path)}
    command = [str(Path(sys.executable).with_name("recsys")), "serve", "--port", str(port), "--workers", "2",
               "--timeout", "2"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    assert json.loads(response.read())["served"] == META
                    break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, f"recsys serve exited {process.returncode}:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"recsys serve did not answer in 60 s:\n{log_path.read_text()}"
                time.sleep(0.2)
        with urllib.request.urlopen(
            f"{base}/users/{quoted(KNOWN_USER)}/recommendations?limit=2", timeout=5
        ) as response:
            assert response.status == 200
            body = json.loads(response.read())
        assert body["source"] == "user" and as_pairs(body) == USER_ITEMS[:2]
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{base}/users/{quoted(KNOWN_USER)}/recommendations?limit=0", timeout=5)
        assert caught.value.code == 400 and json.loads(caught.value.read())["error"] == "invalid_limit"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, log_path.read_text()
