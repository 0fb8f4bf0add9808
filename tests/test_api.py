"""recsys.serving.api (the storefront's HTTP API) against the session's real DynamoDB Local.

Items are put with the low-level client into tables of their own; requests go through
FastAPI's TestClient, and one test starts the real ``recsys serve`` command (two workers, API
keys on) on a free port.
DynamoDB failures are real too: a port where nothing listens, and a socket that accepts
connections but never answers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
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
from prometheus_client.parser import text_string_to_metric_families

from recsys.config import POPULAR_USER_ID, ConfigError, Settings
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
CATEGORY = "shoes"  # its list holds two of the user's items
CATEGORY_ITEMS = [("i-002", 1.0), ("c-001", 0.8), ("i-003", 0.6), ("c-002", 0.4), ("c-003", 0.2)]
ITEM = "sku-7"
SIMILAR_ITEMS = [("sku-8", 0.75), ("sku-9", 0.5), ("sku-10", 0.25)]
TODAY = dt.datetime.now(dt.UTC).date()
META = {"run_date": (TODAY - dt.timedelta(days=1)).isoformat(), "model_version": MODEL_VERSION,
        "published_at": f"{TODAY.isoformat()}T00:30:00Z"}
API_KEYS = ("key-one", "key-two")


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


def put_meta(client: Any, table: str, meta: dict[str, str]) -> None:
    client.put_item(TableName=table, Item={"user_id": {"S": dynamodb.META_KEY}, **{k: {"S": v} for k, v in meta.items()}})


def new_table(client: Any) -> str:
    table = f"serve_{uuid.uuid4().hex[:10]}"
    dynamodb.ensure_table(client, table)
    return table


def settings_for(endpoint: str, table: str, **more: str) -> Settings:
    return Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": endpoint, "RECSYS_TABLE": table, **more})


@pytest.fixture(scope="module")
def served_table(dynamodb_client: Any) -> str:
    """A table with one user, __popular__, one category list, one similar-items list and __meta__."""
    table = new_table(dynamodb_client)
    put_list(dynamodb_client, table, KNOWN_USER, USER_ITEMS)
    put_list(dynamodb_client, table, POPULAR_USER_ID, POPULAR_ITEMS)
    put_list(dynamodb_client, table, f"{POPULAR_USER_ID}#{CATEGORY}", CATEGORY_ITEMS)
    put_list(dynamodb_client, table, f"item#{ITEM}", SIMILAR_ITEMS)
    dynamodb_client.put_item(  # not the item contract: list entries are strings, not maps
        TableName=table, Item={"user_id": {"S": "broken"}, "items": {"L": [{"S": "i-001"}]}}
    )
    put_meta(dynamodb_client, table, META)
    return table


@pytest.fixture(scope="module")
def api(dynamodb_endpoint: str, served_table: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(dynamodb_endpoint, served_table), timeout=2.0)) as client:
        yield client


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def as_pairs(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(entry["item_id"], entry["score"]) for entry in body["items"]]


def without_id(body: dict[str, Any]) -> dict[str, Any]:
    assert len(body.pop("recommendation_id")) == 32
    return body


def assert_error(response: Any, status: int, error: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    for word in words:
        assert word in body["detail"], body
    return body


# --------------------------------------------------------------------------- users


@pytest.mark.parametrize("prefix", ["/v1", ""], ids=["v1", "unversioned"])
def test_known_user_gets_their_own_list(api: TestClient, prefix: str) -> None:
    response = api.get(f"{prefix}/users/{quoted(KNOWN_USER)}/recommendations")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert without_id(response.json()) == {
        "user_id": KNOWN_USER,
        "items": [{"item_id": i, "score": s} for i, s in USER_ITEMS],  # short, and not filled without a rule
        "model_version": MODEL_VERSION,
        "generated_at": GENERATED_AT,
        "source": "user",
        "filled": 0,
    }


def test_unknown_user_falls_back_to_the_popular_list(api: TestClient) -> None:
    body = api.get("/v1/users/someone-new/recommendations").json()
    assert body["user_id"] == "someone-new" and body["source"] == "popular"
    assert as_pairs(body) == POPULAR_ITEMS[:20]  # the default limit


@pytest.mark.parametrize("limit, expected", [(1, 1), (2, 2), (100, 25)])
def test_limit_cuts_the_list(api: TestClient, limit: int, expected: int) -> None:
    body = api.get("/v1/users/nobody/recommendations", params={"limit": limit}).json()
    assert as_pairs(body) == POPULAR_ITEMS[:expected]


def test_longest_allowed_user_id_is_served(api: TestClient) -> None:
    longest = "é" * 1024  # 2,048 bytes in UTF-8
    body = api.get(f"/v1/users/{quoted(longest)}/recommendations").json()
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
    assert_error(api.get(f"/v1/users/{quoted(user_id)}/recommendations"), 400, "invalid_user_id", *words)


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "2.5", ""])
def test_bad_limit_is_a_400(api: TestClient, limit: str) -> None:
    response = api.get(f"/v1/users/{quoted(KNOWN_USER)}/recommendations?limit={limit}")
    assert_error(response, 400, "invalid_limit", "limit must be an integer from 1 to 100")


# --------------------------------------------------------------------------- exclude, category, popular


def user_list(api: TestClient, user_id: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"/v1/users/{quoted(user_id)}/recommendations", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [entry["item_id"] for entry in body["items"]]


def test_exclude_leaves_items_out_and_fills_from_the_popular_list(api: TestClient) -> None:
    body = user_list(api, KNOWN_USER, limit=5, exclude="i-002, p-000,unknown-id")
    assert ids(body) == ["i-001", "i-003", "p-001", "p-002", "p-003"]
    assert body["source"] == "user" and body["filled"] == 3
    assert as_pairs(body)[:2] == [USER_ITEMS[0], USER_ITEMS[2]]  # the user's own scores, best first


def test_excluding_every_item_of_the_user_gives_the_popular_list(api: TestClient) -> None:
    body = user_list(api, KNOWN_USER, limit=2, exclude="i-001,i-002,i-003")
    assert ids(body) == ["p-000", "p-001"] and body["source"] == "popular" and body["filled"] == 2


def test_exclude_on_an_unknown_user(api: TestClient) -> None:
    body = user_list(api, "someone-new", limit=3, exclude="p-001")
    assert ids(body) == ["p-000", "p-002", "p-003"] and body["source"] == "popular"


def test_category_keeps_the_users_items_of_that_category_then_fills_from_its_list(api: TestClient) -> None:
    body = user_list(api, KNOWN_USER, limit=4, category=CATEGORY)
    assert ids(body) == ["i-002", "i-003", "c-001", "c-002"]  # i-001 is not on the category's list
    assert body["source"] == "user" and body["filled"] == 2


def test_category_and_exclude_together(api: TestClient) -> None:
    body = user_list(api, KNOWN_USER, limit=3, category=CATEGORY, exclude="i-002,c-001")
    assert ids(body) == ["i-003", "c-002", "c-003"] and body["filled"] == 2


def test_category_for_an_unknown_user_is_the_category_list(api: TestClient) -> None:
    body = user_list(api, "someone-new", limit=20, category=CATEGORY)
    assert as_pairs(body) == CATEGORY_ITEMS and body["source"] == "category"


def test_unknown_category_is_a_404(api: TestClient) -> None:
    for path in (f"/v1/users/{quoted(KNOWN_USER)}/recommendations", "/v1/popular"):
        assert_error(api.get(path, params={"category": "hats"}), 404, "no_category_list", "hats", "__popular__#hats")


def test_popular_list_overall_and_of_a_category(api: TestClient) -> None:
    overall = api.get("/v1/popular").json()
    assert as_pairs(overall) == POPULAR_ITEMS[:20] and overall["source"] == "popular" and overall["category"] is None
    assert without_id(api.get("/v1/popular", params={"category": CATEGORY, "limit": 2}).json()) == {
        "category": CATEGORY,
        "items": [{"item_id": i, "score": s} for i, s in CATEGORY_ITEMS[:2]],
        "model_version": MODEL_VERSION,
        "generated_at": GENERATED_AT,
        "source": "category",
    }
    assert_error(api.get("/v1/popular?limit=0"), 400, "invalid_limit")


def test_refreshed_at_is_passed_on_when_the_item_holds_it(dynamodb_endpoint: str, dynamodb_client: Any) -> None:
    table = new_table(dynamodb_client)
    put_list(dynamodb_client, table, POPULAR_USER_ID, POPULAR_ITEMS)
    dynamodb_client.update_item(TableName=table, Key={"user_id": {"S": POPULAR_USER_ID}},
                                UpdateExpression="SET refreshed_at = :r",
                                ExpressionAttributeValues={":r": {"S": "2026-06-02T03:00:00Z"}})
    with TestClient(create_app(settings_for(dynamodb_endpoint, table), timeout=2.0)) as client:
        assert client.get("/v1/popular").json()["refreshed_at"] == "2026-06-02T03:00:00Z"
        assert "refreshed_at" not in client.get("/v1/items/x/similar").json()  # 404 body: no list at all


def test_every_answer_has_its_own_recommendation_id_and_it_is_logged(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="recsys.serving.recommendations"):
        first = api.get(f"/v1/users/{quoted(KNOWN_USER)}/recommendations", params={"limit": 2}).json()
        second = api.get(f"/v1/users/{quoted(KNOWN_USER)}/recommendations", params={"limit": 2}).json()
        similar = api.get(f"/v1/items/{ITEM}/similar").json()
    assert len({first["recommendation_id"], second["recommendation_id"], similar["recommendation_id"]}) == 3
    line = next(r.getMessage() for r in caplog.records if first["recommendation_id"] in r.getMessage())
    assert repr(KNOWN_USER) in line and MODEL_VERSION in line and "items=i-001,i-002" in line


# --------------------------------------------------------------------------- similar items


@pytest.mark.parametrize("prefix", ["/v1", ""], ids=["v1", "unversioned"])
def test_similar_items_of_an_item(api: TestClient, prefix: str) -> None:
    response = api.get(f"{prefix}/items/{ITEM}/similar")
    assert response.status_code == 200, response.text
    assert without_id(response.json()) == {
        "item_id": ITEM,
        "items": [{"item_id": i, "score": s} for i, s in SIMILAR_ITEMS],
        "model_version": MODEL_VERSION,
        "generated_at": GENERATED_AT,
        "source": "item",
    }
    assert as_pairs(api.get(f"{prefix}/items/{ITEM}/similar", params={"limit": 1}).json()) == SIMILAR_ITEMS[:1]


def test_similar_items_exclude_fills_from_the_items_own_list(api: TestClient) -> None:
    body = api.get(f"/v1/items/{ITEM}/similar", params={"limit": 2, "exclude": "sku-8"}).json()
    assert as_pairs(body) == SIMILAR_ITEMS[1:3]
    body = api.get(f"/v1/items/{ITEM}/similar", params={"exclude": "sku-8,sku-9,sku-10"}).json()
    assert body["items"] == []  # never filled from the popular list


def test_too_many_excluded_ids_is_a_400(api: TestClient) -> None:
    exclude = ",".join(f"x{n}" for n in range(501))
    assert_error(api.get(f"/v1/items/{ITEM}/similar", params={"exclude": exclude}), 400, "invalid_exclude", "500")


def test_item_without_a_list_is_a_404(api: TestClient) -> None:
    assert_error(api.get("/v1/items/sku-unknown/similar"), 404, "no_similar_items", "sku-unknown", "item#sku-unknown")


@pytest.mark.parametrize("item_id, error", [("", "invalid_item_id"), ("x" * 2044, "invalid_item_id")])
def test_bad_item_id_is_a_400(api: TestClient, item_id: str, error: str) -> None:
    assert_error(api.get(f"/v1/items/{quoted(item_id)}/similar"), 400, error, "item_id")


def test_bad_limit_on_similar_items_is_a_400(api: TestClient) -> None:
    assert_error(api.get(f"/v1/items/{ITEM}/similar?limit=0"), 400, "invalid_limit")


# --------------------------------------------------------------------------- health, routes


def test_health_names_the_table_and_what_it_serves(api: TestClient, served_table: str) -> None:
    response = api.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "table": served_table, "served": META, "age_days": 1,
                               "max_age_days": 2}


@pytest.mark.parametrize("age, status", [(2, 200), (3, 503)])
def test_health_is_a_503_when_the_served_run_date_is_older_than_the_limit(
    dynamodb_endpoint: str, dynamodb_client: Any, age: int, status: int
) -> None:
    table = new_table(dynamodb_client)
    put_meta(dynamodb_client, table, {**META, "run_date": (TODAY - dt.timedelta(days=age)).isoformat()})
    with TestClient(create_app(settings_for(dynamodb_endpoint, table), timeout=2.0)) as client:
        response = client.get("/health")
    if status == 200:
        assert response.status_code == 200 and response.json()["age_days"] == 2
    else:
        assert_error(response, 503, "stale", "3 days old", "RECSYS_SERVE_MAX_AGE_DAYS is 2", MODEL_VERSION)
    with TestClient(create_app(settings_for(dynamodb_endpoint, table, RECSYS_SERVE_MAX_AGE_DAYS="5"))) as client:
        assert client.get("/health").status_code == 200


def test_unknown_route_and_method_answer_json(api: TestClient) -> None:
    assert_error(api.get("/nothing/here"), 404, "not_found", "/v1/users/{user_id}/recommendations", "/v1/popular")
    assert_error(api.post("/health"), 405, "method_not_allowed")


def test_an_unexpected_failure_is_a_json_500(dynamodb_endpoint: str, served_table: str) -> None:
    app = create_app(settings_for(dynamodb_endpoint, served_table), timeout=2.0)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert_error(client.get("/v1/users/broken/recommendations"), 500, "internal_error", "server log")


# --------------------------------------------------------------------------- nothing published


def test_missing_table_is_a_503_not_published(dynamodb_endpoint: str) -> None:
    app = create_app(settings_for(dynamodb_endpoint, f"missing_{uuid.uuid4().hex[:8]}"), timeout=2.0)
    with TestClient(app) as client:
        assert_error(client.get("/v1/users/u1/recommendations"), 503, "not_published", "recsys run")
        assert_error(client.get(f"/v1/items/{ITEM}/similar"), 503, "not_published", "does not exist")
        assert_error(client.get("/v1/popular"), 503, "not_published", "does not exist")
        assert_error(client.get("/health"), 503, "not_published", "recsys run")


def test_empty_table_is_a_503_not_published(dynamodb_endpoint: str, dynamodb_client: Any) -> None:
    table = new_table(dynamodb_client)
    with TestClient(create_app(settings_for(dynamodb_endpoint, table), timeout=2.0)) as client:
        assert_error(client.get("/v1/users/u1/recommendations"), 503, "not_published", POPULAR_USER_ID)
        assert_error(client.get(f"/v1/items/{ITEM}/similar"), 404, "no_similar_items")
        assert_error(client.get("/v1/popular"), 503, "not_published", POPULAR_USER_ID)
        assert_error(client.get("/health"), 503, "not_published", "__meta__")


# --------------------------------------------------------------------------- DynamoDB does not answer


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts TCP connections and never sends a byte back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(128)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("path, status", [(f"/v1/users/{quoted(KNOWN_USER)}/recommendations", 504),
                                          (f"/v1/items/{ITEM}/similar", 504), ("/v1/popular", 504), ("/health", 503)])
def test_silent_dynamodb_is_a_504_within_the_timeout(silent_endpoint: str, path: str, status: int) -> None:
    with TestClient(create_app(settings_for(silent_endpoint, "t"), timeout=0.2)) as client:
        started = time.monotonic()
        response = client.get(path)
        seconds = time.monotonic() - started
    assert_error(response, status, "dynamodb_timeout", "0.2 s", "RECSYS_SERVE_TIMEOUT")
    assert seconds < 1.0, f"answered after {seconds:.2f} s, timeout 0.2 s"


@pytest.mark.parametrize("path", ["/v1/users/u1/recommendations", f"/v1/items/{ITEM}/similar", "/health"])
def test_closed_port_is_a_503_or_504_quickly(path: str) -> None:
    endpoint = f"http://127.0.0.1:{dynamodb_local.free_port()}"  # nothing listens there
    with TestClient(create_app(settings_for(endpoint, "t"), timeout=0.3)) as client:
        started = time.monotonic()
        response = client.get(path)
        seconds = time.monotonic() - started
        errors = metric_samples(client, "recsys_serve_dynamodb_errors_total")
    assert response.status_code == 503 if path == "/health" else response.status_code in (503, 504), response.text
    assert response.json()["error"] in ("dynamodb_unavailable", "dynamodb_timeout")
    assert seconds < 2.0, f"answered after {seconds:.2f} s, timeout 0.3 s"
    kind = response.json()["error"].removeprefix("dynamodb_")
    assert errors == {(("kind", kind),): 1.0}


def test_a_queue_of_requests_to_a_silent_dynamodb_all_end_in_time(silent_endpoint: str) -> None:
    """More concurrent requests than read threads: the queued ones also get their 504 at the deadline."""
    import concurrent.futures

    app = create_app(settings_for(silent_endpoint, "t"), timeout=0.3)
    with TestClient(app) as client:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
            statuses = list(pool.map(lambda _: client.get("/v1/users/u/recommendations").status_code, range(30)))
        seconds = time.monotonic() - started
    assert statuses == [504] * 30
    assert seconds < 2.0, f"30 requests took {seconds:.2f} s with a 0.3 s timeout"


# --------------------------------------------------------------------------- API keys


@pytest.fixture(scope="module")
def keyed_api(dynamodb_endpoint: str, served_table: str) -> Iterator[TestClient]:
    settings = settings_for(dynamodb_endpoint, served_table, RECSYS_SERVE_API_KEYS=" , ".join(API_KEYS))
    with TestClient(create_app(settings, timeout=2.0)) as client:
        yield client


@pytest.mark.parametrize("path", [f"/v1/users/{quoted(KNOWN_USER)}/recommendations", "/v1/popular",
                                  f"/v1/items/{ITEM}/similar", f"/users/{quoted(KNOWN_USER)}/recommendations",
                                  "/openapi.json"])
def test_with_keys_set_a_request_without_a_valid_key_is_a_401(keyed_api: TestClient, path: str) -> None:
    body = assert_error(keyed_api.get(path), 401, "unauthorized", "missing API key", "X-API-Key")
    assert keyed_api.get(path).headers["www-authenticate"] == "Bearer"
    assert_error(keyed_api.get(path, headers={"X-API-Key": "key-three"}), 401, "unauthorized", "unknown API key")
    assert_error(keyed_api.get(path, headers={"Authorization": "Basic a2V5LW9uZQ=="}), 401, "unauthorized")
    assert "key-one" not in body["detail"]


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer key-one"}, {"authorization": "bearer key-two"},
                                     {"X-API-Key": "key-two"}])
def test_with_keys_set_either_header_with_a_known_key_is_served(keyed_api: TestClient, headers: dict[str, str]) -> None:
    response = keyed_api.get(f"/v1/users/{quoted(KNOWN_USER)}/recommendations", headers=headers)
    assert response.status_code == 200, response.text
    assert as_pairs(response.json()) == USER_ITEMS


def test_health_and_metrics_need_no_key(keyed_api: TestClient) -> None:
    assert keyed_api.get("/health").status_code == 200
    assert keyed_api.get("/metrics").status_code == 200


def test_keys_from_a_file_and_never_in_repr_or_logs(
    dynamodb_endpoint: str, served_table: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# the storefront\nfile-key-1\n\nfile-key-2\n", encoding="utf-8")
    settings = settings_for(dynamodb_endpoint, served_table, RECSYS_SERVE_API_KEYS=str(key_file))
    assert "file-key" not in repr(settings) and str(key_file) not in repr(settings)
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings, timeout=2.0)) as client:
        assert client.get("/v1/popular", headers={"X-API-Key": "file-key-2"}).status_code == 200
        assert client.get("/v1/popular", headers={"X-API-Key": "wrong-key-x"}).status_code == 401
    assert "file-key" not in caplog.text and "wrong-key-x" not in caplog.text
    assert "2 API key(s)" in caplog.text
    with pytest.raises(ConfigError, match="cannot read the key file"):
        create_app(settings_for(dynamodb_endpoint, served_table, RECSYS_SERVE_API_KEYS=str(tmp_path / "none")))


# --------------------------------------------------------------------------- metrics


def metric_samples(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of ``name`` on /metrics (parsed as Prometheus text), by their sorted labels."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    }


def test_metrics_count_requests_by_route_and_status_and_time_them(keyed_api: TestClient) -> None:
    route = (("route", "/v1/users/{user_id:path}/recommendations"),)
    before = metric_samples(keyed_api, "recsys_serve_requests_total")
    latency_before = metric_samples(keyed_api, "recsys_serve_request_seconds_count")
    fallbacks_before = metric_samples(keyed_api, "recsys_serve_popular_fallbacks_total")
    assert keyed_api.get("/v1/users/someone-new/recommendations", headers={"X-API-Key": "key-one"}).status_code == 200
    assert keyed_api.get("/v1/users/someone-new/recommendations").status_code == 401
    after = metric_samples(keyed_api, "recsys_serve_requests_total")
    assert after[(*route, ("status", "200"))] == before.get((*route, ("status", "200")), 0) + 1
    assert after[(*route, ("status", "401"))] == before.get((*route, ("status", "401")), 0) + 1
    assert metric_samples(keyed_api, "recsys_serve_request_seconds_count")[route] == latency_before.get(route, 0) + 2
    fallbacks = metric_samples(keyed_api, "recsys_serve_popular_fallbacks_total")
    assert fallbacks[(("reason", "no_user_list"),)] == fallbacks_before.get((("reason", "no_user_list"),), 0) + 1
    assert keyed_api.get("/nothing", headers={"X-API-Key": "key-one"}).status_code == 404
    assert metric_samples(keyed_api, "recsys_serve_requests_total")[(("route", "unmatched"), ("status", "404"))] >= 1


# --------------------------------------------------------------------------- settings, OpenAPI


def test_committed_openapi_document_is_what_the_app_generates(api: TestClient) -> None:
    generated = openapi_json()
    assert OPENAPI_FILE.read_text(encoding="utf-8") == generated, (
        "docs/openapi.json is stale: regenerate it with '.venv/bin/recsys serve --openapi-out docs/openapi.json'"
    )
    served = api.get("/openapi.json").json()
    assert served == json.loads(generated)
    responses = {path: set(operation["get"]["responses"]) for path, operation in served["paths"].items()}
    assert responses == {
        "/v1/users/{user_id}/recommendations": {"200", "400", "401", "404", "503", "504"},
        "/users/{user_id}/recommendations": {"200", "400", "401", "404", "503", "504"},
        "/v1/items/{item_id}/similar": {"200", "400", "401", "404", "503", "504"},
        "/items/{item_id}/similar": {"200", "400", "401", "404", "503", "504"},
        "/v1/popular": {"200", "400", "401", "404", "503", "504"},
        "/health": {"200", "503"},
        "/metrics": {"200"},
    }
    deprecated = {path for path, operation in served["paths"].items() if operation["get"].get("deprecated")}
    assert deprecated == {"/users/{user_id}/recommendations", "/items/{item_id}/similar"}
    secured = {path for path, operation in served["paths"].items() if operation["get"].get("security")}
    assert secured == set(served["paths"]) - {"/health", "/metrics"}


# --------------------------------------------------------------------------- the real command


def test_recsys_serve_command_answers_over_http(dynamodb_endpoint: str, served_table: str, tmp_path: Path) -> None:
    port = dynamodb_local.free_port()
    env = {**os.environ, "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint, "RECSYS_TABLE": served_table,
           "RECSYS_HOME": str(tmp_path), "RECSYS_SERVE_API_KEYS": ",".join(API_KEYS)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    keyed = {"Authorization": "Bearer key-two"}
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
        def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
            request = urllib.request.Request(f"{base}{path}", headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return int(response.status), response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        path = f"/v1/users/{quoted(KNOWN_USER)}/recommendations?limit=2"
        status, answer = get(path, keyed)
        assert status == 200
        body = json.loads(answer)
        assert body["source"] == "user" and as_pairs(body) == USER_ITEMS[:2]
        status, answer = get(path)
        assert status == 401 and json.loads(answer)["error"] == "unauthorized"
        status, answer = get(f"/v1/users/{quoted(KNOWN_USER)}/recommendations?limit=0", keyed)
        assert status == 400 and json.loads(answer)["error"] == "invalid_limit"
        for _ in range(10):  # spread over both workers; /metrics of either sums them all
            assert get("/v1/popular", keyed)[0] == 200
        def popular_requests() -> float:
            answer = get("/metrics")[1]
            return sum(s.value for f in text_string_to_metric_families(answer.decode()) for s in f.samples
                       if s.name == "recsys_serve_requests_total" and s.labels["route"] == "/v1/popular")

        # A worker counts a request as its response goes out, so a scrape right after the last
        # answer may not see it yet: wait for the count, then it must hold still at exactly 10.
        deadline = time.monotonic() + 10
        while popular_requests() < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [popular_requests() for _ in range(3)] == [10.0, 10.0, 10.0]
        assert list((tmp_path / "serve-metrics" / str(port)).glob("*.db")), "no multiprocess metric files"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, log_path.read_text()
