"""pollcat: deliver ICAT/TopCAT downloads to users' targets.

This package is plain Python (no Prefect imports); `flows/`, `tasks/` and `blocks/` wrap it.
"""

__version__ = "0.1.0"
