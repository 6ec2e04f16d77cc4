"""Every setting of pollcat, declared once.

These pydantic models are the configuration. The Prefect blocks *are* these models (they inherit
them, so a block field is a config field with the same name, default and description), and the
CLI's flags are generated from the same fields (`--poll-budget-seconds` is `poll_budget_seconds`).
Nothing here imports Prefect, so the whole pipeline runs (and is tested) without a server.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from pollcat.access.policy import AccessPolicy
from pollcat.errors import ConfigurationError
from pollcat.layout import DEFAULT_LAYOUT, USER_RULES, download_template


class SourceKind(StrEnum):
    """Where a delivery's bytes come from."""

    DIRECT = "direct"  # getData per datafile with the functional account's session
    PREPARED_ZIP = "prepared-zip"  # the IDS's zip of the preparedId, unpacked while streaming
    STORAGE = "storage"  # read (or hard-link) the IDS main storage directly


def _check_base_url(name: str, url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigurationError(f"{name} must be an http(s) base URL, got {url!r}")
    return url.rstrip("/")


def _default_state_dir() -> Path:
    return Path(os.environ.get("POLLCAT_STATE_DIR", Path.home() / ".pollcat" / "state"))


class FacilityConfig(BaseModel):
    """One facility: its three services and the functional account pollcat acts as."""

    facility_name: str = Field(description="TopCAT's facility name, e.g. LILS.")
    icat_url: str = Field(description="ICAT base URL, without /icat.")
    ids_url: str = Field(description="IDS base URL, without /ids.")
    topcat_url: str = Field(description="TopCAT base URL, without /topcat.")
    ids_urls: dict[str, str] = Field(
        default_factory=dict,
        description="Per-transport IDS base URLs (TopCAT's facility.F.downloadType.<t>).")
    authenticator: str = Field(default="simple", description="ICAT authenticator mnemonic.")
    username: str = Field(description="Functional account user name (without mnemonic).")
    password: SecretStr = Field(description="Functional account password.")
    verify_tls: bool = Field(default=True, description="Verify TLS certificates.")
    ca_bundle: str | None = Field(default=None, description="CA bundle path for TLS.")
    timeout_seconds: float = Field(default=60.0, gt=0,
                                   description="Per-request timeout, in seconds.")

    @model_validator(mode="after")
    def _urls(self) -> FacilityConfig:
        if not self.facility_name:
            raise ConfigurationError("the facility needs a name")
        for attr in ("icat_url", "ids_url", "topcat_url"):
            object.__setattr__(self, attr, _check_base_url(attr, getattr(self, attr)))
        object.__setattr__(self, "ids_urls", {
            t: _check_base_url(f"ids_urls[{t}]", u) for t, u in self.ids_urls.items()})
        return self

    @property
    def tls_verify(self) -> bool | str:
        """What requests/urllib take: False, True or a CA bundle path."""
        return self.ca_bundle if (self.verify_tls and self.ca_bundle) else self.verify_tls

    def ids_url_for(self, transport: str) -> str:
        """TopCAT's `facility.F.downloadType.<transport>`, falling back to the main IDS."""
        return self.ids_urls.get(transport, self.ids_url)


class TargetConfig(BaseModel):
    """Where one transport's downloads go, and how the bytes get there."""

    url: str = Field(description="fsspec URL of the target root, e.g. sftp://host/scratch.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, repr=False,
        description="fsspec options for the target (credentials are stored masked).")
    layout: str = Field(default=DEFAULT_LAYOUT, description="Path template under the root.")
    concurrency: int = Field(default=4, ge=1, le=256,
                             description="Files in parallel within one download.")
    writer_limit: int | None = Field(
        default=None, ge=1,
        description="Files written to this target at once by all workers on all hosts "
                    "together (a Prefect global concurrency limit that bootstrap creates); "
                    "unset: only concurrency and the worker limits bound it.")
    user_rule: str = Field(default="strip-prefix",
                           description=f"ICAT user to account name rule: {', '.join(USER_RULES)}.")
    user_map: dict[str, str] = Field(default_factory=dict,
                                     description="Explicit ICAT user to account names.")
    source: SourceKind = Field(default=SourceKind.DIRECT,
                               description="Where the bytes come from.")
    storage_url: str | None = Field(
        default=None, description="The IDS main storage as fsspec URL (source=storage).")
    storage_source_options: dict[str, Any] = Field(
        default_factory=dict, repr=False,
        description="fsspec options for the IDS main storage (stored masked).")
    hardlink: bool = Field(default=True,
                           description="Hard-link from main storage when on the same filesystem.")
    custom_value: str | None = Field(
        default=None, description="TopCAT customValue template, e.g. 'Your data: {path}'.")
    access: dict[str, Any] | None = Field(
        default=None,
        description="Accounts, permissions and retention of delivered data (docs/access.md), "
                    "e.g. {\"accounts\": \"existing\", \"retention_days\": 15}; unset: delivered "
                    "data stays private to the service account (files 0600, directories "
                    "0700).")

    access_helper: dict[str, Any] | None = Field(
        default=None,
        description="SFTP targets: how to reach the pollcat-access-helper forced command that "
                    "applies the access policy on the server (host, user, key_file, "
                    "known_hosts, port; deploy/sftp-helper/README.md).")
    globus: dict[str, Any] | None = Field(
        default=None, repr=False,
        description="A Globus guest collection whose root is this target's root: each delivery "
                    "gets a read rule for the user's identity (docs/globus-s3.md); the client "
                    "secret is stored masked.")

    @property
    def globus_settings(self) -> Any:
        """`pollcat.globus.GlobusSettings`, or None (globus-sdk is an optional extra)."""
        if self.globus is None:
            return None
        try:
            from pollcat.globus import GlobusSettings
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigurationError(f"a Globus target needs globus-sdk: pip install "
                                     f"'pollcat[globus]' ({exc})") from None
        values = self.globus  # a block holds it as a SecretDict (masked in the UI)
        values = values.get_secret_value() if hasattr(values, "get_secret_value") else values
        # the CLI puts the client secret in as a SecretStr (from a file or the environment)
        values = {k: v.get_secret_value() if isinstance(v, SecretStr) else v
                  for k, v in values.items()}
        try:
            return GlobusSettings(**values)
        except TypeError as exc:
            raise ConfigurationError(f"Globus settings of {self.url}: {exc}") from None

    @property
    def helper_target(self) -> Any:
        """`pollcat.access.sftp.SshHelperTarget` from `access_helper`, or None."""
        if self.access_helper is None:
            return None
        from pollcat.access.sftp import SshHelperTarget

        try:
            return SshHelperTarget(**self.access_helper)
        except TypeError as exc:
            raise ConfigurationError(f"access_helper of {self.url}: {exc}") from None

    @property
    def access_policy(self) -> AccessPolicy | None:
        return AccessPolicy.from_mapping(self.access) if self.access is not None else None

    @field_validator("user_rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        if value not in USER_RULES:
            raise ConfigurationError(f"unknown user rule {value!r}; known: "
                                     f"{', '.join(USER_RULES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TargetConfig:
        if self.source == SourceKind.STORAGE and not self.storage_url:
            raise ConfigurationError("source=storage needs storage_url (the IDS main storage)")
        self.globus_settings  # noqa: B018 - validated now, not at delivery
        if self.access is not None:
            self.access_policy  # noqa: B018 - validates the policy now, not at delivery
            scheme = urlparse(self.url).scheme
            remote = scheme not in ("", "file", "local", "s3", "s3a")  # S3: retention_days only
            if remote and self.access_helper is None:
                raise ConfigurationError(
                    f"{self.url}: an access policy on a remote target needs access_helper, the "
                    "forced-command helper on the server (deploy/sftp-helper/README.md)")
            if self.access_helper is not None:
                self.helper_target  # noqa: B018 - validated now
        prefix = download_template(self.layout)
        if "{download}" not in prefix and "{download_id}" not in prefix:
            raise ConfigurationError(
                "the layout must start with directories that name the download ({download} "
                "or {download_id}) before any per-file field: each download needs its own "
                "directory for its manifest")
        return self


class SweepSettings(BaseModel):
    """How a sweep behaves: deadlines, attempts, parallelism, pollcat's own state."""

    ledger_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the shared ledger (sqlite:///... for several processes "
                    "on one host, postgresql://... for many hosts); unset: JSON files in "
                    "state_dir. Stored masked: it may hold a password.")
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="pollcat's ledger and locks (default $POLLCAT_STATE_DIR or "
                    "~/.pollcat/state).")
    page_size: int = Field(default=100, ge=1, description="TopCAT downloads fetched per page.")
    poll_budget_seconds: float = Field(
        default=60.0, ge=0,
        description="One deadline per sweep: how long it keeps checking pending restores.")
    max_prepare_attempts: int = Field(
        default=5, ge=1, description="Preparations (or failed restores) before giving up.")
    transient_deadline_hours: float = Field(
        default=72.0, gt=0,
        description="Transient failures older than this expire a download.")
    waiting_deadline_hours: float = Field(
        default=168.0, gt=0,
        description="A download whose data the IDS has not restored this long after pollcat "
                    "first saw it is expired with that reason (and alerts the operator).")
    alert_waiting_hours: float = Field(
        default=24.0, gt=0,
        description="A download still waiting for its restore this long after pollcat first "
                    "saw it raises a pollcat.download.stuck event (an operator alert).")
    deliver_completed: bool = Field(
        default=True, description="Single-level IDS: deliver COMPLETE downloads too.")
    full_scan_minutes: float = Field(
        default=10.0, gt=0,
        description="Discovery asks TopCAT only for downloads above a bound kept in the "
                    "ledger; this often it also asks for every RESTORING download, however "
                    "old, so an admin's resume of an old download waits at most this long.")
    max_parallel_downloads: int = Field(default=4, ge=1, le=64,
                                        description="Downloads delivered at once per worker.")
    check_concurrency: int = Field(default=8, ge=1, le=64,
                                   description="isPrepared checks in flight at once.")
    ids_stream_limit: int | None = Field(
        default=None, ge=1,
        description="getData streams open at once against each of this facility's IDSs, by "
                    "all workers on all hosts together (a Prefect global concurrency limit per "
                    "IDS that bootstrap creates); unset: no limit across workers.")
    dispatch_deliveries: bool = Field(
        default=False,
        description="Run from a deployment, hand each ready download to the deliver "
                    "deployment as its own flow run that any worker of the pool picks up "
                    "(scale-out across hosts); off: the sweep run delivers them itself.")
    max_identical_mismatches: int = Field(
        default=3, ge=1,
        description="The same size/CRC32 mismatch this many times is a permanent failure.")


class PipelineConfig(SweepSettings):
    """Everything one sweep needs."""

    facility: FacilityConfig
    routes: dict[str, TargetConfig]

    @model_validator(mode="after")
    def _routes(self) -> PipelineConfig:
        if not self.routes:
            raise ConfigurationError("route at least one transport to a target")
        for transport in self.routes:
            if transport in ("http", "https"):
                raise ConfigurationError(
                    f"transport {transport!r} is completed by TopCAT itself; do not route it")
        return self
