"""README.md's operator sections are true as written: every command in their ```bash blocks, and
every `pollcat …` / `python -m …` / `prefect …` they name inline, runs as shown from a directory
outside the checkout, on the installed package (no PYTHONPATH), as a new operator would type it.

* every `python -m <module>` and `pollcat <subcommand>` resolves and `--help` of it exits 0;
* every `--flag` a ```bash line gives a command is in that command's `--help`; every `--flag`
  the prose shows is in the `--help` of a command it names;
* the set-up sequence runs against a real `prefect server start`: `prefect config set
  PREFECT_API_URL=…` (the profile, not the environment, points the client at the server),
  `prefect block register -m pollcat.blocks`, `python -m pollcat.deployments.bootstrap` twice
  (the second run prints `unchanged`), and the work pool exists.

Each command is classified in `COMMANDS` below, by its exact text: a command added to or changed in
those README sections fails `test_every_readme_command_is_classified` until it is classified
here, as run, help-checked or skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.prefect_server.server import REPO, PrefectServer

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(240)]

README = REPO / "README.md"
SECTIONS = ("Install (production)", "Deploy", "Operate")  # "Operate" holds "Secrets" too
BIN = Path(sys.executable).parent  # the installed console scripts: pollcat, prefect

RUN = "run against a real Prefect server (test_setup_sequence_on_a_real_server)"
HELP = "resolved and --help-checked from outside the checkout (no real facility here)"
TEST_SCHEDULE = "tests/prefect_server/test_schedule.py and test_demo.py run it end to end"

#: every command of the operator sections, as written (continuations joined, comment dropped)
#: → what this test does with it. Skipped ones say why.
COMMANDS: dict[str, str] = {
    # Install (production)
    "python3 -m venv /opt/pollcat/venv":
        "skipped: makes the production venv under /opt; the suite runs in the venv it installed",
    "/opt/pollcat/venv/bin/pip install /path/to/pollcat":
        "skipped: installs from a path; tests/test_packaging.py builds and installs the wheel",
    "/opt/pollcat/venv/bin/pip install '/path/to/pollcat[sftp]'":
        "skipped: an install; the extra's existence is checked (test_extras_exist)",
    "/opt/pollcat/venv/bin/pip install '/path/to/pollcat[sql]'":
        "skipped: an install; the extra's existence is checked (test_extras_exist)",
    "PREFECT_SERVER_ANALYTICS_ENABLED=false prefect server start --host 0.0.0.0 --port 4200":
        "run: PrefectServer.start(), the same command on 127.0.0.1 and a free port; "
        "its flags are --help-checked",
    "prefect config set PREFECT_API_URL=http://prefect:4200/api":
        RUN + ", with this server's URL",
    "prefect block register -m pollcat.blocks": RUN,
    "python -m pollcat.deployments.bootstrap": RUN,
    # Deploy
    "export PREFECT_API_URL=http://prefect.example.org:4200/api":
        "skipped: a shell export; the run above points the client at the server by profile",
    "python -m pollcat.deployments.bootstrap --deploy":
        "skipped here (deploys prefect.yaml from a checkout, POLLCAT_HOME): " + TEST_SCHEDULE,
    "POLLCAT_HOME=/opt/pollcat/src POLLCAT_FACILITY_BLOCK=lils prefect --no-prompt deploy --all":
        "skipped here (needs /opt/pollcat/src): " + TEST_SCHEDULE + "; flags --help-checked",
    "prefect deploy": "skipped: needs a checkout with prefect.yaml: " + TEST_SCHEDULE,
    "prefect deployment run pollcat-sweep/sweep-<block>":
        "skipped: needs a deployment; tests/prefect_server/test_scale_out.py runs deployments",
    # Operate
    "python -m pollcat.deployments.bootstrap --notify pollcat-operator-email/ops-mail "
    "--notify custom-webhook/ops":
        "skipped here (needs the notification blocks and a mail server): "
        "tests/prefect_server/test_alerts.py runs it; flags --help-checked",
    "systemctl restart pollcat-worker":
        "skipped: needs systemd; tests/prefect_server/test_systemd_units.py runs the units' "
        "commands and stops them as systemd does",
    "POLLCAT_PASSWORD=… pollcat sweep --icat-url https://icat.example.org --ids-url "
    "https://ids.example.org --topcat-url https://topcat.example.org --facility-name LILS "
    "--username pollcat --route globus=file:///srv/globus-share --route "
    "scarf=sftp://scarf.example.org/work/pollcat --json":
        "skipped: needs a real facility URL; " + HELP,
    "pollcat sweep … --route globus=file:///gcs/pollcat --globus '{\"client_id\": \"…\", "
    "\"collection_id\": \"…\", \"username_template\": \"{user}@idp.example.org\"}' "
    "--password-file /etc/pollcat/password --globus-client-secret-file /etc/pollcat/globus-secret":
        "skipped: needs a real facility and Globus; " + HELP,
    "pollcat sweep": HELP,
    "pollcat sweep --help": HELP,
    "pollcat check": HELP + "; tests/pollcat run it against the simulated facility",
    "pollcat verify": HELP,
    "pollcat cleanup [--dry-run]": HELP,
}

#: the `--help` of each command, by the words that start it (argv after the program)
PREFECT_HELPS = {
    ("prefect",): ["--help"],
    ("prefect", "server", "start"): ["server", "start", "--help"],
    ("prefect", "deploy"): ["deploy", "--help"],
    ("prefect", "worker", "start"): ["worker", "start", "--help"],  # the units' `--limit`
}  # `prefect block register`, `config set` run for real; the others have no flag to check


# -- reading the README ------------------------------------------------------------------------


def _sections() -> list[str]:
    text = README.read_text()
    parts = re.split(r"(?m)^## ", text)
    found = [p for p in parts if p.startswith(SECTIONS)]
    assert len(found) == len(SECTIONS), f"README lost one of its sections {SECTIONS}"
    return found


def _bash_lines() -> list[str]:
    """Each command of the ```bash blocks: continuations joined, comments dropped."""
    lines = []
    for section in _sections():
        for block in re.findall(r"(?ms)^```bash\n(.*?)^```", section):
            for line in block.replace("\\\n", " ").splitlines():
                line = " ".join(re.sub(r"(^|\s)#(\s.*)?$", "", line).split())
                if line:
                    lines.append(line)
    return lines


def _prose() -> str:
    return "\n".join(re.sub(r"(?ms)^```.*?^```", "", s) for s in _sections())


def _inline_commands() -> list[str]:
    return [span for span in re.findall(r"`([^`\n]+)`", _prose())
            if re.match(r"(pollcat [a-z]|python3? -m |prefect [a-z]|systemctl )", span)]


def _inline_flags() -> set[str]:
    spans = re.findall(r"`([^`\n]+)`", _prose())
    return {f for span in spans for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", span)}


def _command_words(line: str) -> list[str]:
    """argv without leading VAR=value assignments."""
    tokens = shlex.split(line)
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens.pop(0)
    return tokens


def _flags(tokens: list[str]) -> set[str]:
    return {t.split("=", 1)[0] for t in tokens if t.startswith("--")}


# -- running as an operator, outside the checkout ----------------------------------------------


def _operator_env(home: Path, **extra: str) -> dict[str, str]:
    """No PREFECT_* of ours, no PYTHONPATH: only what is installed in the venv is importable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k != "PYTHONPATH"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]), **extra)
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str],
         timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def _argv(words: list[str]) -> list[str]:
    """The venv's own interpreter and console scripts, as /opt/pollcat/venv/bin/… would be."""
    if words[0] in ("python", "python3"):
        return [sys.executable, *words[1:]]
    return [str(BIN / words[0]), *words[1:]]


def _help_key(words: list[str]) -> tuple[str, ...]:
    """Which command's --help documents these words' flags."""
    if words[0] in ("python", "python3") and words[1] == "-m":
        return tuple(words[:3])
    if words[0] == "pollcat":
        return ("pollcat", words[1])
    for key in sorted(PREFECT_HELPS, key=len, reverse=True):
        rest = [w for w in words if not w.startswith("--")]
        if tuple(rest[:len(key)]) == key:
            return key
    raise AssertionError(f"no --help known for {words}")


def _help_argv(key: tuple[str, ...]) -> list[str]:
    if key[0] == "prefect":
        return [str(BIN / "prefect"), *PREFECT_HELPS[key]]
    return _argv([*key, "--help"])


def _checked_commands() -> list[list[str]]:
    """The README's pollcat and prefect commands whose --help this test reads."""
    out = []
    for line in _bash_lines() + _inline_commands():
        words = [w for w in _command_words(line.replace("[", "").replace("]", "")) if w != "…"]
        if words[0] in ("python", "python3") and words[2:3] == ["venv"]:
            continue
        if words[0] in ("pollcat", "prefect") or (words[0].startswith("python")
                                                  and words[1] == "-m"):
            out.append(words)
    return out


@pytest.fixture(scope="module", autouse=True)
def _help_runs(tmp_path_factory) -> Iterator[dict[tuple[str, ...], Future]]:
    """Every --help the README's commands need, started when the module starts (while the
    server test runs) from a directory outside the checkout: cold interpreter starts."""
    cwd = tmp_path_factory.mktemp("operator-cwd")
    env = _operator_env(tmp_path_factory.mktemp("prefect-home"))
    keys = {_help_key(words) for words in _checked_commands()} | set(PREFECT_HELPS)
    with ThreadPoolExecutor(max_workers=3) as pool:
        yield {key: pool.submit(_run, _help_argv(key), cwd, env) for key in keys}


@pytest.fixture
def helps(_help_runs) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    return {key: f.result() for key, f in _help_runs.items()}


# -- the tests ---------------------------------------------------------------------------------


def test_setup_sequence_on_a_real_server(prefect_server: PrefectServer, tmp_path):
    """Install (production) and Deploy, in order, from a directory that is not the checkout,
    against `prefect server start` on 127.0.0.1 (conftest.py's module server)."""
    server = prefect_server
    cwd = tmp_path / "operator"
    cwd.mkdir()
    env = _operator_env(tmp_path / "operator-home")  # no PREFECT_API_URL: the profile's

    def step(line: str, replace: dict[str, str] | None = None) -> str:
        assert COMMANDS[line].startswith(RUN), line
        words = _command_words(line)
        for old, new in (replace or {}).items():
            words = [w.replace(old, new) for w in words]
        res = _run(_argv(words), cwd, env, timeout=180)
        assert res.returncode == 0, f"{line}\n{res.stdout}\n{res.stderr[-3000:]}"
        return res.stdout

    step("prefect config set PREFECT_API_URL=http://prefect:4200/api",
         {"http://prefect:4200/api": server.api_url})
    step("prefect block register -m pollcat.blocks")
    first = step("python -m pollcat.deployments.bootstrap")
    again = step("python -m pollcat.deployments.bootstrap")
    assert "unchanged" in again, again
    pool = server.api("GET", "/work_pools/pollcat").json()
    assert pool["type"] == "process", pool
    slugs = {b["slug"] for b in server.api("POST", "/block_types/filter", json={}).json()}
    assert {"pollcat-facility", "pollcat-delivery-target"} <= slugs, (slugs, first)
    assert not list(cwd.iterdir()), "the commands wrote into the operator's directory"


def test_every_readme_command_is_classified():
    written = set(_bash_lines()) | set(_inline_commands())
    assert sorted(written - set(COMMANDS)) == [], (
        "README has commands this test does not know: classify each in COMMANDS")
    assert sorted(set(COMMANDS) - written) == [], "COMMANDS names commands README no longer has"


def test_every_named_command_resolves_outside_the_checkout(helps, tmp_path):
    """`python -m <module> --help` and `pollcat <subcommand> --help` exit 0 from tmp_path with
    the installed package: nothing comes from the checkout by accident of the cwd."""
    assert not (tmp_path / "pollcat").exists()
    named = {_help_key(words) for words in _checked_commands()}
    assert ("pollcat", "sweep") in named and ("pollcat", "cleanup") in named
    assert ("python", "-m", "pollcat.deployments.bootstrap") in named
    failed = {" ".join(key): (r.returncode, r.stderr[-500:]) for key, r in helps.items()
              if r.returncode != 0 or "usage" not in r.stdout.lower()}
    assert failed == {}


def test_every_flag_shown_is_in_its_commands_help(helps):
    missing = []
    for words in _checked_commands():
        key = _help_key(words)
        text = helps[key].stdout
        if key[0] == "prefect":  # `prefect --no-prompt deploy`: --no-prompt is prefect's own
            text += helps[("prefect",)].stdout
        missing += [f"{' '.join(key)} {flag}" for flag in sorted(_flags(words))
                    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
    assert missing == []


def test_every_flag_in_the_prose_is_in_a_named_commands_help(helps):
    """Flags the text mentions without a command (`--pool-limit N`, `--dry-run`,
    `--password-file FILE`, the worker's `--limit`) exist in one of the commands named."""
    every_help = "\n".join(r.stdout for r in helps.values())
    missing = [flag for flag in sorted(_inline_flags())
               if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", every_help)]
    assert missing == []


def test_secret_file_flags_serve_every_command(helps):
    """README "Secrets": `--password-file`, `--ledger-url-file` … and "the same flags serve
    the other commands" (check, verify, cleanup)."""
    table = re.search(r"(?ms)^#### Secrets.*?(?=^#|\Z)", README.read_text()).group(0)
    file_flags = set(re.findall(r"`(--[a-z-]+-file)\b", table))
    assert {"--password-file", "--ledger-url-file"} <= file_flags
    missing = [f"pollcat {sub} {flag}" for sub in ("sweep", "check", "verify", "cleanup")
               for flag in sorted(file_flags) if flag not in helps[("pollcat", sub)].stdout]
    assert missing == []


def test_extras_exist():
    """`pip install '/path/to/pollcat[sftp]'` and `[sql]` name extras the package declares."""
    from importlib.metadata import metadata

    extras = set(metadata("pollcat").get_all("Provides-Extra") or [])
    named = {m for line in _bash_lines() for m in re.findall(r"pollcat\[(\w+)\]", line)}
    assert named and named <= extras, (named, extras)
