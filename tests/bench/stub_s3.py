"""A stub S3 endpoint whose versioned bucket is synthesised, not stored: it holds a million objects in ~1 MB.

moto's server stores ~100-250 objects/s and copies the bucket on every listing, so it cannot hold the 1M
objects the flat-memory figure needs. This stub speaks just enough S3 over HTTP for boto3 and lethe's
``S3Target``:

- ``ListObjectVersions`` (``GET /bucket?versions``): prefix, key-marker / version-id-marker, max-keys
  (at most 1,000), encoding-type=url, IsTruncated, NextKeyMarker / NextVersionIdMarker.
- ``DeleteObjects`` (``POST /bucket?delete``): permanently deletes the named versions, honours Quiet.
- ``HeadBucket``, ``GetBucketLocation``, ``GetBucketVersioning`` (Enabled), ``GetObjectLockConfiguration``
  (none), ``GetObjectLegalHold`` / ``GetObjectRetention`` (none), ``HeadObject`` / ``GetObject``.

The bucket holds, per configured subject ``id`` with ``count`` objects, the keys
``users/<id>/obj-<n:07d>`` (``n`` < ``count``), each with ``versions`` versions (version ids
``v<version>-<n>``, the newest listed first, as S3 does). Deletions are one byte per version in a
``bytearray`` laid out in listing order, so a listing is a ``find`` for the next live byte; the byte counts
how many DeleteObjects named that version (0 = live; saturating at 255), so a benchmark can tell a resumed
purge that deleted every version once from one that deleted some again (``redeleted``). There are no
delete markers: a DeleteObjects entry without a VersionId is refused per key (``NotImplemented``).
"""

from __future__ import annotations

import re
import threading
import time
import xml.etree.ElementTree as ET
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000
LAST_MODIFIED = "2024-01-01T00:00:00.000Z"
HTTP_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"
ETAG = '"d41d8cd98f00b204e9800998ecf8427e"'
OWNER = "<Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID>" \
        "<DisplayName>lethe-stub</DisplayName></Owner>"
VERSION_ID = re.compile(r"v(\d+)-(\d+)")
DIGITS = 7


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Owner:
    """One subject's synthesised keys and how often each of their versions was deleted (0 = live)."""

    base: str  # "users/<id>/"
    count: int
    versions: int
    deleted: bytearray = field(init=False)

    def __post_init__(self) -> None:
        if self.count >= 10**DIGITS:
            raise ValueError(f"at most {10**DIGITS - 1} objects per subject (keys sort by {DIGITS} digits)")
        self.deleted = bytearray(self.count * self.versions)

    def key(self, n: int) -> str:
        return f"{self.base}obj-{n:0{DIGITS}d}"

    def key_head(self, width: int) -> Callable[[int], str]:
        return lambda n: self.key(n)[:width]

    def index(self, key: str) -> int | None:
        """n of a key of this owner, or None."""
        rest = key[len(self.base):]
        if not key.startswith(self.base) or not rest.startswith("obj-") or len(rest) != 4 + DIGITS:
            return None
        digits = rest[4:]
        if not digits.isdigit():
            return None
        n = int(digits)
        return n if n < self.count else None

    # Slot j of key n is its (j+1)-th newest version: version number versions-1-j.
    def version_id(self, n: int, slot: int) -> str:
        return f"v{self.versions - 1 - slot}-{n}"

    def slot(self, n: int, version_id: str) -> int | None:
        match = VERSION_ID.fullmatch(version_id)
        if match is None or int(match.group(2)) != n or int(match.group(1)) >= self.versions:
            return None
        return self.versions - 1 - int(match.group(1))

    def live(self) -> int:
        return self.deleted.count(0)

    def redeleted(self) -> int:
        return len(self.deleted) - self.deleted.count(0) - self.deleted.count(1)


class StubS3:
    """A threaded stub S3 endpoint on 127.0.0.1; ``with StubS3(...) as endpoint_url: ...``.

    ``subjects`` maps a subject id to how many objects it holds under ``<root><id>/``."""

    def __init__(self, subjects: Mapping[str, int], bucket: str = "bench", versions: int = 1,
                 root: str = "users/") -> None:
        if versions < 1:
            raise ValueError("versions must be >= 1")
        self.bucket = bucket
        self.versions = versions
        for sid in subjects:
            if not sid or "/" in sid:
                raise ValueError(f"subject id {sid!r} must be non-empty and hold no '/'")
        self._by_id = {sid: _Owner(f"{root}{sid}/", count, versions) for sid, count in subjects.items()}
        # Every key of an owner starts with its base, so an owner's keys are contiguous in key order.
        self.owners = sorted(self._by_id.values(), key=lambda owner: owner.base)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # operation -> calls answered
        # Seconds each DeleteObjects waits before deleting: slows a purge down so that a test can kill the
        # worker in the middle of it.
        self.delete_delay = 0.0
        self.list_delay = 0.0  # the same for each ListObjectVersions page: a listing that outlasts a lease
        # operation -> perf_counter() when the first and the last of its calls was answered (clear to restart)
        self.spans: dict[str, list[float]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        stub = self

        class Handler(_Handler):
            pass

        Handler.stub = stub
        server = _Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="stub-s3", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- inspection (for tests and the benchmark; independent of any S3 client) -------------------
    def live(self, subject_id: str) -> int:
        """Versions of a subject not deleted."""
        with self.lock:
            return self._by_id[subject_id].live()

    def deleted(self, subject_id: str) -> int:
        with self.lock:
            owner = self._by_id[subject_id]
            return len(owner.deleted) - owner.live()

    def redeleted(self, subject_id: str) -> int:
        """Versions of a subject that DeleteObjects named more than once (each after the first found it gone:
        S3 answers success, so only the store can tell)."""
        with self.lock:
            return self._by_id[subject_id].redeleted()

    # -- S3 semantics -----------------------------------------------------------------------------
    def find(self, key: str) -> tuple[_Owner, int] | None:
        for owner in self.owners:
            if key.startswith(owner.base):
                n = owner.index(key)
                return None if n is None else (owner, n)
        return None

    def list_versions(self, prefix: str, key_marker: str, version_marker: str,
                      max_keys: int) -> tuple[list[tuple[str, str, bool]], bool]:
        """Up to max_keys live (key, version id, is latest) after the markers, in S3's order, and whether
        more follow."""
        out: list[tuple[str, str, bool]] = []
        if self.list_delay:
            time.sleep(self.list_delay)
        with self.lock:
            for owner, start, stop in self._ranges(prefix, key_marker, version_marker):
                pos = start
                while len(out) <= max_keys:  # one more than asked: tells whether the listing is truncated
                    pos = owner.deleted.find(0, pos, stop)
                    if pos < 0:
                        break
                    n, slot = divmod(pos, owner.versions)
                    # Latest: no live newer version of the same key (deleting the newest promotes the next).
                    latest = owner.deleted.find(0, n * owner.versions, pos) < 0
                    out.append((owner.key(n), owner.version_id(n, slot), latest))
                    pos += 1
                if len(out) > max_keys:
                    break
        truncated = len(out) > max_keys
        return out[:max_keys], truncated

    def _ranges(self, prefix: str, key_marker: str, version_marker: str) -> Iterator[tuple[_Owner, int, int]]:
        """Per owner in key order, the [start, stop) of its version slots to list."""
        for owner in self.owners:
            v = owner.versions
            keys = range(owner.count)
            if owner.base.startswith(prefix):
                lo, hi = 0, owner.count
            elif prefix.startswith(owner.base):
                # Keys cut to the prefix's length are still sorted: those equal to it are one run.
                head = owner.key_head(len(prefix))
                lo = bisect_left(keys, prefix, key=head)
                hi = bisect_right(keys, prefix, lo=lo, key=head)
            else:
                continue
            start = lo * v
            if key_marker:
                after = bisect_right(keys, key_marker, key=owner.key)  # first key > marker
                start = max(start, after * v)
                if version_marker and after > 0 and owner.key(after - 1) == key_marker:
                    slot = owner.slot(after - 1, version_marker)
                    if slot is None:
                        raise S3Error(400, "InvalidArgument", "Invalid version id specified")
                    start = max(lo * v, (after - 1) * v + slot + 1)
            stop = hi * v
            if start < stop:
                yield owner, start, stop

    def delete(self, objects: list[tuple[str, str | None]]) -> list[tuple[str, str | None, str | None]]:
        """(key, version id, error code or None) per object."""
        if self.delete_delay:
            time.sleep(self.delete_delay)  # outside the lock: listings go on meanwhile
        results: list[tuple[str, str | None, str | None]] = []
        with self.lock:
            for key, version in objects:
                if version is None:
                    results.append((key, None, "NotImplemented"))  # would be a delete marker: not synthesised
                    continue
                found = self.find(key)
                if found is None:
                    results.append((key, version, None))  # no such object: deleting it is a success in S3
                    continue
                owner, n = found
                slot = owner.slot(n, version)
                if slot is None:
                    if VERSION_ID.fullmatch(version) is None:
                        results.append((key, version, "NoSuchVersion"))
                    else:
                        results.append((key, version, None))
                    continue
                pos = n * owner.versions + slot
                owner.deleted[pos] = min(255, owner.deleted[pos] + 1)
                results.append((key, version, None))
        return results

    def head(self, key: str, version: str | None) -> tuple[str, int] | None:
        """(version id, version number) of a live version of the key, or None."""
        found = self.find(key)
        if found is None:
            return None
        owner, n = found
        with self.lock:
            first = n * owner.versions
            if version is None:
                pos = owner.deleted.find(0, first, first + owner.versions)
                if pos < 0:
                    return None
                slot = pos - first
            else:
                slot_or_none = owner.slot(n, version)
                if slot_or_none is None or owner.deleted[first + slot_or_none]:
                    return None
                slot = slot_or_none
            return owner.version_id(n, slot), owner.versions - 1 - slot


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a worker killed mid-request) is no error of the stub's: no traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _xml(root: str, body: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">{body}</{root}>'.encode()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: boto3 reuses its pooled connections
    # One segment per answer, sent at once: headers and body written apart would wait out the client's
    # delayed ACK (Nagle), ~40 ms per request.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    server_version = "lethe-stub-s3"
    stub: StubS3

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("x-amz-request-id", "STUB")
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/xml")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, error: S3Error) -> None:
        # S3's error documents carry no namespace (botocore does not find a namespaced Code).
        body = b"" if self.command == "HEAD" else (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{error.code}</Code>'
            f"<Message>{escape(error.message)}</Message><RequestId>STUB</RequestId></Error>").encode()
        self._send(error.status, body)

    def _route(self) -> tuple[str, str, dict[str, str]]:
        parts = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        path = unquote(parts.path)
        host = self.headers.get("Host", "").split(":")[0]
        stub_bucket = self.stub.bucket
        if host.startswith(stub_bucket + "."):  # virtual-hosted style
            return stub_bucket, path.lstrip("/"), query
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, key, query

    def _handle(self) -> None:
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            bucket, key, query = self._route()
            if bucket != self.stub.bucket:
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
            operation, answer = self._dispatch(key, query, body)
            with self.stub.lock:
                self.stub.requests[operation] += 1
            answer()
            with self.stub.lock:
                now = time.perf_counter()
                self.stub.spans.setdefault(operation, [now, now])[1] = now
        except S3Error as exc:
            self._error(exc)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    # -- operations -------------------------------------------------------------------------------
    def _dispatch(self, key: str, query: dict[str, str], body: bytes) -> tuple[str, Any]:
        method = self.command
        if not key:
            if method == "HEAD":
                return "HeadBucket", lambda: self._send(200, headers={"x-amz-bucket-region": "us-east-1"})
            if method == "GET" and "versions" in query:
                return "ListObjectVersions", lambda: self._list_versions(query)
            if method == "GET" and "versioning" in query:
                return "GetBucketVersioning", lambda: self._send(
                    200, _xml("VersioningConfiguration", "<Status>Enabled</Status>"))
            if method == "GET" and "location" in query:
                return "GetBucketLocation", lambda: self._send(200, _xml("LocationConstraint", ""))
            if method == "GET" and "object-lock" in query:
                raise S3Error(404, "ObjectLockConfigurationNotFoundError",
                              "Object Lock configuration does not exist for this bucket")
            if method == "POST" and "delete" in query:
                return "DeleteObjects", lambda: self._delete_objects(body)
        else:
            if method == "GET" and ("legal-hold" in query or "retention" in query):
                raise S3Error(404, "NoSuchObjectLockConfiguration",
                              "The specified object does not have a ObjectLock configuration")
            if method in ("HEAD", "GET") and not (set(query) - {"versionId"}):
                return ("HeadObject" if method == "HEAD" else "GetObject"), lambda: self._object(key, query)
        raise S3Error(501, "NotImplemented", f"the stub does not implement {method} {self.path.split('?')[0]}")

    def _list_versions(self, query: dict[str, str]) -> None:
        prefix = query.get("prefix", "")
        key_marker = query.get("key-marker", "")
        version_marker = query.get("version-id-marker", "")
        if version_marker and not key_marker:
            raise S3Error(400, "InvalidArgument", "A version-id marker cannot be specified without a key marker.")
        if query.get("delimiter"):
            raise S3Error(501, "NotImplemented", "the stub does not list with a delimiter")
        try:
            max_keys = int(query.get("max-keys", MAX_KEYS))
        except ValueError:
            raise S3Error(400, "InvalidArgument", "Provided max-keys not an integer or within integer range") \
                from None
        if max_keys < 0:
            raise S3Error(400, "InvalidArgument", "Argument maxKeys must be an integer between 0 and 2147483647")
        max_keys = min(max_keys, MAX_KEYS)
        entries, truncated = self.stub.list_versions(prefix, key_marker, version_marker, max_keys)
        url = query.get("encoding-type") == "url"

        def enc(value: str) -> str:
            return escape(quote(value, safe="/") if url else value)

        parts = [f"<Name>{escape(self.stub.bucket)}</Name><Prefix>{enc(prefix)}</Prefix>",
                 f"<KeyMarker>{enc(key_marker)}</KeyMarker><VersionIdMarker>{escape(version_marker)}</VersionIdMarker>"]
        if truncated and entries:
            parts.append(f"<NextKeyMarker>{enc(entries[-1][0])}</NextKeyMarker>"
                         f"<NextVersionIdMarker>{escape(entries[-1][1])}</NextVersionIdMarker>")
        parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if url:
            parts.append("<EncodingType>url</EncodingType>")
        parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        for key, version, latest in entries:
            parts.append(f"<Version><Key>{enc(key)}</Key><VersionId>{version}</VersionId>"
                         f"<IsLatest>{'true' if latest else 'false'}</IsLatest><LastModified>{LAST_MODIFIED}"
                         f"</LastModified><ETag>{escape(ETAG)}</ETag><Size>0</Size>{OWNER}"
                         f"<StorageClass>STANDARD</StorageClass></Version>")
        self._send(200, _xml("ListVersionsResult", "".join(parts)))

    def _delete_objects(self, body: bytes) -> None:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise S3Error(400, "MalformedXML", "The XML you provided was not well-formed") from None
        if _local(root.tag) != "Delete":
            raise S3Error(400, "MalformedXML", "The XML you provided was not well-formed")
        quiet = False
        objects: list[tuple[str, str | None]] = []
        for child in root:
            tag = _local(child.tag)
            if tag == "Quiet":
                quiet = (child.text or "").strip().lower() == "true"
            elif tag == "Object":
                fields = {_local(e.tag): e.text or "" for e in child}
                if "Key" not in fields:
                    raise S3Error(400, "MalformedXML", "The XML you provided was not well-formed")
                objects.append((fields["Key"], fields.get("VersionId")))
        if not objects or len(objects) > MAX_KEYS:
            raise S3Error(400, "MalformedXML", "The XML you provided was not well-formed")
        parts = []
        for key, version, code in self.stub.delete(objects):
            vid = f"<VersionId>{escape(version)}</VersionId>" if version is not None else ""
            if code is not None:
                parts.append(f"<Error><Key>{escape(key)}</Key>{vid}<Code>{code}</Code>"
                             f"<Message>{code}</Message></Error>")
            elif not quiet:
                parts.append(f"<Deleted><Key>{escape(key)}</Key>{vid}</Deleted>")
        self._send(200, _xml("DeleteResult", "".join(parts)))

    def _object(self, key: str, query: dict[str, str]) -> None:
        version = query.get("versionId")
        found = self.stub.head(key, version)
        if found is None:
            if version is not None:
                raise S3Error(404, "NoSuchVersion", "The specified version does not exist.")
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
        version_id, number = found
        content = f"{key} v{number}".encode()
        self.send_response(200)
        for name, value in {"x-amz-request-id": "STUB", "x-amz-version-id": version_id, "ETag": ETAG,
                            "Last-Modified": HTTP_DATE, "Content-Type": "application/octet-stream",
                            "Content-Length": str(len(content))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(content)
