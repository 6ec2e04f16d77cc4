"""What `pip install pollcat` ships: the product only (issue 21, "Ship only the product").

The production wheel carries the `pollcat` package and nothing else: the simulated facility is
its own distribution (`sim/`, `pollcat-sim`, installed by `make` for the tests, the demo and the
benchmarks), the tests stay in the checkout, and the wheel does not require the simulator's
starlette and uvicorn nor the SQL ledger's psycopg (the `sql` extra). The slow tests build the
wheel and install it into an empty venv from the package registry (a minute or two).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the Prefect layer: the only parts of pollcat allowed to import prefect
PREFECT_LAYERS = {"flows", "tasks", "blocks", "deployments"}
#: requirements only the simulator, the SQL ledger (extra `sql`) or the tests may bring
NOT_REQUIRED = {"starlette", "uvicorn", "psycopg", "pollcat-sim"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _build_wheel(source: Path, out: Path) -> Path:
    """`pip wheel` of a copy of `source` (the build writes build/ and *.egg-info into the tree
    it builds, and other runs use the checkout meanwhile)."""
    tree = out / "src"
    shutil.copytree(source, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "demo-output"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(tree),
                    "-w", str(out)], check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = out.glob("*.whl")
    return wheel


def _metadata(wheel: Path) -> tuple[list[str], dict[str, str], str]:
    """The wheel's file names, its METADATA headers (Requires-Dist joined by newlines) and its
    entry_points.txt."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        entry_points = (zf.read(f"{dist_info}/entry_points.txt").decode()
                        if f"{dist_info}/entry_points.txt" in names else "")
    headers = {"Requires-Dist": "\n".join(meta.get_all("Requires-Dist") or []),
               "Provides-Extra": "\n".join(meta.get_all("Provides-Extra") or [])}
    return names, headers, entry_points


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(REPO, tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
def test_the_wheel_is_the_product_only(wheel):
    names, headers, entry_points = _metadata(wheel)
    tops = {n.split("/")[0] for n in names}
    dist_info = [t for t in tops if t.endswith(".dist-info")]
    assert len(dist_info) == 1 and tops - set(dist_info) == {"pollcat"}, sorted(tops)
    assert not [n for n in names if n.startswith(("simfacility/", "tests/", "sim/"))]
    assert "pollcat-sim" not in entry_points and "simfacility" not in entry_points, entry_points
    assert "pollcat = pollcat.cli:main" in entry_points

    requires = headers["Requires-Dist"].splitlines()
    unconditional = {_name(r) for r in requires if ";" not in r}
    assert not unconditional & NOT_REQUIRED, requires
    assert "prefect" in unconditional and "python-icat" in unconditional, requires
    # psycopg comes with the `sql` extra only (and the tests' extra)
    assert "sql" in headers["Provides-Extra"].splitlines()
    sql = {_name(r) for r in requires if re.search(r"""extra\s*==\s*["']sql["']""", r)}
    assert {"psycopg", "sqlalchemy"} <= sql, requires
    for r in requires:
        if _name(r) in NOT_REQUIRED:
            assert re.search(r"""extra\s*==\s*["'](sql|test)["']""", r), r


@pytest.mark.slow
@pytest.mark.timeout(900)  # prefect and its dependencies from the registry into an empty venv
def test_the_wheel_installs_and_runs_without_the_simulator(wheel, tmp_path):
    """In an empty venv, from a directory outside the checkout: pollcat runs, the simulator is
    not there, and whatever of starlette, uvicorn and psycopg is installed was asked for by
    another package (prefect's server needs starlette and uvicorn), never by pollcat."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env_dir)
    bin_dir = env_dir / "bin"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=outside, env=env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    run(str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel), timeout=900)
    pip_list = run(str(bin_dir / "python"), "-m", "pip", "list").stdout
    why = f"pip list of the fresh venv:\n{pip_list}"

    assert "pollcat-sim" not in pip_list.lower(), why
    sim = run(str(bin_dir / "python"), "-c", "import simfacility", check=False)
    assert sim.returncode != 0 and "No module named 'simfacility'" in sim.stderr, \
        f"{sim.stdout}{sim.stderr}\n{why}"
    assert not (bin_dir / "pollcat-sim").exists(), why

    cli = run(str(bin_dir / "pollcat"), "--help", check=False)
    assert cli.returncode == 0, f"{cli.stdout}{cli.stderr}\n{why}"
    assert "usage" in cli.stdout.lower(), cli.stdout

    installed = {_name(line.split()[0]) for line in pip_list.splitlines()[2:] if line.strip()}
    assert "psycopg" not in installed, why  # nothing pulls it in but our `sql` extra
    for name in ("starlette", "uvicorn"):
        if name in installed:  # prefect's own requirement (its server), not ours
            show = run(str(bin_dir / "python"), "-m", "pip", "show", name).stdout
            required_by = re.search(r"^Required-by:(.*)$", show, re.M)
            by = {_name(r) for r in (required_by.group(1) if required_by else "").split(",")
                  if r.strip()}
            assert by and "pollcat" not in by, f"{name} required by {by}\n{why}"

    # the JSON ledger loads neither SQLAlchemy nor the SQL ledger, and a ledger URL without the
    # `sql` extra is a configuration error that names it (prefect brings SQLAlchemy, not psycopg)
    probe = run(str(bin_dir / "python"), "-c", (
        "import sys, tempfile\n"
        "import pollcat.pipeline\n"
        "from pollcat.errors import ConfigurationError\n"
        "from pollcat.state import open_state_store\n"
        "d = tempfile.mkdtemp()\n"
        "open_state_store(d, 'LILS', None)\n"
        "print('loaded', sorted(m for m in ('sqlalchemy', 'pollcat.ledger_sql', 'simfacility')"
        " if m in sys.modules))\n"
        "try:\n"
        "    open_state_store(d, 'LILS', 'postgresql://u:s3cret@127.0.0.1:1/db')\n"
        "except ConfigurationError as exc:\n"
        "    print('error', exc)\n"), check=False)
    assert probe.returncode == 0, f"{probe.stdout}{probe.stderr}"
    assert "loaded []" in probe.stdout, probe.stdout
    assert "pollcat[sql]" in probe.stdout and "s3cret" not in probe.stdout, probe.stdout


@pytest.mark.slow
def test_the_simulator_is_a_distribution_of_its_own(tmp_path):
    wheel = _build_wheel(REPO / "sim", tmp_path)
    names, headers, entry_points = _metadata(wheel)
    assert wheel.name.startswith("pollcat_sim-")
    assert "simfacility/__init__.py" in names and "simfacility/globus/__init__.py" in names
    assert not [n for n in names if n.startswith("pollcat/")]
    assert "pollcat-sim = simfacility.cli:main" in entry_points
    requires = {_name(r) for r in headers["Requires-Dist"].splitlines()}
    assert {"starlette", "uvicorn", "pyyaml"} <= requires, requires


# -- the layer contracts (lint-imports, in `make lint`) -----------------------------------------

def _contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


@pytest.mark.unit
def test_the_prefect_contract_covers_every_core_module():
    """`core-without-prefect` lists the core modules one by one (a forbidden contract on
    `pollcat` would take in the Prefect layers): a new module has to be added to it."""
    core = {f"pollcat.{p.stem if p.suffix == '.py' else p.name}"
            for p in (REPO / "pollcat").iterdir()
            if (p.suffix == ".py" and p.stem != "__init__")
            or (p.is_dir() and (p / "__init__.py").exists() and p.name not in PREFECT_LAYERS)}
    listed = set(_contracts()["core-without-prefect"]["source_modules"])
    assert core == listed, (f"add to [tool.importlinter] core-without-prefect: "
                            f"{sorted(core - listed)}; gone: {sorted(listed - core)}")


@pytest.mark.unit
def test_the_contracts_forbid_what_issue_21_asks():
    contracts = _contracts()
    assert contracts["no-sim"]["source_modules"] == ["pollcat"]
    assert contracts["no-sim"]["forbidden_modules"] == ["simfacility"]
    assert contracts["core-without-prefect"]["forbidden_modules"] == ["prefect"]
    clients = contracts["clients-without-engine"]
    assert {"pollcat.icat", "pollcat.ids", "pollcat.topcat", "pollcat.http", "pollcat.facility",
            "pollcat.catalog", "pollcat.globus"} <= set(clients["source_modules"])
    assert {"pollcat.delivery", "pollcat.delivery_s3", "pollcat.transfer", "pollcat.sources",
            "pollcat.pipeline", "pollcat.storage"} <= set(clients["forbidden_modules"])
    assert all(c["type"] == "forbidden" for c in contracts.values())
