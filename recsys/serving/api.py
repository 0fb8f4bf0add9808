"""The storefront's HTTP read API: ``recsys serve`` (FastAPI on uvicorn).

Three GET endpoints over the one DynamoDB read path of :mod:`recsys.io.dynamodb`:

* ``/users/{user_id}/recommendations?limit=N`` — a user's list, or ``__popular__`` for an unknown user;
* ``/items/{item_id}/similar?limit=N`` — the list published under key ``item#<item_id>``;
* ``/health`` — whether DynamoDB answers, and what the table serves (its ``__meta__`` record).

Every answer is JSON; every error is ``{"error": <code>, "detail": <what to do>}``.

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
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from recsys.config import DEFAULT_SERVE_TIMEOUT, Settings
from recsys.io import dynamodb
from recsys.serving.reader import get_recommendations, get_similar_items

if TYPE_CHECKING:  # FastAPI itself is imported where an app is built: `recsys --help` stays quick
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

TIMEOUT_VARIABLE = "RECSYS_SERVE_TIMEOUT"  # Settings.serve_timeout
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
API_VERSION = "1.0"  # of the HTTP contract below; bump it with every change of docs/openapi.json
APP_FACTORY = "recsys.serving.api:create_app_from_env"


# --------------------------------------------------------------------------- the contract (OpenAPI only)


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="model score; higher is better, only comparable within one list")


class Recommendations(BaseModel):
    user_id: str
    items: list[ScoredItem] = Field(description="best first, at most `limit`")
    model_version: str = Field(description="which nightly model made the list")
    generated_at: str = Field(description="ISO-8601 UTC time the list was made")
    source: Literal["user", "popular"] = Field(
        description="`user`: the user's own list; `popular`: the cold-start list, for a user the model does not know"
    )


class SimilarItems(BaseModel):
    item_id: str
    items: list[ScoredItem] = Field(description="best first, at most `limit`")
    model_version: str
    generated_at: str


class Served(BaseModel):
    run_date: str = Field(description="the nightly run date whose lists are served")
    model_version: str
    published_at: str


class Health(BaseModel):
    status: Literal["ok"]
    table: str
    served: Served | None = Field(description="the table's `__meta__` record; null before the first publication")


class ErrorBody(BaseModel):
    error: str = Field(description="a stable code, e.g. `invalid_user_id`, `not_published`, `dynamodb_timeout`")
    detail: str = Field(description="what went wrong and what to do about it")


def _error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


UNAVAILABLE_DOCS: dict[int | str, dict[str, Any]] = {
    503: _error_doc("`not_published`: the table holds no lists yet; `dynamodb_unavailable` / `dynamodb_error`: "
                    "DynamoDB refused or failed the read"),
    504: _error_doc(f"`dynamodb_timeout`: DynamoDB did not answer within {TIMEOUT_VARIABLE} seconds"),
}


# --------------------------------------------------------------------------- errors


class ServeError(Exception):
    """An answer other than 200: HTTP status, a stable error code and a detail for people."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


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


# --------------------------------------------------------------------------- reading with a deadline


class Reader:
    """The process's one DynamoDB client and table, read through a bounded pool under a deadline."""

    def __init__(self, client: Any, table: str, timeout: float) -> None:
        self.client, self.table, self.timeout = client, table, timeout
        # More threads than pooled connections would only open and drop extra connections.
        self.threads = int(client.meta.config.max_pool_connections)
        self.executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="dynamodb-read")

    async def read(self, function: Callable[..., Any], *args: Any, invalid: str = "invalid_request") -> Any:
        """``function(client, table, *args)`` in the pool; its result, or a ServeError.

        400 ``invalid`` for its ValueError (a bad id or limit), 503 ``not_published`` for its
        LookupError (no table, or no list to fall back on), 503/504 when DynamoDB fails or is late.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        call = functools.partial(function, self.client, self.table, *args)
        future = asyncio.get_running_loop().run_in_executor(self.executor, call)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except (TimeoutError, BotoCoreError, ClientError) as exc:
            raise _dynamodb_failure(exc, self.table, self.timeout) from exc
        except ValueError as exc:
            raise ServeError(400, invalid, str(exc)) from None
        except (KeyError, IndexError):
            raise  # an item that breaks the item contract: a 500, not "nothing published"
        except LookupError as exc:
            raise ServeError(503, "not_published", str(exc)) from None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the app


def create_app(settings: Settings, *, timeout: float = DEFAULT_SERVE_TIMEOUT, client: Any | None = None) -> FastAPI:
    """The API for ``settings.table``; DynamoDB reads give up after ``timeout`` seconds.

    ``client`` defaults to ``make_client(settings, timeout=timeout)``, built here, once.
    """
    from fastapi import FastAPI, Path, Query
    from fastapi.responses import JSONResponse


    if client is None:
        client = dynamodb.make_client(settings, timeout=timeout)
    reader = Reader(client, settings.table, timeout)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info(
            "serving DynamoDB table %s at %s, %.3g s timeout, %d read threads",
            settings.table, settings.dynamodb_endpoint or "AWS", timeout, reader.threads,
        )
        yield
        reader.close()

    app = FastAPI(
        title="recsys",
        version=API_VERSION,
        description=(
            "The storefront's read API for the nightly recommendations: a user's top list (or the popular list "
            "for a user the model does not know) and an item's similar items, as published by the "
            "`recsys_nightly` DAG to DynamoDB. Errors are JSON `{\"error\", \"detail\"}`."
        ),
        lifespan=lifespan,
        docs_url=None,  # JSON only: the document is at /openapi.json and in docs/openapi.json
        redoc_url=None,
    )
    app.state.reader = reader
    _add_error_handlers(app)

    limit_query = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"how many items, 1..{MAX_LIMIT}")
    user_path = Path(description="the storefront's user id, URL-encoded; 1 to 2,048 bytes UTF-8")
    item_path = Path(description="the catalog's item id, URL-encoded; 1 to 2,043 bytes UTF-8")

    # ``:path`` so that ids may hold any character, a slash (%2F) included, and an empty id
    # reaches the handler (and gets a 400) instead of matching no route.
    @app.get(
        "/users/{user_id:path}/recommendations",
        response_model=Recommendations,
        operation_id="get_user_recommendations",
        summary="A user's recommendations, or the popular list for an unknown user",
        responses={
            400: _error_doc("`invalid_user_id`: empty, over 2,048 bytes UTF-8, or reserved (`__meta__`); "
                            "`invalid_limit`: not an integer 1..100"),
            **UNAVAILABLE_DOCS,
        },
    )
    async def user_recommendations(user_id: str = user_path, limit: int = limit_query) -> JSONResponse:
        return JSONResponse(await reader.read(get_recommendations, user_id, limit, invalid="invalid_user_id"))

    @app.get(
        "/items/{item_id:path}/similar",
        response_model=SimilarItems,
        operation_id="get_similar_items",
        summary="Items similar to an item (published under key item#<item_id>)",
        responses={
            400: _error_doc("`invalid_item_id`: empty or its key over 2,048 bytes UTF-8; "
                            "`invalid_limit`: not an integer 1..100"),
            404: _error_doc("`no_similar_items`: no similar-items list is published for this item"),
            **UNAVAILABLE_DOCS,
        },
    )
    async def similar_items(item_id: str = item_path, limit: int = limit_query) -> JSONResponse:
        result = await reader.read(get_similar_items, item_id, limit, invalid="invalid_item_id")
        if result is None:
            raise ServeError(
                404, "no_similar_items",
                f"table {settings.table} has no similar-items list for item {item_id!r} (key 'item#{item_id}'): "
                f"the nightly run publishes lists only for the items its model knows",
            )
        return JSONResponse(result)

    @app.get(
        "/health",
        response_model=Health,
        operation_id="get_health",
        summary="Whether DynamoDB answers, and which publication the table serves",
        responses={
            503: _error_doc("`dynamodb_unavailable` / `dynamodb_error`: DynamoDB refused or failed the read"),
            504: UNAVAILABLE_DOCS[504],
        },
    )
    async def health() -> JSONResponse:
        served = await reader.read(dynamodb.read_served)
        return JSONResponse({"status": "ok", "table": settings.table, "served": served})

    app.openapi = functools.partial(_openapi_schema, app)  # type: ignore[method-assign]
    return app


def _add_error_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def serve_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        if exc.status >= 500:
            log.warning("%s %s", exc.error, exc.detail)
        return _error_response(exc.status, exc.error, exc.detail)

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
            detail = ("no such endpoint; see /openapi.json (GET /users/{user_id}/recommendations, "
                      "/items/{item_id}/similar, /health)")
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
    log.info(
        "recsys serve on http://%s:%d, %d worker(s), table %s, DynamoDB %s, timeout %g s",
        args.host, args.port, args.workers, settings.table, settings.dynamodb_endpoint or "AWS", timeout,
    )
    run_server(args.host, args.port, args.workers, access_log=args.access_log)
    return 0


def add_serve_parser(subparsers: Any) -> None:
    """Register ``recsys serve [--host H] [--port P] [--workers N] [--timeout S] [--openapi-out PATH]``."""
    parser = subparsers.add_parser(
        "serve", help="the storefront's HTTP API (recommendations, similar items, health) on uvicorn"
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
