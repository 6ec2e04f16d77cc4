"""Retry policy shared by the tasks: only transient errors are worth another try."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from pollcat.errors import PermanentError, TransientError

RETRY_DELAYS = exponential_backoff(backoff_factor=2)
JITTER = 0.5


def transient_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry TransientError (and unknown I/O errors), never
    PermanentError (no access, deleted data, refused names)."""
    try:
        state.result()
    except PermanentError:
        return False
    except (TransientError, OSError):
        return True
    except Exception:  # noqa: BLE001 - unknown: not worth hammering a service
        return False
    return False
