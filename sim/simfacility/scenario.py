"""Scenario files: the facility's catalogue, users, storage behaviour, downloads and faults.

The keys are documented in `docs/simulated-facility.md`. A scenario may be a path to YAML or an
already-parsed dict (tests build them inline).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simfacility.model import (
    Datafile,
    Dataset,
    Facility,
    Investigation,
    InvestigationUser,
    Store,
    User,
    java_hex,
)
from simfacility.profiles import DEFAULT_PROFILE, TopcatFeatures, TopcatProfile


class ScenarioError(ValueError):
    """The scenario file is malformed; the message names the offending key."""


@dataclass
class TopcatConfig:
    """TopCAT's topcat.properties / run.properties, as far as the wire shows them."""

    poll_delay_s: float = 0.0
    poll_interval_wait_s: float = 1.0
    status_check: bool = True
    mail_enable: bool = True
    mail_subject: str = "Your ${facilityName} download ${fileName} is ready"
    mail_bodies: dict[str, str] = field(default_factory=dict)
    smtp_host: str | None = None
    smtp_port: int = 25
    mail_from: str = "topcat@localhost"
    # transport -> IDS base URL (None: this simulator's own IDS), as facility.F.downloadType.<t>
    download_types: dict[str, str | None] = field(default_factory=dict)
    profile: TopcatProfile = DEFAULT_PROFILE
    version: str = DEFAULT_PROFILE.default_version
    # adminUserNames; the top-level `admins` shorthand is merged in
    admin_user_names: list[str] = field(default_factory=list)
    # TopCAT's read timeouts towards ICAT and the IDS: none by default, as in production
    icat_timeout_s: float | None = None
    ids_timeout_s: float | None = None

    @property
    def features(self) -> TopcatFeatures:
        return TopcatFeatures.of(self.version)


@dataclass
class CacheConfig:
    """The IDS Tidier's size check on main storage (ids.server run.properties).

    `start_archiving_bytes` is `startArchivingLevel1024bytes` (in bytes here): when the online
    data exceeds it, the oldest-restored units are archived until it is at most
    `stop_archiving_bytes` (`stopArchivingLevel1024bytes`). `None` = unlimited (no Tidier).
    """

    start_archiving_bytes: int | None = None
    stop_archiving_bytes: int | None = None
    check_interval_s: float = 0.2


@dataclass
class SimConfig:
    facility: str = "LILS"
    two_level: bool = True
    storage_unit: str = "dataset"
    restore_latency_s: float = 2.0
    restore_bytes_per_s: float = 500_000_000.0
    session_lifetime_minutes: float = 120.0
    prepared_count: int = 10000
    admins: list[str] = field(default_factory=list)
    # ICAT read rules: who reads every investigation (plus `admins`)
    icat_read_all: list[str] = field(default_factory=list)
    # ids.server rootUserNames (plus `admins`)
    ids_root_user_names: list[str] = field(default_factory=list)
    ids_cache: CacheConfig = field(default_factory=CacheConfig)
    # seconds per ICAT call the IDS makes to resolve a session selection (DataSelection)
    ids_icat_call_latency_s: float = 0.0
    # longest request line the front end accepts (Apache LimitRequestLine); None = no limit
    max_request_line: int | None = 8190
    ids_read_only: bool = False
    ids_version: str = "2.1.1"
    icat_version: str = "6.2.0"
    max_entities: int = 10000
    topcat: TopcatConfig = field(default_factory=TopcatConfig)
    downloads: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    fault_seed: int = 0
    materialize_online: bool = True


def _require(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ScenarioError(f"{where}: missing required key '{key}'")
    return d[key]


def load_scenario(source: str | Path | dict, data_dir: str | Path) -> tuple[SimConfig, Store]:
    """Parse a scenario and build the catalogue (no files are written here)."""
    if isinstance(source, dict):
        raw = source
    else:
        with open(source, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ScenarioError("scenario: top level must be a mapping")
    cfg = _config(raw)
    store = Store(Path(data_dir))
    store.admins = set(cfg.admins) | set(cfg.icat_read_all)
    store.ids_root_user_names = set(cfg.admins) | set(cfg.ids_root_user_names)
    store.facility = Facility(id=store.next_id(), name=cfg.facility,
                              full_name=raw.get("facility_full_name"))
    for i, u in enumerate(raw.get("users") or []):
        name = _require(u, "name", f"users[{i}]")
        store.users[name] = User(id=store.next_id(), name=name,
                                 password=str(_require(u, "password", f"users[{i}]")),
                                 full_name=u.get("full_name"), email=u.get("email"))
    seed = int(raw.get("seed", 0))
    rng = random.Random(seed)
    for i, inv_raw in enumerate(raw.get("investigations") or []):
        _add_investigation(store, inv_raw, f"investigations[{i}]", rng)
    return cfg, store


def _config(raw: dict) -> SimConfig:
    storage = raw.get("storage", "two-level")
    if storage not in ("two-level", "single-level"):
        raise ScenarioError(f"storage: expected two-level or single-level, got {storage!r}")
    restore = raw.get("restore") or {}
    tc_raw = raw.get("topcat") or {}
    profile, version = _topcat_version(tc_raw)
    ids_raw = raw.get("ids") or {}
    icat_raw = raw.get("icat") or {}
    http_raw = raw.get("http") or {}
    mail = tc_raw.get("mail") or {}
    smtp = mail.get("smtp") or {}
    topcat = TopcatConfig(
        poll_delay_s=float(tc_raw.get("poll_delay_s", 0.0)),
        poll_interval_wait_s=float(tc_raw.get("poll_interval_wait_s", 1.0)),
        status_check=bool(tc_raw.get("status_check", True)),
        mail_enable=bool(mail.get("enable", True)),
        mail_subject=mail.get("subject", TopcatConfig.mail_subject),
        mail_bodies=dict(mail.get("bodies") or {}),
        smtp_host=smtp.get("host"),
        smtp_port=int(smtp.get("port", 25)),
        mail_from=mail.get("from", "topcat@localhost"),
        download_types=dict(tc_raw.get("download_types") or {}),
        profile=profile,
        version=version,
        admin_user_names=_names(raw, "admins") + _names(tc_raw, "admin_user_names", "topcat"),
        icat_timeout_s=_optional_float(tc_raw, "icat_timeout_s"),
        ids_timeout_s=_optional_float(tc_raw, "ids_timeout_s"),
    )
    unit = raw.get("storage_unit", "dataset")
    if unit not in ("dataset", "datafile"):
        raise ScenarioError(f"storage_unit: expected dataset or datafile, got {unit!r}")
    return SimConfig(
        facility=str(raw.get("facility", "LILS")),
        two_level=storage == "two-level",
        storage_unit=unit,
        restore_latency_s=float(restore.get("latency_s", 2.0)),
        restore_bytes_per_s=float(restore.get("bytes_per_s", 500_000_000)),
        session_lifetime_minutes=float(raw.get("session_lifetime_minutes", 120)),
        prepared_count=int(raw.get("prepared_count", 10000)),
        admins=list(raw.get("admins") or []),
        icat_read_all=_names(icat_raw, "read_all", "icat"),
        ids_root_user_names=_names(ids_raw, "root_user_names", "ids"),
        ids_cache=_cache(ids_raw.get("cache") or {}),
        ids_icat_call_latency_s=float(ids_raw.get("icat_call_latency_s", 0.0)),
        max_request_line=(None if http_raw.get("max_request_line", 8190) is None
                          else int(http_raw.get("max_request_line", 8190))),
        ids_read_only=bool(ids_raw.get("read_only", False)),
        ids_version=str(ids_raw.get("version", "2.1.1")),
        icat_version=str(icat_raw.get("version", "6.2.0")),
        max_entities=int(icat_raw.get("max_entities", 10000)),
        materialize_online=bool(raw.get("materialize_online", True)),
        topcat=topcat,
        downloads=list(raw.get("downloads") or []),
        faults=list(raw.get("faults") or []),
        fault_seed=int(raw.get("fault_seed", 0)),
    )


def _topcat_version(tc_raw: dict) -> tuple[TopcatProfile, str]:
    """The profile (named deployment) and the version string whose features apply."""
    name = tc_raw.get("profile", DEFAULT_PROFILE.value)
    try:
        profile = TopcatProfile(name)
    except ValueError:
        known = ", ".join(p.value for p in TopcatProfile)
        raise ScenarioError(f"topcat.profile: expected one of {known}, got {name!r}") from None
    version = str(tc_raw.get("version", profile.default_version))
    try:
        TopcatFeatures.of(version)
    except ValueError:
        raise ScenarioError(f"topcat.version: expected x.y[.z][-suffix], got {version!r}") \
            from None
    return profile, version


def _names(raw: dict, key: str, where: str = "") -> list[str]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ScenarioError(f"{where + '.' if where else ''}{key}: expected a list of user names")
    return list(value)


def _optional_float(raw: dict, key: str) -> float | None:
    value = raw.get(key)
    return None if value is None else float(value)


def _cache(raw: dict) -> CacheConfig:
    start = raw.get("start_archiving_bytes")
    stop = raw.get("stop_archiving_bytes")
    if start is None:
        return CacheConfig(check_interval_s=float(raw.get("check_interval_s", 0.2)))
    start = int(start)
    stop = int(stop) if stop is not None else int(start * 0.8)
    if not 0 <= stop <= start:
        raise ScenarioError("ids.cache: need 0 <= stop_archiving_bytes <= start_archiving_bytes")
    return CacheConfig(start, stop, float(raw.get("check_interval_s", 0.2)))


def _add_investigation(store: Store, raw: dict, where: str, rng: random.Random) -> None:
    assert store.facility is not None
    inv = Investigation(id=store.next_id(), name=str(_require(raw, "name", where)),
                        visit_id=str(raw.get("visit_id", "1")),
                        title=str(raw.get("title", raw["name"])),
                        facility_id=store.facility.id)
    store.investigations[inv.id] = inv
    for user in raw.get("users") or []:
        role = "INVESTIGATOR"
        if isinstance(user, dict):
            role = user.get("role", role)
            user = user["name"]
        if user not in store.users:
            raise ScenarioError(f"{where}.users: unknown user {user!r}")
        iu = InvestigationUser(id=store.next_id(), user_name=user, investigation_id=inv.id,
                               role=role)
        store.add_investigation_user(iu)
    for j, ds_raw in enumerate(raw.get("datasets") or []):
        dwhere = f"{where}.datasets[{j}]"
        ds = Dataset(id=store.next_id(), name=str(_require(ds_raw, "name", dwhere)),
                     investigation_id=inv.id)
        ds.location = f"{inv.id}/{ds.id}"
        store.datasets[ds.id] = ds
        inv.dataset_ids.append(ds.id)
        for k, df_raw in enumerate(ds_raw.get("datafiles") or []):
            fwhere = f"{dwhere}.datafiles[{k}]"
            if "generate" in df_raw:
                for n in range(int(df_raw["generate"])):
                    spec = dict(df_raw)
                    spec["name"] = str(spec.get("name_pattern", "file_{i:06d}.dat")).format(i=n)
                    _add_datafile(store, ds, inv, spec, fwhere, rng)
            else:
                _add_datafile(store, ds, inv, df_raw, fwhere, rng)


def _add_datafile(store: Store, ds: Dataset, inv: Investigation, raw: dict, where: str,
                  rng: random.Random) -> None:
    name = str(_require(raw, "name", where))
    content = raw.get("content")
    if content is not None:
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        size = len(data)
    else:
        data = None
        size = int(raw.get("size", 0))
    df_id = store.next_id()
    location: str | None = f"{inv.id}/{ds.id}/{uuid.UUID(int=rng.getrandbits(128), version=4)}"
    if raw.get("location", "auto") is None:
        location = None
    icat_size = raw.get("file_size")
    df = Datafile(id=df_id, name=name, dataset_id=ds.id, size=size, location=location,
                  checksum=None, seed=int(raw.get("seed", df_id)), content=data,
                  icat_size=None if icat_size is None else int(icat_size))
    if "checksum" not in raw:
        df.checksum = java_hex(df.compute_crc())
    elif raw["checksum"] is not None:  # null: registered without a checksum
        df.checksum = str(raw["checksum"])
    store.datafiles[df.id] = df
    ds.datafile_ids.append(df.id)
