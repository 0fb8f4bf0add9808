"""The storefront's HTTP read API: ``recsys serve`` (FastAPI on uvicorn).

GET endpoints over the one DynamoDB read path of :mod:`recsys.serving.reader`, versioned
under ``/v1/`` (the unversioned routes of API 1.0 still answer, marked deprecated):

* ``/v1/users/{user_id}/recommendations?limit=&exclude=&category=`` — a user's list, or
  ``__popular__`` for an unknown user; ``exclude`` and ``category`` remove items and the list is
  filled from the user's remaining items, then the popular (or the category's) list;
* ``/v1/popular?category=&limit=`` — ``__popular__`` or ``__popular__#<category>``;
* ``/v1/items/{item_id}/similar?limit=&exclude=`` — the list published under ``item#<item_id>``;
* ``/health`` — 200 when DynamoDB answers and the served run date (``__meta__``) is at most
  ``RECSYS_SERVE_MAX_AGE_DAYS`` old, else 503 with the reason;
* ``/metrics`` — Prometheus text: requests by route and status, latency, DynamoDB errors and
  timeouts, fallbacks to the popular list.

Every list answer carries a ``recommendation_id`` (unique per answer, logged with the user,
model version and items by the ``recsys.serving.recommendations`` logger) so the storefront can
tie a click to the list that produced it. With ``RECSYS_SERVE_API_KEYS`` set, every route but
``/health`` and ``/metrics`` wants ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Every answer is JSON (but ``/metrics``); every error is ``{"error": <code>, "detail": <what to do>}``.

Why the handlers look the way they do:

* One boto3 low-level client per process (thread-safe), built once by :func:`create_app`.
* Handlers are ``async`` and hand the blocking boto3 call to a small thread pool of their own,
  awaited with a deadline (``RECSYS_SERVE_TIMEOUT`` seconds, default 0.5). boto3's own connect
  and read timeouts bound one attempt, but botocore retries and an unknown user costs two
  GetItems, so only a deadline around the whole read guarantees the storefront an answer in
  time. Late work cannot pile up: the pool has as many threads as the client has connections,
  and a request whose deadline passed while it waited in the queue is dropped before it starts.
* Handlers return ready-made ``JSONResponse`` objects, so FastAPI does not validate the answer
  through pydantic on the hot path; the pydantic models below only describe it in the OpenAPI
  document (``docs/openapi.json``, written by ``recsys serve --openapi-out``).
* Metrics with ``--workers N > 1`` use prometheus-client's multiprocess mode: ``recsys serve``
  points ``PROMETHEUS_MULTIPROC_DIR`` at an emptied folder under ``RECSYS_HOME`` before the
  workers start, and ``/metrics`` of any worker sums every worker's files. One worker keeps
  its metrics in memory.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import hmac
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from recsys.config import DEFAULT_SERVE_TIMEOUT, ConfigError, Settings
from recsys.io import dynamodb
from recsys.serving.reader import PopularCache, get_popular, get_recommendations, get_similar_items

if TYPE_CHECKING:  # FastAPI itself is imported where an app is built: `recsys --help` stays quick
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)
served_log = logging.getLogger("recsys.serving.recommendations")  # one line per list answered

TIMEOUT_VARIABLE = "RECSYS_SERVE_TIMEOUT"  # Settings.serve_timeout
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
MAX_EXCLUDE = 500  # item ids one request may exclude
API_VERSION = "1.1"  # of the HTTP contract below; bump it with every change of docs/openapi.json
APP_FACTORY = "recsys.serving.api:create_app_from_env"
OPEN_PATHS = frozenset({"/health", "/metrics"})  # answered without an API key
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# --------------------------------------------------------------------------- the contract (OpenAPI only)


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="model score; higher is better, only comparable within one list")


_ID = "unique per answer; logged with the user, model version and items, so a click can be tied to this list"
_REFRESHED = ("when the hourly refresh last rewrote the list from the events since its night (same "
              "`model_version`); absent on a list as the nightly wrote it")


class Recommendations(BaseModel):
    recommendation_id: str = Field(description=_ID)
    user_id: str
    items: list[ScoredItem] = Field(description="best first, at most `limit`")
    model_version: str = Field(description="which nightly model made the list")
    generated_at: str = Field(description="ISO-8601 UTC time the list was made")
    refreshed_at: str | None = Field(None, description=_REFRESHED)
    source: Literal["user", "popular", "category"] = Field(
        description="`user`: the user's own list (maybe filled, see `filled`); `popular`: the popular list, for a "
                    "user the model does not know or whose items were all left out; `category`: the category's "
                    "popular list, likewise"
    )
    filled: int = Field(description="how many of the items, at the end, come from the popular (or category) list "
                                    "because `exclude` or `category` left the user's list short")


class PopularItems(BaseModel):
    recommendation_id: str = Field(description=_ID)
    category: str | None = Field(description="the category asked for; null for the overall list")
    items: list[ScoredItem] = Field(description="best first, at most `limit`; score = users / the top item's users")
    model_version: str
    generated_at: str
    refreshed_at: str | None = Field(None, description=_REFRESHED)
    source: Literal["popular", "category"]


class SimilarItems(BaseModel):
    recommendation_id: str = Field(description=_ID)
    item_id: str
    items: list[ScoredItem] = Field(description="best first, at most `limit`; `exclude`d items left out, filled "
                                                "from the item's remaining similar items only")
    model_version: str
    generated_at: str
    refreshed_at: str | None = Field(None, description=_REFRESHED)
    source: Literal["item"] = Field(description="always `item`: the item's own similar-items list")


class Served(BaseModel):
    run_date: str = Field(description="the nightly run date whose lists are served")
    model_version: str
    published_at: str


class Health(BaseModel):
    status: Literal["ok"]
    table: str
    served: Served = Field(description="the table's `__meta__` record")
    age_days: int = Field(description="days from the served run date to today (UTC)")
    max_age_days: int = Field(description="RECSYS_SERVE_MAX_AGE_DAYS: an older run date makes /health a 503")


class ErrorBody(BaseModel):
    error: str = Field(description="a stable code, e.g. `invalid_user_id`, `not_published`, `dynamodb_timeout`")
    detail: str = Field(description="what went wrong and what to do about it")


def _error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


UNAUTHORIZED_DOCS: dict[int | str, dict[str, Any]] = {
    401: _error_doc("`unauthorized`: RECSYS_SERVE_API_KEYS is set and the request has no key, or not one of them; "
                    "send `Authorization: Bearer <key>` or `X-API-Key: <key>`"),
}
UNAVAILABLE_DOCS: dict[int | str, dict[str, Any]] = {
    503: _error_doc("`not_published`: the table holds no lists yet; `dynamodb_unavailable` / `dynamodb_error`: "
                    "DynamoDB refused or failed the read"),
    504: _error_doc(f"`dynamodb_timeout`: DynamoDB did not answer within {TIMEOUT_VARIABLE} seconds"),
}


# --------------------------------------------------------------------------- errors


class ServeError(Exception):
    """An answer other than 200: HTTP status, a stable error code and a detail for people."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}


def _error_response(status: int, error: str, detail: str) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _dynamodb_failure(exc: BaseException, table: str, timeout: float) -> ServeError:
    """The 503/504 for an exception of a boto3 call (or of the deadline)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        ReadTimeoutError,
    )

    if isinstance(exc, (TimeoutError, ConnectTimeoutError, ReadTimeoutError)):
        return ServeError(
            504, "dynamodb_timeout",
            f"DynamoDB did not answer within {timeout:g} s (table {table}); retry, or raise {TIMEOUT_VARIABLE}",
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return ServeError(
            503, "dynamodb_error",
            f"DynamoDB refused the read from table {table}: {error.get('Code', '?')}: {error.get('Message', exc)}",
        )
    if isinstance(exc, BotoCoreError):
        return ServeError(503, "dynamodb_unavailable", f"DynamoDB cannot be reached (table {table}): {exc}")
    raise TypeError(f"not a DynamoDB failure: {exc!r}")


# --------------------------------------------------------------------------- API keys


def load_api_keys(value: str) -> tuple[bytes, ...]:
    """The keys of ``RECSYS_SERVE_API_KEYS``: comma-separated, or the path of a file of keys (one a
    line, or comma-separated; blank lines and ``#`` comments ignored). Empty: no keys, no auth.

    A value without a comma that names an existing file, or starts with ``/``, ``./`` or ``~``,
    is a path. Raises ConfigError for a path that cannot be read or a file with no key; the
    message never holds a key.
    """
    value = value.strip()
    if not value:
        return ()
    if "," not in value and (value.startswith(("/", "./", "~")) or os.path.isfile(value)):
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"RECSYS_SERVE_API_KEYS: cannot read the key file {path}: {exc.strerror}") from None
        parts = [p for line in text.splitlines() if not line.lstrip().startswith("#") for p in line.split(",")]
        keys = tuple(p.strip().encode() for p in parts if p.strip())
        if not keys:
            raise ConfigError(f"RECSYS_SERVE_API_KEYS: the key file {path} holds no key (one key a line)")
        return keys
    return tuple(p.strip().encode() for p in value.split(",") if p.strip())


def is_known_key(candidate: bytes, keys: tuple[bytes, ...]) -> bool:
    """Whether ``candidate`` is one of ``keys``, compared in constant time against every key."""
    matches = [hmac.compare_digest(candidate, key) for key in keys]  # no short cut: every key is compared
    return any(matches)


# --------------------------------------------------------------------------- metrics


class Metrics:
    """The API's Prometheus metrics, in a registry of the app's own (tests build many apps).

    With ``PROMETHEUS_MULTIPROC_DIR`` set (``recsys serve --workers N > 1``) prometheus-client
    writes the values to files there, and :meth:`exposition` sums every process's files.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("recsys_serve_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("recsys_serve_request_seconds", "Seconds from request to answer, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.dynamodb_errors = Counter(
            "recsys_serve_dynamodb_errors",
            "DynamoDB reads that failed: timeout (past RECSYS_SERVE_TIMEOUT), unavailable (no connection), "
            "error (DynamoDB refused)", ["kind"], registry=self.registry)
        self.fallbacks = Counter(
            "recsys_serve_popular_fallbacks",
            "User answers that used the popular (or category) list: no_user_list (unknown user, or every item "
            "left out), filled (the user's list filled up after exclude/category)", ["reason"],
            registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        """The text of ``/metrics`` and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if os.environ.get(MULTIPROC_VARIABLE):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class MetricsMiddleware:
    """Counts every HTTP answer by route template (``unmatched`` for no route) and status, and times it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception escaping the app becomes a 500 further out

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


# --------------------------------------------------------------------------- reading with a deadline


class Reader:
    """The process's one DynamoDB client and table, read through a bounded pool under a deadline."""

    def __init__(self, client: Any, table: str, timeout: float, metrics: Metrics | None = None) -> None:
        self.client, self.table, self.timeout, self.metrics = client, table, timeout, metrics
        # More threads than pooled connections would only open and drop extra connections.
        self.threads = int(client.meta.config.max_pool_connections)
        self.executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="dynamodb-read")

    async def read(self, function: Callable[..., Any], *args: Any, invalid: str = "invalid_request",
                   **kwargs: Any) -> Any:
        """``function(client, table, *args, **kwargs)`` in the pool; its result, or a ServeError.

        400 ``invalid`` for its ValueError (a bad id or limit), 503 ``not_published`` for its
        LookupError (no table, or no list to fall back on), 503/504 when DynamoDB fails or is late.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        call = functools.partial(function, self.client, self.table, *args, **kwargs)
        future = asyncio.get_running_loop().run_in_executor(self.executor, call)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except (TimeoutError, BotoCoreError, ClientError) as exc:
            failure = _dynamodb_failure(exc, self.table, self.timeout)
            if self.metrics is not None:
                self.metrics.dynamodb_errors.labels(failure.error.removeprefix("dynamodb_")).inc()
            raise failure from exc
        except ValueError as exc:
            raise ServeError(400, invalid, str(exc)) from None
        except (KeyError, IndexError):
            raise  # an item that breaks the item contract: a 500, not "nothing published"
        except LookupError as exc:
            raise ServeError(503, "not_published", str(exc)) from None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the app


def _excluded(text: str | None) -> frozenset[str]:
    """The item ids of ``exclude=a,b,c``; a 400 ServeError past MAX_EXCLUDE."""
    ids = frozenset(p.strip() for p in (text or "").split(",") if p.strip())
    if len(ids) > MAX_EXCLUDE:
        raise ServeError(400, "invalid_exclude", f"exclude holds {len(ids)} item ids; at most {MAX_EXCLUDE}")
    return ids


def _answer(result: dict[str, Any], subject: str) -> JSONResponse:
    """``result`` with a new recommendation_id, logged (id, subject, model, source, items) and sent."""
    from fastapi.responses import JSONResponse

    recommendation_id = uuid.uuid4().hex
    if served_log.isEnabledFor(logging.INFO):
        served_log.info(
            "recommendation_id=%s %s model_version=%s source=%s items=%s", recommendation_id, subject,
            result.get("model_version"), result.get("source"), ",".join(e["item_id"] for e in result["items"]),
        )
    return JSONResponse({"recommendation_id": recommendation_id, **result})


def create_app(settings: Settings, *, timeout: float = DEFAULT_SERVE_TIMEOUT, client: Any | None = None) -> FastAPI:
    """The API for ``settings.table``; DynamoDB reads give up after ``timeout`` seconds.

    ``client`` defaults to ``make_client(settings, timeout=timeout, through_airflow=False)``, built
    here, once (no Airflow connection: the storefront runs without Airflow). Raises
    ConfigError when ``settings.serve_api_keys`` names a key file that cannot be read.
    """
    from fastapi import APIRouter, Depends, FastAPI, Path, Query
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

    keys = load_api_keys(settings.serve_api_keys)
    metrics = Metrics()
    if client is None:
        # The storefront never asks Airflow for a connection: standard AWS chain, RECSYS_* endpoint.
        client = dynamodb.make_client(settings, timeout=timeout, through_airflow=False)
    reader = Reader(client, settings.table, timeout, metrics)
    # The popular lists change once a night; every unknown user's request falls back on one.
    popular_lists = PopularCache(settings.serve_popular_ttl_seconds) if settings.serve_popular_ttl_seconds else None
    max_age = settings.serve_max_age_days

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info(
            "serving DynamoDB table %s at %s, %.3g s timeout, %d read threads, %s, metrics %s",
            settings.table, settings.dynamodb_endpoint or "AWS", timeout, reader.threads,
            f"{len(keys)} API key(s)" if keys else "no API keys (every route open)",
            "per worker process files" if os.environ.get(MULTIPROC_VARIABLE) else "in this process",
        )
        yield
        reader.close()

    app = FastAPI(
        title="recsys",
        version=API_VERSION,
        description=(
            "The storefront's read API for the nightly recommendations: a user's top list (or the popular list "
            "for a user the model does not know), the popular list overall or per category, and an item's "
            "similar items, as published by the `recsys_nightly` DAG to DynamoDB. With RECSYS_SERVE_API_KEYS "
            "set, every route but /health and /metrics wants `Authorization: Bearer <key>` or `X-API-Key`. "
            "Errors are JSON `{\"error\", \"detail\"}`."
        ),
        lifespan=lifespan,
        docs_url=None,  # JSON only: the document is at /openapi.json and in docs/openapi.json
        redoc_url=None,
        openapi_url=None,  # served below, behind the API keys like every route but /health and /metrics
    )
    app.state.reader = reader
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _add_error_handlers(app)

    bearer = HTTPBearer(auto_error=False, description="an API key of RECSYS_SERVE_API_KEYS")
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key of RECSYS_SERVE_API_KEYS")

    bearer_key_dependency, header_key_dependency = Depends(bearer), Depends(api_key_header)

    async def require_key(
        bearer_key: HTTPAuthorizationCredentials | None = bearer_key_dependency,
        header_key: str | None = header_key_dependency,
    ) -> None:
        if not keys:
            return
        presented = header_key or (bearer_key.credentials if bearer_key is not None else None)
        if not presented or not is_known_key(presented.encode(), keys):
            problem = "missing API key" if not presented else "unknown API key"
            raise ServeError(
                401, "unauthorized",
                f"{problem}; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' with a key of "
                f"RECSYS_SERVE_API_KEYS",
                headers={"WWW-Authenticate": "Bearer"},
            )

    protected = APIRouter(dependencies=[Depends(require_key)], responses=UNAUTHORIZED_DOCS)
    open_routes = APIRouter()

    limit_query = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"how many items, 1..{MAX_LIMIT}")
    exclude_query = Query(None, description=f"comma-separated item ids to leave out (at most {MAX_EXCLUDE}), e.g. "
                                            "the items on the page or in the cart")
    category_query = Query(None, min_length=1, description="a catalog category: only its items (those on its "
                                                           "published list `__popular__#<category>`)")
    user_path = Path(description="the storefront's user id, URL-encoded; 1 to 2,048 bytes UTF-8")
    item_path = Path(description="the catalog's item id, URL-encoded; 1 to 2,043 bytes UTF-8")

    def no_category_list(category: str) -> ServeError:
        return ServeError(
            404, "no_category_list",
            f"table {settings.table} has no list for category {category!r} (key '__popular__#{category}'): the "
            f"nightly run publishes one per catalog category; check the spelling (case matters)",
        )

    async def user_recommendations(
        user_id: str = user_path, limit: int = limit_query, exclude: str | None = exclude_query,
        category: str | None = category_query,
    ) -> JSONResponse:
        result = await reader.read(get_recommendations, user_id, limit, invalid="invalid_user_id",
                                   exclude=_excluded(exclude), category=category, popular=popular_lists)
        if result is None:
            raise no_category_list(str(category))
        if result["source"] != "user":
            metrics.fallbacks.labels("no_user_list").inc()
        elif result["filled"]:
            metrics.fallbacks.labels("filled").inc()
        return _answer(result, f"user_id={user_id!r}")

    async def popular(category: str | None = category_query, limit: int = limit_query) -> JSONResponse:
        result = await reader.read(get_popular, limit, invalid="invalid_category", category=category,
                                   popular=popular_lists)
        if result is None:
            raise no_category_list(str(category))
        return _answer(result, f"category={category!r}")

    async def similar_items(
        item_id: str = item_path, limit: int = limit_query, exclude: str | None = exclude_query
    ) -> JSONResponse:
        result = await reader.read(get_similar_items, item_id, limit, invalid="invalid_item_id",
                                   exclude=_excluded(exclude))
        if result is None:
            raise ServeError(
                404, "no_similar_items",
                f"table {settings.table} has no similar-items list for item {item_id!r} (key 'item#{item_id}'): "
                f"the nightly run publishes lists only for the items its model knows",
            )
        return _answer(result, f"item_id={item_id!r}")

    user_responses: dict[int | str, dict[str, Any]] = {
        400: _error_doc("`invalid_user_id`: empty, over 2,048 bytes UTF-8, or reserved (`__meta__`); "
                        "`invalid_limit`: not an integer 1..100; `invalid_exclude`: too many ids; "
                        "`invalid_category`: empty or too long"),
        404: _error_doc("`no_category_list`: no list is published for this category"),
        **UNAVAILABLE_DOCS,
    }
    similar_responses: dict[int | str, dict[str, Any]] = {
        400: _error_doc("`invalid_item_id`: empty or its key over 2,048 bytes UTF-8; "
                        "`invalid_limit`: not an integer 1..100; `invalid_exclude`: too many ids"),
        404: _error_doc("`no_similar_items`: no similar-items list is published for this item"),
        **UNAVAILABLE_DOCS,
    }
    # ``:path`` so that ids may hold any character, a slash (%2F) included, and an empty id
    # reaches the handler (and gets a 400) instead of matching no route.
    for prefix, deprecated in (("/v1", False), ("", True)):
        suffix = "" if prefix else "_unversioned"
        protected.add_api_route(
            f"{prefix}/users/{{user_id:path}}/recommendations", user_recommendations, methods=["GET"],
            response_model=Recommendations, operation_id=f"get_user_recommendations{suffix}",
            summary="A user's recommendations, or the popular list for an unknown user", deprecated=deprecated,
            responses=user_responses,
        )
        protected.add_api_route(
            f"{prefix}/items/{{item_id:path}}/similar", similar_items, methods=["GET"],
            response_model=SimilarItems, operation_id=f"get_similar_items{suffix}",
            summary="Items similar to an item (published under key item#<item_id>)", deprecated=deprecated,
            responses=similar_responses,
        )
    protected.add_api_route(
        "/v1/popular", popular, methods=["GET"], response_model=PopularItems, operation_id="get_popular",
        summary="The popular list, overall (`__popular__`) or of one category (`__popular__#<category>`)",
        responses={
            400: _error_doc("`invalid_category`: empty or too long; `invalid_limit`: not an integer 1..100"),
            404: _error_doc("`no_category_list`: no list is published for this category"),
            **UNAVAILABLE_DOCS,
        },
    )

    @open_routes.get(
        "/health",
        response_model=Health,
        operation_id="get_health",
        summary="200 when DynamoDB answers and the served run date is recent enough, else 503 with the reason",
        responses={
            503: _error_doc("`dynamodb_unavailable` / `dynamodb_error` / `dynamodb_timeout`: DynamoDB cannot be "
                            "read; `not_published`: nothing is served yet; `stale`: the served run date is older "
                            "than RECSYS_SERVE_MAX_AGE_DAYS"),
        },
    )
    async def health() -> JSONResponse:
        try:
            served = await reader.read(dynamodb.read_served)
        except ServeError as exc:  # a load balancer wants one code for "do not send traffic here"
            raise ServeError(503, exc.error, exc.detail) from None
        if served is None:
            raise ServeError(503, "not_published", f"table {settings.table} serves nothing yet (no __meta__ record): "
                                                   f"run the nightly DAG, e.g. 'recsys run --date latest'")
        age = (dt.datetime.now(dt.UTC).date() - dt.date.fromisoformat(served["run_date"])).days
        if age > max_age:
            raise ServeError(
                503, "stale",
                f"table {settings.table} serves run date {served['run_date']} (model {served['model_version']}), "
                f"{age} days old; RECSYS_SERVE_MAX_AGE_DAYS is {max_age}: the nightly DAG has not published since, "
                f"see its last runs",
            )
        return JSONResponse({"status": "ok", "table": settings.table, "served": served, "age_days": age,
                             "max_age_days": max_age})

    @open_routes.get(
        "/metrics",
        operation_id="get_metrics",
        summary="Prometheus metrics (text format): requests, latency, DynamoDB errors, fallbacks to popular",
        response_class=Response,
        response_model=None,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
    )
    async def metrics_text() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    protected.add_api_route("/openapi.json", openapi_document, methods=["GET"], include_in_schema=False,
                            response_model=None)
    app.include_router(protected)
    app.include_router(open_routes)
    app.openapi = functools.partial(_openapi_schema, app)  # type: ignore[method-assign]
    return app


def _add_error_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def serve_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        if exc.status >= 500:
            log.warning("%s %s", exc.error, exc.detail)
        response = _error_response(exc.status, exc.error, exc.detail)
        response.headers.update(exc.headers)
        return response

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        names = sorted({str(e.get("loc", ("?",))[-1]) for e in errors})
        detail = "; ".join(
            f"{e.get('loc', ('?',))[-1]}: {e.get('msg', 'invalid')} (got {e.get('input')!r})" for e in errors
        )
        error = f"invalid_{names[0]}" if len(names) == 1 else "invalid_request"
        if names == ["limit"]:
            detail = f"limit must be an integer from 1 to {MAX_LIMIT}; {detail}"
        return _error_response(400, error, detail)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = str(exc.detail)
        if exc.status_code == 404:
            detail = ("no such endpoint; see /openapi.json (GET /v1/users/{user_id}/recommendations, /v1/popular, "
                      "/v1/items/{item_id}/similar, /health, /metrics)")
        response = _error_response(exc.status_code, codes.get(exc.status_code, "http_error"), detail)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer, so the server log gets the traceback.
        return _error_response(500, "internal_error", f"unexpected {type(exc).__name__}; see the server log")

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


def _openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document without the 422 it adds to every endpoint with parameters:
    this API answers a bad parameter with 400 and an ErrorBody."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app_from_env() -> FastAPI:
    """The app for ``Settings.from_env()`` and ``RECSYS_SERVE_TIMEOUT`` (uvicorn's factory in each worker)."""
    # A worker process (--workers > 1) does not run the CLI's logging set-up; no-op when it did.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    return create_app(settings, timeout=settings.serve_timeout)


def openapi_json(app: FastAPI | None = None) -> str:
    """The OpenAPI document as committed in ``docs/openapi.json`` (indented, ending in a newline)."""
    if app is None:
        app = create_app(Settings.from_env({}))  # the document does not depend on settings
    return json.dumps(app.openapi(), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- command line


def run_server(host: str, port: int, workers: int, *, access_log: bool = False) -> None:
    """Serve until SIGINT/SIGTERM with uvicorn; each of ``workers`` processes builds its own app."""
    import uvicorn

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        server_header=False,
        timeout_graceful_shutdown=5,
    )


def _command(args: argparse.Namespace) -> int:
    if args.openapi_out:
        path = Path(args.openapi_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(openapi_json(), encoding="utf-8")
        print(f"OpenAPI document written to {path}")  # noqa: T201  (the command's output)
        return 0
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.timeout is not None:
        # Workers are separate processes that build their app from the environment.
        os.environ[TIMEOUT_VARIABLE] = str(args.timeout)
    settings = Settings.from_env()
    timeout = settings.serve_timeout
    load_api_keys(settings.serve_api_keys)  # a bad key file fails here, not in every worker
    if args.workers > 1 and not os.environ.get(MULTIPROC_VARIABLE):
        # Each worker writes its metrics to files here; /metrics in any worker sums them all.
        folder = settings.home / "serve-metrics" / str(args.port)
        shutil.rmtree(folder, ignore_errors=True)  # counts of a previous server would add up
        folder.mkdir(parents=True)
        os.environ[MULTIPROC_VARIABLE] = str(folder)
    log.info(
        "recsys serve on http://%s:%d, %d worker(s), table %s, DynamoDB %s, timeout %g s",
        args.host, args.port, args.workers, settings.table, settings.dynamodb_endpoint or "AWS", timeout,
    )
    run_server(args.host, args.port, args.workers, access_log=args.access_log)
    return 0


def add_serve_parser(subparsers: Any) -> None:
    """Register ``recsys serve [--host H] [--port P] [--workers N] [--timeout S] [--openapi-out PATH]``."""
    parser = subparsers.add_parser(
        "serve", help="the storefront's HTTP API (recommendations, popular, similar items, health, metrics) on uvicorn"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument(
        "--timeout", type=float, default=None,
        help=f"seconds a request may wait for DynamoDB (default ${TIMEOUT_VARIABLE} or {DEFAULT_SERVE_TIMEOUT})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    parser.add_argument("--openapi-out", metavar="PATH", help="write the OpenAPI document to PATH and exit")
    parser.set_defaults(func=_command)
