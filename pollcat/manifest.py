"""`pollcat-manifest.json`: the receipt in a delivered download's directory.

It is written last, to a temporary file in the download's pollcat-owned staging directory and
renamed over the final name in one step, after every file has been verified, so its presence
means "delivered and verified": a rerun that finds a manifest covering all the download's files
can report COMPLETE without touching them, and a user sees what they got. A manifest that cannot
be parsed is treated as absent (and logged), which only costs a re-verification; something that
is not a regular file at its name (a planted link or FIFO) is UnsafeTargetPath, never followed.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pollcat.errors import PollcatError
from pollcat.layout import check_relpath
from pollcat.targetfs import STAGING_NAME, TargetFS, fsync, target_errors
from pollcat.transfer import FileJob, FileResult, crc_of, format_crc, parse_crc

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
    #: What vouches for the bytes: "icat-crc32" (ICAT's checksum matched) or "zip-crc32" (ICAT
    #: had no CRC32; the prepared zip's own entry size and CRC32 were checked while unzipping).
    verified_by: str = "icat-crc32"


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
                              datafile_id=int(f["datafile_id"]),
                              verified_by=str(f.get("verified_by", "icat-crc32")))
                 for f in data["files"]]
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
            if entry is None or (entry.size != job.size and not job.trust_stream):
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
    done = {r.datafile_id: r for r in results if isinstance(r, FileResult)}
    entries = []
    for job in jobs:
        crc = parse_crc(job.checksum)
        result = done.get(job.datafile_id)
        if crc is None and result is not None:
            crc = result.crc32
        size = result.bytes if job.trust_stream and result is not None else job.size
        entries.append(ManifestFile(path=relative_to(job.rel_path, base), size=size,
                                    crc32=None if crc is None else format_crc(crc),
                                    datafile_id=job.datafile_id,
                                    verified_by="zip-crc32" if job.trust_stream
                                    else "icat-crc32"))
    return entries


def utc_now() -> str:
    """The timestamps of manifests and of the ledger's access records (second, Z)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _join(dir: str, name: str) -> str:
    return posixpath.join(dir, name) if dir else name


def write_manifest(target: TargetFS, dir: str, *, facility: str, download_id: int,
                   file_name: str, user: str, transport: str, files: Iterable[ManifestFile],
                   completed_at: str | None = None) -> Manifest:
    """Write `dir/pollcat-manifest.json` (temp in `dir/.pollcat`, then one atomic rename); call
    only after every file is verified. `dir` is the download directory, relative to the root.

    A refusing target raises TargetError (TargetUnavailable when full or read-only, or
    TransientError for other I/O failures); a planted non-file raises UnsafeTargetPath.
    """
    manifest = Manifest(facility=facility, download_id=download_id, file_name=file_name,
                        user=user, transport=transport, dir=dir,
                        completed_at=completed_at or utc_now(), files=list(files))
    body = json.dumps(manifest.to_json(), indent=2, ensure_ascii=False).encode("utf-8")
    final = _join(dir, MANIFEST_NAME)
    staging = _join(dir, STAGING_NAME)
    temp = posixpath.join(staging, f"{MANIFEST_NAME}.pollcat-part")
    with target_errors(target.path(final)):
        target.make_dirs(dir)
        target.make_private_dir(staging)
        f = target.create_replacing(temp)  # something planted there: refused, left alone
        try:
            with f:
                f.write(body)
                fsync(f)
            target.replace(temp, final)
        except BaseException:
            target.remove_quietly(temp)  # ours: we just created it
            raise
    return manifest


def read_manifest(target: TargetFS, dir: str) -> Manifest | None:
    """The manifest in `dir` (root-relative), or None when it is absent or unparsable (logged).

    UnsafeTargetPath when something other than a regular file is at its name.
    """
    path = _join(dir, MANIFEST_NAME)
    with target_errors(target.path(path)):
        f = target.open_read(path)
        if f is None:
            return None
        with f:
            raw = f.read()
    try:
        return Manifest.from_json(json.loads(raw.decode("utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable manifest %s: %s", target.path(path), exc)
        return None


# --- the verifying pass ---------------------------------------------------------------------


@dataclass(frozen=True)
class FileProblem:
    """One manifest entry the target does not hold as listed."""

    path: str  # relative to the download directory, as in the manifest
    datafile_id: int
    problem: str  # "missing", "size 12, manifest says 13", "CRC32 ..., manifest says ...", ...


@dataclass
class DeliveryCheck:
    """What `verify_delivery` found for one download directory."""

    dir: str
    manifest: Manifest | None
    checked: int = 0
    problems: list[FileProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems

    @property
    def missing(self) -> list[FileProblem]:
        return [p for p in self.problems if p.problem == "missing"]

    @property
    def mismatched(self) -> list[FileProblem]:
        return [p for p in self.problems if p.problem != "missing"]

    def summary(self) -> str:
        if self.manifest is None:
            return f"{self.dir}: no readable manifest"
        if not self.problems:
            return f"{self.dir}: all {self.checked} files match the manifest"
        return (f"{self.dir}: {len(self.missing)} missing, {len(self.mismatched)} not matching "
                f"of {self.checked} files: " +
                "; ".join(f"{p.path}: {p.problem}" for p in self.problems[:10]))


def _check_entry(target: TargetFS, rel: str, entry: ManifestFile, chunk: int) -> str | None:
    try:
        f = target.open_read(rel)
    except PollcatError as exc:  # a planted link or FIFO: report it, do not follow it
        return f"unreadable: {exc.message}"
    if f is None:
        return "missing"
    with f:
        size, crc = crc_of(f, chunk)
    if size != entry.size:
        return f"size {size}, manifest says {entry.size}"
    expected = parse_crc(entry.crc32)
    if expected is not None and expected != crc:
        return f"CRC32 {format_crc(crc)}, manifest says {entry.crc32}"
    return None


def verify_delivery(target: TargetFS, dir: str, *, chunk: int = 1 << 20) -> DeliveryCheck:
    """Re-read every file the manifest in `dir` (root-relative) lists; size and CRC32 each.

    Nothing is changed on the target. An absent or unparsable manifest gives `manifest=None`
    (`ok` is False); entries whose path is unsafe are reported, not opened.
    """
    manifest = read_manifest(target, dir)
    report = DeliveryCheck(dir=dir, manifest=manifest)
    if manifest is None:
        return report
    for entry in manifest.files:
        report.checked += 1
        try:
            rel = check_relpath(_join(dir, entry.path))
        except PollcatError as exc:
            report.problems.append(FileProblem(entry.path, entry.datafile_id,
                                               f"unsafe path: {exc.message}"))
            continue
        with target_errors(target.path(rel)):
            problem = _check_entry(target, rel, entry, chunk)
        if problem is not None:
            report.problems.append(FileProblem(entry.path, entry.datafile_id, problem))
    return report
