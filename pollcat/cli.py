"""`pollcat sweep` / `check` / `cleanup`: one sweep from the command line (the same state
machine as the Prefect flows), a check of services, privileges and targets that changes nothing,
or retention (removing old deliveries and revoking their grants; `--dry-run` prints the plan).

For cron-like use and debugging. The flags are generated from `pollcat.config` (one name, one
default, one description per setting: `--poll-budget-seconds` is the block field
`poll_budget_seconds`). Dictionary settings take JSON (`--user-map '{"simple/a": "a"}'`).

Secrets never come from the command line (argv shows in `ps` and in shell history): each comes
from the environment or a file (`SECRET_SOURCES`), and a secret in a JSON flag (`--globus`'s
`client_secret`, credentials in `--storage-options`) is refused with a configuration error
naming where to put it. The Prefect blocks hold the same secrets masked.

Exit codes: 0 the sweep ran (whatever the downloads' outcomes), 2 configuration error (including
a service refusing the functional account), 3 a service could not be reached.
"""

from __future__ import annotations

import argparse
import configparser
import json
import logging
import os
import sys
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, SecretStr, ValidationError

from pollcat import logsafe
from pollcat.config import FacilityConfig, PipelineConfig, SweepSettings, TargetConfig
from pollcat.errors import ConfigurationError, PollcatError

# The clients, the pipeline and the checks are imported by the command that runs them, not
# here: `pollcat --help` and a configuration error need none of them (0.6 s -> 0.2 s).

EXIT_OK, EXIT_CONFIG, EXIT_CONNECT = 0, 2, 3

#: Settings the CLI takes in another form: the password from a file or the environment, the
#: routes as TRANSPORT=URL pairs (a block routes to target *blocks* instead).
_NOT_FLAGS = {"password"}

#: Every secret, and where the CLI takes it from: (what, environment variable(s), file flag).
#: A file wins over the environment.
SECRET_SOURCES = [
    ("ICAT functional account password", "POLLCAT_PASSWORD", "--password-file"),
    ("ledger URL (may hold a database password)", "POLLCAT_LEDGER_URL", "--ledger-url-file"),
    ("Globus client secret", "POLLCAT_GLOBUS_CLIENT_SECRET", "--globus-client-secret-file"),
    ("S3 access key id and secret access key",
     "POLLCAT_S3_ACCESS_KEY_ID + POLLCAT_S3_SECRET_ACCESS_KEY", "--s3-credentials-file"),
]
_GLOBUS_SECRET_ENV = "POLLCAT_GLOBUS_CLIENT_SECRET"
_S3_KEY_ENV, _S3_SECRET_ENV = "POLLCAT_S3_ACCESS_KEY_ID", "POLLCAT_S3_SECRET_ACCESS_KEY"
_S3_SCHEMES = ("s3", "s3a")

#: Option names that carry credentials in fsspec / s3fs / botocore / SSH options: refused in
#: argv JSON (anywhere in it, `client_kwargs` included).
_SECRET_OPTION_KEYS = frozenset({
    "key", "secret", "token", "password", "passphrase", "client_secret",
    "access_key_id", "secret_access_key", "session_token",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token"})

_SECRETS_HELP = (
    "Never on the command line: argv shows in `ps` and in shell history. Each secret comes from "
    "a file (the flag) or else the environment; a DeliveryTarget / PollcatFacility block holds "
    "the same secrets masked. A secret in a JSON flag is refused.")

#: What the CLI adds to a JSON flag's help: where its secrets go instead.
_FLAG_NOTES = {
    "globus": "JSON without client_secret: the secret comes from --globus-client-secret-file "
              "or $POLLCAT_GLOBUS_CLIENT_SECRET.",
    "storage_options": "No credentials here (key, secret, token, password, ... are refused): "
                       "s3:// routes take them from --s3-credentials-file or "
                       "$POLLCAT_S3_ACCESS_KEY_ID / $POLLCAT_S3_SECRET_ACCESS_KEY, else "
                       "botocore's own chain ($AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY, "
                       "~/.aws/credentials); SFTP logs in with a key file (client_keys).",
    "storage_source_options": "No credentials here (refused): an s3:// main storage uses "
                              "botocore's chain ($AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY, "
                              "~/.aws/credentials); SFTP a key file (client_keys).",
}


def _plain_type(annotation: Any) -> Any:
    """`str | None` → str; anything else as it is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                    skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """One flag per field of `model`; absent flags leave the model's own default."""
    group = parser.add_argument_group(model.__name__, (model.__doc__ or "").strip())
    for name, field in model.model_fields.items():
        if name in _NOT_FLAGS or name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        kind = _plain_type(field.annotation)
        help_text = field.description or ""
        if not field.is_required() and field.default_factory is None:
            help_text += f" (default: {field.default})"
        if name in _FLAG_NOTES:
            help_text += " " + _FLAG_NOTES[name]
        kw: dict[str, Any] = {"dest": name, "help": help_text, "default": argparse.SUPPRESS}
        if field.is_required():
            kw["required"] = True
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(kind, type) and issubclass(kind, Enum):
            group.add_argument(flag, choices=[e.value for e in kind], **kw)
        elif typing.get_origin(kind) is dict:
            group.add_argument(flag, type=_json_arg, metavar="JSON", **kw)
        elif kind in (int, float, str, Path):
            group.add_argument(flag, type=kind, **kw)


def _json_arg(text: str) -> Any:
    """A JSON flag's value; the error names the flaw, never the text (it may hold a secret)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None


def _values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in model.model_fields}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pollcat", description="Deliver TopCAT downloads.",
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    _configured(sub, "sweep", "run one sweep of a facility")
    _configured(sub, "check", "check services, privileges and targets; change nothing")
    _configured(sub, "verify", "re-read delivered files against their manifests; change nothing")
    c = _configured(sub, "cleanup", "remove deliveries older than their target's retention")
    c.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sub.add_parser("bootstrap", help="set up a Prefect server for pollcat (idempotent): block "
                   "types, work pool, limits, alerts, deployments; see `pollcat bootstrap -h`")
    return p


def _configured(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand that takes the whole configuration as flags."""
    s = sub.add_parser(name, help=help_text, allow_abbrev=False)  # one name per setting
    s.add_argument("--route", action="append", default=[], metavar="TRANSPORT=TARGET_URL",
                   required=True,
                   help="deliver TRANSPORT downloads to this fsspec URL (repeatable)")
    s.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    secrets = s.add_argument_group("secrets", _SECRETS_HELP)
    secrets.add_argument("--password-file", type=Path, metavar="FILE",
                         help="file holding the ICAT functional account's password (default: "
                              "$POLLCAT_PASSWORD)")
    secrets.add_argument("--ledger-url-file", type=Path, metavar="FILE",
                         help="file holding the shared ledger's SQLAlchemy URL, which may hold "
                              "a database password (default: $POLLCAT_LEDGER_URL; neither: "
                              "JSON files in --state-dir)")
    secrets.add_argument("--globus-client-secret-file", type=Path, metavar="FILE",
                         help="file holding the Globus client secret of the --globus targets "
                              "(default: $POLLCAT_GLOBUS_CLIENT_SECRET)")
    secrets.add_argument("--s3-credentials-file", type=Path, metavar="FILE",
                         help="AWS-style credentials file for the s3:// routes: a [default] "
                              "section (or its only section) with aws_access_key_id and "
                              "aws_secret_access_key (default: $POLLCAT_S3_ACCESS_KEY_ID and "
                              "$POLLCAT_S3_SECRET_ACCESS_KEY; neither: botocore's own chain, "
                              "$AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, "
                              "an instance role)")
    s.add_argument("-v", "--verbose", action="store_true")
    add_model_flags(s, FacilityConfig)
    add_model_flags(s, SweepSettings)
    add_model_flags(s, TargetConfig, skip={"url"})  # every routed target; URLs: --route
    return s


def _routes(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise ConfigurationError(f"--route must look like TRANSPORT=URL, got {v!r}")
        out[key.strip()] = val.strip()
    return out


def _read_secret_file(path: Path, flag: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {flag}: {exc}") from None
    if not value:
        raise ConfigurationError(f"{flag} {path} is empty")
    return value


def _secret(path: Path | None, flag: str, env: str) -> str | None:
    """The secret from the file flag, else from the environment variable, else None; known
    to the log redaction from here on."""
    value = _read_secret_file(path, flag) if path else os.environ.get(env) or None
    logsafe.register_secret(value)
    return value


def _password(args: argparse.Namespace) -> SecretStr:
    pw = _secret(args.password_file, "--password-file", "POLLCAT_PASSWORD")
    if not pw:
        raise ConfigurationError("set POLLCAT_PASSWORD or pass --password-file")
    return SecretStr(pw)


def _ledger_url(args: argparse.Namespace) -> SecretStr | None:
    url = _secret(args.ledger_url_file, "--ledger-url-file", "POLLCAT_LEDGER_URL")
    if url is None:
        return None
    try:
        logsafe.register_secret(urlparse(url).password)
    except ValueError:  # not a URL with a port pollcat can read: the ledger will say so
        pass
    return SecretStr(url)


def _secret_keys(value: Any, where: str = "") -> list[str]:
    """The credential options anywhere in a JSON value (their paths, never their values)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if str(key).lower() in _SECRET_OPTION_KEYS:
                found.append(path)
            found += _secret_keys(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _secret_keys(item, f"{where}[{i}]")
    return found


def refuse_secrets_in_argv(args: argparse.Namespace) -> None:
    """A secret in a JSON flag would show in `ps` and in shell history: refuse it, saying
    where it goes instead (the value is never repeated)."""
    globus = getattr(args, "globus", None)
    if isinstance(globus, dict) and "client_secret" in globus:
        raise ConfigurationError(
            "the Globus client secret must not be on the command line (--globus JSON shows in "
            "`ps` and shell history): remove client_secret and set "
            f"{_GLOBUS_SECRET_ENV} or pass --globus-client-secret-file FILE (or keep it in a "
            "DeliveryTarget block)")
    for name, how in (("storage_options", f"for s3:// routes set {_S3_KEY_ENV} and "
                       f"{_S3_SECRET_ENV} or pass --s3-credentials-file FILE (AWS_ACCESS_KEY_ID"
                       " / AWS_SECRET_ACCESS_KEY also work); SFTP: use a key file "
                       "(client_keys)"),
                      ("storage_source_options", "an s3:// main storage reads "
                       "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials; SFTP: "
                       "use a key file (client_keys)")):
        keys = _secret_keys(getattr(args, name, None))
        if keys:
            flag = "--" + name.replace("_", "-")
            raise ConfigurationError(
                f"credentials must not be on the command line ({flag} JSON shows in `ps` and "
                f"shell history): remove {', '.join(keys)}; {how} (or keep them in a "
                "DeliveryTarget block)")


def _s3_credentials(args: argparse.Namespace) -> tuple[str, str] | None:
    """(access key id, secret access key) from --s3-credentials-file or the POLLCAT_S3_*
    variables; None: s3fs / botocore find them themselves (AWS_* variables, ~/.aws, a role)."""
    if args.s3_credentials_file:
        text = _read_secret_file(args.s3_credentials_file, "--s3-credentials-file")
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text)
        except configparser.Error:
            raise ConfigurationError("--s3-credentials-file is not an AWS-style credentials "
                                     "file ([default] with aws_access_key_id and "
                                     "aws_secret_access_key)") from None
        sections = parser.sections()
        section = "default" if "default" in sections else (
            sections[0] if len(sections) == 1 else None)
        pair = (parser.get(section, "aws_access_key_id", fallback=None),
                parser.get(section, "aws_secret_access_key", fallback=None)) if section else (
            None, None)
        if not all(pair):
            raise ConfigurationError("--s3-credentials-file needs a [default] section (or "
                                     "exactly one section) with aws_access_key_id and "
                                     "aws_secret_access_key")
    else:
        pair = (os.environ.get(_S3_KEY_ENV) or None, os.environ.get(_S3_SECRET_ENV) or None)
        if not any(pair):
            return None
        if not all(pair):
            raise ConfigurationError(f"set both {_S3_KEY_ENV} and {_S3_SECRET_ENV} (or "
                                     "neither)")
    for value in pair:
        logsafe.register_secret(value)
    return pair[0], pair[1]


def _target_values(args: argparse.Namespace, url: str, globus_secret: str | None,
                   s3: tuple[str, str] | None) -> dict[str, Any]:
    """The target flags for one route, with the secrets the route needs put in."""
    target = {k: v for k, v in vars(args).items()
              if k in TargetConfig.model_fields and k != "url"}
    for name in ("globus", "storage_options"):
        if target.get(name) is not None and not isinstance(target[name], dict):
            raise ConfigurationError(f"--{name.replace('_', '-')} must be a JSON object")
    if target.get("globus") is not None:
        if not globus_secret:
            raise ConfigurationError(
                f"the Globus target {url} needs its client secret: set {_GLOBUS_SECRET_ENV} or "
                "pass --globus-client-secret-file FILE")
        target["globus"] = {**target["globus"], "client_secret": SecretStr(globus_secret)}
    if s3 is not None and urlparse(url).scheme in _S3_SCHEMES:
        target["storage_options"] = {**target.get("storage_options", {}),
                                     "key": s3[0], "secret": s3[1]}
    return target


def build_config(args: argparse.Namespace) -> PipelineConfig:
    refuse_secrets_in_argv(args)
    facility = FacilityConfig(password=_password(args), **_values(args, FacilityConfig))
    routes = _routes(args.route)
    globus_secret = _secret(args.globus_client_secret_file, "--globus-client-secret-file",
                            _GLOBUS_SECRET_ENV)
    if args.globus_client_secret_file and getattr(args, "globus", None) is None:
        raise ConfigurationError("--globus-client-secret-file without --globus (no Globus "
                                 "target)")
    if args.s3_credentials_file and not any(
            urlparse(u).scheme in _S3_SCHEMES for u in routes.values()):
        raise ConfigurationError("--s3-credentials-file without an s3:// --route")
    s3 = _s3_credentials(args)
    targets = {t: TargetConfig(url=u, **_target_values(args, u, globus_secret, s3))
               for t, u in routes.items()}
    sweep = _values(args, SweepSettings)
    ledger_url = _ledger_url(args)  # may hold a password: never a flag (`ps`)
    if ledger_url is not None:
        sweep["ledger_url"] = ledger_url
    return PipelineConfig(facility=facility, routes=targets, **sweep)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bootstrap"]:  # Prefect's side: its own flags (`pollcat bootstrap --help`)
        from pollcat.deployments.bootstrap import main as bootstrap

        return bootstrap(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logsafe.install()
    try:
        cfg = build_config(args)
        if args.command == "check":
            return _check(cfg, args.json)
        from pollcat.pipeline import Pipeline

        pipeline = Pipeline(cfg)
        if args.command == "cleanup":
            return pipeline.cleanup(dry_run=args.dry_run)
        if args.command == "verify":
            return pipeline.verify()
    except (ConfigurationError, ValidationError) as exc:
        print(f"pollcat: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        outcomes = pipeline.sweep()
    except ConfigurationError as exc:
        print(f"pollcat: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PollcatError as exc:
        print(f"pollcat: cannot sweep {pipeline.facility_name}: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    finally:
        pipeline.clients.close()
    from pollcat.report import format_table, table_rows

    if args.json:
        json.dump({"facility": pipeline.facility_name, "downloads": table_rows(outcomes)},
                  sys.stdout, indent=1)
        print()
    else:
        print(format_table(outcomes))
    return EXIT_OK


def _check(cfg: PipelineConfig, as_json: bool) -> int:
    from pollcat.check import all_ok, format_results, run_checks
    from pollcat.facility import FacilityClients

    clients = FacilityClients(cfg.facility)
    try:
        results = run_checks(cfg, clients)
    finally:
        clients.close()
    if as_json:
        json.dump([{"check": r.what, "verdict": str(r.verdict), "detail": logsafe.redact(r.detail)}
                   for r in results], sys.stdout, indent=1)
        print()
    else:
        print(format_results(results))
    return EXIT_OK if all_ok(results) else EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
