"""pollcat.s3target against moto's S3 in server mode (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollcat.errors import (
    ChecksumMismatch,
    ConfigurationError,
    PermanentError,
    SizeMismatch,
    TransientError,
    UnsafePathError,
)
from pollcat.s3target import MAX_PRESIGN_S, MIN_PART, S3Settings, S3Target, part_size_for
from pollcat.transfer import FileJob, format_crc

moto_server = pytest.importorskip("moto.server")

KEY_ID, SECRET = "pollcat-test-key", "pollcat-test-secret-value"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def settings(endpoint) -> S3Settings:
    bucket = f"deliveries-{uuid.uuid4().hex[:12]}"
    s = S3Settings(bucket=bucket, prefix="users", endpoint_url=endpoint, access_key_id=KEY_ID,
                   secret_access_key=SECRET, region="us-east-1", addressing_style="path",
                   part_size=MIN_PART)
    S3Target(s).fs.call_s3("create_bucket", Bucket=bucket)
    return s


@pytest.fixture
def target(settings) -> S3Target:
    return S3Target(settings)


def job_for(data: bytes, rel: str = "alice/dl-1/run/scan.nxs", *, crc: str | None = None,
            size: int | None = None) -> FileJob:
    return FileJob(datafile_id=1, name=rel.rsplit("/", 1)[-1], rel_path=rel,
                   size=len(data) if size is None else size,
                   checksum=crc if crc is not None else format_crc(zlib.crc32(data)))


def chunked(data: bytes, n: int = 1 << 20) -> Iterator[bytes]:
    for i in range(0, len(data), n):
        yield data[i:i + n]


def objects(target: S3Target) -> list[str]:
    answer = target.fs.call_s3("list_objects_v2", Bucket=target.settings.bucket)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def uploads(target: S3Target) -> list[dict]:
    return target.fs.call_s3("list_multipart_uploads",
                             Bucket=target.settings.bucket).get("Uploads", [])


BIG = os.urandom(2 * MIN_PART + 12345)   # three parts


def test_small_file_appears_verified_in_one_put(target):
    data = b"hello pollcat\n" * 100
    result = target.write_file(job_for(data), chunked(data, 97), download_id=5)
    key = "users/alice/dl-1/run/scan.nxs"
    assert objects(target) == [key]
    assert target.fs.cat(f"{target.settings.bucket}/{key}") == data
    assert (result.bytes, result.crc32, result.fetched, result.skipped) == (
        len(data), zlib.crc32(data), len(data), False)
    head = target.fs.call_s3("head_object", Bucket=target.settings.bucket, Key=key)
    assert head["Metadata"]["pollcat-crc32"] == format_crc(zlib.crc32(data))


def test_large_file_goes_up_as_a_verified_multipart_upload(target):
    result = target.write_file(job_for(BIG), chunked(BIG))
    key = "users/alice/dl-1/run/scan.nxs"
    assert objects(target) == [key]
    assert target.fs.cat(f"{target.settings.bucket}/{key}") == BIG
    head = target.fs.call_s3("head_object", Bucket=target.settings.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # really a three-part upload
    assert uploads(target) == [] and result.crc32 == zlib.crc32(BIG)


@pytest.mark.parametrize("data", [b"x" * 1000, BIG], ids=["single-put", "multipart"])
def test_wrong_crc_leaves_no_object_and_no_upload(target, data):
    with pytest.raises(ChecksumMismatch) as info:
        target.write_file(job_for(data, crc="deadbeef"), chunked(data), download_id=9)
    assert isinstance(info.value, TransientError) and info.value.download_id == 9
    assert objects(target) == [] and uploads(target) == []


@pytest.mark.parametrize("claimed", [len(BIG) + 1, len(BIG) - 1])
def test_wrong_size_leaves_no_object(target, claimed):
    with pytest.raises(SizeMismatch):
        target.write_file(job_for(BIG, size=claimed), chunked(BIG))
    assert objects(target) == [] and uploads(target) == []


def test_source_breaking_mid_stream_aborts_the_upload(target):
    def broken() -> Iterator[bytes]:
        yield from chunked(BIG[:MIN_PART + 1000])
        raise ConnectionResetError("IDS went away")

    with pytest.raises(ConnectionResetError):
        target.write_file(job_for(BIG), broken())
    assert objects(target) == [] and uploads(target) == []


def test_killed_upload_leaves_nothing_under_the_final_key(target, settings):
    script = textwrap.dedent(f"""
        import sys, time, zlib
        from pollcat.s3target import S3Settings, S3Target
        from pollcat.transfer import FileJob, format_crc
        data = bytes(range(256)) * ({2 * MIN_PART} // 256 + 1)
        job = FileJob(1, "scan.nxs", "alice/dl-1/scan.nxs", len(data),
                      format_crc(zlib.crc32(data)))
        def chunks():
            yield data[:{MIN_PART + 10}]
            print("first part sent", flush=True)
            time.sleep(600)
        S3Target(S3Settings(**{settings.__dict__!r})).write_file(job, chunks())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while not any(u["Key"] == "users/alice/dl-1/scan.nxs" for u in uploads(target)):
            assert proc.poll() is None and time.monotonic() < deadline, "upload never started"
            time.sleep(0.1)
        time.sleep(0.5)   # let the first part land
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert objects(target) == []
    assert target.abort_incomplete_uploads("alice") == ["users/alice/dl-1/scan.nxs"]
    assert uploads(target) == []


def test_rerun_keeps_a_matching_object_without_reading_the_source(target):
    data = b"a" * 4096
    target.write_file(job_for(data), chunked(data))

    def must_not_read() -> Iterator[bytes]:
        raise AssertionError("source read although the object matches")
        yield b""

    result = target.write_file(job_for(data), must_not_read())
    assert result.skipped and result.crc32 == zlib.crc32(data)


def test_a_wrong_existing_object_is_replaced(target):
    target.write_bytes("alice/dl-1/run/scan.nxs", b"stale bytes")
    data = b"fresh" * 999
    result = target.write_file(job_for(data), chunked(data))
    assert not result.skipped
    assert target.fs.cat(target.path_for("alice/dl-1/run/scan.nxs")) == data


def test_presigned_manifest_url_is_fetchable_and_capped_at_seven_days(target):
    manifest = b'{"files": ["run/scan.nxs"]}'
    target.write_bytes("alice/dl-1/MANIFEST.json", manifest)
    url = target.presigned_url("alice/dl-1/MANIFEST.json")
    assert f"X-Amz-Expires={MAX_PRESIGN_S}" in url
    assert SECRET not in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == manifest
    short = target.presigned_url("alice/dl-1/MANIFEST.json", expires_s=60)
    assert "X-Amz-Expires=60&" in short or short.endswith("X-Amz-Expires=60")
    capped = target.presigned_url("alice/dl-1/MANIFEST.json", expires_s=30 * 24 * 3600)
    assert f"X-Amz-Expires={MAX_PRESIGN_S}" in capped


def test_remove_download_deletes_only_that_download(target):
    target.write_bytes("alice/dl-1/a.txt", b"1")
    target.write_bytes("alice/dl-1/sub/b.txt", b"2")
    target.write_bytes("alice/dl-2/c.txt", b"3")
    target.remove_download("alice/dl-1")
    assert objects(target) == ["users/alice/dl-2/c.txt"]
    target.remove_download("alice/dl-1")  # already gone: no error


def test_unknown_bucket_is_a_permanent_target_error(settings):
    gone = S3Target(S3Settings(**{**settings.__dict__, "bucket": "no-such-bucket-here"}))
    data = b"x" * 10
    with pytest.raises(PermanentError) as info:
        gone.write_file(job_for(data), chunked(data), download_id=3)
    assert info.value.download_id == 3 and "no-such-bucket-here" in str(info.value)


def test_unsafe_keys_and_bad_settings_are_refused(target, endpoint):
    with pytest.raises(UnsafePathError):
        target.key_for("alice/../bob/x")
    with pytest.raises(ConfigurationError):
        S3Settings(bucket="b", presign_expiry_s=MAX_PRESIGN_S + 1)
    with pytest.raises(ConfigurationError):
        S3Settings(bucket="b", part_size=1024)
    assert SECRET not in repr(S3Settings(bucket="b", secret_access_key=SECRET))


def test_part_size_grows_so_huge_files_fit_in_ten_thousand_parts():
    assert part_size_for(10 * MIN_PART, MIN_PART) == MIN_PART
    two_tb = 2 * 1024 ** 4
    size = part_size_for(two_tb, MIN_PART)
    assert size % (1 << 20) == 0 and -(-two_tb // size) <= 10_000


class Flaky(io.BytesIO):
    """A source that breaks once it has served `fail_after` bytes."""

    def __init__(self, data: bytes, fail_after: int | None):
        super().__init__(data)
        self.fail_after = fail_after

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by IDS")
        return super().read(n)


def test_deliver_reopens_a_broken_source_at_the_offset_reached(target):
    opened: list[int] = []

    def open_at(offset: int) -> Flaky:
        opened.append(offset)
        return Flaky(BIG[offset:], MIN_PART + (1 << 20) if offset == 0 else None)

    job = job_for(BIG)
    job.open = open_at
    result = target.deliver(job, download_id=4)
    assert opened == [0, MIN_PART + (1 << 20)] and result.resumed == 1
    assert target.fs.cat(target.path_for(job.rel_path)) == BIG and uploads(target) == []


def test_deliver_gives_up_after_max_resumes_and_leaves_nothing(target):
    job = job_for(BIG)
    job.open = lambda offset: Flaky(BIG[offset:], 0)
    with pytest.raises(ConnectionResetError):
        target.deliver(job, max_resumes=2)
    assert objects(target) == [] and uploads(target) == []


def test_abort_incomplete_uploads_is_scoped_to_the_download(target):
    for rel in ("alice/dl-1/a.nxs", "alice/dl-10/b.nxs"):
        target.fs.call_s3("create_multipart_upload", Bucket=target.settings.bucket,
                          Key=target.key_for(rel))
    assert target.abort_incomplete_uploads("alice/dl-1") == ["users/alice/dl-1/a.nxs"]
    assert [u["Key"] for u in uploads(target)] == ["users/alice/dl-10/b.nxs"]
