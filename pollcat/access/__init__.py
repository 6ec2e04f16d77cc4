"""Access to delivered data: accounts, owner/group/modes, POSIX ACLs, and retention.

The pipeline calls a hook after verification and before COMPLETE (see hooks.py for the
contract); `retention.cleanup` removes what pollcat delivered once it is older than the
target's retention period and revokes the grants recorded in the ledger.
"""

from pollcat.access.actions import Action, ActionKind, Scope, format_plan
from pollcat.access.hooks import AccessContext, AccessHook, PosixAccessHook, grant_access
from pollcat.access.policy import AccessPolicy, AccountsMode, OnMissing

__all__ = ["AccessContext", "AccessHook", "AccessPolicy", "AccountsMode", "Action", "ActionKind",
           "OnMissing", "PosixAccessHook", "Scope", "format_plan", "grant_access"]
