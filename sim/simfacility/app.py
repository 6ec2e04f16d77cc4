"""The ASGI app: `/icat`, `/ids`, `/topcat` as in a real deployment, plus sim-only `/sim`."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from simfacility import icat_api, ids_api, topcat_api
from simfacility.facility import SimFacility
from simfacility.faults import FaultError, FaultMiddleware
from simfacility.limits import RequestLineLimit


def _sim_routes(fac: SimFacility) -> list[Route]:
    async def faults(request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"faults": fac.faults.list(), "log": fac.faults.log})
        if request.method == "DELETE":
            fac.faults.clear()
            return JSONResponse({"cleared": True})
        try:
            raw = await request.json()
            items = raw if isinstance(raw, list) else [raw]
            return JSONResponse([fac.faults.add(item, fac) for item in items])
        except (FaultError, TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def mail(request: Request) -> JSONResponse:
        return JSONResponse(fac.mail_outbox)

    async def status_puts(request: Request) -> JSONResponse:
        with fac.topcat.lock:
            return JSONResponse([list(put) for put in fac.topcat.admin_status_puts])

    async def ids_streams(request: Request) -> JSONResponse:
        if request.method == "DELETE":
            fac.ids_streams.reset()
        return JSONResponse(fac.ids_streams.snapshot())

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "facility": fac.config.facility,
                             "twoLevel": fac.two_level})

    return [
        Route("/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/mail", mail, methods=["GET"]),
        Route("/status-puts", status_puts, methods=["GET"]),
        Route("/ids-streams", ids_streams, methods=["GET", "DELETE"]),
        Route("/health", health, methods=["GET"]),
    ]


def build_app(fac: SimFacility):
    app = Starlette(routes=[
        Mount("/icat", app=icat_api.build(fac)),
        Mount("/ids", app=ids_api.build(fac)),
        Mount("/topcat", app=topcat_api.build(fac)),
        Mount("/sim", routes=_sim_routes(fac)),
    ])
    return RequestLineLimit(FaultMiddleware(app, fac.faults), fac.config.max_request_line)
