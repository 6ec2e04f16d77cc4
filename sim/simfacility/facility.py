"""One simulated facility: configuration, catalogue, sessions, storage, faults and TopCAT state.

The three service apps (`icat_api`, `ids_api`, `topcat_api`) share this object, which is what
makes them one facility: a session issued by ICAT is honoured by the IDS and TopCAT, a restore
queued by the IDS is what TopCAT's StatusCheck waits for.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from simfacility.faults import FaultRegistry
from simfacility.model import materialize
from simfacility.scenario import SimConfig, load_scenario
from simfacility.sessions import Sessions

log = logging.getLogger("simfacility")


class SimFacility:
    def __init__(self, scenario: str | Path | dict[str, Any], data_dir: str | Path | None = None):
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pollcat-sim-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config: SimConfig
        self.config, self.store = load_scenario(scenario, self.data_dir)
        self.sessions = Sessions(self.config.session_lifetime_minutes)
        self.faults = FaultRegistry(self.config.fault_seed)
        self.mail_outbox: list[dict[str, Any]] = []
        self.base_url: str | None = None

        from simfacility.ids_api import StreamGauge
        from simfacility.prepared import PreparedStore
        from simfacility.storage import Storage
        from simfacility.topcat_state import TopcatState

        self.storage = Storage(self)
        self.prepared = PreparedStore(self)
        self.topcat = TopcatState(self)
        self.ids_streams = StreamGauge()  # concurrent getData bodies: now, peak, total
        if not self.config.two_level and self.config.materialize_online:
            for df in self.store.datafiles.values():
                if df.location is not None:
                    materialize(self.store, df)

    @property
    def two_level(self) -> bool:
        return self.config.two_level

    def start(self, base_url: str) -> None:
        """Called once the HTTP server listens: start background work and load downloads."""
        self.base_url = base_url.rstrip("/")
        for raw in self.config.faults:
            self.faults.add(raw, self)
        self.storage.start()
        self.topcat.start(self.base_url)

    def stop(self) -> None:
        self.topcat.stop()
        self.storage.stop()
