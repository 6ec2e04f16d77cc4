"""A real Prefect server per test module (its own temp PREFECT_HOME and SQLite database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.prefect_server.server import SERVER_ENV, PrefectServer


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"), **SERVER_ENV).start()
    try:
        yield server
    finally:
        server.stop()
