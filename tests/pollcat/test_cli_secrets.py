"""Secrets never come from the command line: each from a file or the environment (or a block),
and a secret in a JSON flag is refused with a message saying where it goes instead."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from pollcat import cli, logsafe
from pollcat.cli import _parser, build_config
from pollcat.errors import ConfigurationError
from tests.conftest import scenario
from tests.support import statuses, wait_status

GLOBUS_SECRET = "globus-client-secret-0451"
S3_KEY, S3_SECRET = "AKIAPOLLCATTESTKEY01", "s3-secret-access-key-0451"
SECRET_ENVS = ("POLLCAT_PASSWORD", "POLLCAT_LEDGER_URL", "POLLCAT_GLOBUS_CLIENT_SECRET",
               "POLLCAT_S3_ACCESS_KEY_ID", "POLLCAT_S3_SECRET_ACCESS_KEY")
GLOBUS = {"client_id": str(uuid.uuid4()), "collection_id": str(uuid.uuid4()),
          "username_template": "{user}@idp.example.org"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in SECRET_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POLLCAT_PASSWORD", "pollpass")


def base(*routes: str) -> list[str]:
    routes = routes or ("t=file:///srv/out",)
    return ["sweep", "--icat-url", "http://h", "--ids-url", "http://h", "--topcat-url",
            "http://h", "--facility-name", "F", "--username", "u",
            *[x for r in routes for x in ("--route", r)]]


def config(*extra: str, routes: tuple[str, ...] = ()):
    return build_config(_parser().parse_args(base(*routes) + list(extra)))


def refused(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 (configuration error) and echo no secret."""
    assert cli.main(argv) == cli.EXIT_CONFIG
    out = capsys.readouterr()
    for secret in (GLOBUS_SECRET, S3_KEY, S3_SECRET):
        assert secret not in out.out + out.err
    return out.err


@pytest.mark.unit
@pytest.mark.parametrize("command", ["sweep", "check", "verify", "cleanup"])
def test_help_says_how_each_secret_is_given(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Never on the command line" in text
    for _what, envs, flag in cli.SECRET_SOURCES:
        assert flag in text
        for env in envs.split(" + "):
            assert f"${env}" in text, env
    assert "$AWS_ACCESS_KEY_ID" in text and "$AWS_SECRET_ACCESS_KEY" in text
    assert "client_secret" in text                       # said where --globus's secret goes
    assert "--ledger-url " not in text and "--password " not in text  # no such flags


@pytest.mark.unit
def test_password_from_file_wins_over_the_environment(tmp_path):
    (tmp_path / "pw").write_text("pw-from-file-0451\n")
    assert config().facility.password.get_secret_value() == "pollpass"
    cfg = config("--password-file", str(tmp_path / "pw"))
    assert cfg.facility.password.get_secret_value() == "pw-from-file-0451"


@pytest.mark.unit
def test_ledger_url_from_environment_or_file(tmp_path, monkeypatch):
    assert config().ledger_url is None
    monkeypatch.setenv("POLLCAT_LEDGER_URL", "postgresql://pollcat:dbpw-env@db/pollcat")
    assert config().ledger_url.get_secret_value().endswith("dbpw-env@db/pollcat")
    (tmp_path / "ledger").write_text("postgresql://pollcat:dbpw-file@db/pollcat\n")
    cfg = config("--ledger-url-file", str(tmp_path / "ledger"))
    assert cfg.ledger_url.get_secret_value() == "postgresql://pollcat:dbpw-file@db/pollcat"
    assert "dbpw-file" not in repr(cfg)
    assert "dbpw-file" not in logsafe.redact("connecting with dbpw-file")


@pytest.mark.unit
def test_globus_client_secret_from_environment_or_file(tmp_path, monkeypatch):
    flag = ["--globus", json.dumps(GLOBUS)]
    with pytest.raises(ConfigurationError, match="POLLCAT_GLOBUS_CLIENT_SECRET"):
        config(*flag)                                   # a Globus target needs its secret
    monkeypatch.setenv("POLLCAT_GLOBUS_CLIENT_SECRET", "from-env-" + GLOBUS_SECRET)
    cfg = config(*flag)
    assert cfg.routes["t"].globus_settings.client_secret == "from-env-" + GLOBUS_SECRET
    (tmp_path / "gs").write_text(GLOBUS_SECRET + "\n")
    cfg = config(*flag, "--globus-client-secret-file", str(tmp_path / "gs"))
    settings = cfg.routes["t"].globus_settings
    assert settings.client_secret == GLOBUS_SECRET      # the file wins
    assert settings.client_id == GLOBUS["client_id"]
    assert GLOBUS_SECRET not in repr(cfg) and GLOBUS_SECRET not in str(cfg.routes["t"].globus)
    assert GLOBUS_SECRET not in repr(settings)
    assert logsafe.redact(f"oops {GLOBUS_SECRET}") == "oops ***"


@pytest.mark.unit
def test_globus_client_secret_file_without_a_globus_target_is_an_error(tmp_path):
    (tmp_path / "gs").write_text(GLOBUS_SECRET)
    with pytest.raises(ConfigurationError, match="without --globus"):
        config("--globus-client-secret-file", str(tmp_path / "gs"))


@pytest.mark.unit
def test_globus_client_secret_in_argv_is_refused(capsys):
    argv = base() + ["--globus", json.dumps({**GLOBUS, "client_secret": GLOBUS_SECRET})]
    err = refused(capsys, argv)
    assert "must not be on the command line" in err
    assert "POLLCAT_GLOBUS_CLIENT_SECRET" in err and "--globus-client-secret-file" in err


@pytest.mark.unit
def test_malformed_json_flag_is_not_echoed(capsys):
    argv = base() + ["--globus", '{"client_secret": "' + GLOBUS_SECRET + '"']
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--globus: not valid JSON" in err and GLOBUS_SECRET not in err


@pytest.mark.unit
@pytest.mark.parametrize("options", [
    {"key": S3_KEY, "secret": S3_SECRET},
    {"secret": S3_SECRET},
    {"endpoint_url": "http://s3", "client_kwargs": {"aws_secret_access_key": S3_SECRET}},
    {"username": "pollcat", "password": S3_SECRET},
])
def test_credentials_in_storage_options_are_refused(capsys, options):
    argv = base("t=s3://bucket/prefix") + ["--storage-options", json.dumps(options)]
    err = refused(capsys, argv)
    assert "credentials must not be on the command line (--storage-options" in err
    assert "POLLCAT_S3_SECRET_ACCESS_KEY" in err and "--s3-credentials-file" in err


@pytest.mark.unit
def test_credentials_in_storage_source_options_are_refused(capsys):
    argv = base() + ["--source", "storage", "--storage-url", "s3://main/store",
                     "--storage-source-options", json.dumps({"secret": S3_SECRET})]
    err = refused(capsys, argv)
    assert "--storage-source-options" in err and "AWS_SECRET_ACCESS_KEY" in err


@pytest.mark.unit
def test_s3_credentials_from_environment_or_file_reach_only_s3_routes(tmp_path, monkeypatch):
    routes = ("s=s3://bucket/prefix", "f=file:///srv/out")
    opts = ["--storage-options", json.dumps({"endpoint_url": "http://s3.example.org"})]
    cfg = config(*opts, routes=routes)                  # neither: botocore's own chain
    assert "key" not in cfg.routes["s"].storage_options

    monkeypatch.setenv("POLLCAT_S3_ACCESS_KEY_ID", "env-" + S3_KEY)
    with pytest.raises(ConfigurationError, match="both"):
        config(*opts, routes=routes)
    monkeypatch.setenv("POLLCAT_S3_SECRET_ACCESS_KEY", "env-" + S3_SECRET)
    cfg = config(*opts, routes=routes)
    s3 = cfg.routes["s"].storage_options
    assert (s3["key"], s3["secret"], s3["endpoint_url"]) == (
        "env-" + S3_KEY, "env-" + S3_SECRET, "http://s3.example.org")
    assert "secret" not in cfg.routes["f"].storage_options

    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {S3_KEY}\n"
                     f"aws_secret_access_key = {S3_SECRET}\n")
    cfg = config(*opts, "--s3-credentials-file", str(creds), routes=routes)
    s3 = cfg.routes["s"].storage_options
    assert (s3["key"], s3["secret"]) == (S3_KEY, S3_SECRET)      # the file wins
    assert S3_SECRET not in repr(cfg)
    assert logsafe.redact(S3_SECRET) == "***"

    from pollcat.delivery_s3 import s3_settings
    settings = s3_settings(cfg.routes["s"])
    assert (settings.access_key_id, settings.secret_access_key) == (S3_KEY, S3_SECRET)

    creds.write_text("[default]\naws_access_key_id = x\n")
    with pytest.raises(ConfigurationError, match="aws_secret_access_key"):
        config(*opts, "--s3-credentials-file", str(creds), routes=routes)
    with pytest.raises(ConfigurationError, match="without an s3:// --route"):
        config("--s3-credentials-file", str(creds))


@pytest.mark.unit
def test_s3_falls_back_to_botocores_aws_environment(monkeypatch):
    """No credentials in the configuration: s3fs / botocore read AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY themselves (what the docs tell operators to rely on)."""
    pytest.importorskip("s3fs")
    from pollcat.delivery_s3 import s3_settings
    from pollcat.s3target import S3Target

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    cfg = config("--storage-options", json.dumps({
        "endpoint_url": "http://127.0.0.1:9", "client_kwargs": {"region_name": "us-east-1"}}),
        routes=("s=s3://bucket/prefix",))
    url = S3Target(s3_settings(cfg.routes["s"])).presigned_url("dl-1/pollcat-manifest.json")
    assert f"X-Amz-Credential={S3_KEY}" in url and S3_SECRET not in url


def test_cli_sweep_with_globus_secret_from_file_grants_and_leaks_nothing(
        make_sim, tmp_path, capsys, caplog, monkeypatch):
    """The whole path: the secret from a file reaches globus-sdk (the rule is granted), and it
    appears in no output or log line, even at DEBUG."""
    pytest.importorskip("globus_sdk")
    from simfacility.globus import running_globus
    from tests.pollcat.test_globus import CLIENT_ID, COLLECTION, SECRET, SPEC, rules

    alice = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
             "email": "alice@example.org",
             "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
    (tmp_path / "gs").write_text(SECRET + "\n")
    caplog.set_level(logging.DEBUG)
    with running_globus(SPEC) as globus:
        sim = make_sim(scenario(downloads=[alice]))
        wait_status(sim.url, "RESTORING")
        settings = {"client_id": CLIENT_ID, "collection_id": COLLECTION,
                    "username_template": "{user}@idp.example.org",
                    "auth_url": globus.auth_url, "transfer_url": globus.transfer_url}
        argv = ["sweep", "--icat-url", sim.url, "--ids-url", sim.url, "--topcat-url", sim.url,
                "--facility-name", "LILS", "--username", "pollcat",
                "--route", f"globus=file://{tmp_path / 'out'}",
                "--state-dir", str(tmp_path / "st"), "--poll-budget-seconds", "5", "--json",
                "-v", "--globus", json.dumps(settings),
                "--globus-client-secret-file", str(tmp_path / "gs")]
        for _ in range(5):
            assert cli.main(argv) == 0
            if set(statuses(sim.url).values()) == {"COMPLETE"}:
                break
        assert set(statuses(sim.url).values()) == {"COMPLETE"}
        assert [r["path"] for r in rules(globus).values()] == ["/alice/alice_run42/"]
    out = capsys.readouterr()
    text = "\n".join(caplog.handler.format(r) for r in caplog.records)
    assert SECRET not in text + out.out + out.err
    assert "pollpass" not in text + out.out + out.err
