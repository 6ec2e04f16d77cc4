"""The design card's `tasks/` folder: the tasks live in `pollcat.tasks`."""

from pollcat.tasks.report import publish_report
from pollcat.tasks.steps import deliver, discover, record_failure

__all__ = ["deliver", "discover", "publish_report", "record_failure"]
