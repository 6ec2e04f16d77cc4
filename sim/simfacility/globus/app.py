"""One ASGI app serving both emulated Globus services: `/auth/...` and `/transfer/...`.

globus-sdk finds them through its supported service-URL variables
(`GLOBUS_SDK_SERVICE_URL_AUTH=<base>/auth/`, `GLOBUS_SDK_SERVICE_URL_TRANSFER=<base>/transfer/`)
or a client's `base_url`; see `RunningGlobus.sdk_environment()`.

The fault middleware answers an injected failure (a 5xx in the service's own error document) or
stalls a request (to provoke a client timeout) before the request reaches the service.
`/sim/rules`, `/sim/faults` and `/sim/notifications` are the emulation's own (not Globus's):
inspection for demos and fault injection over HTTP.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, fields

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from simfacility.globus import auth_api, transfer_api
from simfacility.globus.errors import injected_response
from simfacility.globus.state import Fault, GlobusState


class GlobusFaultMiddleware:
    """Applies `GlobusState.faults` to `/auth` and `/transfer` requests; logs every request."""

    def __init__(self, app, state: GlobusState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # mounted (e.g. at /globus in the facility app)
            path = path[len(root):]
        service, _, rest = path.lstrip("/").partition("/")
        if service == "sim":
            return await self.app(scope, receive, send)
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


def sim_routes(state: GlobusState) -> list[Route]:
    """Sim-only inspection and fault injection (demo: show the granted rule)."""
    fault_fields = {f.name for f in fields(Fault)} - {"hits"}

    async def rules(request: Request) -> JSONResponse:
        with state.lock:
            return JSONResponse({cid: list(c.rules.values())
                                 for cid, c in state.collections.items()})

    async def faults(request: Request) -> JSONResponse:
        if request.method == "POST":
            spec = await request.json()
            unknown = set(spec) - fault_fields
            if unknown:
                return JSONResponse({"error": f"unknown fault fields {sorted(unknown)}"},
                                    status_code=400)
            state.add_fault(**spec)
        elif request.method == "DELETE":
            with state.lock:
                state.faults.clear()
        with state.lock:
            return JSONResponse([asdict(f) for f in state.faults])

    async def notifications(request: Request) -> JSONResponse:
        with state.lock:
            return JSONResponse(list(state.notifications))

    return [Route("/rules", rules, methods=["GET"]),
            Route("/faults", faults, methods=["GET", "POST", "DELETE"]),
            Route("/notifications", notifications, methods=["GET"])]


def build_app(state: GlobusState):
    app = Starlette(routes=[
        Mount("/auth", app=auth_api.build(state)),
        Mount("/transfer", app=transfer_api.build(state)),
        Mount("/sim", routes=sim_routes(state)),
    ])
    return GlobusFaultMiddleware(app, state)
