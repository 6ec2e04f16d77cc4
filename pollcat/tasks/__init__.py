"""Prefect tasks: thin wrappers over `pollcat.pipeline`, one per pipeline step."""
