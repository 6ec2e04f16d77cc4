"""Access to delivered data: accounts, owner/group/modes, POSIX ACLs, and retention.

The pipeline calls a hook after verification and before COMPLETE (see hooks.py for the
contract); `retention.cleanup` removes what pollcat delivered once it is older than the
target's retention period and revokes the grants recorded in the ledger.

The names below are imported on first use (PEP 562): `pollcat.config` needs only the policy,
and every command's start-up (`pollcat --help`) would otherwise pay for the hooks, the ACL
tools and the walker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Action": "actions", "ActionKind": "actions", "Scope": "actions", "format_plan": "actions",
    "AccessContext": "hooks", "AccessHook": "hooks", "PosixAccessHook": "hooks",
    "grant_access": "hooks",
    "AccessPolicy": "policy", "AccountsMode": "policy", "OnMissing": "policy",
}

__all__ = ["AccessContext", "AccessHook", "AccessPolicy", "AccountsMode", "Action", "ActionKind",
           "OnMissing", "PosixAccessHook", "Scope", "format_plan", "grant_access"]

if TYPE_CHECKING:
    from pollcat.access.actions import Action, ActionKind, Scope, format_plan
    from pollcat.access.hooks import AccessContext, AccessHook, PosixAccessHook, grant_access
    from pollcat.access.policy import AccessPolicy, AccountsMode, OnMissing


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pollcat.access' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pollcat.access.{module}"), name)
    globals()[name] = value
    return value
