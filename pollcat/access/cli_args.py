"""Command-line flags for the access policy and `pollcat cleanup`, for the CLI to mount.

Kept here so the flags, their help and their validation live next to the policy they build;
`pollcat/cli.py` only calls `add_access_arguments(parser)` and
`policy_from_arguments(namespace)`. Flags left unset keep the policy's defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from pollcat.access.policy import AccessPolicy, AccountsMode, OnMissing

_FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("accounts", "--accounts", {"choices": [m.value for m in AccountsMode],
                                "help": "where delivery accounts come from (default existing)"}),
    ("on_missing", "--on-missing-account", {"choices": [m.value for m in OnMissing],
                                            "help": "a missing account fails the download or "
                                                    "holds it with an alert (default fail)"}),
    ("min_uid", "--min-uid", {"type": int, "help": "lowest uid of a delivery account (1000)"}),
    ("max_uid", "--max-uid", {"type": int, "help": "highest uid of a delivery account (60000)"}),
    ("account_db_root", "--account-db-root", {"help": "use <dir>/etc/passwd instead of NSS"}),
    ("useradd_home", "--useradd-home", {"help": "home of created accounts ({account})"}),
    ("useradd_shell", "--useradd-shell", {"help": "shell of created accounts"}),
    ("group", "--owner-group", {"help": "group of delivered files and directories"}),
    ("file_mode", "--file-mode", {"help": "mode of delivered files (0640)"}),
    ("dir_mode", "--dir-mode", {"help": "mode of the download's directories (0750)"}),
    ("acl_group", "--acl-group", {"help": "also grant this group read access"}),
    ("retention_days", "--retention-days", {"type": int,
                                            "help": "cleanup removes older deliveries (0 never)"}),
)
_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("chown_user", "--chown-user", "give delivered files to the user"),
    ("acl_user", "--no-acl-user", "do not grant the user an ACL"),
    ("default_acl", "--no-default-acl", "no default ACL entries on directories"),
    ("setgid_inbox", "--setgid-inbox", "setgid on the download's directories"),
)


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("access (accounts, permissions, retention)")
    for dest, flag, options in _FLAGS:
        group.add_argument(flag, dest=f"access_{dest}", default=None, **options)
    for dest, flag, help_text in _SWITCHES:
        negative = flag.startswith("--no-")
        group.add_argument(flag, dest=f"access_{dest}", default=None,
                           action="store_false" if negative else "store_true", help=help_text)


def policy_from_arguments(namespace: argparse.Namespace) -> AccessPolicy:
    """The policy the flags describe (ConfigurationError when they contradict each other)."""
    values = {dest: getattr(namespace, f"access_{dest}", None)
              for dest in [f[0] for f in _FLAGS] + [s[0] for s in _SWITCHES]}
    return AccessPolicy.from_mapping({k: v for k, v in values.items() if v is not None})
