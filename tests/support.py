"""Helpers shared by several test modules (never imported by the package itself)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.retries import standard

from recsys.config import POPULAR_USER_ID, Settings
from recsys.core.model import PairEvents, SortedEvents, top_k_items
from recsys.io import dynamodb, lake
from recsys.stages.extract import extract
from recsys.stages.validate import validate


def recommend_popular(
    popularity: np.ndarray, seen: sp.csr_matrix, k: int, exclude_items: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The popularity baseline: the most popular items each user has not seen yet."""
    queries = np.ones((seen.shape[0], 1), dtype=np.float32)
    return top_k_items(popularity.reshape(-1, 1).astype(np.float32), queries, seen, k, exclude_items)


def build_pair_events(events: pa.Table, ends: Sequence[dt.datetime]) -> list[PairEvents]:
    """For each of ``ends``: the weighted events before it, indexed by (user, item) pair (what
    index_events builds for the window and the training days), from one sort of the events."""
    sorted_events = SortedEvents.of(events)
    return [sorted_events.before(end) for end in ends]


# --------------------------------------------------------------------------- staged input (extract, validate)

UTC = dt.UTC
D1 = dt.date(2026, 3, 1)


def day(n: int) -> dt.date:
    return D1 + dt.timedelta(days=n - 1)


def events(d: dt.date, n: int, prefix: str = "u", with_ids: bool = True) -> pa.Table:
    """``n`` valid events on day ``d``: distinct users, a few items, spread over the day."""
    start = dt.datetime.combine(d, dt.time(), tzinfo=UTC)
    columns: dict[str, Any] = {
        "user_id": pa.array([f"{prefix}{i}" for i in range(n)], pa.string()),
        "item_id": pa.array([f"i{i % 7}" for i in range(n)], pa.string()),
        "event_type": pa.array(["View"] * n, pa.string()),
        "event_ts": pa.array([start + dt.timedelta(seconds=60 * i % 86_400) for i in range(n)], pa.timestamp("us", tz="UTC")),
    }
    if with_ids:
        columns["event_id"] = pa.array([f"{d.isoformat()}-{prefix}-{i}" for i in range(n)], pa.string())
    return pa.table(columns)


def csv_bytes(table: pa.Table, sep: str = ",") -> bytes:
    lines = [sep.join(table.column_names)]
    for row in table.to_pylist():
        lines.append(sep.join(v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, dt.datetime) else str(v) for v in row.values()))
    return ("\n".join(lines) + "\n").encode("utf-8")


def settings_for(tmp_path: Path, **env: str) -> Settings:
    source = tmp_path / "source"
    source.mkdir(parents=True, exist_ok=True)
    values = {
        "RECSYS_HOME": str(tmp_path / "home"),
        "RECSYS_SOURCE": str(source),
        "RECSYS_WINDOW_DAYS": "10",
        "RECSYS_HOLDOUT_DAYS": "2",
        **env,
    }
    return Settings.from_env(values)


def history(settings: Settings, days: int = 9, rows: int = 100) -> None:
    """One Parquet file of ``rows`` events for each of the days 1..days."""
    for n in range(1, days + 1):
        pq.write_table(events(day(n), rows), Path(settings.source) / f"events-{day(n)}.parquet")


def extract_and_validate(settings: Settings, d: dt.date) -> dict[str, Any]:
    extracted = extract(settings, d)
    return validate(settings, d, extracted["days"])


def quarantine(settings: Settings, d: dt.date) -> list[dict[str, Any]]:
    path = lake.partition_file(settings.lake, "quarantine/interactions", d)
    return pq.read_table(path).to_pylist() if path.exists() else []


def reasons(settings: Settings, d: dt.date) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in quarantine(settings, d):
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    return counts


# --------------------------------------------------------------------------- weighted events (index_events' input)

END = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)


def weighted_events() -> pa.Table:
    """What sql/weighted_events.sql returns (in no particular order) for: u1 viewed a twice (7
    and 14 days before END) and bought it once (just before END), u1 viewed b 21 days ago, u2
    bought b 7 days ago, and u3 viewed c at END (not before it: outside the window)."""
    def us(days_before: float) -> int:
        return int((END - dt.timedelta(days=days_before)).timestamp() * 1_000_000)

    return pa.table({
        "user_id": ["u2", "u1", "u1", "u1", "u1", "u3"],
        "item_id": ["b", "a", "b", "a", "a", "c"],
        "event_type": ["buy", "view", "view", "buy", "view", "view"],
        "event_us": [us(7), us(7), us(21), us(0.5), us(14), us(0)],
    })


# --------------------------------------------------------------------------- the small store of the whole-DAG tests

STORE_END = dt.date(2026, 5, 31)
SMALL = {"users": 3_000, "items": 300, "events": 60_000, "days": 35, "seed": 11, "end_date": STORE_END, "categories": 10}
# One model per run, a good one for this store, and no lift required of it: for the tests of
# what is served when, where the tuning is not under test (the default grid costs several seconds a run).
ONE_MODEL = {"RECSYS_TUNING_GRID": "", "RECSYS_FACTORS": "16", "RECSYS_ALPHA": "10", "RECSYS_GATE_MIN_LIFT": "0"}
# The whole-DAG tests' grid: one candidate of three families, so the screening, the promotion
# and the gate run as at night at a tenth of the default grid's cost. Only the command-line
# test runs the default grid (the one a new user's first `make run` tunes).
SMALL_GRID = {"RECSYS_TUNING_GRID": "model=als;weighting=bm25;alpha=2;factors=16"
                                    " | model=rp3beta;rp3_alpha=0.8;rp3_beta=0.3;neighbours=200"
                                    " | model=itemknn;similarity=cosine;neighbours=100",
              "RECSYS_TUNE_BLEND_WEIGHTS": "0.5"}


def scan(client: Any, table: str, with_meta: bool = False) -> dict[str, dict]:
    """Every item of the table by user_id (the __meta__ record only when asked)."""
    items: dict[str, dict] = {}
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        page = client.scan(**kwargs)
        for item in page["Items"]:
            if with_meta or item["user_id"]["S"] != "__meta__":
                items[item["user_id"]["S"]] = item
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def lists_of(items: dict[str, dict]) -> dict[str, list[str]]:
    return {user: [x["M"]["item_id"]["S"] for x in item["items"]["L"]] for user, item in items.items()}


# --------------------------------------------------------------------------- a DynamoDB that throttles


def every_other_user(user: str) -> bool:
    """About half of all user ids, the same half on every run (the default users handed back)."""
    return zlib.crc32(user.encode()) % 2 == 1


class _Body:
    """A response body as botocore reads one: ``AWSResponse.content`` joins ``raw.stream()``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def _answer(url: str, status: int, body: dict[str, Any]) -> AWSResponse:
    headers = HTTPHeaders()
    headers["Content-Type"] = "application/x-amz-json-1.0"
    return AWSResponse(url, status, headers, _Body(json.dumps(body).encode()))


class ThrottlingDynamoDB:
    """A real boto3 client on DynamoDB Local whose BatchWriteItem is throttled and leaves items
    unprocessed as DynamoDB does, underneath botocore's retry layer (DynamoDB Local does neither).

    ``client`` is built by recsys's ``make_client`` (standard retry mode, 4 attempts a call) with
    three handlers on its own events:

    - ``before-call`` counts logical calls (``calls``, what recsys's loop makes);
    - ``before-send`` runs once per HTTP attempt (``attempts``). Attempts ``throttle_from`` to
      ``throttle_from + throttles - 1`` of this client (counted over all threads) are answered with
      HTTP 400 and error ``code`` without being sent, and botocore retries them as real throttles.
      Otherwise the PutRequests of users chosen by ``hands_back`` are taken out of the request body
      for the first ``unprocessed_rounds`` times each reaches the table (DynamoDB Local does not
      check signatures, so the edited request is accepted; a request left empty is not sent);
    - ``after-call`` puts them back into the parsed response as ``UnprocessedItems``.

    botocore's own waits between attempts are recorded in ``botocore_delays`` instead of slept.
    ``written`` counts, per user, the puts that reached the table in a call that succeeded;
    ``failed_calls`` the calls that ended in an error (botocore gave up).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        throttles: int = 0,
        throttle_from: int = 1,
        code: str = "ThrottlingException",
        unprocessed_rounds: int = 0,
        hands_back: Callable[[str], bool] = every_other_user,
    ) -> None:
        self.throttles, self.throttle_from, self.code = throttles, throttle_from, code
        self.unprocessed_rounds, self.hands_back = unprocessed_rounds, hands_back
        self.calls = self.attempts = self.throttled = self.failed_calls = 0
        self.botocore_delays: list[float] = []
        self.written: Counter[str] = Counter()
        self.handed_back: Counter[str] = Counter()
        self._reached: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client = self._make_client(endpoint)
        events = self.client.meta.events
        events.register("before-call.dynamodb.BatchWriteItem", self._count_call)
        events.register("before-send.dynamodb.BatchWriteItem", self._before_send)
        events.register("after-call.dynamodb.BatchWriteItem", self._after_call)

    def _make_client(self, endpoint: str) -> Any:
        double = self
        built: list[object] = []

        class NoSleepRetryHandler(standard.RetryHandler):
            """botocore's standard retry decision, with its wait recorded; the endpoint sleeps 0."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                built.append(self)

            def needs_retry(self, **kwargs: Any) -> Any:
                delay = super().needs_retry(**kwargs)
                if delay is None or delay is False:
                    return delay
                with double._lock:
                    double.botocore_delays.append(delay)
                return 0.0

        with mock.patch.object(standard, "RetryHandler", NoSleepRetryHandler):
            client = dynamodb.make_client(Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": endpoint}))
        if len(built) != 1:
            raise RuntimeError("botocore no longer builds botocore.retries.standard.RetryHandler: update tests/support.py")
        return client

    def _count_call(self, **_: Any) -> None:
        with self._lock:
            self.calls += 1

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        let_through: list[str] = []
        back: dict[str, list[dict[str, Any]]] = {}
        request.context["throttling_dynamodb"] = (let_through, back)  # one call's context, across its attempts
        with self._lock:
            self.attempts += 1
            if self.throttle_from <= self.attempts < self.throttle_from + self.throttles:
                self.throttled += 1
                error = {"__type": f"com.amazonaws.dynamodb.v20120810#{self.code}", "message": "Rate exceeded"}
                return _answer(request.url, 400, error)
            body = json.loads(request.body)
            for table, requests in body["RequestItems"].items():
                kept = []
                for entry in requests:
                    user = entry.get("PutRequest", {}).get("Item", {}).get(dynamodb.KEY, {}).get("S")
                    if user is not None:
                        self._reached[user] += 1
                        if self._reached[user] <= self.unprocessed_rounds and self.hands_back(user):
                            back.setdefault(table, []).append(entry)
                            continue
                        let_through.append(user)
                    kept.append(entry)
                body["RequestItems"][table] = kept
        if not back:
            return None
        body["RequestItems"] = {table: kept for table, kept in body["RequestItems"].items() if kept}
        if not body["RequestItems"]:  # DynamoDB rejects an empty batch; it would have taken nothing
            return _answer(request.url, 200, {"UnprocessedItems": {}})
        request.body = json.dumps(body).encode()
        request.headers["Content-Length"] = str(len(request.body))
        return None

    def _after_call(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        let_through, back = context.pop("throttling_dynamodb", ([], {}))
        with self._lock:
            if http_response.status_code >= 300:
                self.failed_calls += 1
                return
            self.written.update(let_through)
            for table, entries in back.items():
                self.handed_back.update(e["PutRequest"]["Item"][dynamodb.KEY]["S"] for e in entries)
                parsed.setdefault("UnprocessedItems", {}).setdefault(table, []).extend(entries)


def make_recs(n_users: int, seed: int = 0, n_items: int = 500, shuffle: bool = True) -> pa.Table:
    """Lists of 1-20 items per user (plus a 20-item popular list), rows in random order."""
    rng = np.random.default_rng(seed)
    users, ranks, items, scores = [], [], [], []
    for u in range(n_users + 1):
        user = POPULAR_USER_ID if u == n_users else f"user-{u:05d}-ü"
        k = 20 if u == n_users else int(rng.integers(1, 21))
        chosen = rng.choice(n_items, size=k, replace=False)
        values = np.sort(rng.random(k).astype(np.float32) * 10.0 ** rng.integers(-8, 3))[::-1]
        users += [user] * k
        ranks += list(range(1, k + 1))
        items += [f"item-{i:04d}" for i in chosen]
        scores += values.tolist()
    table = pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "rank": pa.array(ranks, pa.int16()),
            "item_id": pa.array(items, pa.string()),
            "score": pa.array(scores, pa.float32()),
        }
    )
    if shuffle:
        table = table.take(pa.array(rng.permutation(table.num_rows)))
    return table


class WebhookReceiver:
    """A real HTTP endpoint on 127.0.0.1 that records the JSON bodies POSTed to it (an alert
    webhook's stand-in); use as a context manager."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        received: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()



# --------------------------------------------------------------------------- wait_for_data alone

# A DAG of the nightly's first task alone, for tests of the sensor through dag.test() and a real triggerer.
SENSOR_DAG = """
import datetime as dt

from airflow.sdk import DAG

from recsys.stages.wait_for_data import WaitForData

with DAG("wait_for_data_test", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)):
    WaitForData(task_id="wait_for_data")
"""


class SmtpReceiver:
    """A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it receives, and the
    Airflow connection ``conn_id`` that points at it (``AIRFLOW_CONN_<ID>``, set by the caller);
    use as a context manager."""

    def __init__(self, conn_id: str = "recsys_test_smtp") -> None:
        from aiosmtpd.controller import Controller

        from recsys.dev.dynamodb_local import free_port

        received: list[Any] = []

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                import email
                import email.policy

                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                received.append({"to": list(envelope.rcpt_tos), "message": message})
                return "250 Message accepted for delivery"

        self.received = received
        self.conn_id = conn_id
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())

    @property
    def env(self) -> dict[str, str]:
        """The environment variable that defines the connection (plain SMTP, no TLS, no login)."""
        connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": self.controller.port,
                      "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "recsys@example.com",
                                "retry_limit": 0, "timeout": 10}}
        return {f"AIRFLOW_CONN_{self.conn_id.upper()}": json.dumps(connection)}

    def __enter__(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def asset_events(uri: str) -> list[dict[str, Any]]:
    """The ``extra`` of every event of the Asset ``uri`` in the Airflow metadata DB, oldest first,
    with the DAG and task that emitted it (``source``)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri).order_by(AssetEvent.timestamp, AssetEvent.id)
        ).all()
        return [{**(event.extra or {}), "source": f"{event.source_dag_id}.{event.source_task_id}"} for event in events]
