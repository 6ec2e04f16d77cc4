"""The facility block: ICAT, IDS and TopCAT, the functional account, and transport routing."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from pollcat.config import FacilityConfig, PipelineConfig


class PollcatFacility(Block):
    """One ICAT facility that pollcat serves.

    The functional account must be in TopCAT's `adminUserNames` and able to read the data in
    ICAT (for the `prepared-zip` source, reading metadata is enough). `routes` maps each TopCAT
    transport pollcat takes over to the name of a `DeliveryTarget` block.
    """

    _block_type_name = "pollcat Facility"
    _block_type_slug = "pollcat-facility"
    _description = "An ICAT facility (ICAT, IDS, TopCAT) whose downloads pollcat delivers."
    _code_example = """
```python
from blocks import PollcatFacility
PollcatFacility(
    facility_name="LILS", icat_url="https://icat.example.org",
    ids_url="https://ids.example.org", topcat_url="https://topcat.example.org",
    username="pollcat", password="...", routes={"globus": "globus-scratch"},
).save("lils")
```"""

    facility_name: str = Field(description="TopCAT's facility name, e.g. LILS")
    icat_url: str = Field(description="ICAT base URL, without /icat")
    ids_url: str = Field(description="IDS base URL, without /ids")
    topcat_url: str = Field(description="TopCAT base URL, without /topcat")
    ids_urls: dict[str, str] = Field(
        default_factory=dict,
        description="Per-transport IDS base URLs (TopCAT's facility.F.downloadType.<t>)")
    authenticator: str = Field(default="simple", description="ICAT authenticator mnemonic")
    username: str = Field(description="Functional account user name (without mnemonic)")
    password: SecretStr = Field(description="Functional account password")
    verify_tls: bool = Field(default=True, description="Verify TLS certificates")
    ca_bundle: str | None = Field(default=None, description="CA bundle path for TLS")
    timeout_seconds: float = Field(default=60.0, description="Per-request timeout")
    routes: dict[str, str] = Field(
        default_factory=dict,
        description="Transport → DeliveryTarget block name, e.g. {'globus': 'globus-scratch'}")
    state_dir: str | None = Field(
        default=None, description="pollcat's ledger and locks (shared by all workers)")
    poll_budget_seconds: float = Field(default=60.0, ge=0,
                                       description="How long one sweep waits for restores")
    max_prepare_attempts: int = Field(default=5, ge=1)
    transient_deadline_hours: float = Field(
        default=72.0, gt=0, description="Transient failures older than this expire a download")
    max_parallel_downloads: int = Field(default=4, ge=1, le=64)

    def to_config(self) -> FacilityConfig:
        verify: bool | str = self.ca_bundle if (self.verify_tls and self.ca_bundle) \
            else self.verify_tls
        return FacilityConfig(
            name=self.facility_name, icat_url=self.icat_url, ids_url=self.ids_url,
            topcat_url=self.topcat_url, ids_urls=dict(self.ids_urls), auth=self.authenticator,
            username=self.username, password=self.password.get_secret_value(), verify=verify,
            timeout_s=self.timeout_seconds)

    def pipeline_config(self) -> PipelineConfig:
        """Load the routed targets and build the pipeline's configuration."""
        from blocks.targets import DeliveryTarget

        routes = {t: DeliveryTarget.load(name).to_config() for t, name in self.routes.items()}
        extra = {"state_dir": Path(self.state_dir)} if self.state_dir else {}
        return PipelineConfig(
            facility=self.to_config(), routes=routes, poll_budget_s=self.poll_budget_seconds,
            max_prepare_attempts=self.max_prepare_attempts,
            transient_deadline_h=self.transient_deadline_hours,
            max_parallel_downloads=self.max_parallel_downloads, **extra)
