"""The facility's half of a delivery, applied after every file is verified and before COMPLETE
(a user is never told data is ready that they cannot read): the target's access policy (owner,
modes, POSIX ACLs, accounts) and, on a Globus target, a read rule for the user's identity.

Every applied action goes into the download's ledger record (`grants`), so retention can
revoke it; a rerun plans nothing and records nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

from pollcat.access import AccessContext, PosixAccessHook
from pollcat.access import grant_access as apply_policy
from pollcat.config import TargetConfig
from pollcat.layout import map_user
from pollcat.topcat import Download


class _Plan(Protocol):
    target: TargetConfig
    root: str
    download_dir: str
    jobs: list


class _Ledger(Protocol):
    def update(self, download_id: int, **fields: Any) -> Any: ...


def grant_access(state: _Ledger, d: Download, plan: _Plan) -> None:
    """The target's access policy: the user (and only the user, or a configured group) can
    read the delivery; through the forced-command helper on a remote target."""
    policy = plan.target.access_policy
    if policy is None:
        return
    ctx = AccessContext(
        download_id=d.id, icat_user=d.user_name,
        account=map_user(d.user_name, plan.target.user_rule, plan.target.user_map),
        root=plan.root, download_dir=plan.download_dir,
        files=[j.rel_path for j in plan.jobs])
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
