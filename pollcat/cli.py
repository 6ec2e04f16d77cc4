"""`pollcat sweep`: one sweep from the command line, the same code path as the Prefect flow.

For cron-like use and debugging. The password comes from `POLLCAT_PASSWORD` or
`--password-file`, never from the command line (it would show in `ps`).
Exit codes: 0 the sweep ran (whatever the downloads' outcomes), 2 configuration error,
3 a service could not be reached or refused the functional account.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pollcat import logsafe
from pollcat.config import FacilityConfig, PipelineConfig, TargetConfig
from pollcat.errors import ConfigurationError, PollcatError
from pollcat.layout import DEFAULT_LAYOUT
from pollcat.pipeline import Pipeline
from pollcat.report import format_table, table_rows

EXIT_OK, EXIT_CONFIG, EXIT_CONNECT = 0, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pollcat", description="Deliver TopCAT downloads.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="run one sweep of a facility")
    s.add_argument("--icat-url", required=True, help="ICAT base URL (without /icat)")
    s.add_argument("--ids-url", required=True, help="IDS base URL (without /ids)")
    s.add_argument("--topcat-url", required=True, help="TopCAT base URL (without /topcat)")
    s.add_argument("--facility", required=True, help="TopCAT facility name")
    s.add_argument("--auth", default="simple", help="ICAT authenticator (default: simple)")
    s.add_argument("--username", required=True, help="functional account (TopCAT admin)")
    s.add_argument("--password-file", type=Path,
                   help="file holding the password (default: $POLLCAT_PASSWORD)")
    s.add_argument("--route", action="append", default=[], metavar="TRANSPORT=TARGET_URL",
                   help="deliver TRANSPORT downloads to this fsspec URL (repeatable)")
    s.add_argument("--ids-route", action="append", default=[], metavar="TRANSPORT=IDS_URL",
                   help="the IDS TopCAT uses for TRANSPORT, if not --ids-url")
    s.add_argument("--layout", default=DEFAULT_LAYOUT, help="path template under the target")
    s.add_argument("--source", default="direct", choices=["direct", "prepared-zip", "storage"])
    s.add_argument("--storage-url", help="IDS main storage as fsspec URL (--source storage)")
    s.add_argument("--concurrency", type=int, default=4, help="files in parallel per download")
    s.add_argument("--state-dir", type=Path, help="ledger and locks (default ~/.pollcat/state)")
    s.add_argument("--poll-budget", type=float, default=60.0,
                   help="seconds this sweep waits for restores (default 60)")
    s.add_argument("--max-prepare-attempts", type=int, default=5)
    s.add_argument("--no-verify-tls", action="store_true")
    s.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    s.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    s.add_argument("-v", "--verbose", action="store_true")
    return p


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise ConfigurationError(f"{what} must look like TRANSPORT=URL, got {v!r}")
        out[key.strip()] = val.strip()
    return out


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            return args.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read --password-file: {exc}") from None
    pw = os.environ.get("POLLCAT_PASSWORD")
    if not pw:
        raise ConfigurationError("set POLLCAT_PASSWORD or pass --password-file")
    return pw


def build_config(args: argparse.Namespace) -> PipelineConfig:
    facility = FacilityConfig(
        name=args.facility, icat_url=args.icat_url, ids_url=args.ids_url,
        topcat_url=args.topcat_url, username=args.username, password=_password(args),
        auth=args.auth, ids_urls=_pairs(args.ids_route, "--ids-route"),
        verify=not args.no_verify_tls, timeout_s=args.timeout)
    routes = {t: TargetConfig(url=u, layout=args.layout, source=args.source,
                              storage_url=args.storage_url, concurrency=args.concurrency)
              for t, u in _pairs(args.route, "--route").items()}
    extra = {"state_dir": args.state_dir} if args.state_dir else {}
    return PipelineConfig(facility=facility, routes=routes, poll_budget_s=args.poll_budget,
                          max_prepare_attempts=args.max_prepare_attempts, **extra)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logsafe.install()
    try:
        pipeline = Pipeline(build_config(args))
    except ConfigurationError as exc:
        print(f"pollcat: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        outcomes = pipeline.sweep()
    except ConfigurationError as exc:
        print(f"pollcat: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PollcatError as exc:
        print(f"pollcat: cannot sweep {args.facility}: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    finally:
        pipeline.clients.close()
    if args.json:
        json.dump({"facility": args.facility, "downloads": table_rows(outcomes)}, sys.stdout,
                  indent=1)
        print()
    else:
        print(format_table(outcomes))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
