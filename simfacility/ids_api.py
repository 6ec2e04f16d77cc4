"""Placeholder: replaced by the real service implementation."""

from starlette.applications import Starlette


def build(fac) -> Starlette:
    return Starlette(routes=[])
