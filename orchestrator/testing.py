"""Embedded stores and seeding helpers shared by ``lethe demo`` and the test suite.

moto's S3 server runs in a thread on 127.0.0.1 and is reached over real HTTP with boto3, exactly like a
production endpoint. It stores only ~100-250 objects/s, so seeding fans out over threads.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from workers.targets.s3 import s3_client

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "lethe-test",
    "AWS_SECRET_ACCESS_KEY": "lethe-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    for name, value in FAKE_AWS_ENV.items():
        os.environ.setdefault(name, value)
    # moto's server logs every request, and tracebacks of its own races under concurrent calls (answered
    # 500 and retried by the client): noise for lethe's logs.
    logging.getLogger("werkzeug").disabled = True
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_bucket(endpoint: str, bucket: str, versioned: bool = True) -> Any:
    client = s3_client(endpoint, None)
    client.create_bucket(Bucket=bucket)
    if versioned:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return client


def put_objects(endpoint: str, bucket: str, keys: Iterable[str], versions: int = 1,
                delete_marker: bool = False, threads: int = 16) -> int:
    """Write each key ``versions`` times (and optionally leave a delete marker on top). Returns versions
    plus markers written."""
    client = s3_client(endpoint, None)

    def one(key: str) -> int:
        for v in range(versions):
            client.put_object(Bucket=bucket, Key=key, Body=f"{key} v{v}".encode())
        if delete_marker:
            client.delete_object(Bucket=bucket, Key=key)
        return versions + int(delete_marker)

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, list(keys)))


def version_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """The key of every object version and delete marker under a prefix (what lethe must erase, all of
    it). moto copies the whole bucket on every ListObjectVersions call: list once, then count in Python."""
    client = s3_client(endpoint, None)
    keys: list[str] = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        keys += [v["Key"] for v in (*page.get("Versions", ()), *page.get("DeleteMarkers", ()))]
    return keys


def versions_per_owner(endpoint: str, bucket: str, root: str = "users/") -> Counter[str]:
    """Versions and markers per owner for keys laid out as ``<root><owner>/…``."""
    return Counter(key[len(root):].split("/", 1)[0] for key in version_keys(endpoint, bucket, root))
