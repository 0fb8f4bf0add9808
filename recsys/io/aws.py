"""Every boto3 client recsys makes, built in one place: DynamoDB (publish, verify, the served
date, the storefront) and S3 (the lake).

Two ways to AWS:

* **Through an Airflow connection** of type ``aws`` (the workers, ``recsys run``, the
  api-server's report pages): ``RECSYS_AWS_CONN_ID``, or ``aws_default`` when that connection
  is defined. The Amazon provider's ``AwsBaseHook`` makes the boto3 session from it (keys,
  ``role_arn`` to assume, profile), and the connection's extras ``region_name`` and
  ``endpoint_url`` (or ``service_config: {dynamodb: {endpoint_url: ...}}`` for one service) win
  over ``RECSYS_AWS_REGION`` and ``RECSYS_DYNAMODB_ENDPOINT`` / ``RECSYS_S3_ENDPOINT``. A
  connection id that is set but not defined is an error (:class:`AwsConnectionError`), never
  a silent fall back to other credentials.
* **Without one** (no id set and no ``aws_default``; and always for the storefront, which
  never asks Airflow): the standard AWS credential chain with the ``RECSYS_*`` region and
  endpoint.

A local endpoint (DynamoDB Local, moto, MinIO on localhost) without credentials in the
connection or the environment gets dummy ones: DynamoDB Local with ``-sharedDb`` lets any key
see the same tables.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from recsys.config import ConfigError

DEFAULT_CONN_ID = "aws_default"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


class AwsConnectionError(ConfigError):
    """The Airflow connection named for AWS is not defined or is not an ``aws`` connection."""


@dataclass(frozen=True)
class Access:
    """Where and as whom a client talks to AWS: the connection (its id and URI, which changes
    when the connection does) or none, and the region and endpoint the client uses."""

    conn_id: str | None
    conn_uri: str | None
    region: str
    endpoint: str | None


def connection_hint(conn_id: str) -> str:
    """How to define the connection ``conn_id``, for error messages."""
    extra = {"region_name": "eu-west-1", "role_arn": "arn:aws:iam::ACCOUNT:role/recsys-workers"}
    example = json.dumps({"conn_type": "aws", "extra": extra})
    return (
        f"define it in the Airflow UI (Admin > Connections, type 'Amazon Web Services'), in a secrets backend, "
        f"or as the environment variable AIRFLOW_CONN_{conn_id.upper()}='{example}' on every Airflow component"
    )


def find_connection(conn_id: str | None) -> Any | None:
    """The Airflow connection to build AWS clients from: ``conn_id`` when given, else
    ``aws_default`` when it is defined, else None (the standard AWS chain).

    Raises AwsConnectionError when ``conn_id`` is given but not defined, or is not of type aws.
    """
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    wanted = conn_id or DEFAULT_CONN_ID
    try:
        conn = Connection.get(wanted)
    except AirflowNotFoundException:
        if conn_id is None:
            return None
        raise AwsConnectionError(
            f"RECSYS_AWS_CONN_ID={conn_id!r} names an Airflow connection that is not defined: "
            f"{connection_hint(conn_id)}; or unset RECSYS_AWS_CONN_ID to use {DEFAULT_CONN_ID!r} when it is "
            f"defined, else the standard AWS credential chain"
        ) from None
    if conn.conn_type not in (None, "", "aws"):
        raise AwsConnectionError(
            f"Airflow connection {wanted!r} has type {conn.conn_type!r}; recsys reaches AWS only through a "
            f"connection of type 'aws' (Amazon Web Services)"
        )
    return conn


def resolve(service: str, *, conn_id: str | None, region: str, endpoint: str | None,
            through_airflow: bool = True) -> Access:
    """The :class:`Access` a ``service`` client uses: the connection's region and endpoint (for
    ``service``) when there is a connection and it names them, else ``region`` and ``endpoint``.

    ``through_airflow=False`` (the storefront) never looks for a connection. Raises
    AwsConnectionError as :func:`find_connection` does.
    """
    conn = find_connection(conn_id) if through_airflow else None
    if conn is None:
        return Access(None, None, region, endpoint)
    uri = conn.get_uri()
    conn_region, conn_endpoint = _place(conn, uri, service)
    return Access(conn.conn_id, uri, conn_region or region, conn_endpoint or endpoint)


_PLACES: dict[tuple[str, str, str], tuple[str | None, str | None]] = {}


def _place(conn: Any, uri: str, service: str) -> tuple[str | None, str | None]:
    """(region, endpoint of ``service``) a connection's extras name, read once per connection
    version (the provider's wrapper logs where it found the credentials each time it is made)."""
    key = (str(conn.conn_id), uri, service)
    if key not in _PLACES:
        from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper

        wrapper = AwsConnectionWrapper(conn=conn)
        _PLACES[key] = (wrapper.region_name, wrapper.get_service_endpoint_url(service))
    return _PLACES[key]


def make_client(service: str, access: Access, config: Any = None) -> Any:
    """A boto3 client of ``service`` for ``access``, with the botocore ``config`` given.

    Through a connection the session is ``AwsBaseHook(aws_conn_id=...).get_session()``; without
    one, a session of its own (boto3's default session is not safe to share across threads).
    """
    import boto3

    kwargs: dict[str, Any] = {"region_name": access.region, "endpoint_url": access.endpoint}
    if config is not None:
        kwargs["config"] = config
    has_keys = bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))
    session: Any  # typed per service name by the stubs; the name is a variable here
    if access.conn_id is not None:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        hook = AwsBaseHook(aws_conn_id=access.conn_id, client_type=service)
        session = hook.get_session(region_name=access.region)
        if hook.verify is not None:
            kwargs["verify"] = hook.verify
        found = hook.conn_config
        has_keys = has_keys or any((found.aws_access_key_id, found.role_arn, found.profile_name))
    else:
        session = boto3.session.Session()
    if access.endpoint is not None and urlsplit(access.endpoint).hostname in LOCAL_HOSTS and not has_keys:
        kwargs["aws_access_key_id"] = "local"
        kwargs["aws_secret_access_key"] = "local"
    return session.client(service, **kwargs)


def describe(access: Access) -> str:
    """Where a client of ``access`` goes, for messages: region, endpoint and connection."""
    through = f"Airflow connection {access.conn_id!r}" if access.conn_id else "the standard AWS credential chain"
    return f"region {access.region}, endpoint {access.endpoint or 'AWS'}, through {through}"
