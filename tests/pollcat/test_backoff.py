"""The one backoff formula, used by stream reopening and by a sweep's checks."""

from __future__ import annotations

import itertools

import pytest

from pollcat import backoff
from pollcat.transfer import Reopen

pytestmark = pytest.mark.unit


def test_exponential_doubles_from_the_first_delay_up_to_the_cap():
    assert [backoff.exponential(0.5, 3.0, n) for n in range(-1, 5)] == [0.5, 0.5, 1.0, 2.0,
                                                                         3.0, 3.0]


def test_a_very_late_attempt_is_the_cap_not_an_overflow():
    assert backoff.exponential(0.05, 30.0, 5000) == 30.0


def test_jittered_delays_stay_within_the_jitter_of_the_formula():
    delays = list(itertools.islice(backoff.jittered(first=1.0, cap=8.0, jitter=0.3), 2000))
    for n, d in enumerate(delays):
        base = backoff.exponential(1.0, 8.0, n)
        assert 0.7 * base <= d <= 1.3 * base
    assert len({round(d, 6) for d in delays[10:]}) > 100  # not in step


def test_reopening_waits_the_first_delay_then_doubles():
    r = Reopen(first_delay_s=0.5, max_delay_s=3.0)
    assert [r.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
