"""Why granting access to a delivery failed, sorted into the two families that decide what
happens next (see pollcat.errors): a permanent reason is recorded on the download, a transient
one is retried until its deadline.

Every error names the download and the path (relative to the target root) it concerns, so an
operator can act on one log line.
"""

from __future__ import annotations

from pollcat.errors import PermanentError, TransientError


class AccessError(PermanentError):
    """Access could not be granted; retrying will not help without an operator."""


class InvalidAccountName(AccessError):
    """The account name does not match `^[a-z_][a-z0-9_-]{0,31}$` (shell metacharacters,
    upper case, a path...)."""


class SystemAccountRefused(AccessError):
    """The name is, or resolves to, a system account (root, a uid below the configured minimum
    or above the maximum, e.g. `nobody`): delivering to it would hand data to a service."""


class AccountMissing(AccessError):
    """The mapped account does not exist and the policy says `on_missing: fail`."""


class AccountHold(TransientError):
    """The mapped account does not exist yet and the policy says `on_missing: hold`.

    Transient on purpose: the download stays undelivered-to-the-user (never COMPLETE) and is
    retried, e.g. once the identity team has created the account. `alert` tells the pipeline
    to raise an operator alert rather than just log a retry.
    """

    alert = True


class AccountCreationFailed(AccessError):
    """`useradd` refused (name taken in LDAP, bad home, no permission): its message is kept."""


class GroupMissing(AccessError):
    """A group named in the access policy does not exist."""


class UnsafeTargetObject(AccessError):
    """A delivered path is a symbolic link, a hard link, not the expected type, or leaves the
    target root: nothing is granted on it and the delivery is not declared complete."""


class AclToolFailed(AccessError):
    """`setfacl`/`getfacl` failed (not installed, the filesystem has no ACL support...)."""


class AccessToolTimeout(TransientError):
    """An external tool (setfacl, useradd, the SSH helper) did not answer in time."""


class RemoteHelperFailed(AccessError):
    """The SSH forced-command helper on an SFTP target refused or failed."""


class RetentionRefused(AccessError):
    """A delivery cannot be removed safely: its manifest is missing or does not match the
    ledger record, or its path leaves the target root. Nothing is removed."""


class RemoteHelperUnreachable(TransientError):
    """ssh could not reach the target's helper (connection refused, timeout, host key not
    yet known): retried."""
