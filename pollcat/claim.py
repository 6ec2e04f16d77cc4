"""Who may write a download's directory: an exclusive claim with an owner token and a lease,
kept on the target itself.

Two workers that share no state directory (two hosts) still share the target, so the claim lives
there, in the download's staging directory (`<dir>/.pollcat/`):

* a claim is a file `.pollcat-claim.<generation>` holding JSON (download, owner token, host, pid,
  lease expiry). The highest generation is the current claim;
* taking a free or expired claim means creating the *next* generation with an exclusive create
  (`O_EXCL`, SFTP `FXF_EXCL`): of two successors exactly one succeeds, the other sees the winner.
  Older generations are then removed, so a stalled former owner finds its file gone;
* the owner renews the lease while it works (`Claim.keep_alive`) and checks, before placing each
  verified file (`Claim.check`), that no successor took over;
* a claim of a process on this host that no longer runs (killed) is taken over at once;
* a claim file that is empty or unreadable (its writer died between create and write) counts as
  held until its mtime plus the lease.

What names a directory's download, and releasing (a decision, issue 20):

* until the download is delivered, the claim file does: released on failure, its lease is set to
  0 and the file stays in the private (0700) staging directory, so a different download with the
  same directory name is still sent to `<fileName>_<id>` (see `delivery`), and retention can
  prove that the partly placed files of an EXPIRED download are pollcat's;
* once the manifest `pollcat-manifest.json` is written and durable (fsynced, its directory
  fsynced), the manifest names the download instead: `release` after `delivered()` deletes our
  own current-generation claim file (only after a full check that the token in it is still
  ours) and then the staging directory `.pollcat/` with whatever pollcat left in it (part files
  of earlier attempts). Nothing of pollcat's but the manifest remains in a delivered folder, and
  retention can remove the directory (a leftover claim file kept it, and the user's traverse
  grant, alive for ever);
* `acquire` therefore reads the manifest first: one naming another download (or facility) is
  `OTHER_DOWNLOAD`, as that download's claim file was; one naming ours lets the claim be taken
  as usual. Two hosts still never both write one download: the claim is deleted only after the
  manifest is durable, so a host that takes a new claim afterwards finds the manifest covering
  the plan and writes nothing (`delivery.transfer_unless_delivered` short-circuits);
* a new claim after the release starts again at generation 0. A former owner stalled past its
  lease (whose generation 0 file a successor removed long ago) must not mistake that new file
  for its own: `check`'s quick path compares the claim file's `lstat` (size, mtime, mode) with
  what the owner last wrote, and anything else falls back to reading the record (token).

A second worker gets `ClaimResult.HELD_BY_OTHER`, a value, not an exception: it skips the download
this sweep. Residual risk: a worker stalled longer than the lease (SIGSTOP, a frozen VM) may place
the one file it was verifying when it wakes up, before its next `check`; that file is verified,
so what lands is correct bytes, and the successor's own verification keeps COMPLETE honest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum

from pollcat.errors import DeliveryLocked
from pollcat.targetfs import (
    STAGING_NAME,
    Entry,
    Kind,
    NameTaken,
    TargetFS,
    fsync,
    target_errors,
)

log = logging.getLogger(__name__)

CLAIM_PREFIX = ".pollcat-claim."
LEGACY_CLAIM = ".pollcat-claim"  # pollcat before the lease: "<facility> <download id>"
DEFAULT_LEASE_S = 600.0
_GENERATION = re.compile(r"^\.pollcat-claim\.(\d{1,18})$")


class ClaimResult(StrEnum):
    ACQUIRED = "acquired"
    HELD_BY_OTHER = "held-by-other"  # same download, another live worker: skip for now
    OTHER_DOWNLOAD = "other-download"  # the directory belongs to a different download


@dataclass(frozen=True)
class ClaimRecord:
    """The JSON in a claim file."""

    facility: str
    download_id: int
    token: str
    host: str
    pid: int
    expires_at: float

    @property
    def owner(self) -> str:
        return f"{self.facility} {self.download_id}"

    def describe(self) -> str:
        return f"worker {self.host}:{self.pid} (lease until {time.ctime(self.expires_at)})"


def is_claim_name(name: str) -> bool:
    """Whether `name` is a claim generation's file name (`.pollcat-claim.<n>`)."""
    return _GENERATION.match(name) is not None


def parse_claim(raw: bytes) -> ClaimRecord | None:
    """The record in a claim file's bytes (None when empty or unreadable)."""
    return _parse(raw)


def _parse(raw: bytes) -> ClaimRecord | None:
    try:
        data = json.loads(raw.decode("utf-8"))
        return ClaimRecord(facility=str(data["facility"]), download_id=int(data["download_id"]),
                           token=str(data["token"]), host=str(data["host"]),
                           pid=int(data["pid"]), expires_at=float(data["expires_at"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class Claim:
    """The outcome of `acquire`; when ACQUIRED, the handle to renew, check and release."""

    result: ClaimResult
    target: TargetFS
    dir: str
    facility: str
    download_id: int
    token: str
    lease_s: float
    generation: int = -1
    holder: ClaimRecord | None = None
    clock: Callable[[], float] = time.time
    _lost: str | None = None
    _seen: Entry | None = None  # our claim file as we last wrote it (the quick check)
    _delivered: bool = False  # the manifest is durable: `release` deletes the claim

    @property
    def staging(self) -> str:
        return _staging(self.dir)

    def _name(self, generation: int) -> str:
        return f"{self.staging}/{CLAIM_PREFIX}{generation}"

    def _record(self, expires_at: float) -> ClaimRecord:
        return ClaimRecord(self.facility, self.download_id, self.token, socket.gethostname(),
                           os.getpid(), expires_at)

    def check(self, thorough: bool = False) -> None:
        """DeliveryLocked unless this worker still holds the claim (reads the target).

        Before each placement a few `lstat`s answer it while nothing changed: a successor
        always creates the next generation, and removes ours before that one goes away in its
        turn, so "ours present, the next two absent" means nobody took over. Anything else,
        and every renewal (`thorough`: the one case this misses is a successor whose removal
        of our file failed), reads the directory and the current record."""
        if self._lost is None and (thorough or not self._unchallenged()):
            generation, record = _current(self.target, self.dir)
            if generation != self.generation or record is None or record.token != self.token:
                self._lost = "another worker took over the claim" + (
                    f" ({record.describe()})" if record else "")
        if self._lost is not None:
            raise DeliveryLocked(f"{self._lost} on {self.target.path(self.dir)!r}",
                                 download_id=self.download_id)

    def _unchallenged(self) -> bool:
        ours, next_one, the_one_after = self.target.lstat_all(
            self.staging, [f"{CLAIM_PREFIX}{self.generation + step}" for step in range(3)])
        return ours is not None and ours == self._seen and next_one is None \
            and the_one_after is None

    def _note_written(self) -> None:
        """Remember our file's lstat: a file of the same name that differs is not ours (a new
        generation 0 made by another worker after the claim of a delivered download was
        deleted)."""
        try:
            self._seen = self.target.lstat(self._name(self.generation))
        except Exception:  # noqa: BLE001 - the quick check then reads the record instead
            self._seen = None

    def renew(self) -> None:
        """Extend the lease (one atomic rename of a fresh record over our claim file)."""
        self.check(thorough=True)
        self._write(self.clock() + self.lease_s)

    def delivered(self) -> None:
        """The manifest is written and durable: from now on it names the directory's download,
        so `release` deletes the claim and the staging directory (see the module's doc)."""
        self._delivered = True

    def release(self) -> None:
        """Give the claim back. Before delivery: set the lease to 0 and keep the file (it names
        the directory's download). After `delivered`: delete our own claim file, then the
        staging directory."""
        try:
            self.check(thorough=True)
            if not self._delivered:
                self._write(0.0)
                return
            self.target.remove(self._name(self.generation))
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself anyway
            log.warning("download %s: could not release the claim: %s", self.download_id, exc)
            return
        remove_staging(self.target, self.dir, below=self.generation)

    def _write_new(self) -> None:
        """Create our generation's file exclusively (NameTaken if someone was first)."""
        name = self._name(self.generation)
        body = json.dumps(asdict(self._record(self.clock() + self.lease_s))).encode()
        with target_errors(self.target.path(name)), self.target.create(name) as f:
            f.write(body)
            fsync(f)
        self._note_written()

    def _write(self, expires_at: float) -> None:
        temp = f"{self.staging}/{CLAIM_PREFIX}{self.generation}.{self.token[:12]}.tmp"
        body = json.dumps(asdict(self._record(expires_at))).encode()
        with target_errors(self.target.path(temp)):
            with self.target.create_replacing(temp) as f:
                f.write(body)
                fsync(f)
            self.target.replace(temp, self._name(self.generation))
        self._note_written()

    @contextmanager
    def keep_alive(self, every_s: float | None = None) -> Iterator[Claim]:
        """Renew the lease from a background thread while the body runs; release after."""
        stop = threading.Event()
        interval = every_s if every_s is not None else max(self.lease_s / 4, 0.05)

        def renew_loop() -> None:
            while not stop.wait(interval):
                try:
                    self.renew()
                except DeliveryLocked:
                    log.error("download %s: lost its claim", self.download_id)
                    return
                except Exception as exc:  # noqa: BLE001 - retried at the next interval
                    log.warning("download %s: renewing the claim failed: %s",
                                self.download_id, exc)

        thread = threading.Thread(target=renew_loop, name=f"claim-{self.download_id}",
                                  daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.release()


def _staging(dir: str) -> str:
    return f"{dir}/{STAGING_NAME}" if dir else STAGING_NAME


def remove_staging(target: TargetFS, dir: str, below: int = 0) -> bool:
    """Remove a delivered download's staging directory `<dir>/.pollcat/`: the regular files in
    it (part files of earlier attempts, a claim's temporary file, claim generations older than
    `below`) and then the directory, never following a link. A claim file of generation
    `below` or newer (someone took the directory since) or anything that is not a regular file
    keeps it. True when it is gone."""
    staging = _staging(dir)
    try:
        for name in target.list_names(staging):
            generation = _GENERATION.match(name)
            if generation and int(generation.group(1)) >= below:
                log.warning("%s: a claim appeared after the delivery; the staging directory "
                            "stays", target.path(staging))
                return False
            entry = target.lstat(f"{staging}/{name}")
            if entry is not None and entry.kind is Kind.FILE:
                target.remove(f"{staging}/{name}")
        return target.remove_empty_dir(staging)
    except Exception as exc:  # noqa: BLE001 - what is left stays private (0700)
        log.warning("could not remove the staging directory %s: %s", target.path(staging), exc)
        return False


def _current(target: TargetFS, dir: str) -> tuple[int, ClaimRecord | None]:
    """The highest claim generation in `dir` and its record (-1, None when there is none)."""
    staging = _staging(dir)
    generations = [int(m.group(1)) for name in target.list_names(staging)
                   if (m := _GENERATION.match(name))]
    if not generations:
        return -1, None
    generation = max(generations)
    f = target.open_read(f"{staging}/{CLAIM_PREFIX}{generation}")
    if f is None:
        return generation, None
    with f:
        return generation, _parse(f.read())


def current_claim(target: TargetFS, dir: str) -> tuple[int, ClaimRecord | None]:
    """The current claim generation of directory `dir` and its record (-1, None: none);
    retention reads it to tell whether an EXPIRED download's directory is still its own."""
    return _current(target, dir)


def _alive(pid: int) -> bool:
    """Whether a process of this host is still running (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def _legacy_owner(target: TargetFS, dir: str) -> str | None:
    """The owner named by an old `.pollcat-claim` file ("<facility> <id>"), if any."""
    path = f"{dir}/{LEGACY_CLAIM}" if dir else LEGACY_CLAIM
    if target.lstat(path) is None:
        return None
    f = target.open_read(path)  # UnsafeTargetPath for a planted link or FIFO
    if f is None:
        return None
    with f:
        return f.read(4096).decode("utf-8", "replace").strip() or None


def acquire(target: TargetFS, dir: str, *, facility: str, download_id: int,
            lease_s: float = DEFAULT_LEASE_S, token: str | None = None,
            clock: Callable[[], float] = time.time) -> Claim:
    """Claim directory `dir` (root-relative) for one download; never raises for contention.

    ACQUIRED: this worker writes it (renew with `keep_alive`, or `release`). HELD_BY_OTHER: a
    live worker does (`holder` says who). OTHER_DOWNLOAD: the directory is another download's.
    """
    claim = Claim(ClaimResult.HELD_BY_OTHER, target, dir, facility, download_id,
                  token or uuid.uuid4().hex, lease_s, clock=clock)
    with target_errors(target.path(dir)):
        target.make_dirs(dir)
        legacy = _legacy_owner(target, dir)
        if legacy is not None and legacy != f"{facility} {download_id}":
            claim.result = ClaimResult.OTHER_DOWNLOAD
            return claim
        named = _manifest_owner(target, dir)
        if named is not None and named != (facility, download_id):
            claim.result = ClaimResult.OTHER_DOWNLOAD
            return claim
        target.make_private_dir(claim.staging)
        for _ in range(5):
            generation, record = _current(target, dir)
            claim.holder = record
            if record is not None and (record.facility, record.download_id) != (
                    facility, download_id):
                claim.result = ClaimResult.OTHER_DOWNLOAD
                return claim
            if generation >= 0 and _held(target, claim, generation, record):
                return claim
            try:
                claim.generation = generation + 1
                claim._write_new()
            except NameTaken:  # a competitor created that generation first: look again
                continue
            for old in range(max(0, generation - 2), generation + 1):
                target.remove_quietly(claim._name(old))
            claim.result = ClaimResult.ACQUIRED
            claim.holder = None
            return claim
    return claim


def _manifest_owner(target: TargetFS, dir: str) -> tuple[str, int] | None:
    """(facility, download id) named by the directory's manifest, if it has one: once a
    download is delivered, its manifest names the directory (its claim is deleted)."""
    from pollcat.manifest import read_manifest  # manifest imports the target layer too

    manifest = read_manifest(target, dir)
    return None if manifest is None else (manifest.facility, manifest.download_id)


def _held(target: TargetFS, claim: Claim, generation: int, record: ClaimRecord | None) -> bool:
    """Whether the current claim still keeps `claim` out (a live lease of another token)."""
    if record is not None:
        if record.token == claim.token:
            return False
        if record.host == socket.gethostname() and not _alive(record.pid):
            log.info("download %s: taking over the claim of dead process %s", claim.download_id,
                     record.pid)
            return False  # a worker on this host that died (kill -9): no need to wait
        return record.expires_at > claim.clock()
    entry = target.lstat(claim._name(generation))  # being written, or its writer died
    return entry is not None and entry.mtime + claim.lease_s > claim.clock()

