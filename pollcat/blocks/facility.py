"""The facility block: ICAT, IDS and TopCAT, the functional account, transport routing and how
sweeps behave."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.blocks.core import Block
from pydantic import Field

from pollcat.blocks.targets import DOCS, DeliveryTarget
from pollcat.config import FacilityConfig, PipelineConfig, SweepSettings
from pollcat.errors import ConfigurationError
from pollcat.facility import FacilityClients
from pollcat.pipeline import Pipeline


class PollcatFacility(Block, FacilityConfig, SweepSettings):
    """One ICAT facility that pollcat serves.

    Every field is a `pollcat.config` field (same name, default and description). The functional
    account must be in TopCAT's `adminUserNames` and able to read the data in ICAT (for the
    `prepared-zip` source, reading metadata is enough). `routes` maps each TopCAT transport
    pollcat takes over to the name of a `DeliveryTarget` block.
    """

    _block_type_name = "pollcat Facility"
    _block_type_slug = "pollcat-facility"
    _description = "An ICAT facility (ICAT, IDS, TopCAT) whose downloads pollcat delivers."
    _documentation_url = DOCS
    _code_example = """
```python
from pollcat.blocks import PollcatFacility

PollcatFacility(
    facility_name="LILS", icat_url="https://icat.example.org",
    ids_url="https://ids.example.org", topcat_url="https://topcat.example.org",
    username="pollcat", password="...", routes={"globus": "globus-scratch"},
).save("lils")

facility = PollcatFacility.load("BLOCK_NAME")
with facility.get_pipeline() as pipeline:
    outcomes = pipeline.sweep()
```"""

    routes: dict[str, str] = Field(
        default_factory=dict,
        description="Transport to DeliveryTarget block name, e.g. {'globus': 'globus-scratch'}.")

    def facility_config(self) -> FacilityConfig:
        return FacilityConfig(**{name: getattr(self, name)
                                 for name in FacilityConfig.model_fields})

    def pipeline_config(self) -> PipelineConfig:
        """Load the routed target blocks and build the pipeline's configuration."""
        routes = {}
        for transport, name in self.routes.items():
            try:
                routes[transport] = DeliveryTarget.load(name).to_config()
            except ValueError as exc:
                raise ConfigurationError(
                    f"facility {self.facility_name}: transport {transport!r} is routed to the "
                    f"target block {name!r}, which cannot be loaded: {exc}") from None
        sweep = {name: getattr(self, name) for name in SweepSettings.model_fields}
        return PipelineConfig(facility=self.facility_config(), routes=routes, **sweep)

    def get_clients(self) -> FacilityClients:
        """Live clients (ICAT session, TopCAT admin, IDS gateways); close them when done."""
        return FacilityClients(self.facility_config())

    @contextmanager
    def get_pipeline(self) -> Iterator[Pipeline]:
        """The facility's pipeline, logged out of ICAT at the end."""
        pipeline = Pipeline(self.pipeline_config())
        try:
            yield pipeline
        finally:
            pipeline.clients.close()

    def save(self, name: str | None = None, overwrite: bool = False, **kwargs):  # type: ignore[override]
        """Refuse to save a facility whose routes name target blocks that do not exist."""
        if not self.routes:
            raise ConfigurationError("route at least one transport to a DeliveryTarget block")
        self.pipeline_config()  # loads every routed target: a typo is refused here
        return super().save(name, overwrite=overwrite, **kwargs)
