"""Where each delivered file goes under a target root, and who it belongs to.

Every name that reaches a target comes from outside pollcat (ICAT names, TopCAT's user-typed
`fileName`, a layout template from the configuration), so every path is checked here, component
by component, before anything touches a filesystem. Nothing in pollcat builds a target path
without `render_path`; the target layer (`pollcat.targetfs`) then walks it below the root without
following any link.

Path rules (a component is the text between two `/`):

* no empty component (so no absolute path, no `//`, no trailing `/`), no `.` and no `..`;
* no backslash (a Windows separator on some SFTP servers and Samba shares);
* no control character: C0 (`\\x00`-`\\x1f`), DEL (`\\x7f`), C1 (`\\x80`-`\\x9f`), and the Unicode
  line/paragraph separators; they break logs, shells and e-mails. Format characters (Cf, e.g.
  zero-width joiners in names) are allowed;
* a component is at most 255 bytes in UTF-8 (the POSIX `NAME_MAX` of nearly all filesystems), so
  an over-long name is refused with a clear message instead of a late `ENAMETOOLONG`.

Only the `datafile` field may contain `/` (ICAT Datafile names do, and the IDS zip layout turns them
into subdirectories). A `/` or `%` in any other field is percent-encoded (`%2F`, `%25`), like the
IDS ZipMapper does, so a dataset called `a/b` stays one directory and no two names collide.
"""

from __future__ import annotations

import pwd
import re
import string
import unicodedata
from collections.abc import Mapping

from pollcat.errors import ConfigurationError, InvalidUserName, UnsafePathError

DEFAULT_LAYOUT = "{user}/{download}/{investigation}/{visit}/{dataset}/{datafile}"

#: Fields that are the same for every file of one download.
DOWNLOAD_FIELDS = frozenset({"user", "download", "download_id", "facility", "transport"})
#: Fields that vary per file.
FILE_FIELDS = frozenset({"investigation", "visit", "dataset", "datafile"})
FIELDS = DOWNLOAD_FIELDS | FILE_FIELDS

#: POSIX-portable account names as `useradd` accepts them by default (no trailing `$`, no
#: upper case, at most 32 characters). Stricter than POSIX itself, on purpose: the name is
#: used as a directory name and perhaps as an SSH login.
ACCOUNT_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
USER_RULES = ("strip-prefix", "keep", "mapping-only")

NAME_MAX = 255

#: Names pollcat keeps for itself directly inside a download's directory: the staging directory
#: (part files, claim, manifest temp), the receipt and the claim of older versions. A datafile
#: rendered onto one of them is refused, so a user's file can never be taken for pollcat's.
RESERVED_NAMES = frozenset({".pollcat", "pollcat-manifest.json", ".pollcat-claim"})
_FORBIDDEN_CATEGORIES = {"Cc", "Zl", "Zp"}


# --- path components ------------------------------------------------------------------------


def _bad_char(component: str) -> str | None:
    """The first forbidden character of a component, or None."""
    if component.isascii() and component.isprintable():  # no Cc/Zl/Zp: only "\\" can be bad
        return "\\" if "\\" in component else None
    for ch in component:
        if ch == "\\" or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            return ch
    return None


def check_component(component: str, *, where: str | None = None) -> str:
    """Return `component` if it is a safe single path component, else raise UnsafePathError.

    `where` is the whole value the component came from, so the message names what to fix.
    """
    shown = repr(where if where is not None else component)
    if component in ("", ".", ".."):
        what = "an empty" if component == "" else f"a {component!r}"
        raise UnsafePathError(f"path {shown} has {what} component")
    if "/" in component:  # only callers other than check_relpath can pass one
        raise UnsafePathError(f"path {shown} is not a single component")
    bad = _bad_char(component)
    if bad is not None:
        raise UnsafePathError(f"path {shown} contains the forbidden character {bad!r}")
    if len(component.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise UnsafePathError(f"path {shown} has a component longer than {NAME_MAX} bytes")
    return component


def check_relpath(rel: str) -> str:
    """Return `rel` if it is a safe relative POSIX path, else raise UnsafePathError."""
    if not isinstance(rel, str):
        raise UnsafePathError(f"path {rel!r} is not a string")
    if rel.startswith("/"):
        raise UnsafePathError(f"path {rel!r} is absolute")
    for component in rel.split("/"):
        check_component(component, where=rel)
    return rel


def check_not_reserved(rel: str, download_dir: str) -> str:
    """Return `rel` unless it is, or lies under, a `RESERVED_NAMES` entry of `download_dir`."""
    prefix = download_dir.rstrip("/") + "/" if download_dir else ""
    if prefix and not rel.startswith(prefix):
        raise UnsafePathError(f"path {rel!r} is outside the download directory {download_dir!r}")
    first = rel[len(prefix):].split("/", 1)[0]
    if first in RESERVED_NAMES:
        raise UnsafePathError(f"path {rel!r} uses the name {first!r}, which pollcat keeps for "
                              "itself in a download directory")
    return rel


# --- templates ------------------------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """The field names a layout template uses; ConfigurationError for anything unknown.

    Attribute and index access (`{user.__class__}`, `{user[0]}`) and conversions are refused:
    the template comes from configuration and must not reach into Python objects.
    """
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(f"layout {template!r} is not a valid template: {exc}") from exc
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS:
            raise ConfigurationError(
                f"layout {template!r} uses unknown field {{{name}}}; known: {sorted(FIELDS)}")
        if conversion or (spec and "{" in spec):
            raise ConfigurationError(f"layout {template!r}: conversions and nested fields "
                                     f"are not allowed in {{{name}}}")
        names.append(name)
    return names


def _encode_single(value: str) -> str:
    """Keep a non-datafile field in one component, reversibly (as the IDS ZipMapper does)."""
    return value.replace("%", "%25").replace("/", "%2F")


def _field_values(names: list[str], fields: Mapping[str, object]) -> dict[str, object]:
    values: dict[str, object] = {}
    for name in names:
        value = fields.get(name)
        if value is None:
            raise ConfigurationError(f"layout uses {{{name}}} but no value is known for it")
        if isinstance(value, str) and name != "datafile":
            value = _encode_single(value)
        values[name] = value
    return values


def render_path(template: str, fields: Mapping[str, object]) -> str:
    """Fill in a layout template and return the validated relative POSIX path.

    Unknown placeholders → ConfigurationError; an unsafe result → UnsafePathError naming it.
    """
    names = template_fields(template)
    try:
        rel = template.format_map(_field_values(names, fields))
    except (ValueError, TypeError) as exc:  # a bad format spec, e.g. {user:d}
        raise ConfigurationError(f"layout {template!r} cannot be rendered: {exc}") from exc
    return check_relpath(rel)


def download_template(template: str) -> str:
    """The leading template components that use only download-level fields.

    With the default layout this is `{user}/{download}`: the download's own directory, where its
    claim and manifest live. "" when the template starts with a per-file field.
    """
    template_fields(template)
    kept = []
    for part in template.split("/"):
        used = {name for _l, name, _s, _c in string.Formatter().parse(part) if name}
        if used & FILE_FIELDS:
            break
        kept.append(part)
    return "/".join(kept)


def shared_levels(template: str) -> int:
    """How many directory levels above the download's own directory the layout has: the
    directories shared by several downloads (`alice/` in `{user}/{download}/...`)."""
    prefix = download_template(template)
    return len(prefix.split("/")) - 1 if prefix else 0


def user_dirs(template: str, download_dir: str) -> tuple[str, ...]:
    """The directories between the root and `download_dir` that are its user's own: from the
    first level whose template component uses `{user}` down to the download's parent
    (`("alice",)` for `alice/run42` in `{user}/{download}/...`). A level above it (a
    `{facility}/`) is shared by every user's downloads; none is the user's without `{user}`."""
    parts = download_template(template).split("/")
    dirs = download_dir.split("/")
    if len(parts) != len(dirs):  # not rendered from this layout: she only passes them
        return ()
    for level, part in enumerate(parts[:-1]):
        if "user" in {name for _l, name, _s, _c in string.Formatter().parse(part) if name}:
            return tuple("/".join(dirs[:i + 1]) for i in range(level, len(parts) - 1))
    return ()


# --- users ----------------------------------------------------------------------------------


def _apply_rule(icat_user: str, rule: str) -> str | None:
    if rule == "strip-prefix":
        return icat_user.split("/", 1)[1] if "/" in icat_user else icat_user
    if rule == "keep":
        return icat_user.replace("/", "_")
    if rule == "mapping-only":
        return None
    raise ConfigurationError(f"unknown user rule {rule!r}; known: {', '.join(USER_RULES)}")


def map_user(icat_user: str, rule: str = "strip-prefix",
             mapping: Mapping[str, str] | None = None, *,
             uid_range: tuple[int, int] | None = None) -> str:
    """The destination account for an ICAT user name.

    * an explicit `mapping` entry (ICAT name → account) always wins;
    * `strip-prefix` (default) drops the authenticator mnemonic: `simple/alice` → `alice`;
    * `keep` keeps it, joined with `_` since `/` cannot be in an account: `simple_alice`;
    * `mapping-only` refuses every user not in `mapping`.

    The result must match ACCOUNT_NAME_RE; nothing is lower-cased or trimmed, because a silently
    altered name could be someone else's account. `uows/12345` or `simple/Alice` therefore need
    a mapping entry. Refusals raise InvalidUserName naming the ICAT user.

    `uid_range` is the target's access policy's `(min_uid, max_uid)` where it has one (see
    `is_system_account`); the policy's own, stricter check of the resolved account runs before
    the transfer too (`grants.check_account`).
    """
    if rule not in USER_RULES:
        raise ConfigurationError(f"unknown user rule {rule!r}; known: {', '.join(USER_RULES)}")
    if mapping and icat_user in mapping:
        account: str | None = mapping[icat_user]
    else:
        account = _apply_rule(icat_user, rule)
    if account is None:
        raise InvalidUserName(f"ICAT user {icat_user!r} has no entry in the user mapping")
    if not isinstance(account, str) or not ACCOUNT_NAME_RE.fullmatch(account):
        # fullmatch: with `match`, "$" also matches before a trailing newline ("eve\n")
        raise InvalidUserName(
            f"ICAT user {icat_user!r} maps to {account!r}, which is not a valid account name "
            f"(must match {ACCOUNT_NAME_RE.pattern}); add it to the user mapping")
    explicit = bool(mapping) and icat_user in mapping  # type: ignore[operator]
    if not explicit and is_system_account(account, uid_range):
        raise InvalidUserName(
            f"ICAT user {icat_user!r} maps to the system account {account!r}; deliver to it "
            "only through an explicit user mapping entry")
    return account


#: Accounts that belong to the system, not to a person, on common Linux distributions.
SYSTEM_ACCOUNTS = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "adm", "operator", "halt",
    "shutdown", "ftp", "sshd", "_apt", "messagebus", "polkitd", "postfix", "postgres", "mysql",
    "systemd-network", "systemd-resolve", "systemd-timesync", "systemd-coredump", "admin",
    "administrator", "pollcat"})


#: The lowest uid of a person's account on common Linux distributions (login.defs UID_MIN),
#: for targets without an access policy (a policy's `min_uid`/`max_uid` replace it).
DEFAULT_MIN_UID = 1000


def is_system_account(account: str, uid_range: tuple[int, int] | None = None) -> bool:
    """A well-known system account, or a local account with a system uid: outside `uid_range`
    (the access policy's `(min_uid, max_uid)`), or below DEFAULT_MIN_UID without a policy.

    Derived names (strip-prefix, keep) never land in such a directory: `simple/root` would
    otherwise be delivered into `root/`, and the same name may be an SSH login elsewhere.
    """
    if account in SYSTEM_ACCOUNTS:
        return True
    try:
        uid = pwd.getpwnam(account).pw_uid
    except KeyError:
        return False
    if uid_range is None:
        return uid < DEFAULT_MIN_UID
    return not uid_range[0] <= uid <= uid_range[1]
