"""`pollcat-manifest.json`: the receipt in a delivered download's directory.

It is written last, to a temporary name and renamed, after every file has been verified, so its
presence means "delivered and verified": a rerun that finds a manifest covering all the download's
files can report COMPLETE without touching them, and a user sees what they got. A manifest that
cannot be read is treated as absent (and logged), which only costs a re-verification.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pollcat.transfer import (
    FileJob,
    FileResult,
    format_crc,
    make_dirs,
    parse_crc,
    target_errors,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "pollcat-manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ManifestFile:
    """One delivered file; `path` is relative to the manifest's directory."""

    path: str
    size: int
    crc32: str | None
    datafile_id: int


@dataclass
class Manifest:
    """A delivered download. `dir` is the manifest's directory relative to the target root."""

    facility: str
    download_id: int
    file_name: str
    user: str
    transport: str
    completed_at: str
    dir: str
    files: list[ManifestFile] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {"files": len(self.files), "bytes": sum(f.size for f in self.files)}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = self.totals
        data["format"] = FORMAT_VERSION
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Build from parsed JSON; KeyError/TypeError/ValueError if the shape is wrong."""
        files = [ManifestFile(path=str(f["path"]), size=int(f["size"]),
                              crc32=None if f.get("crc32") is None else str(f["crc32"]),
                              datafile_id=int(f["datafile_id"])) for f in data["files"]]
        return cls(facility=str(data["facility"]), download_id=int(data["download_id"]),
                   file_name=str(data["file_name"]), user=str(data["user"]),
                   transport=str(data["transport"]), completed_at=str(data["completed_at"]),
                   dir=str(data.get("dir", "")), files=files)

    def covers(self, jobs: Iterable[FileJob]) -> bool:
        """Whether every job is listed with the same path, id, size and CRC32.

        A job with an ICAT checksum is only covered by an entry with the same CRC32 (compared as
        numbers). Extra entries do not matter.
        """
        listed = {f.datafile_id: f for f in self.files}
        for job in jobs:
            entry = listed.get(job.datafile_id)
            if entry is None or entry.size != job.size:
                return False
            if entry.path != relative_to(job.rel_path, self.dir):
                return False
            expected = parse_crc(job.checksum)
            if expected is not None and parse_crc(entry.crc32) != expected:
                return False
        return True


def relative_to(rel_path: str, base: str) -> str:
    """`rel_path` (relative to the target root) relative to `base` (also root-relative)."""
    if not base:
        return rel_path
    prefix = base.rstrip("/") + "/"
    if not rel_path.startswith(prefix):
        raise ValueError(f"{rel_path!r} is not inside the download directory {base!r}")
    return rel_path[len(prefix):]


def manifest_files(jobs: Sequence[FileJob], base: str,
                   results: Iterable[FileResult | BaseException] = ()) -> list[ManifestFile]:
    """Manifest entries for delivered jobs (`base` = the manifest dir, relative to the root).

    The CRC32 is ICAT's, normalised; when ICAT has none, the one computed during the transfer
    (from `results`) is recorded instead, so the receipt always lets a user check the bytes.
    """
    computed = {r.datafile_id: r.crc32 for r in results if isinstance(r, FileResult)}
    entries = []
    for job in jobs:
        crc = parse_crc(job.checksum)
        if crc is None:
            crc = computed.get(job.datafile_id)
        entries.append(ManifestFile(path=relative_to(job.rel_path, base), size=job.size,
                                    crc32=None if crc is None else format_crc(crc),
                                    datafile_id=job.datafile_id))
    return entries


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_manifest(fs: Any, dir: str, *, facility: str, download_id: int, file_name: str,
                   user: str, transport: str, files: Iterable[ManifestFile], rel_dir: str = "",
                   completed_at: str | None = None) -> Manifest:
    """Write `dir/pollcat-manifest.json` (temp + rename); call only after every file verified.

    A refusing target raises TargetError (or TransientError for other I/O failures).

    `dir` is the full path on `fs`; `rel_dir` the same directory relative to the target root
    (recorded so `covers` can compare root-relative job paths).
    """
    manifest = Manifest(facility=facility, download_id=download_id, file_name=file_name,
                        user=user, transport=transport, dir=rel_dir,
                        completed_at=completed_at or _utc_now(), files=list(files))
    body = json.dumps(manifest.to_json(), indent=2, ensure_ascii=False).encode("utf-8")
    final = posixpath.join(dir, MANIFEST_NAME)
    temp = posixpath.join(dir, f".{MANIFEST_NAME}.pollcat-part")
    with target_errors(final):
        make_dirs(fs, dir)
        with fs.open(temp, "wb") as f:
            f.write(body)
        if fs.exists(final):
            fs.rm(final)
        fs.mv(temp, final)
    return manifest


def read_manifest(fs: Any, dir: str) -> Manifest | None:
    """The manifest in `dir`, or None when it is absent or unreadable (logged, never raised)."""
    path = posixpath.join(dir, MANIFEST_NAME)
    try:
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
        return Manifest.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable manifest %s: %s", path, exc)
        return None
