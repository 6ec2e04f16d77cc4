"""Exponential backoff: the one formula for every wait between tries.

A reopened getData stream waits `exponential(...)` exactly (`transfer.Reopen`); the checks of
a sweep wait `jittered(...)` delays, so that many downloads checked together do not ask the IDS
again in step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

#: Doubling stops here: 2**64 times any first delay is past every cap, and a float overflows
#: past 2**1023.
_MAX_DOUBLINGS = 64


def exponential(first: float, cap: float, attempt: int) -> float:
    """`first` doubled `attempt` times (none for attempt 0 or less), at most `cap`."""
    return min(cap, first * 2 ** min(max(0, attempt), _MAX_DOUBLINGS))


def jittered(first: float = 1.0, cap: float = 30.0, jitter: float = 0.3) -> Iterator[float]:
    """`exponential` delays for attempts 0, 1, 2, ... each scaled by a random ±`jitter`."""
    attempt = 0
    while True:
        yield exponential(first, cap, attempt) * random.uniform(1 - jitter, 1 + jitter)
        attempt += 1
