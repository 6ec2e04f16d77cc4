"""An S3 (object store) target through s3fs: verified objects only, and a presigned manifest URL.

Object stores cannot rename, so the file engine's "write a part file, verify, rename" becomes:

* a file that fits in one part is buffered, its size and CRC32 checked against ICAT, and only
  then PUT (a PUT is atomic: the key shows nothing or the whole object);
* a larger file goes up as a multipart upload whose parts are invisible until
  `CompleteMultipartUpload`, which is called only after the size and CRC32 of all the bytes
  matched; on a mismatch or any error the upload is aborted. A killed process leaves an
  incomplete upload (never an object under the final key); `abort_incomplete_uploads` removes
  those, and a bucket lifecycle rule (`AbortIncompleteMultipartUpload`) is the backstop.

A multipart ETag is not an MD5, so integrity comes from the CRC32 computed while streaming; it
is stored as user metadata (`x-amz-meta-pollcat-crc32`) so a rerun skips an object that already
matches without reading it back.

The user's access is a presigned GET URL to the download's manifest (SigV4 allows at most 7
days); the manifest lists the objects. Keys follow the layout: `<prefix>/<rel_path>`.
"""

from __future__ import annotations

import http.client
import json
import logging
import posixpath
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pollcat.errors import (
    ChecksumMismatch,
    ConfigurationError,
    PollcatError,
    ResumeNotSupported,
    SizeMismatch,
    TargetError,
    TransientError,
)
from pollcat.layout import check_relpath
from pollcat.transfer import FileJob, FileResult, crc_matches, format_crc, parse_crc

log = logging.getLogger("pollcat.s3target")

MIN_PART = 5 * 1024 * 1024          # S3's minimum for every part but the last
MAX_PART = 5 * 1024 * 1024 * 1024
DEFAULT_PART = 16 * 1024 * 1024
MAX_PARTS = 10_000                  # S3's limit of parts per upload
MAX_PRESIGN_S = 7 * 24 * 3600       # SigV4 presigned URLs: at most 604800 s
CRC_META = "pollcat-crc32"

#: Source errors that mean "the connection broke": reopen at the current offset.
SOURCE_BROKEN: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException,
                                                   TransientError)


@dataclass(frozen=True)
class S3Settings:
    """What an S3 target block holds (see docs/globus-s3.md)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    region: str | None = None
    addressing_style: str = "auto"      # "path" for most on-premises stores (Ceph RGW, MinIO)
    part_size: int = DEFAULT_PART
    presign_expiry_s: int = MAX_PRESIGN_S

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise ConfigurationError(f"S3 bucket {self.bucket!r} is not a bucket name")
        if self.prefix.strip("/"):
            check_relpath(self.prefix.strip("/"))
        if not MIN_PART <= self.part_size <= MAX_PART:
            raise ConfigurationError(f"S3 part_size must be between {MIN_PART} and "
                                     f"{MAX_PART} bytes, not {self.part_size}")
        if not 1 <= self.presign_expiry_s <= MAX_PRESIGN_S:
            raise ConfigurationError(f"S3 presign_expiry_s must be 1..{MAX_PRESIGN_S} (7 days, "
                                     f"the SigV4 limit), not {self.presign_expiry_s}")


def make_filesystem(settings: S3Settings) -> Any:
    """An s3fs filesystem for the settings.

    SigV4 is forced: botocore may otherwise presign with the deprecated SigV2 for custom
    endpoints, and the 7-day presign limit pollcat documents is SigV4's. No listings cache:
    pollcat checks fresh state."""
    import s3fs

    client_kwargs: dict[str, Any] = {}
    if settings.endpoint_url:
        client_kwargs["endpoint_url"] = settings.endpoint_url
    if settings.region:
        client_kwargs["region_name"] = settings.region
    return s3fs.S3FileSystem(key=settings.access_key_id, secret=settings.secret_access_key,
                             client_kwargs=client_kwargs, use_listings_cache=False,
                             config_kwargs={"signature_version": "s3v4",
                                            "s3": {"addressing_style": settings.addressing_style}})


def part_size_for(size: int, configured: int) -> int:
    """The configured part size, grown (in whole MiB) so a file fits in S3's 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    needed = -(-needed // (1 << 20)) * (1 << 20)
    return min(max(configured, needed), MAX_PART)


def _verify(job: FileJob, size: int, crc: int, download_id: int | None) -> None:
    """The bytes seen must be ICAT's: size first, then CRC32 (a transient error: fetch again)."""
    if size != job.size:
        raise SizeMismatch(f"got {size} bytes, ICAT says {job.size}", datafile=job.name,
                           download_id=download_id)
    if not crc_matches(job.checksum, crc):
        raise ChecksumMismatch(f"CRC32 is {format_crc(crc)}, ICAT says {job.checksum}",
                               datafile=job.name, download_id=download_id)


@contextmanager
def s3_errors(what: str, *, datafile: str | None = None,
              download_id: int | None = None) -> Iterator[None]:
    """The store refusing (no bucket, no permission) is permanent; anything else transient."""
    try:
        yield
    except (PermissionError, FileNotFoundError) as exc:
        raise TargetError(f"S3 refused {what}: {exc}", datafile=datafile,
                          download_id=download_id, service="s3") from exc
    except OSError as exc:
        raise TransientError(f"S3 failed {what}: {exc}", datafile=datafile,
                             download_id=download_id, service="s3") from exc


@dataclass
class S3Removal:
    """What `S3Target.remove_delivery` did (or would do, on a dry run)."""

    removed: int = 0  # objects deleted, the manifest included
    aborted: int = 0  # incomplete multipart uploads aborted
    left: list[str] = field(default_factory=list)
    refused: str | None = None  # not provably pollcat's: nothing touched

    @property
    def nothing(self) -> bool:
        return not (self.removed or self.aborted or self.left or self.refused)


class _VerifiedUpload:
    """Bytes for one key, made visible only by `commit()`, which the caller calls after the
    size and CRC32 verified.

    The CRC32 is recorded as user metadata. S3 fixes a multipart object's metadata when the
    upload is created, before the bytes are seen, so a multipart upload records ICAT's CRC32
    (true once `commit` is reached, since the bytes matched it); without an ICAT CRC32 it
    records none and a rerun uploads the file again rather than trusting it."""

    def __init__(self, fs: Any, bucket: str, key: str, part_size: int,
                 expected_crc: int | None):
        self.fs, self.bucket, self.key, self.part_size = fs, bucket, key, part_size
        self.expected_crc = expected_crc
        self.buffer = bytearray()
        self.size = 0
        self.crc = 0
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)
        self.buffer += data
        while len(self.buffer) >= self.part_size:
            self._send_part(bytes(self.buffer[:self.part_size]))
            del self.buffer[:self.part_size]

    def _send_part(self, body: bytes) -> None:
        if self.upload_id is None:
            metadata = ({CRC_META: format_crc(self.expected_crc)}
                        if self.expected_crc is not None else {})
            self.upload_id = self.fs.call_s3("create_multipart_upload", Bucket=self.bucket,
                                             Key=self.key, Metadata=metadata)["UploadId"]
        number = len(self.parts) + 1
        answer = self.fs.call_s3("upload_part", Bucket=self.bucket, Key=self.key,
                                 UploadId=self.upload_id, PartNumber=number, Body=body)
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def commit(self) -> None:
        if self.upload_id is None:
            self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key,
                            Body=bytes(self.buffer), Metadata={CRC_META: format_crc(self.crc)})
            return
        if self.buffer:
            self._send_part(bytes(self.buffer))
            self.buffer.clear()
        self.fs.call_s3("complete_multipart_upload", Bucket=self.bucket, Key=self.key,
                        UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.upload_id = None

    def abort(self) -> None:
        if self.upload_id is None:
            return
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=self.key,
                            UploadId=self.upload_id)
        except OSError as exc:  # the lifecycle rule / abort_incomplete_uploads cleans up
            log.warning("could not abort the multipart upload of %s: %s", self.key, exc)
        self.upload_id = None


class _ResumingSource:
    """The bytes of `job.open(offset)`, reopened at the offset reached when the source breaks."""

    def __init__(self, job: FileJob, chunk: int, max_resumes: int):
        self.job, self.chunk, self.max_resumes = job, chunk, max_resumes
        self.resumes = 0

    def __iter__(self) -> Iterator[bytes]:
        assert self.job.open is not None
        offset = 0
        source = self.job.open(0)
        try:
            while True:
                try:
                    data = source.read(self.chunk)
                except SOURCE_BROKEN as exc:
                    if isinstance(exc, ResumeNotSupported) or self.resumes >= self.max_resumes:
                        raise
                    self.resumes += 1
                    log.info("%s: source broke at byte %d (%s); reopening", self.job.name,
                             offset, exc)
                    _close_quietly(source)
                    source = self.job.open(offset)
                    continue
                if not data:
                    return
                offset += len(data)
                yield data
        finally:
            _close_quietly(source)


def _close_quietly(source: Any) -> None:
    try:
        source.close()
    except Exception as exc:  # a broken source may fail to close too
        log.debug("closing a source failed: %s", exc)


class S3Target:
    """Deliver files and the manifest of downloads into one bucket/prefix."""

    def __init__(self, settings: S3Settings, fs: Any | None = None):
        self.settings = settings
        self.fs = fs if fs is not None else make_filesystem(settings)

    # naming

    def key_for(self, rel_path: str) -> str:
        """The object key for a layout path (checked: no `..`, no empty components)."""
        check_relpath(rel_path)
        prefix = self.settings.prefix.strip("/")
        return f"{prefix}/{rel_path}" if prefix else rel_path

    def path_for(self, rel_path: str) -> str:
        return f"{self.settings.bucket}/{self.key_for(rel_path)}"

    # writing

    def write_file(self, job: FileJob, chunks: Iterable[bytes], *,
                   download_id: int | None = None) -> FileResult:
        """Store one datafile under its final key only if size and CRC32 match ICAT.

        An object already there with the right size and recorded CRC32 is kept and `chunks`
        is not consumed. A mismatch raises SizeMismatch / ChecksumMismatch (transient: the
        file is fetched again) and leaves no object and no upload behind."""
        started = time.monotonic()
        key = self.key_for(job.rel_path)
        what = f"writing s3://{self.settings.bucket}/{key}"
        with s3_errors(what, datafile=job.name, download_id=download_id):
            crc = self._existing_match(key, job)
        if crc is not None:
            return FileResult(job.datafile_id, job.rel_path, job.size,
                              time.monotonic() - started, crc, skipped=True)
        upload = _VerifiedUpload(self.fs, self.settings.bucket, key, part_size_for(
            job.size, self.settings.part_size), parse_crc(job.checksum))
        try:
            for data in chunks:  # a failing source raises its own error, untranslated
                with s3_errors(what, datafile=job.name, download_id=download_id):
                    upload.feed(data)
                if upload.size > job.size:
                    break
            _verify(job, upload.size, upload.crc, download_id)
            with s3_errors(what, datafile=job.name, download_id=download_id):
                upload.commit()
        except BaseException:
            upload.abort()
            raise
        log.info("download %s: stored s3://%s/%s (%d bytes, CRC32 %s)", download_id,
                 self.settings.bucket, key, upload.size, format_crc(upload.crc))
        return FileResult(job.datafile_id, job.rel_path, upload.size,
                          time.monotonic() - started, upload.crc, fetched=upload.size)

    def deliver(self, job: FileJob, *, chunk: int = 1 << 20, max_resumes: int = 5,
                download_id: int | None = None) -> FileResult:
        """Fetch `job.open(offset)` into `write_file`, reopening at the current offset when
        the source breaks (the parts already sent stay in the upload), up to `max_resumes`
        times; a source that cannot resume (`ResumeNotSupported`) fails the attempt."""
        if job.open is None:
            raise ValueError(f"datafile {job.name!r} has no source to open")
        stream = _ResumingSource(job, chunk, max_resumes)
        result = self.write_file(job, stream, download_id=download_id)
        result.resumed = stream.resumes
        return result

    def _existing_match(self, key: str, job: FileJob) -> int | None:
        try:
            head = self.fs.call_s3("head_object", Bucket=self.settings.bucket, Key=key)
        except FileNotFoundError:
            return None
        recorded = parse_crc(head.get("Metadata", {}).get(CRC_META))
        expected = parse_crc(job.checksum)
        if head.get("ContentLength") != job.size or recorded is None:
            return None
        if expected is not None and expected != recorded:
            return None
        return recorded

    def write_bytes(self, rel_path: str, data: bytes, *, content_type: str = "application/json",
                    download_id: int | None = None) -> str:
        """Store a small object (the manifest) in one atomic PUT; returns its key."""
        key = self.key_for(rel_path)
        with s3_errors(f"writing s3://{self.settings.bucket}/{key}", download_id=download_id):
            self.fs.call_s3("put_object", Bucket=self.settings.bucket, Key=key, Body=data,
                            ContentType=content_type,
                            Metadata={CRC_META: format_crc(zlib.crc32(data))})
        return key

    # access and clean-up

    def presigned_url(self, rel_path: str, *, expires_s: int | None = None,
                      download_id: int | None = None) -> str:
        """A GET URL for one object (the manifest), valid at most 7 days: TopCAT's customValue.

        Signed with the block's credentials: temporary credentials end the URL earlier."""
        expires = min(expires_s or self.settings.presign_expiry_s, MAX_PRESIGN_S)
        with s3_errors(f"presigning {rel_path}", download_id=download_id):
            return self.fs.url(self.path_for(rel_path), expires=expires)

    def remove_delivery(self, rel_dir: str, *, download_id: int, expired: bool = False,
                        removed_before: bool = False, dry_run: bool = False) -> S3Removal:
        """Retention of one download under `rel_dir` (`pollcat cleanup`).

        With its manifest object (naming this download): the objects it lists, each only while
        its size is the listed one, then the download's incomplete uploads, then the manifest
        last. A manifest naming another download: refused, nothing touched. Without a manifest
        (an EXPIRED download, never delivered): its incomplete uploads, and the objects under
        `rel_dir/` that carry pollcat's CRC32 metadata (verified objects pollcat stored); any
        other object is left and reported. Nothing there at all: `gone`. `dry_run` changes
        nothing. After an earlier removal (`removed_before`) only a manifest is acted on: what
        is left without one was left on purpose."""
        from pollcat.manifest import MANIFEST_NAME, Manifest

        rel = rel_dir.strip("/")
        bucket = self.settings.bucket
        out = S3Removal()
        with s3_errors(f"cleaning up s3://{bucket}/{self.key_for(rel)}",
                       download_id=download_id):
            manifest_key = self.key_for(f"{rel}/{MANIFEST_NAME}")
            try:
                raw = self.fs.cat_file(f"{bucket}/{manifest_key}")
                manifest: Manifest | None = Manifest.from_json(json.loads(raw))
            except FileNotFoundError:
                manifest = None
            except (ValueError, KeyError, TypeError) as exc:
                out.refused = f"unreadable manifest: {exc}"
                return out
            if manifest is not None and (manifest.download_id != download_id or (
                    manifest.dir and manifest.dir != rel)):
                out.refused = (f"the manifest is for download {manifest.download_id} in "
                               f"{manifest.dir!r}, not this record: left alone")
                return out
            if manifest is not None:
                for f in manifest.files:
                    try:
                        key = self.key_for(posixpath.join(rel, f.path))
                    except PollcatError as exc:
                        out.left.append(f"{f.path} ({exc.message})")
                        continue
                    try:
                        head = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
                    except FileNotFoundError:
                        continue
                    if head.get("ContentLength") != f.size:
                        out.left.append(f"{f.path} (changed since delivery)")
                        continue
                    self._delete(key, out, dry_run)
            elif removed_before:
                pass
            elif expired:
                for key in self._keys(self.key_for(rel) + "/"):
                    head = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
                    if CRC_META in head.get("Metadata", {}):
                        self._delete(key, out, dry_run)
                    else:
                        out.left.append(f"{key} (not stored by pollcat)")
            elif self._keys(self.key_for(rel) + "/"):
                out.refused = "no manifest: not provably pollcat's delivery"
                return out
        if not dry_run:
            out.aborted = len(self.abort_incomplete_uploads(rel))
        if manifest is not None:
            with s3_errors(f"deleting s3://{bucket}/{manifest_key}", download_id=download_id):
                self._delete(manifest_key, out, dry_run)
        return out

    def _keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            answer = self.fs.call_s3("list_objects_v2", Bucket=self.settings.bucket,
                                     Prefix=prefix, **token)
            keys += [o["Key"] for o in answer.get("Contents", [])]
            if not answer.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": answer["NextContinuationToken"]}

    def _delete(self, key: str, out: S3Removal, dry_run: bool) -> None:
        if not dry_run:
            self.fs.call_s3("delete_object", Bucket=self.settings.bucket, Key=key)
        out.removed += 1

    def remove_download(self, rel_dir: str, *, download_id: int | None = None) -> None:
        """Delete every object of a download (the expiry step; a lifecycle rule is a backstop)."""
        path = self.path_for(rel_dir.strip("/"))
        with s3_errors(f"deleting {path}", download_id=download_id):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def abort_incomplete_uploads(self, rel_prefix: str = "") -> list[str]:
        """Abort the multipart uploads a killed run left under `rel_prefix` (a download's
        directory, before it is delivered again or removed); returns their keys.

        Not for a prefix with deliveries in flight: their uploads would be aborted too (their
        completion then fails and the file is fetched again)."""
        rel = rel_prefix.strip("/")
        prefix = self.key_for(rel) + "/" if rel else self.settings.prefix.strip("/")
        aborted: list[str] = []
        markers: dict[str, str] = {}
        with s3_errors(f"aborting incomplete uploads under {prefix!r}"):
            while True:
                listing = self.fs.call_s3("list_multipart_uploads", Bucket=self.settings.bucket,
                                          Prefix=prefix, **markers)
                for upload in listing.get("Uploads", []):
                    self.fs.call_s3("abort_multipart_upload", Bucket=self.settings.bucket,
                                    Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted.append(upload["Key"])
                if not listing.get("IsTruncated"):
                    return aborted
                markers = {"KeyMarker": listing["NextKeyMarker"],
                           "UploadIdMarker": listing["NextUploadIdMarker"]}
