"""The one DynamoDB module: client, table, the one writer, verification and the read path.

Everything here speaks the low-level wire format (``{"S": ...}``, ``{"N": "0.25"}``)
through a boto3 *client* passed in by the caller: building AttributeValue dicts directly
is several times faster than the resource layer's Decimal serializer, and taking the
client as an argument keeps the functions testable against DynamoDB Local.

Item contract (table key ``user_id`` S)::

    user_id        S   the storefront's user id; ``__popular__`` holds the cold-start list
    items          L   of M {item_id S, score N}, best first
    model_version  S   which model made the list
    generated_at   S   ISO-8601 UTC
    expires_at     N   epoch seconds; TTL removes users that stop being refreshed

The reserved item ``__meta__`` records what is being served (run_date, model_version,
published_at); it is written after every user of a run, so it names a complete publication,
and its conditional write refuses to move the served date backwards.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.config import POPULAR_USER_ID, Settings
from recsys.io import aws

log = logging.getLogger(__name__)

KEY = "user_id"
# The table's keys as CreateTable takes them (and deploy/cloudformation/recsys.yaml declares them).
KEY_SCHEMA = [{"AttributeName": KEY, "KeyType": "HASH"}]
ATTRIBUTE_DEFINITIONS = [{"AttributeName": KEY, "AttributeType": "S"}]
TTL_ATTRIBUTE = "expires_at"
BATCH_WRITE_SIZE = 25  # DynamoDB's BatchWriteItem limit
BATCH_GET_SIZE = 100  # DynamoDB's BatchGetItem limit
MAX_KEY_BYTES = 2048  # DynamoDB's partition key limit
RETRYABLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded", "InternalServerError"}
)
USERS_PER_CHUNK = 10_000  # users turned into Python objects at a time while building items

META_KEY = "__meta__"  # reserved: what the table serves; never a user
# The infrastructure code that makes the table (and the lake bucket and IAM policies) in production.
CLOUDFORMATION_TEMPLATE = "deploy/cloudformation/recsys.yaml"

Item = dict[str, Any]


class PublicationError(RuntimeError):
    """Recommendations could not be written, or what was read back does not match them."""


class OlderRunError(RuntimeError):
    """The table already serves lists of a newer run date than the one being published."""


class TableSchemaError(RuntimeError):
    """An existing table does not have the key schema recsys writes."""


class TableMissingError(LookupError):
    """The serving table does not exist and recsys is not to create it (``RECSYS_CREATE_TABLE=false``)."""


# --------------------------------------------------------------------------- client + table


def make_client(settings: Settings, *, timeout: float | None = None, through_airflow: bool = True) -> Any:
    """A boto3 DynamoDB client, built by :func:`recsys.io.aws.make_client`.

    Through the Airflow connection ``settings.aws_conn_id`` (or ``aws_default`` when it is
    defined) unless ``through_airflow`` is False (the storefront: ``recsys serve``, ``recsys
    lookup``); otherwise ``settings.dynamodb_endpoint`` (None = real AWS) and the standard
    credential chain, with dummy credentials for a local endpoint when the environment has none.
    ``timeout`` sets connect and read timeouts in seconds (e.g. for the storefront path).
    Client-side parameter validation is off (see below); the server still validates. Raises
    AwsConnectionError when ``settings.aws_conn_id`` names a connection that is not defined.
    """
    from botocore.config import Config

    config_args: dict[str, Any] = {
        # botocore's client-side walk over every nested AttributeValue costs about two thirds
        # of the CPU of a BatchWriteItem call; requests are built here and DynamoDB validates
        # them anyway (a bad one fails with ValidationException).
        "parameter_validation": False,
        "max_pool_connections": max(10, settings.publish_threads + 2),
        "retries": {"mode": "standard", "max_attempts": 3},
    }
    if timeout is not None:
        config_args["connect_timeout"] = timeout
        config_args["read_timeout"] = timeout
    access = aws.resolve(
        "dynamodb", conn_id=settings.aws_conn_id, region=settings.aws_region,
        endpoint=settings.dynamodb_endpoint, through_airflow=through_airflow,
    )
    return aws.make_client("dynamodb", access, Config(**config_args))


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def endpoint_of(client: Any) -> str:
    """The URL a client talks to (for error messages)."""
    return str(getattr(getattr(client, "meta", None), "endpoint_url", None) or "(unknown endpoint)")


def _is_connection_error(exc: BaseException) -> bool:
    """True for botocore's "no answer" errors: refused or closed connections and timeouts."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def ensure_table(client: Any, table: str, *, create: bool = True) -> None:
    """Create ``table`` (key user_id S, on-demand) when missing and enable TTL on expires_at.

    Idempotent and safe to run from several tasks at once. Never deletes or changes an
    existing table's keys: raises TableSchemaError when its key schema is not user_id (S, HASH).
    With ``create`` False (``RECSYS_CREATE_TABLE=false``: infrastructure code makes the table)
    a missing table raises TableMissingError naming the table, where it was looked for and
    the template that creates it.
    """
    try:
        description = client.describe_table(TableName=table)["Table"]
    except client.exceptions.ResourceNotFoundException:
        if not create:
            raise TableMissingError(
                f"DynamoDB table {table} does not exist (region {client.meta.region_name}, endpoint "
                f"{endpoint_of(client)}) and RECSYS_CREATE_TABLE is false, so publish does not create it. "
                f"Create it with the CloudFormation template {CLOUDFORMATION_TEMPLATE} (aws cloudformation deploy "
                f"--template-file {CLOUDFORMATION_TEMPLATE} --stack-name recsys --parameter-overrides "
                f"TableName={table} BucketName=... --capabilities CAPABILITY_IAM), point RECSYS_TABLE / "
                f"RECSYS_AWS_CONN_ID at the table it made, or set RECSYS_CREATE_TABLE=true"
            ) from None
        try:
            client.create_table(
                TableName=table,
                AttributeDefinitions=ATTRIBUTE_DEFINITIONS,
                KeySchema=KEY_SCHEMA,
                BillingMode="PAY_PER_REQUEST",
            )
            log.info("created DynamoDB table %s (key %s S, on-demand)", table, KEY)
        except client.exceptions.ResourceInUseException:
            pass  # created by a concurrent task a moment ago
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
        description = client.describe_table(TableName=table)["Table"]
    _check_key_schema(table, description)
    if description.get("TableStatus") != "ACTIVE":
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    _ensure_ttl(client, table)


def _check_key_schema(table: str, description: Mapping[str, Any]) -> None:
    types = {a["AttributeName"]: a["AttributeType"] for a in description.get("AttributeDefinitions", [])}
    found = [(k["AttributeName"], k["KeyType"], types.get(k["AttributeName"], "?")) for k in description["KeySchema"]]
    if found != [(KEY, "HASH", "S")]:
        shown = ", ".join(f"{name} ({key_type}, {attr_type})" for name, key_type, attr_type in found)
        raise TableSchemaError(
            f"DynamoDB table {table} has key schema [{shown}], but recsys needs exactly [{KEY} (HASH, S)]; "
            f"point RECSYS_TABLE at another table name (recsys never deletes or changes an existing table)"
        )


def _ensure_ttl(client: Any, table: str) -> None:
    from botocore.exceptions import ClientError

    ttl = client.describe_time_to_live(TableName=table).get("TimeToLiveDescription", {})
    state, attribute = ttl.get("TimeToLiveStatus", "DISABLED"), ttl.get("AttributeName")
    if state in ("ENABLED", "ENABLING"):
        if attribute != TTL_ATTRIBUTE:
            log.warning(
                "table %s has TTL on %r, not %r: users that stop being refreshed will not expire",
                table, attribute, TTL_ATTRIBUTE,
            )
        return
    if state == "DISABLING":
        log.warning("TTL of table %s is being disabled; enable it on %r once that is done", table, TTL_ATTRIBUTE)
        return
    try:
        client.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
        log.info("enabled TTL on %s.%s", table, TTL_ATTRIBUTE)
    except ClientError as exc:
        # A concurrent task enabled it first.
        if "already enabled" not in str(exc).lower():
            raise


# --------------------------------------------------------------------------- items


def _format_scores(scores: pa.ChunkedArray | pa.Array) -> list[str]:
    """Scores as DynamoDB numbers: seven significant digits keep a score within 5e-7 relative
    (float32 carries about seven); DynamoDB rejects magnitudes below 1e-130, written as 0."""
    values = scores.to_numpy().astype(np.float64)
    text = list(map("{:.7g}".format, values.tolist()))
    for index in np.flatnonzero(np.abs(values) < 1e-130).tolist():
        text[index] = "0"
    return text


def _grouped(recs: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """``recs`` sorted by (user_id, rank) and the row offsets where each user starts (plus the end).

    Raises ValueError naming the column and count for null/empty/oversized ids, non-finite
    scores and ranks repeated within a user.
    """
    missing = {"user_id", "rank", "item_id", "score"} - set(recs.column_names)
    if missing:
        raise ValueError(f"recommendations lack column(s) {sorted(missing)}; expected user_id, rank, item_id, score")
    recs = recs.select(["user_id", "rank", "item_id", "score"])
    for name in ("user_id", "rank", "item_id", "score"):
        nulls = recs[name].null_count
        if nulls:
            raise ValueError(f"recommendations: {nulls} of {recs.num_rows} rows have a null {name}")
    lengths = pc.binary_length(recs["user_id"])
    empty = pc.sum(pc.equal(lengths, 0)).as_py() or 0
    too_long = pc.sum(pc.greater(lengths, MAX_KEY_BYTES)).as_py() or 0
    if empty or too_long:
        raise ValueError(
            f"recommendations: {empty} rows have an empty user_id and {too_long} a user_id over "
            f"{MAX_KEY_BYTES} bytes (DynamoDB's key limit)"
        )
    bad_scores = recs.num_rows - int(np.isfinite(recs["score"].to_numpy()).sum())
    if bad_scores:
        raise ValueError(f"recommendations: {bad_scores} of {recs.num_rows} rows have a NaN or infinite score")

    if recs.num_rows == 0:
        return recs, np.zeros(1, dtype=np.int64)
    if not _is_sorted(recs):
        recs = recs.sort_by([("user_id", "ascending"), ("rank", "ascending")])
    users = recs["user_id"].combine_chunks()
    changed = pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
    bounds = np.concatenate([[0], np.flatnonzero(changed) + 1, [recs.num_rows]]).astype(np.int64)
    ranks = recs["rank"].to_numpy().astype(np.int64)
    repeated = int(np.sum((np.diff(ranks) == 0) & ~changed))
    if repeated:
        raise ValueError(f"recommendations: {repeated} rows repeat a rank already given to the same user")
    return recs, bounds


def _is_sorted(recs: pa.Table) -> bool:
    """True when rows are ordered by user_id, then rank (the usual case: skip the sort)."""
    users = recs["user_id"].combine_chunks()
    after, before = users[1:], users[:-1]
    if pc.any(pc.less(after, before)).as_py():
        return False
    ranks = recs["rank"].to_numpy().astype(np.int64)
    same_user = pc.equal(after, before).to_numpy(zero_copy_only=False)
    return not bool(np.any(same_user & (np.diff(ranks) < 0)))


def count_users(recs: pa.Table) -> int:
    """How many items (one per distinct user) :func:`iter_items` yields for ``recs``."""
    return int(pc.count_distinct(recs["user_id"]).as_py()) if recs.num_rows else 0


def iter_items(
    recs: pa.Table, *, model_version: str, generated_at: dt.datetime, expires_at: int
) -> Iterator[Item]:
    """Yield one DynamoDB item (AttributeValue dicts) per user of ``recs``, items best first.

    ``recs`` has columns user_id, rank (1 = best), item_id, score in any row order.
    Raises ValueError for nulls, empty or oversized user ids, non-finite scores or repeated ranks.
    """
    recs, bounds = _grouped(recs)
    common = {
        "model_version": {"S": model_version},
        "generated_at": {"S": _iso_utc(generated_at)},
        "expires_at": {"N": str(int(expires_at))},
    }
    for first in range(0, len(bounds) - 1, USERS_PER_CHUNK):
        chunk_bounds = bounds[first : first + USERS_PER_CHUNK + 1]
        offset, end = int(chunk_bounds[0]), int(chunk_bounds[-1])
        rows = recs.slice(offset, end - offset)
        users = rows["user_id"].to_pylist()
        # Building these small dicts is most of the Python cost of a publish: one flat pass
        # over the chunk's rows, then a slice per user, is cheaper (bench/publish.py) than a
        # comprehension per user.
        entries = [
            {"M": {"item_id": {"S": item_id}, "score": {"N": score}}}
            for item_id, score in zip(rows["item_id"].to_pylist(), _format_scores(rows["score"]))
        ]
        local = (chunk_bounds - offset).tolist()
        for start, stop in zip(local[:-1], local[1:]):
            yield {KEY: {"S": users[start]}, "items": {"L": entries[start:stop]}, **common}


def shard_ranges(user_ids: pa.Array | pa.ChunkedArray, shards: int) -> list[dict[str, Any]]:
    """Split the distinct ``user_ids`` into contiguous ranges of the sorted ids, one per shard.

    Returns at most ``shards`` dicts {"shard", "shards", "first", "end", "users"}: a shard
    holds the ids with ``first <= id < end`` (byte order; None = unbounded) and ``users`` of
    them. The split depends only on the ids and ``shards``, so a retried shard writes exactly
    the users it wrote before. Fewer ids than shards give fewer shards (at least one).
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    unique = pc.unique(user_ids.combine_chunks() if isinstance(user_ids, pa.ChunkedArray) else user_ids)
    ids = unique.take(pc.array_sort_indices(unique))
    count = max(1, min(shards, len(ids)))
    edges = np.linspace(0, len(ids), count + 1).astype(np.int64).tolist()
    return [
        {
            "shard": i,
            "shards": count,
            "first": ids[edges[i]].as_py() if i > 0 else None,
            "end": ids[edges[i + 1]].as_py() if i < count - 1 else None,
            "users": edges[i + 1] - edges[i],
        }
        for i in range(count)
    ]


def key_range(first: str | None, end: str | None) -> pc.Expression | None:
    """The filter ``first <= user_id < end`` of one shard (None when unbounded on both sides)."""
    bounds = []
    if first is not None:
        bounds.append(pc.field(KEY) >= first)
    if end is not None:
        bounds.append(pc.field(KEY) < end)
    if not bounds:
        return None
    return bounds[0] if len(bounds) == 1 else bounds[0] & bounds[1]


def _iso_utc(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"generated_at must be timezone-aware (UTC), got {moment!r}")
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- the writer


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to sleep before retry ``attempt`` (1, 2, ...): exponential with full jitter."""
    return random.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


def write_batch(
    client: Any,
    table: str,
    items: Sequence[Item],
    *,
    backoff_base: float = 0.05,
    backoff_cap: float = 5.0,
    max_attempts: int = 10,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Put up to 25 items with BatchWriteItem, retrying unprocessed items and throttling.

    Returns the number of retries. Raises PublicationError after ``max_attempts`` attempts
    that still leave items unwritten, or at once on a non-retryable error.
    """
    requests = [{"PutRequest": {"Item": item}} for item in items]
    retries = 0
    for attempt in range(1, max_attempts + 1):
        try:
            response = client.batch_write_item(RequestItems={table: requests})
            requests = response.get("UnprocessedItems", {}).get(table, [])
            reason = "unprocessed items"
        except Exception as exc:
            code = _error_code(exc)
            if code not in RETRYABLE_CODES:
                if code:
                    raise PublicationError(f"writing to DynamoDB table {table} failed: {code}: {exc}") from exc
                if _is_connection_error(exc):
                    raise PublicationError(
                        f"DynamoDB endpoint {endpoint_of(client)} cannot be reached while writing to table {table} "
                        f"({type(exc).__name__}: {exc}). For DynamoDB Local check 'recsys dynamodb-local status' "
                        f"and start it; then retry the task (a publish shard rewrites exactly its own users)"
                    ) from exc
                raise
            reason = code
        if not requests:
            return retries
        if attempt < max_attempts:
            retries += 1
            delay = backoff_delay(attempt, backoff_base, backoff_cap)
            log.debug("table %s: %d items back (%s), retry %d in %.3f s", table, len(requests), reason, attempt, delay)
            sleep(delay)
    raise PublicationError(
        f"DynamoDB table {table}: {len(requests)} of {len(items)} items in a batch were still not written after "
        f"{max_attempts} attempts (last: {reason}); the table is throttling or failing. Rerun the publish task; "
        f"for a provisioned table raise its write capacity or lower RECSYS_PUBLISH_THREADS"
    )


def publish_recommendations(
    client: Any,
    table: str,
    recs: pa.Table,
    *,
    model_version: str,
    generated_at: dt.datetime,
    expires_at: int,
    threads: int = 8,
    log_every: float = 5.0,
    backoff_base: float = 0.05,
    backoff_cap: float = 5.0,
    max_attempts: int = 10,
    label: str = "publish",
) -> dict[str, Any]:
    """Write one item per user of ``recs`` to ``table`` (overwriting what was there).

    Batches of 25 go through BatchWriteItem from ``threads`` threads with at most
    ``2 * threads`` batches in flight. Returns {"items", "seconds", "items_per_second",
    "retries"}. Raises PublicationError when a batch cannot be written (see write_batch)
    and ValueError when ``recs`` is malformed.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    total = count_users(recs)
    items = iter_items(recs, model_version=model_version, generated_at=generated_at, expires_at=expires_at)
    window = 2 * threads
    written = retries = 0
    started = last_log = time.perf_counter()
    log.info("%s: %d users to DynamoDB table %s, model %s, %d threads", label, total, table, model_version, threads)

    def collect(done: Iterable[Future[int]]) -> None:
        nonlocal written, retries
        for future in done:
            retries += future.result()
            written += futures.pop(future)

    futures: dict[Future[int], int] = {}
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="publish") as pool:
        try:
            for batch in _batches(items, BATCH_WRITE_SIZE):
                if len(futures) >= window:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    collect(done)
                future = pool.submit(
                    write_batch, client, table, batch,
                    backoff_base=backoff_base, backoff_cap=backoff_cap, max_attempts=max_attempts,
                )
                futures[future] = len(batch)
                now = time.perf_counter()
                if now - last_log >= log_every:
                    last_log = now
                    log.info(
                        "%s: %d / %d users written (%.0f%%), %.0f items/s, %d retries",
                        label, written, total, 100.0 * written / max(total, 1), written / (now - started), retries,
                    )
            collect(wait(futures).done)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    seconds = time.perf_counter() - started
    rate = written / seconds if seconds > 0 else 0.0
    log.info(
        "%s: %d items written to %s in %.1f s (%.0f items/s, %d retries), model %s",
        label, written, table, seconds, rate, retries, model_version,
    )
    return {"items": written, "seconds": round(seconds, 3), "items_per_second": round(rate, 1), "retries": retries}


# --------------------------------------------------------------------------- the hourly refresh


def is_reserved_key(user_id: str) -> bool:
    """True for the keys that are not a user's list: ``__popular__[#category]``, ``item#...``, ``__meta__``."""
    return user_id in (POPULAR_USER_ID, META_KEY) or user_id.startswith((POPULAR_USER_ID + "#", "item#"))


# A refresh may replace a list of the served night (or of an earlier refresh up to an earlier
# instant), never one a newer nightly wrote: model versions start with their run date, so
# every version of the served night D or before sorts below "D+1".
REFRESH_CONDITION = (
    "attribute_not_exists(model_version) OR (model_version < :next_night AND "
    "(attribute_not_exists(refreshed_until) OR refreshed_until <= :until))"
)


def publish_refreshed(
    client: Any,
    table: str,
    recs: pa.Table,
    *,
    model_version: str,
    served_run_date: dt.date,
    refreshed_at: dt.datetime,
    until: dt.datetime,
    expires_at: int,
    threads: int = 8,
) -> dict[str, Any]:
    """Write the refreshed lists of ``recs`` (user_id, rank, item_id, score), one conditional
    PutItem per user (BatchWriteItem takes no condition): each item as the nightly writes it,
    stamped ``refreshed_at`` (``generated_at`` too) and ``refreshed_until`` (the instant its
    events reach), unless the table holds a list of a newer nightly, or of a refresh up to a
    later instant, for that user (see REFRESH_CONDITION). Reserved keys (``__popular__``,
    ``item#``, ``__meta__``) are never written, whatever the events call a user.

    Returns {"items", "kept_newer" (users left as a newer run wrote them), "reserved_skipped",
    "written_users", "seconds", "items_per_second"}. Raises PublicationError when DynamoDB
    refuses a write for another reason, and ValueError when ``recs`` is malformed.
    """
    started = time.perf_counter()
    stamp = {"refreshed_at": {"S": _iso_utc(refreshed_at)}, "refreshed_until": {"S": _iso_utc(until)}}
    values = {":next_night": {"S": (served_run_date + dt.timedelta(days=1)).isoformat()},
              ":until": stamp["refreshed_until"]}
    reserved = 0
    items: list[Item] = []
    for item in iter_items(recs, model_version=model_version, generated_at=refreshed_at, expires_at=expires_at):
        if is_reserved_key(item[KEY]["S"]):
            reserved += 1
        else:
            items.append({**item, **stamp})

    def put(item: Item) -> bool:
        for attempt in range(1, 11):
            try:
                client.put_item(TableName=table, Item=item, ConditionExpression=REFRESH_CONDITION,
                                ExpressionAttributeValues=values)
                return True
            except client.exceptions.ConditionalCheckFailedException:
                return False
            except Exception as exc:
                code = _error_code(exc)
                if code not in RETRYABLE_CODES or attempt == 10:
                    raise PublicationError(f"refresh: writing user {item[KEY]['S']!r} to DynamoDB table {table} "
                                           f"failed: {code or type(exc).__name__}: {exc}; rerun the refresh "
                                           "(its writes are idempotent)") from exc
                time.sleep(backoff_delay(attempt, 0.05, 5.0))
        return False  # not reached: the last attempt returns or raises

    with ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="refresh") as pool:
        written = list(pool.map(put, items))
    seconds = time.perf_counter() - started
    done = [item[KEY]["S"] for item, ok in zip(items, written) if ok]
    rate = len(done) / seconds if seconds > 0 else 0.0
    log.info("refresh: %d users written to %s in %.1f s (%.0f items/s), %d left as a newer run wrote them, "
             "%d reserved key(s) skipped, model %s", len(done), table, seconds, rate, len(items) - len(done),
             reserved, model_version)
    return {"items": len(done), "kept_newer": len(items) - len(done), "reserved_skipped": reserved,
            "written_users": done, "seconds": round(seconds, 3), "items_per_second": round(rate, 1)}


# --------------------------------------------------------------------------- verification


def batch_get(
    client: Any,
    table: str,
    user_ids: Sequence[str],
    *,
    attributes: Sequence[str] = (KEY, "items", "model_version"),
    consistent: bool = True,
    backoff_base: float = 0.05,
    backoff_cap: float = 5.0,
    max_attempts: int = 10,
) -> dict[str, Item]:
    """Read ``user_ids`` with BatchGetItem (100 keys a call, unprocessed keys retried).

    Returns {user_id: item} for the users found. Raises PublicationError when keys are
    still unprocessed after ``max_attempts`` attempts.
    """
    names = {f"#a{i}": name for i, name in enumerate(attributes)}
    found: dict[str, Item] = {}
    unique = list(dict.fromkeys(user_ids))
    for first in range(0, len(unique), BATCH_GET_SIZE):
        request: dict[str, Any] = {
            table: {
                "Keys": [{KEY: {"S": user}} for user in unique[first : first + BATCH_GET_SIZE]],
                "ProjectionExpression": ", ".join(names),
                "ExpressionAttributeNames": names,
                "ConsistentRead": consistent,
            }
        }
        for attempt in range(1, max_attempts + 1):
            try:
                response = client.batch_get_item(RequestItems=request)
            except Exception as exc:
                if _error_code(exc) not in RETRYABLE_CODES:
                    raise
                response = {"UnprocessedKeys": request}
            for item in response.get("Responses", {}).get(table, []):
                found[item[KEY]["S"]] = item
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            if attempt == max_attempts:
                raise PublicationError(
                    f"DynamoDB table {table}: {len(request[table]['Keys'])} keys still unread after "
                    f"{max_attempts} BatchGetItem attempts"
                )
            time.sleep(backoff_delay(attempt, backoff_base, backoff_cap))
    return found


def verify_publication(
    client: Any, table: str, recs: pa.Table, *, model_version: str, sample: int, seed: int = 0
) -> dict[str, Any]:
    """Read back ``__popular__`` and ``sample`` random users and compare them with ``recs``.

    Each must exist, carry ``model_version`` and list the same item ids in the same order.
    Returns {"checked", "sample", "popular_checked", "seconds"}; raises PublicationError
    with the counts of missing, stale and different users and a few example ids.
    """
    started = time.perf_counter()
    sorted_recs, bounds = _grouped(recs)
    users = sorted_recs["user_id"].take(pa.array(bounds[:-1]))
    popular_index = int(pc.index(users, POPULAR_USER_ID).as_py())
    if popular_index < 0:
        raise PublicationError(
            f"recommendations have no {POPULAR_USER_ID!r} rows: unknown users would get nothing from table {table}; "
            f"the recommend stage must add the popular list"
        )
    others = np.delete(np.arange(len(users), dtype=np.int64), popular_index)
    chosen = np.random.default_rng(seed).choice(others, size=min(sample, len(others)), replace=False)
    expected = {
        str(users[i].as_py()): sorted_recs["item_id"].slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])).to_pylist()
        for i in [popular_index, *sorted(int(i) for i in chosen)]
    }
    found = batch_get(client, table, list(expected))
    missing, stale, different = [], [], []
    for user, item_ids in expected.items():
        item = found.get(user)
        if item is None:
            missing.append(user)
        elif item.get("model_version", {}).get("S") != model_version:
            stale.append(user)
        elif [x["M"]["item_id"]["S"] for x in item.get("items", {}).get("L", [])] != item_ids:
            different.append(user)
    seconds = time.perf_counter() - started
    if missing or stale or different:
        examples = (missing + stale + different)[:5]
        raise PublicationError(
            f"DynamoDB table {table} does not hold what was published (model {model_version}): of {len(expected)} "
            f"users read back (incl. {POPULAR_USER_ID}), {len(missing)} missing, {len(stale)} with another "
            f"model_version, {len(different)} with other items; e.g. {examples}. Rerun publish for this date"
        )
    log.info(
        "verify: %d users read back from %s (incl. %s) match model %s, %.2f s",
        len(expected), table, POPULAR_USER_ID, model_version, seconds,
    )
    return {
        "checked": len(expected),
        "sample": len(expected) - 1,
        "popular_checked": True,
        "seconds": round(seconds, 3),
    }


# --------------------------------------------------------------------------- what is served


def read_served(client: Any, table: str) -> dict[str, str] | None:
    """The ``__meta__`` record {"run_date", "model_version", "published_at"}, or None when
    the table does not exist or nothing has been published to it yet."""
    try:
        item = client.get_item(TableName=table, Key={KEY: {"S": META_KEY}}, ConsistentRead=True).get("Item")
    except client.exceptions.ResourceNotFoundException:
        return None
    if not item:
        return None
    return {name: item.get(name, {}).get("S", "") for name in ("run_date", "model_version", "published_at")}


def mark_served(client: Any, table: str, *, run_date: dt.date, model_version: str, force: bool = False) -> None:
    """Record that ``run_date``'s lists are served. Unless ``force``, the write is conditional:
    raises OlderRunError when the table already serves a newer run date."""
    item = {
        KEY: {"S": META_KEY},
        "run_date": {"S": run_date.isoformat()},
        "model_version": {"S": model_version},
        "published_at": {"S": _iso_utc(dt.datetime.now(dt.UTC))},
    }
    kwargs: dict[str, Any] = {"TableName": table, "Item": item}
    if not force:
        kwargs["ConditionExpression"] = "attribute_not_exists(run_date) OR run_date <= :d"
        kwargs["ExpressionAttributeValues"] = {":d": {"S": run_date.isoformat()}}
    try:
        client.put_item(**kwargs)
    except client.exceptions.ConditionalCheckFailedException:
        served = read_served(client, table) or {}
        raise OlderRunError(
            f"DynamoDB table {table} already serves run date {served.get('run_date')} (model "
            f"{served.get('model_version')}); refusing to mark the older {run_date} as served"
        ) from None


# --------------------------------------------------------------------------- the storefront read path


