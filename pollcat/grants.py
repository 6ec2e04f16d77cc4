"""The facility's half of a delivery, applied after every file is verified and before COMPLETE
(a user is never told data is ready that they cannot read): the target's access policy (owner,
modes, POSIX ACLs, accounts) and, on a Globus target, a read rule for the user's identity.

Every applied action goes into the download's ledger record (`grants`), so retention can
revoke it; a rerun plans nothing and records nothing.

The policy's limits on the account itself (its name, system accounts, the uid range, a missing
account) are checked before any byte is written (`check_account`, from `plan_delivery`): until
the grant, a delivery is private to pollcat's own account (`pollcat.targetfs`), so a refused or
held download never leaves data others could read, and a refused one leaves nothing at all.
"""

from __future__ import annotations

from typing import Any, Protocol

from pollcat.access import AccessContext, PosixAccessHook
from pollcat.access import grant_access as apply_policy
from pollcat.access.accounts import (
    check_account_name,
    directory_for,
    resolve_account,
    resolve_group,
)
from pollcat.config import TargetConfig
from pollcat.layout import map_user, user_dirs
from pollcat.topcat import Download


class _Plan(Protocol):
    target: TargetConfig
    root: str
    download_dir: str
    jobs: list


class _Ledger(Protocol):
    def update(self, download_id: int, **fields: Any) -> Any: ...


def target_account(d: Download, target: TargetConfig) -> str:
    """The account (and `{user}` directory) of a download on a target (`layout.map_user`).

    With an access policy resolved through this machine's accounts, a derived name is refused
    as a system account by the policy's uid range, not the default one."""
    policy = target.access_policy
    uid_range = None
    if policy is not None and policy.account_db_root is None and target.helper_target is None:
        uid_range = (policy.min_uid, policy.max_uid)
    return map_user(d.user_name, target.user_rule, target.user_map, uid_range=uid_range)


def check_account(target: TargetConfig, account: str, download_id: int) -> None:
    """The access policy's account checks, as the grant will make them, before any byte of the
    download is written: InvalidAccountName, SystemAccountRefused (reserved names, a uid
    outside `min_uid`-`max_uid`), AccountMissing (`on_missing: fail`), AccountHold (`hold`)
    and GroupMissing. `accounts: create` creates a missing account only at the grant; its name
    is checked here. On a target with the SSH helper the accounts are the file server's, which
    only the helper sees: the name is checked here, the rest by the helper at the grant."""
    policy = target.access_policy
    if policy is None:
        return
    if target.helper_target is not None:
        if policy.needs_account:
            check_account_name(account, download_id=download_id)
        return
    directory = directory_for(policy)
    if policy.needs_account:
        resolve_account(policy, directory, account, download_id=download_id)
    for group in (policy.group, policy.acl_group):
        if group is not None:
            resolve_group(directory, group, download_id=download_id)


def grant_access(state: _Ledger, d: Download, plan: _Plan) -> None:
    """The target's access policy: the user (and only the user, or a configured group) can
    read the delivery; through the forced-command helper on a remote target."""
    policy = plan.target.access_policy
    if policy is None:
        return
    ctx = AccessContext(
        download_id=d.id, icat_user=d.user_name,
        account=target_account(d, plan.target),
        root=plan.root, download_dir=plan.download_dir,
        files=[j.rel_path for j in plan.jobs],
        user_dirs=user_dirs(plan.target.layout, plan.download_dir))
    hook = PosixAccessHook(policy)
    if plan.target.helper_target is not None:  # a remote target: the server's helper
        from pollcat.access.sftp import SshHelperHook

        hook = SshHelperHook(policy, plan.target.helper_target)
    apply_policy(hook, ctx, record=lambda action: state.update(
        d.id, grants=lambda r: [*r.grants, action]))


class GlobusGranter:
    """Globus read rules, one authenticated client per target (kept for the pipeline's life)."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}

    def client(self, target: TargetConfig) -> Any:
        """`pollcat.globus.GlobusGrants` for the target, or None when it is no Globus target."""
        settings = target.globus_settings
        if settings is None:
            return None
        if target.url not in self._clients:
            from pollcat.globus import GlobusGrants

            self._clients[target.url] = GlobusGrants(settings)
        return self._clients[target.url]

    def grant(self, state: _Ledger, d: Download, plan: _Plan) -> str | None:
        """A read rule for the user's identity on the delivery's folder (an identical rule
        counts), kept in the ledger; returns the folder's web link for TopCAT's customValue."""
        grants = self.client(plan.target)
        if grants is None:
            return None
        grant = grants.grant(plan.download_dir, d.user_name, email=d.email, download_id=d.id)
        record = {"download_id": d.id, "hook": "globus", "kind": "grant-globus-acl",
                  **grant.record()}
        state.update(d.id, grants=lambda r: r.grants if any(
            g.get("rule_id") == grant.rule_id for g in r.grants) else [*r.grants, record])
        return grant.link
