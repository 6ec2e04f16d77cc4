"""TopCAT / datagateway-download-api versions and what each one offers on the wire.

Facilities run different generations of TopCAT's server side, and the calls an outside agent
(pollcat) depends on appeared in different releases (sim-fidelity audit §3.1, checked at the
tags): the admin `PUT /admin/download/{id}/prepare` exists from download-api **3.1.0** (a plain
JAX-RS 404 before), the `customValue` form field of `PUT /admin/download/{id}/status` from
**3.2.0** (ignored before), and the `QUEUED` status from **3.0.0**. The features follow the
version string, so a scenario that says `topcat.version: 3.1.0` behaves like 3.1.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class TopcatProfile(StrEnum):
    """Named deployments; each gives a default `GET /topcat/version` string."""

    TOPCAT_2_4 = "topcat-2.4"
    DOWNLOAD_API_3_0 = "download-api-3.0"
    DOWNLOAD_API_3_1 = "download-api-3.1"
    DOWNLOAD_API_3_2 = "download-api-3.2"

    @property
    def default_version(self) -> str:
        return PROFILE_VERSIONS[self]


PROFILE_VERSIONS = {
    TopcatProfile.TOPCAT_2_4: "2.4.9",
    TopcatProfile.DOWNLOAD_API_3_0: "3.0.0",
    TopcatProfile.DOWNLOAD_API_3_1: "3.1.0",
    TopcatProfile.DOWNLOAD_API_3_2: "3.2.0",
}
DEFAULT_PROFILE = TopcatProfile.DOWNLOAD_API_3_2
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """`3.2.1-SNAPSHOT` -> (3, 2, 1); raises ValueError when there is no leading x.y."""
    m = _VERSION.match(text or "")
    if m is None:
        raise ValueError(f"not a TopCAT version: {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass(frozen=True)
class TopcatFeatures:
    """What the configured TopCAT version offers to an admin client."""

    version: tuple[int, int, int]

    @property
    def custom_value(self) -> bool:
        """`customValue` on the admin status PUT (download-api 3.2.0, "Rename customDownloadUrl
        to customValue")."""
        return self.version >= (3, 2, 0)

    @property
    def admin_prepare(self) -> bool:
        """`PUT /admin/download/{id}/prepare` (download-api 3.1.0)."""
        return self.version >= (3, 1, 0)

    @property
    def queued_status(self) -> bool:
        """The `QUEUED` DownloadStatus and the admin PUT's QUEUED->PREPARING rule (3.x)."""
        return self.version >= (3, 0, 0)

    @classmethod
    def of(cls, version_text: str) -> TopcatFeatures:
        return cls(parse_version(version_text))
