"""Fault injection: what breaks, where, and how often.

A fault matches a service (`icat`, `ids`, `topcat` or `*`), an endpoint (a glob on the path below
the service's context root, e.g. `getData`, `admin/downloads`, `session*`), an optional HTTP
method and optional exact query/form parameters. It fires for the first `count` matching calls, or
with `probability`, or (neither given) on every call. Kinds:

- `error`: answer `status` with the service's own error JSON (`code`, `message` optional);
- `latency`: wait `seconds` before handling;
- `stall`: send the headers (and the first `after_bytes` body bytes), then nothing for
  `seconds`;
- `reset`: drop the connection after `after_bytes` body bytes;
- `truncate`: end the body cleanly after `after_bytes` bytes;
- `corrupt`: flip the byte at offset `after_bytes` of the body.

State faults act once when added: `expire_sessions` (optional `user`), `forget_prepared`
(optional `prepared_id`, else all), `fail_restore` (optional `datafile_ids`/`dataset_ids`,
`count` of restores to fail, default 1). Every injection is logged on `simfacility.faults`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from simfacility.errors import error_for

if TYPE_CHECKING:
    from simfacility.facility import SimFacility

log = logging.getLogger("simfacility.faults")

STREAM_KINDS = {"stall", "reset", "truncate", "corrupt"}
KINDS = {"error", "latency"} | STREAM_KINDS
STATE_KINDS = {"expire_sessions", "forget_prepared", "fail_restore"}
SERVICES = {"icat", "ids", "topcat", "*"}


class FaultError(ValueError):
    """A fault spec is malformed."""


class InjectedReset(Exception):
    """Raised inside the ASGI app so the server drops the connection mid-body."""


@dataclass
class Fault:
    kind: str
    service: str = "*"
    endpoint: str = "*"
    method: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    status: int = 500
    code: str | None = None
    message: str = "Injected fault"
    seconds: float = 0.0
    after_bytes: int = 0
    count: int | None = None
    probability: float | None = None
    id: int = 0
    hits: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fault:
        known = {f for f in cls.__dataclass_fields__ if f not in ("id", "hits")}
        unknown = set(raw) - known
        if unknown:
            raise FaultError(f"fault: unknown keys {sorted(unknown)}")
        if "kind" not in raw:
            raise FaultError("fault: missing required key 'kind'")
        fault = cls(**raw)
        if fault.kind not in KINDS:
            raise FaultError(f"fault: unknown kind {fault.kind!r}; expected one of {sorted(KINDS)}")
        if fault.service not in SERVICES:
            raise FaultError(f"fault: unknown service {fault.service!r}")
        # Check types now: a bad value stored here would break every later matching call.
        for key, typ in (("status", int), ("after_bytes", int), ("count", int),
                         ("seconds", float), ("probability", float)):
            value = getattr(fault, key)
            if value is None and key in ("count", "probability"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or (
                    typ is int and value != int(value)):
                raise FaultError(f"fault: {key} must be a number, not {value!r}")
            setattr(fault, key, typ(value))
        if fault.probability is not None and not 0.0 <= fault.probability <= 1.0:
            raise FaultError(f"fault: probability must be within [0, 1], not {fault.probability}")
        for key in ("endpoint", "message"):
            if not isinstance(getattr(fault, key), str):
                raise FaultError(f"fault: {key} must be a string")
        if fault.method is not None and not isinstance(fault.method, str):
            raise FaultError("fault: method must be a string")
        if fault.code is not None and not isinstance(fault.code, str):
            raise FaultError("fault: code must be a string")
        if not isinstance(fault.params or {}, dict):
            raise FaultError("fault: params must be a mapping of parameter name to value")
        fault.params = {str(k): str(v) for k, v in (fault.params or {}).items()}
        return fault


class FaultRegistry:
    def __init__(self, seed: int = 0):
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._next = 0
        self.log: list[dict[str, Any]] = []

    def add(self, raw: dict[str, Any], facility: SimFacility | None = None) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise FaultError(f"fault: a spec must be a JSON object, not {raw!r}")
        kind = raw.get("kind")
        if kind in STATE_KINDS:
            if facility is None:
                raise FaultError(f"fault: {kind} needs a running facility")
            result = apply_state_fault(facility, raw)
            self._record({"kind": kind, **raw, "result": result})
            return {"kind": kind, "result": result}
        fault = Fault.from_dict(raw)
        with self._lock:
            self._next += 1
            fault.id = self._next
            self._faults.append(fault)
        return asdict(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]

    def _record(self, entry: dict[str, Any]) -> None:
        log.warning("injected fault: %s", entry)
        with self._lock:
            self.log.append(entry)

    def match(self, service: str, endpoint: str, method: str,
              params: dict[str, str]) -> list[Fault]:
        """The faults that fire for this call (their counters are consumed)."""
        fired = []
        with self._lock:
            for f in self._faults:
                if f.service not in ("*", service):
                    continue
                if not fnmatch.fnmatchcase(endpoint, f.endpoint):
                    continue
                if f.method and f.method.upper() != method:
                    continue
                if any(params.get(k) != v for k, v in f.params.items()):
                    continue
                if f.count is not None and f.hits >= f.count:
                    continue
                if f.probability is not None and self._rng.random() >= f.probability:
                    continue
                f.hits += 1
                fired.append(f)
        for f in fired:
            self._record({"id": f.id, "kind": f.kind, "service": service, "endpoint": endpoint,
                          "method": method})
        return fired


def apply_state_fault(fac: SimFacility, raw: dict[str, Any]) -> Any:
    kind = raw["kind"]
    if kind == "expire_sessions":
        return fac.sessions.expire(user_name=raw.get("user"), session_id=raw.get("session_id"))
    if kind == "forget_prepared":
        return fac.prepared.forget(raw.get("prepared_id"))
    if kind == "fail_restore":
        return fac.storage.fail_next_restores(
            count=int(raw.get("count", 1)),
            datafile_ids=raw.get("datafile_ids"),
            dataset_ids=raw.get("dataset_ids"),
        )
    raise FaultError(f"fault: unknown state kind {kind!r}")


class FaultMiddleware:
    """ASGI middleware that applies matching faults to `/icat`, `/ids` and `/topcat` calls."""

    def __init__(self, app, registry: FaultRegistry):
        self.app = app
        self.registry = registry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        parts = path.lstrip("/").split("/", 1)
        service = parts[0]
        if service not in ("icat", "ids", "topcat"):
            return await self.app(scope, receive, send)
        endpoint = parts[1] if len(parts) > 1 else ""
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        receive = await self._buffer_form(scope, receive, params)
        faults = self.registry.match(service, endpoint, scope["method"], params)
        if not faults:
            return await self.app(scope, receive, send)
        for f in faults:
            if f.kind == "latency":
                await asyncio.sleep(f.seconds)
        for f in faults:
            if f.kind == "error":
                resp = error_for(service, f.status, f.code, f.message).response()
                return await resp(scope, receive, send)
        stream_faults = [f for f in faults if f.kind in STREAM_KINDS]
        if stream_faults:
            send = _StreamFaultSend(send, stream_faults)
        return await self.app(scope, receive, send)

    @staticmethod
    async def _buffer_form(scope, receive, params: dict[str, str]):
        """Read a form body so faults can match form fields; replay it to the app."""
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        if "application/x-www-form-urlencoded" not in ctype:
            return receive
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        for k, v in parse_qsl(body.decode("utf-8", "replace")):
            params.setdefault(k, v)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


class _StreamFaultSend:
    def __init__(self, send, faults: list[Fault]):
        self._send = send
        self._faults = faults
        self._sent = 0
        self._done = False
        self._stalled = False

    async def __call__(self, message):
        if self._done:
            return
        if message["type"] != "http.response.body":
            if message["type"] == "http.response.start" and any(
                    f.kind == "truncate" for f in self._faults):
                # A short body can only end cleanly if no Content-Length promised more.
                message = {**message, "headers": [
                    (k, v) for k, v in message.get("headers", [])
                    if k.lower() != b"content-length"]}
            return await self._send(message)
        body = message.get("body", b"")
        start, end = self._sent, self._sent + len(body)
        for f in self._faults:
            if f.kind == "stall" and not self._stalled and (end > f.after_bytes or not body):
                self._stalled = True
                head = body[: max(0, f.after_bytes - start)]
                if head:  # send what comes before the stall point, then go quiet
                    await self._send({"type": "http.response.body", "body": head,
                                      "more_body": True})
                    self._sent += len(head)
                    body = body[len(head):]
                    start = self._sent
                await asyncio.sleep(f.seconds)
        for f in self._faults:
            if f.kind == "corrupt" and start <= f.after_bytes < end:
                i = f.after_bytes - start
                body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]
        for f in self._faults:
            if f.kind in ("reset", "truncate") and end > f.after_bytes:
                keep = body[: max(0, f.after_bytes - start)]
                if keep:
                    await self._send({"type": "http.response.body", "body": keep,
                                      "more_body": True})
                self._done = True
                if f.kind == "reset":
                    raise InjectedReset(f"fault {f.id}: connection reset after "
                                        f"{f.after_bytes} bytes")
                return await self._send({"type": "http.response.body", "body": b"",
                                         "more_body": False})
        self._sent = end
        await self._send({**message, "body": body})
