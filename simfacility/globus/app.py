"""One ASGI app serving both emulated Globus services: `/auth/...` and `/transfer/...`.

globus-sdk finds them through its supported service-URL variables
(`GLOBUS_SDK_SERVICE_URL_AUTH=<base>/auth/`, `GLOBUS_SDK_SERVICE_URL_TRANSFER=<base>/transfer/`)
or a client's `base_url`; see `RunningGlobus.sdk_environment()`.

The fault middleware answers an injected failure (a 5xx in the service's own error document) or
stalls a request (to provoke a client timeout) before the request reaches the service.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.routing import Mount

from simfacility.globus import auth_api, transfer_api
from simfacility.globus.errors import injected_response
from simfacility.globus.state import GlobusState


class GlobusFaultMiddleware:
    """Applies `GlobusState.faults` to `/auth` and `/transfer` requests; logs every request."""

    def __init__(self, app, state: GlobusState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        service, _, rest = scope["path"].lstrip("/").partition("/")
        with self.state.lock:
            self.state.requests.append((scope["method"], service, "/" + rest))
        fault = self.state.take_fault(service, scope["method"], "/" + rest)
        if fault is not None:
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            else:
                resp = injected_response(service, fault.status, fault.code, fault.message,
                                         "/" + rest)
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def build_app(state: GlobusState):
    app = Starlette(routes=[
        Mount("/auth", app=auth_api.build(state)),
        Mount("/transfer", app=transfer_api.build(state)),
    ])
    return GlobusFaultMiddleware(app, state)
