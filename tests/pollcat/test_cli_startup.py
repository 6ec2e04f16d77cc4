"""`pollcat --help` imports only what parsing the command line needs (it took 0.58 s when every
command imported the pipeline, the clients, SQLAlchemy and fsspec). Start-up time is measured
in bench/, not here; this checks the cause: which modules a bare start imports."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("pollcat.pipeline", "pollcat.delivery", "pollcat.facility", "pollcat.check",
         "pollcat.access.hooks", "pollcat.ledger_sql", "sqlalchemy", "fsspec", "requests",
         "icat", "prefect")


def _imported_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\nimport json\n"
             f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_help_imports_no_client_pipeline_or_database():
    code = ("from pollcat import cli\n"
            "try:\n    cli.main(['sweep', '--help'])\nexcept SystemExit:\n    pass\n")
    assert _imported_after(code) == []


def test_the_probe_sees_heavy_imports():
    """The check can fail: importing the pipeline is seen."""
    assert "pollcat.pipeline" in _imported_after("import pollcat.pipeline")
