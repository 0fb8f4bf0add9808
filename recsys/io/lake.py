"""The lake: one folder per dataset and date, ``<lake>/<dataset>/dt=YYYY-MM-DD/``.

The lake root is a local folder or ``s3://bucket/prefix``; this module is the only place
that knows the difference, and every caller goes through it.

Local lake: every stage writes its partition through :func:`write_partition` (or
:func:`replace_partition` for files it writes itself): the new content is written under a
temporary name and renamed into place, so a rerun of a date replaces that date whole and a
crash leaves either the old partition or the new one, never half of one.

S3 lake (S3 has no rename): a partition is written as a *version*. Its files are uploaded
under a fresh key prefix ``<dataset>/dt=D/v=<version>/...``, and only then is the one
object ``<dataset>/dt=D/_manifest.json`` put, naming the version and its files. A single
PUT is atomic and S3 reads are strongly consistent, so a reader sees the old manifest or
the new one, never half a partition; files of a version without a manifest (a crashed
write) are invisible. After the manifest is replaced the previous version's files are
deleted; a reader that was still downloading them re-reads the manifest and retries.
Workers share nothing but the bucket: each keeps a working copy under
``$RECSYS_HOME/lake-mirror/<bucket>/<prefix>/<dataset>/dt=D/<version>/``, downloaded by
:func:`fetch_partition` when the manifest names a version it does not have, and the
writer keeps what it uploaded, so the next stage on the same machine downloads nothing.
Clients come from :mod:`recsys.io.aws`: through the Airflow connection ``RECSYS_AWS_CONN_ID``
(or ``aws_default``) when there is one, else the standard AWS chain; ``RECSYS_S3_ENDPOINT``
points at an S3-compatible server (MinIO, moto) when no connection names an endpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.config import aws_conn_id_from_env, aws_region_from_env, home_from_env, s3_endpoint_from_env
from recsys.datasets import DATA_FILE, MANIFEST
from recsys.io import aws

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"


class LakeError(RuntimeError):
    """The lake cannot be used as asked (a bad root, an S3 error); the message says what to fix."""


# --------------------------------------------------------------------------- roots and keys


def is_s3(lake: str | Path) -> bool:
    """True when the lake root is ``s3://bucket/prefix``."""
    return str(lake).startswith(S3_SCHEME)


def _split(lake: str | Path) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end) of an S3 lake root."""
    bucket, _, prefix = str(lake)[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise LakeError(f"RECSYS_LAKE={lake!r}: expected s3://bucket/prefix (the bucket name is missing)")
    return bucket, prefix.strip("/")


def _key(lake: str | Path, relpath: str) -> str:
    _, prefix = _split(lake)
    return f"{prefix}/{relpath}" if prefix else relpath


def partition_key(dataset: str, day: dt.date) -> str:
    """``<dataset>/dt=YYYY-MM-DD``: a partition's path relative to the lake root."""
    return f"{dataset}/dt={day.isoformat()}"


def partition_uri(lake: str | Path, dataset: str, day: dt.date) -> str:
    """Where a partition lives, for messages: a local folder or ``s3://bucket/prefix/...``."""
    if is_s3(lake):
        return f"{str(lake).rstrip('/')}/{partition_key(dataset, day)}"
    return str(partition_dir(lake, dataset, day))


def partition_dir(lake: str | Path, dataset: str, day: dt.date) -> Path:
    """The folder of one dataset's partition for one date (a local lake only).

    Raises LakeError for an S3 lake: read through :func:`fetch_partition` (it returns the
    local working copy) and name partitions in messages with :func:`partition_uri`.
    """
    if is_s3(lake):
        raise LakeError(
            f"partition_dir({partition_key(dataset, day)!r}) has no local folder in the S3 lake {lake}: "
            "call lake.fetch_partition() to read it or lake.partition_uri() to name it"
        )
    return Path(lake) / partition_key(dataset, day)


def partition_file(lake: str | Path, dataset: str, day: dt.date, name: str = DATA_FILE) -> Path:
    """A file inside a local lake's partition (the Parquet data file unless ``name`` says otherwise)."""
    return partition_dir(lake, dataset, day) / name


def mirror_root(lake: str | Path) -> Path:
    """This machine's working copy of an S3 lake: ``$RECSYS_HOME/lake-mirror/<bucket>/<prefix>``."""

    bucket, prefix = _split(lake)
    return home_from_env() / "lake-mirror" / bucket / prefix


# --------------------------------------------------------------------------- S3 plumbing


@lru_cache(maxsize=8)
def _client(access: aws.Access) -> Any:
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"})
    return aws.make_client("s3", access, config)


def s3_client() -> Any:
    """A boto3 S3 client (built by :func:`recsys.io.aws.make_client`): through the Airflow
    connection ``RECSYS_AWS_CONN_ID`` (or ``aws_default`` when it is defined), whose extras'
    region and endpoint win; else ``RECSYS_S3_ENDPOINT`` when set, region from RECSYS_AWS_REGION
    or AWS_DEFAULT_REGION, credentials from the standard AWS chain. One client per connection
    and endpoint, kept for the process (a changed connection gets a new one)."""

    access = aws.resolve("s3", conn_id=aws_conn_id_from_env(), region=aws_region_from_env(),
                         endpoint=s3_endpoint_from_env())
    return _client(access)


def _is_missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


def _s3_error(exc: Exception, action: str, lake: str | Path, relpath: str) -> LakeError:
    return LakeError(
        f"S3 {action} of {str(lake).rstrip('/')}/{relpath} failed: {exc}. Check the bucket exists, "
        "RECSYS_S3_ENDPOINT (for MinIO or another S3-compatible server; the endpoint_url of the aws Airflow "
        "connection wins over it) and that the AWS credentials allow s3:GetObject, s3:PutObject, "
        "s3:ListBucket and s3:DeleteObject on it"
    )


def _get_bytes(lake: str | Path, relpath: str) -> bytes | None:
    """The object's bytes, or None when it does not exist."""
    bucket, _ = _split(lake)
    try:
        return cast(bytes, s3_client().get_object(Bucket=bucket, Key=_key(lake, relpath))["Body"].read())
    except Exception as exc:
        if _is_missing(exc):
            return None
        raise _s3_error(exc, "GET", lake, relpath) from exc


def _put_bytes(lake: str | Path, relpath: str, body: bytes) -> None:
    bucket, _ = _split(lake)
    try:
        s3_client().put_object(Bucket=bucket, Key=_key(lake, relpath), Body=body)
    except Exception as exc:
        raise _s3_error(exc, "PUT", lake, relpath) from exc


def _list(lake: str | Path, relprefix: str, delimiter: str | None = None) -> tuple[list[str], list[str]]:
    """(keys relative to the lake root, common prefixes relative to the root) under ``relprefix``."""
    bucket, prefix = _split(lake)
    strip = len(prefix) + 1 if prefix else 0
    keys: list[str] = []
    prefixes: list[str] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": _key(lake, relprefix)}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
            keys += [o["Key"][strip:] for o in page.get("Contents", [])]
            prefixes += [p["Prefix"][strip:] for p in page.get("CommonPrefixes", [])]
    except Exception as exc:
        raise _s3_error(exc, "LIST", lake, relprefix) from exc
    return keys, prefixes


def _delete(lake: str | Path, relpaths: list[str]) -> None:
    bucket, _ = _split(lake)
    for start in range(0, len(relpaths), 1000):
        chunk = [{"Key": _key(lake, r)} for r in relpaths[start:start + 1000]]
        try:
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        except Exception as exc:
            raise _s3_error(exc, "DELETE", lake, relpaths[start]) from exc


def read_manifest(lake: str | Path, dataset: str, day: dt.date) -> dict[str, Any] | None:
    """The partition's manifest in an S3 lake ({"version", "written_at", "files": {name: {"size", "rows"?}}}),
    or None when the partition has never been committed."""
    body = _get_bytes(lake, f"{partition_key(dataset, day)}/{MANIFEST}")
    return None if body is None else json.loads(body)


# --------------------------------------------------------------------------- partitions


def partition_exists(lake: str | Path, dataset: str, day: dt.date) -> bool:
    """True when the partition has been written completely (it has its data file)."""
    if is_s3(lake):
        manifest = read_manifest(lake, dataset, day)
        return manifest is not None and DATA_FILE in manifest["files"]
    return partition_file(lake, dataset, day).exists()


def partition_rows(lake: str | Path, dataset: str, day: dt.date) -> int:
    """Rows of the partition's data file, read from Parquet metadata (S3: from the manifest,
    nothing downloaded); raises FileNotFoundError naming the partition when it is missing."""
    if is_s3(lake):
        manifest = read_manifest(lake, dataset, day)
        entry = (manifest or {}).get("files", {}).get(DATA_FILE)
        if entry is None:
            raise FileNotFoundError(f"partition {partition_uri(lake, dataset, day)} is missing (no {DATA_FILE})")
        if "rows" in entry:
            return int(entry["rows"])
        return cast(int, pq.read_metadata(fetch_partition(lake, dataset, day, [DATA_FILE]) / DATA_FILE).num_rows)
    path = partition_file(lake, dataset, day)
    if not path.exists():
        raise FileNotFoundError(f"partition {partition_dir(lake, dataset, day)} is missing (no {DATA_FILE})")
    return cast(int, pq.read_metadata(path).num_rows)


def list_days(lake: str | Path, dataset: str) -> list[dt.date]:
    """The dates that have a committed partition of ``dataset``, oldest first."""
    if is_s3(lake):
        _, prefixes = _list(lake, f"{dataset}/dt=", delimiter="/")
        days = [dt.date.fromisoformat(p.rstrip("/").rpartition("dt=")[2]) for p in prefixes]
        return sorted(d for d in days if read_manifest(lake, dataset, d) is not None)
    root = Path(lake) / dataset
    return sorted(dt.date.fromisoformat(p.name[3:]) for p in root.glob("dt=*") if p.is_dir()) if root.exists() else []


def fetch_partition(lake: str | Path, dataset: str, day: dt.date, names: list[str] | None = None) -> Path:
    """The local folder holding the partition's files (all of them, or only ``names``).

    Local lake: the partition folder itself. S3 lake: the working copy of the version the
    manifest names, downloading what this machine does not have yet. Raises FileNotFoundError
    naming the partition when it was never written (or lacks one of ``names``).
    """
    if not is_s3(lake):
        folder = partition_dir(lake, dataset, day)
        if not folder.is_dir():
            raise FileNotFoundError(f"partition {folder} is missing: run the stage that writes {dataset} for {day}")
        return folder
    for attempt in range(3):
        manifest = read_manifest(lake, dataset, day)
        if manifest is None:
            raise FileNotFoundError(
                f"partition {partition_uri(lake, dataset, day)} is missing (no {MANIFEST}): "
                f"run the stage that writes {dataset} for {day}"
            )
        wanted = list(manifest["files"]) if names is None else names
        absent = [n for n in wanted if n not in manifest["files"]]
        if absent:
            raise FileNotFoundError(f"partition {partition_uri(lake, dataset, day)} has no {', '.join(absent)}")
        try:
            return _download_version(lake, dataset, day, manifest, wanted)
        except FileNotFoundError:
            # The version was replaced (and its files deleted) while we downloaded it.
            log.info(
                "partition %s changed while it was downloaded; reading its new manifest",
                partition_uri(lake, dataset, day),
            )
            time.sleep(0.2 * (attempt + 1))
    raise LakeError(
        f"partition {partition_uri(lake, dataset, day)} kept changing while it was downloaded: is it being rewritten?"
    )


def _download_version(lake: str | Path, dataset: str, day: dt.date, manifest: dict[str, Any], names: list[str]) -> Path:
    bucket, _ = _split(lake)
    base = mirror_root(lake) / partition_key(dataset, day)
    folder: Path = base / manifest["version"]
    started, fetched, size = time.perf_counter(), 0, 0
    for name in names:
        local = folder / name
        expected = int(manifest["files"][name]["size"])
        if local.exists() and local.stat().st_size == expected:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
        relpath = f"{partition_key(dataset, day)}/v={manifest['version']}/{name}"
        try:
            s3_client().download_file(bucket, _key(lake, relpath), str(tmp))
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if _is_missing(exc):
                raise FileNotFoundError(relpath) from exc
            raise _s3_error(exc, "GET", lake, relpath) from exc
        os.replace(tmp, local)
        fetched, size = fetched + 1, size + expected
    folder.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():  # earlier versions of this partition on this machine
        if old.is_dir() and old.name != folder.name and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    if fetched:
        seconds = time.perf_counter() - started
        log.info("lake: fetched %d file(s), %.1f MB of %s (version %s) in %.1f s",
                 fetched, size / 1e6, partition_uri(lake, dataset, day), manifest["version"], seconds)
    return folder


@contextmanager
def replace_partition(lake: str | Path, dataset: str, day: dt.date) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it atomically becomes the partition.

    On an exception the temporary folder is removed and the old partition is untouched.
    S3 lake: the folder is uploaded as a new version and committed by its manifest (see the
    module docstring); raises LakeError naming the key when S3 refuses.
    """
    if not is_s3(lake):
        with replace_dir(partition_dir(lake, dataset, day)) as tmp:
            yield tmp
        return
    base = mirror_root(lake) / partition_key(dataset, day)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        version = _upload_version(lake, dataset, day, tmp)
        final = base / version
        os.replace(tmp, final)  # this machine's working copy of what it just committed
        for old in base.iterdir():
            if old.is_dir() and old.name != version and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _upload_version(lake: str | Path, dataset: str, day: dt.date, folder: Path) -> str:
    """Upload ``folder`` as a new version of the partition, then commit it; returns the version."""
    bucket, _ = _split(lake)
    started = time.perf_counter()
    version = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    files: dict[str, dict[str, int]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        entry = {"size": path.stat().st_size}
        if name.endswith(".parquet"):
            entry["rows"] = pq.read_metadata(path).num_rows
        relpath = f"{partition_key(dataset, day)}/v={version}/{name}"
        try:
            s3_client().upload_file(str(path), bucket, _key(lake, relpath))
        except Exception as exc:
            raise _s3_error(exc, "PUT", lake, relpath) from exc
        files[name] = entry
    previous = read_manifest(lake, dataset, day)
    manifest = {"version": version, "written_at": dt.datetime.now(dt.UTC).isoformat(), "files": files}
    _put_bytes(lake, f"{partition_key(dataset, day)}/{MANIFEST}", _json_bytes(manifest))
    if previous:
        _delete(lake, [f"{partition_key(dataset, day)}/v={previous['version']}/{n}" for n in previous["files"]])
    size = sum(f["size"] for f in files.values())
    log.info("lake: committed %s version %s: %d file(s), %.1f MB in %.1f s",
             partition_uri(lake, dataset, day), version, len(files), size / 1e6, time.perf_counter() - started)
    return version


def delete_partition(lake: str | Path, dataset: str, day: dt.date) -> None:
    """Remove a partition if it exists (S3: the manifest first, so readers stop seeing it at once)."""
    if not is_s3(lake):
        shutil.rmtree(partition_dir(lake, dataset, day), ignore_errors=True)
        return
    manifest = read_manifest(lake, dataset, day)
    if manifest is None:
        return
    _delete(lake, [f"{partition_key(dataset, day)}/{MANIFEST}"])
    _delete(lake, [f"{partition_key(dataset, day)}/v={manifest['version']}/{n}" for n in manifest["files"]])
    log.info("lake: deleted %s", partition_uri(lake, dataset, day))


@contextmanager
def replace_dir(final: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``final``; on success it replaces ``final`` whole.

    On an exception the temporary folder is removed and ``final`` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_partition(
    lake: str | Path,
    dataset: str,
    day: dt.date,
    table: pa.Table,
    extra_files: dict[str, Any] | None = None,
) -> str:
    """Write ``table`` (and small JSON side files) as the whole partition; returns where it went."""
    with replace_partition(lake, dataset, day) as tmp:
        pq.write_table(table, tmp / DATA_FILE, compression="zstd")
        for name, content in (extra_files or {}).items():
            write_json(tmp / name, content)
    where = partition_uri(lake, dataset, day)
    log.info("wrote %s: %d rows", where, table.num_rows)
    return where


def read_partition(
    lake: str | Path, dataset: str, day: dt.date, *, columns: list[str] | None = None, filters: Any = None
) -> pa.Table:
    """Read a partition's data file (only ``columns``, only rows matching the Arrow expression
    ``filters`` when given); raises FileNotFoundError naming the partition."""
    if is_s3(lake):
        path = fetch_partition(lake, dataset, day, [DATA_FILE]) / DATA_FILE
    else:
        path = partition_file(lake, dataset, day)
        if not path.exists():
            raise FileNotFoundError(f"partition {partition_dir(lake, dataset, day)} is missing (no {DATA_FILE})")
    return pq.read_table(path, columns=columns, filters=filters)


def read_partition_json(lake: str | Path, dataset: str, day: dt.date, name: str) -> Any:
    """A JSON side file of a partition (``_meta.json``, ``metrics.json``...); raises FileNotFoundError naming it."""
    folder = fetch_partition(lake, dataset, day, [name])
    path = folder / name
    if not path.exists():
        raise FileNotFoundError(f"partition {partition_uri(lake, dataset, day)} has no {name}")
    return read_json(path)


# --------------------------------------------------------------------------- single objects


def write_lake_json(lake: str | Path, relpath: str, content: Any) -> str:
    """Write one JSON object at ``relpath`` under the lake root (atomically: rename locally, one
    PUT on S3), outside any partition (``models/champion.json``); returns where it went."""
    if is_s3(lake):
        _put_bytes(lake, relpath, _json_bytes(content))
        return f"{str(lake).rstrip('/')}/{relpath}"
    path = Path(lake) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, content)
    return str(path)


def read_lake_json(lake: str | Path, relpath: str) -> Any | None:
    """The JSON object at ``relpath`` under the lake root, or None when there is none."""
    if is_s3(lake):
        body = _get_bytes(lake, relpath)
        return None if body is None else json.loads(body)
    path = Path(lake) / relpath
    return read_json(path) if path.exists() else None


def list_lake_json(lake: str | Path, folder: str) -> list[str]:
    """The names of the JSON objects directly under ``folder`` of the lake root (single objects
    written by :func:`write_lake_json`), sorted; empty when there are none."""
    if is_s3(lake):
        keys, _ = _list(lake, f"{folder.rstrip('/')}/", delimiter="/")
        names = [k.rpartition("/")[2] for k in keys]
    else:
        root = Path(lake) / folder
        names = [p.name for p in root.iterdir() if p.is_file()] if root.is_dir() else []
    return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))


def _json_bytes(content: Any) -> bytes:
    return (json.dumps(content, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(path: Path, content: Any) -> None:
    """Write JSON to the local ``path`` atomically (temporary file, then rename)."""
    write_text(path, _json_bytes(content).decode())


def write_text(path: Path, text: str) -> None:
    """Write text to the local ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
