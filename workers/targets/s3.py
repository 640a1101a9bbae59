"""S3 (and any S3-compatible endpoint): every object version and delete marker of a subject goes.

Selectors, one of:

- ``prefix: "users/{user_id}/"``: every key under it. The template must end at a ``/`` and hold a
  placeholder, so subject ``12`` never reaches ``users/123/``.
- ``keys_query: {url, sql}``: exact keys looked up in the application's database; the SQL's ``:kind``
  parameters are bound from the request's identifiers (never formatted into the text).

The map's entry (``S3Config``) and the shared client (``s3_client``) live in ``s3_config.py``.

A task lists a subject once to erase it, and once more to verify. Its blast-radius count lists every
version (``ListObjectVersions``, page by page) and keeps the listing (``s3_listing.KeptListing``: in memory
up to ``REMEMBER_MAX`` versions, past that sealed in a temporary file, up to ``SPILL_MAX``); the purge that
follows on the same instance deletes exactly those versions in batches of up to 1,000 (``DeleteObjects``)
without listing again, and verify lists afresh: anything written after the count is residue, and the task is
retried (counted, purged and verified again), never certified. A kept listing holds only (key, version)
pairs the selector matched when count listed them, and is used only by a purge of the very same subject: it
can be late, never wider than the selector (a version id names one version; on an unversioned bucket
``null`` names whatever that same key holds). A count over ``max_items`` keeps its listing too: when the
request's approval covers it (approved in advance), the purge in the same task deletes from it; when it
waits for an admin, the listing goes with the task.

A purge with no kept listing (a later slice of a sliced purge, a retry, a count past ``SPILL_MAX``) streams:
one pass over the listing, as many calls as a hand-written boto3 loop, and memory stays flat (at most two
pages) however many objects a subject has. A page is deleted only once the next page has been listed, so a
listing never continues from a version that is already gone (moto answers that with an empty page, which
would end the purge early and leave residue).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import ClassVar

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from orchestrator.identifiers import Subject
from orchestrator.templates import fill
from workers.targets import scans
from workers.targets.base import (
    Heartbeat,
    HeldError,
    PermanentError,
    RetryableError,
    ScanPage,
    TargetConfig,
)
from workers.targets.s3_config import S3Config, s3_client
from workers.targets.s3_listing import KeptListing

BATCH = 1000  # DeleteObjects' limit
RETRYABLE_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling", "OperationAborted",
     "503", "500", "502", "504"}
)
GONE_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})
KEY_RETRIES = 5  # rounds of re-sending per-key retryable errors inside one DeleteObjects batch
# Versions a task's counts keep in memory for its purge, in all: ~150 bytes each plus the key, ~2 MB for
# short keys (at 100,000 the flat-memory figure's peak grew by a fifth: 93.5 -> 113.1 MiB). Past it they are
# kept on disk, sealed, up to SPILL_MAX (~100 bytes each: ~1 GB); past that, not.
REMEMBER_MAX = 10_000
SPILL_MAX = 10_000_000


class S3Target:
    kind: ClassVar[str] = "s3"
    Config: ClassVar[type[TargetConfig]] = S3Config
    # resumable: every purge lists from the start, and what an earlier slice deleted is no longer listed.
    capabilities: ClassVar[frozenset[str]] = frozenset({"versions", "delete_markers", "keys_query", "resumable"})
    level = "bytes_reclaimed"  # every version and delete marker is gone: nothing is recoverable through S3
    retryable_errors: ClassVar[tuple[type[BaseException], ...]] = (
        EndpointConnectionError,
        ConnectionClosedError,
        ReadTimeoutError,
        ConnectTimeoutError,
    )

    def __init__(self, config: S3Config):
        self.config = config
        self.client = s3_client(config.endpoint_url, config.region)
        self._denied: list[dict[str, str]] = []  # versions refused with AccessDenied: checked for Object Lock
        # What count listed, per subject, for the purge that follows on this instance (one task).
        self._listed: dict[tuple[tuple[str, str], ...], KeptListing] = {}

    # -- the contract -----------------------------------------------------------------------------
    def count(self, subject: Subject) -> int:
        """Lists the subject's versions (exactly: an admin is shown this number and approves up to it) and
        keeps the listing for this instance's purge of the same subject, if it fits in what is left of
        ``SPILL_MAX``."""
        key = _listing_key(subject)
        if key in self._listed:
            self._listed.pop(key).close()
        others = self._listed.values()
        listed: KeptListing | None = KeptListing(REMEMBER_MAX - sum(kept.in_memory for kept in others))
        room = SPILL_MAX - sum(kept.total for kept in others)
        total = 0
        for page in self._pages(subject):
            total += len(page)
            if listed is not None and total > room:
                listed.close()
                listed = None  # over the limit: counted on, not kept
            elif listed is not None:
                listed.add([(entry["Key"], entry["VersionId"]) for entry in page])
        if listed is not None:
            self._listed[key] = listed
        return total

    def verify(self, subject: Subject) -> int:
        """Lists afresh, always: what count kept is never taken as the store's word."""
        return sum(len(page) for page in self._pages(subject))

    def _object_lock(self, entries: list[dict[str, str]]) -> str | None:
        """Why S3 refuses to delete these versions, if it is Object Lock: a legal hold or a retention."""
        for entry in entries:
            args = {"Bucket": self.config.bucket, "Key": entry["Key"], "VersionId": entry["VersionId"]}
            try:
                # moto answers a version without a hold with an empty LegalHold; S3 with an error.
                if self.client.get_object_legal_hold(**args).get("LegalHold", {}).get("Status") == "ON":
                    return "legal hold"
            except ClientError:
                pass  # no legal hold configured on this version
            try:
                retention = self.client.get_object_retention(**args)["Retention"]
                until = retention.get("RetainUntilDate")
                if until is not None and until > datetime.now(UTC):
                    return f"{retention.get('Mode', 'retention').lower()} retention until {until.date().isoformat()}"
            except ClientError:
                pass  # no retention on this version
        return None

    def purge(self, subject: Subject, heartbeat: Heartbeat) -> int:
        """Deletes what this instance's count listed for the subject, if it kept the listing (listing again
        only in verify), or else streams: one pass over a fresh listing."""
        self._denied = []
        refused: Counter[str] = Counter()
        listed = self._listed.pop(_listing_key(subject), None)  # used once: a retry or a later slice lists
        if listed is None:
            deleted = self._purge_listing(subject, heartbeat, refused)
        else:
            deleted = 0
            try:
                for pairs in listed.batches(BATCH):
                    deleted += self._delete([{"Key": key, "VersionId": version} for key, version in pairs], refused)
                    heartbeat(deleted)  # once per batch; a slice may end here (the next one lists afresh)
                if not listed.total:
                    heartbeat(0)
            finally:
                listed.close()
        if refused.get("AccessDenied"):
            lock = self._object_lock(self._denied)
            if lock:
                raise HeldError(f"S3 Object Lock keeps {refused['AccessDenied']} version(s) on bucket "
                                f"{self.config.bucket}: {lock}")
        if refused:
            codes = ", ".join(f"{code} x{n}" for code, n in sorted(refused.items()))
            raise PermanentError(
                f"S3 DeleteObjects on bucket {self.config.bucket} refused some versions: {codes}"
            )
        return deleted

    def _purge_listing(self, subject: Subject, heartbeat: Heartbeat, refused: Counter[str]) -> int:
        deleted = 0
        # Listed, not yet deleted. The newest page stays here until the next page is listed: that listing
        # continues from the newest page's last version, which must still exist (see the module docstring).
        # One pass lists every version once, so a version S3 refused is never offered again.
        pending: list[dict[str, str]] = []
        for page in self._pages(subject):
            while len(pending) >= BATCH:
                deleted += self._delete(pending[:BATCH], refused)
                del pending[:BATCH]
            pending += page
            heartbeat(deleted)  # once per page; a slice may end here (what is pending is listed again)
        while pending:
            deleted += self._delete(pending[:BATCH], refused)
            del pending[:BATCH]
        heartbeat(deleted)
        return deleted

    # -- probe (check-map --probe) ---------------------------------------------------------------------
    def probe(self, earlier: object) -> list[str]:
        """The bucket exists and answers (HeadBucket), and nothing in its settings keeps a purge from
        deleting versions: MFA Delete (DeleteObjectVersion then needs a token lethe does not have) or an
        Object Lock default retention (every new version is locked: its erasure waits, held). Three
        bucket-level calls; nothing is listed."""
        bucket = self.config.bucket
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status == 404:
                return [f"S3 bucket {bucket} does not exist"]
            if status == 403:
                return [f"S3 bucket {bucket}: access denied (HeadBucket needs s3:ListBucket)"]
            return [f"S3 HeadBucket on bucket {bucket}: HTTP {status or exc.response.get('Error', {}).get('Code')}"]
        except S3Target.retryable_errors as exc:
            return [f"S3 endpoint cannot be reached for bucket {bucket} ({type(exc).__name__})"]
        problems: list[str] = []
        with _translate("GetBucketVersioning", bucket):
            if self.client.get_bucket_versioning(Bucket=bucket).get("MFADelete") == "Enabled":
                problems.append(f"S3 bucket {bucket} has MFA Delete enabled: lethe cannot delete its versions")
        try:
            lock = self.client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                raise
        else:
            default = lock.get("Rule", {}).get("DefaultRetention")
            if lock.get("ObjectLockEnabled") == "Enabled" and default:
                span = f"{default.get('Days') or default.get('Years')} {'days' if 'Days' in default else 'years'}"
                problems.append(f"S3 bucket {bucket} has an Object Lock default retention ({default.get('Mode')}, "
                                f"{span}): a subject's newer versions wait, held, until it ends")
        return problems

    # -- scan (lethe replay, the resurrection watch: base.Scanned) --------------------------------
    def unscannable(self) -> str | None:
        if self.config.prefix is None:
            return (f"target {self.config.name} finds its keys with keys_query, so its bucket cannot be scanned "
                    "for subjects; re-file the restored subjects with `lethe submit` or a data_written event")
        return scans.unscannable_kinds(self.config)

    def scan(self, after: object | None, limit: int) -> ScanPage:
        assert self.config.prefix is not None
        with _translate("ListObjectVersions", self.config.bucket):
            return scans.scan_s3(self.client, self.config.bucket, scans.Reverse(self.config.prefix), after, limit)

    # -- selection --------------------------------------------------------------------------------
    def _pages(self, subject: Subject) -> Iterator[list[dict[str, str]]]:
        """Every (key, version) the selector matches, delete markers included, one listing page at a time
        (an empty list for a page with none of the subject's)."""
        if self.config.prefix is not None:
            prefix: str = fill(self.config.prefix, subject)
            yield from self._versions(prefix, exact=None)
        else:
            for key in self._query_keys(subject):
                yield from self._versions(key, exact=key)

    def _versions(self, prefix: str, exact: str | None) -> Iterator[list[dict[str, str]]]:
        paginator = self.client.get_paginator("list_object_versions")
        with _translate("ListObjectVersions", self.config.bucket):
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
                entries: list[dict[str, str]] = []
                for item in (*page.get("Versions", ()), *page.get("DeleteMarkers", ())):
                    key = item["Key"]
                    if exact is not None and key != exact:
                        continue  # Prefix=key also lists longer keys; only the exact key is the subject's
                    if not key.startswith(prefix):
                        raise PermanentError(
                            "S3 listing returned a key outside the selector; nothing deleted"
                        )
                    entries.append({"Key": key, "VersionId": item["VersionId"]})
                yield entries

    def _query_keys(self, subject: Subject) -> Iterator[str]:
        assert self.config.keys_query is not None
        seen: set[str] = set()  # a key on several rows (one photo in two albums) is one object
        for key in self.config.keys_query.values(subject, BATCH, "keys_query"):
            if not isinstance(key, str) or not key or len(key) > 1024:
                raise PermanentError("keys_query returned a value that is not an object key")
            if key not in seen:
                seen.add(key)
                yield key

    # -- deletion ---------------------------------------------------------------------------------
    def _delete(self, batch: list[dict[str, str]], refused: Counter[str]) -> int:
        """Delete one batch; per-key retryable errors are re-sent with backoff, others counted as refused."""
        deleted = 0
        pending = batch
        for round_ in range(KEY_RETRIES + 1):
            with _translate("DeleteObjects", self.config.bucket):
                answer = self.client.delete_objects(
                    Bucket=self.config.bucket, Delete={"Objects": pending, "Quiet": True}
                )
            errors = answer.get("Errors", [])
            deleted += len(pending) - len(errors)
            retry: list[dict[str, str]] = []
            # Some stores leave VersionId out of an error: match it to a version of that key we sent.
            unmatched: dict[str, list[str]] = {}
            for sent in pending:
                unmatched.setdefault(sent["Key"], []).append(sent["VersionId"])
            for err in errors:
                code = err.get("Code", "Unknown")
                versions = unmatched.get(err["Key"], [])
                version = err.get("VersionId") or (versions[0] if versions else "null")
                if version in versions:
                    versions.remove(version)
                entry = {"Key": err["Key"], "VersionId": version}
                if code in RETRYABLE_CODES:
                    retry.append(entry)
                    continue
                if code not in GONE_CODES:  # already gone is success
                    refused[code] += 1
                    if code == "AccessDenied" and len(self._denied) < 3:
                        self._denied.append(entry)
            if not retry:
                return deleted
            pending = retry
            if round_ < KEY_RETRIES:
                time.sleep(min(8.0, 0.2 * 2**round_) * (0.5 + random.random()))
        raise RetryableError(f"S3 DeleteObjects on bucket {self.config.bucket}: keys still throttled")


def _listing_key(subject: Subject) -> tuple[tuple[str, str], ...]:
    """The subject a kept listing belongs to: only a purge of the very same values deletes from it."""
    return tuple(sorted(subject.items()))


@contextmanager
def _translate(operation: str, bucket: str) -> Iterator[None]:
    """Vendor errors become TargetErrors whose text names the operation and code, never a key."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"S3 {operation} on bucket {bucket}: {code}"
        if code in RETRYABLE_CODES or status >= 500:
            raise RetryableError(message) from None
        raise PermanentError(message) from None
    except S3Target.retryable_errors as exc:
        raise RetryableError(f"S3 {operation} on bucket {bucket}: {type(exc).__name__}") from None
