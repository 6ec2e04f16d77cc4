"""Plain configuration objects: what the Prefect blocks and the CLI both produce.

Keeping these free of Prefect means the whole pipeline runs (and is tested) without a Prefect
server, and the CLI (`pollcat sweep`) takes exactly the same code path as the flows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pollcat.errors import ConfigurationError
from pollcat.layout import DEFAULT_LAYOUT, download_template

SOURCES = ("direct", "prepared-zip", "storage")


def _check_base_url(name: str, url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigurationError(f"{name} must be an http(s) base URL, got {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class FacilityConfig:
    """One facility: its three services and the functional account pollcat acts as."""

    name: str
    icat_url: str
    ids_url: str
    topcat_url: str
    username: str
    password: str = field(repr=False)
    auth: str = "simple"
    ids_urls: dict[str, str] = field(default_factory=dict)  # transport -> IDS base URL
    verify: bool | str = True
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("the facility needs a name")
        for attr in ("icat_url", "ids_url", "topcat_url"):
            object.__setattr__(self, attr, _check_base_url(attr, getattr(self, attr)))
        object.__setattr__(self, "ids_urls", {
            t: _check_base_url(f"ids_urls[{t}]", u) for t, u in self.ids_urls.items()})

    def ids_url_for(self, transport: str) -> str:
        """TopCAT's `facility.F.downloadType.<transport>`, falling back to the main IDS."""
        return self.ids_urls.get(transport, self.ids_url)


@dataclass(frozen=True)
class TargetConfig:
    """Where one transport's downloads go, and how the bytes get there."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    layout: str = DEFAULT_LAYOUT
    concurrency: int = 4
    user_rule: str = "strip-prefix"
    user_map: dict[str, str] = field(default_factory=dict)
    source: str = "direct"
    storage_url: str | None = None  # the IDS main storage as an fsspec URL (source=storage)
    storage_options_source: dict[str, Any] = field(default_factory=dict, repr=False)
    hardlink: bool = True
    custom_value: str | None = None  # e.g. "Your data is in {path}"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigurationError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "storage" and not self.storage_url:
            raise ConfigurationError("source=storage needs storage_url (the IDS main storage)")
        if not 1 <= self.concurrency <= 256:
            raise ConfigurationError(f"concurrency must be 1..256, got {self.concurrency}")
        prefix = download_template(self.layout)
        if "{download}" not in prefix and "{download_id}" not in prefix:
            raise ConfigurationError(
                "the layout must start with directories that name the download ({download} "
                "or {download_id}) before any per-file field: each download needs its own "
                "directory for its manifest")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one sweep needs."""

    facility: FacilityConfig
    routes: dict[str, TargetConfig]
    state_dir: Path = field(default_factory=lambda: Path(
        os.environ.get("POLLCAT_STATE_DIR", Path.home() / ".pollcat" / "state")))
    page_size: int = 100
    poll_budget_s: float = 60.0
    max_prepare_attempts: int = 5
    transient_deadline_h: float = 72.0
    deliver_completed: bool = True  # single-level IDS: deliver COMPLETE downloads too
    max_parallel_downloads: int = 4
    check_concurrency: int = 8  # isPrepared checks in flight at once during a sweep
    max_identical_mismatches: int = 3  # the same size/CRC32 mismatch this often: permanent

    def __post_init__(self) -> None:
        if not self.routes:
            raise ConfigurationError("route at least one transport to a target")
        for name in ("max_parallel_downloads", "check_concurrency", "max_identical_mismatches",
                     "max_prepare_attempts", "page_size"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.poll_budget_s < 0 or self.transient_deadline_h <= 0:
            raise ConfigurationError("poll_budget_s must be >= 0 and transient_deadline_h > 0")
        for transport in self.routes:
            if transport in ("http", "https"):
                raise ConfigurationError(
                    f"transport {transport!r} is completed by TopCAT itself; do not route it")
