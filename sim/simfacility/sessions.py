"""ICAT sessions: lower-case UUIDs with a lifetime, as icat.server's SessionManager issues them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from simfacility.errors import IcatError


@dataclass
class Session:
    id: str
    user_name: str
    expires_at: float


class Sessions:
    def __init__(self, lifetime_minutes: float, clock: Callable[[], float] = time.time):
        self.lifetime_s = lifetime_minutes * 60.0
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def login(self, user_name: str) -> str:
        sid = str(uuid.uuid4())
        with self._lock:
            self._sessions[sid] = Session(sid, user_name, self.clock() + self.lifetime_s)
        return sid

    def _get(self, sid: str, allow_expired: bool = False) -> Session:
        with self._lock:
            s = self._sessions.get(sid)
        if s is None:
            raise IcatError("SESSION", f"Unable to find user by sessionid: {sid}")
        if not allow_expired and s.expires_at <= self.clock():
            raise IcatError("SESSION", f"Session id:{sid} has expired")
        return s

    def user_of(self, sid: str) -> str:
        """The session's user name; raises ICAT's SESSION error for unknown or expired ids."""
        return self._get(sid).user_name

    def remaining_minutes(self, sid: str) -> float:
        return max(0.0, (self._get(sid).expires_at - self.clock()) / 60.0)

    def refresh(self, sid: str) -> None:
        """SessionManager.refresh uses `getUserName(true)`: an expired session that the hourly
        purge has not deleted yet is refreshed, i.e. revived (the simulator never purges)."""
        s = self._get(sid, allow_expired=True)
        with self._lock:
            s.expires_at = self.clock() + self.lifetime_s

    def logout(self, sid: str) -> None:
        """Like refresh, logout accepts an expired session."""
        self._get(sid, allow_expired=True)
        with self._lock:
            self._sessions.pop(sid, None)

    def expire(self, user_name: str | None = None, session_id: str | None = None) -> int:
        """Force expiry (a fault): every session, one user's, or one id. Returns how many."""
        n = 0
        with self._lock:
            for s in self._sessions.values():
                if (user_name is None or s.user_name == user_name) and (
                        session_id is None or s.id == session_id):
                    s.expires_at = 0.0
                    n += 1
        return n
