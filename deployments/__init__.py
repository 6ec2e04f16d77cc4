"""Deployment helpers: register block types, and a bootstrap for a fresh Prefect server."""
