"""`pollcat sweep` / `check` / `cleanup`: one sweep from the command line (the same state
machine as the Prefect flows), a check of services, privileges and targets that changes nothing,
or retention (removing old deliveries and revoking their grants; `--dry-run` prints the plan).

For cron-like use and debugging. The flags are generated from `pollcat.config` (one name, one
default, one description per setting: `--poll-budget-seconds` is the block field
`poll_budget_seconds`). Dictionary settings take JSON (`--user-map '{"simple/a": "a"}'`).
The password comes from `POLLCAT_PASSWORD` or `--password-file`, never from the command line
(it would show in `ps`).
Exit codes: 0 the sweep ran (whatever the downloads' outcomes), 2 configuration error (including
a service refusing the functional account), 3 a service could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from pollcat import logsafe
from pollcat.check import all_ok, format_results, run_checks
from pollcat.config import FacilityConfig, PipelineConfig, SweepSettings, TargetConfig
from pollcat.errors import ConfigurationError, PollcatError
from pollcat.facility import FacilityClients
from pollcat.pipeline import Pipeline
from pollcat.report import format_table, table_rows

EXIT_OK, EXIT_CONFIG, EXIT_CONNECT = 0, 2, 3

#: Settings the CLI takes in another form: the password from a file or the environment, the
#: routes as TRANSPORT=URL pairs (a block routes to target *blocks* instead).
_NOT_FLAGS = {"password"}


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
        kw: dict[str, Any] = {"dest": name, "help": help_text, "default": argparse.SUPPRESS}
        if field.is_required():
            kw["required"] = True
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(kind, type) and issubclass(kind, Enum):
            group.add_argument(flag, choices=[e.value for e in kind], **kw)
        elif typing.get_origin(kind) is dict:
            group.add_argument(flag, type=json.loads, metavar="JSON", **kw)
        elif kind in (int, float, str, Path):
            group.add_argument(flag, type=kind, **kw)


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
    s.add_argument("--password-file", type=Path,
                   help="file holding the password (default: $POLLCAT_PASSWORD)")
    s.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
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


def _password(args: argparse.Namespace) -> SecretStr:
    if args.password_file:
        try:
            return SecretStr(args.password_file.read_text().strip())
        except OSError as exc:
            raise ConfigurationError(f"cannot read --password-file: {exc}") from None
    pw = os.environ.get("POLLCAT_PASSWORD")
    if not pw:
        raise ConfigurationError("set POLLCAT_PASSWORD or pass --password-file")
    return SecretStr(pw)


def build_config(args: argparse.Namespace) -> PipelineConfig:
    facility = FacilityConfig(password=_password(args), **_values(args, FacilityConfig))
    target = {k: v for k, v in vars(args).items()
              if k in TargetConfig.model_fields and k != "url"}
    routes = {t: TargetConfig(url=u, **target) for t, u in _routes(args.route).items()}
    sweep = _values(args, SweepSettings)
    if os.environ.get("POLLCAT_LEDGER_URL"):  # may hold a password: never a flag (`ps`)
        sweep["ledger_url"] = SecretStr(os.environ["POLLCAT_LEDGER_URL"])
    return PipelineConfig(facility=facility, routes=routes, **sweep)


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
    if args.json:
        json.dump({"facility": pipeline.facility_name, "downloads": table_rows(outcomes)},
                  sys.stdout, indent=1)
        print()
    else:
        print(format_table(outcomes))
    return EXIT_OK


def _check(cfg: PipelineConfig, as_json: bool) -> int:
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
