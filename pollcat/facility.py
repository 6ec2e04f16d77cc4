"""The live connections of one facility: ICAT session, TopCAT admin client, IDS gateways."""

from __future__ import annotations

import threading

from pollcat.config import FacilityConfig
from pollcat.icat import IcatSession
from pollcat.ids import IdsGateway
from pollcat.topcat import TopcatAdmin


class FacilityClients:
    def __init__(self, cfg: FacilityConfig):
        self.cfg = cfg
        self.icat = IcatSession(cfg.icat_url, auth=cfg.authenticator, username=cfg.username,
                                password=cfg.password.get_secret_value(),
                                timeout=cfg.timeout_seconds, verify=cfg.tls_verify)
        self.topcat = TopcatAdmin(cfg.topcat_url, cfg.facility_name, self.icat,
                                  timeout=cfg.timeout_seconds, verify=cfg.tls_verify)
        self._ids: dict[str, IdsGateway] = {}
        self._ids_lock = threading.Lock()  # the first parallel checks must share one pool

    def ids_for(self, transport: str) -> IdsGateway:
        """The IDS TopCAT prepared this transport's downloads on (a preparedId is per IDS)."""
        url = self.cfg.ids_url_for(transport)
        with self._ids_lock:
            return self._gateway(url)

    def _gateway(self, url: str) -> IdsGateway:
        if url not in self._ids:
            self._ids[url] = IdsGateway(url, timeout=self.cfg.timeout_seconds,
                                        verify=self.cfg.tls_verify)
        return self._ids[url]

    def close(self) -> None:
        self.icat.logout()
        for ids in self._ids.values():
            ids.close()
