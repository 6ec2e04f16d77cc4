"""Prefect flows: `pollcat-sweep` (scheduled) and `pollcat-deliver` (one download, by hand)."""
