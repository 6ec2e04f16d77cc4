"""AccessPolicy validation and the ledger record shape (no system tools needed)."""

from __future__ import annotations

import json

import pytest

from pollcat.access import AccessPolicy, AccountsMode, Action, ActionKind, OnMissing
from pollcat.access.accounts import check_account_name, useradd_argv
from pollcat.access.acl import AclKey, AclTag, parse_getfacl, perms_union
from pollcat.access.errors import InvalidAccountName, SystemAccountRefused
from pollcat.access.fdwalk import ObjectKind
from pollcat.errors import ConfigurationError

pytestmark = pytest.mark.unit


def test_defaults_are_the_safe_choice():
    policy = AccessPolicy()
    assert policy.accounts is AccountsMode.EXISTING and policy.on_missing is OnMissing.FAIL
    assert policy.acl_user and not policy.chown_user
    assert policy.file_mode & 0o007 == 0 and policy.dir_mode & 0o007 == 0
    assert policy.retention_days == 0


def test_text_forms_are_accepted_and_round_trip():
    policy = AccessPolicy.from_mapping({"accounts": "create", "on_missing": "hold",
                                        "file_mode": "0o644", "dir_mode": "755",
                                        "retention_days": 15})
    assert policy.accounts is AccountsMode.CREATE and policy.file_mode == 0o644
    assert AccessPolicy.from_mapping(policy.to_mapping()) == policy


@pytest.mark.parametrize("settings, message", [
    ({"accounts": "sometimes"}, "accounts"),
    ({"on_missing": "ignore"}, "on_missing"),
    ({"file_mode": "rw-r-----"}, "octal"),
    ({"file_mode": 0o4755}, "0o777"),
    ({"file_mode": "0600"}, "ACL mask"),
    ({"min_uid": 0}, "root"),
    ({"max_uid": 10}, "below min_uid"),
    ({"accounts": "none"}, "no user"),
    ({"setgid_inbox": True}, "needs a group"),
    ({"group": "root;id"}, "group name"),
    ({"acl_group": "Staff"}, "group name"),
    ({"retention_days": -1}, "retention_days"),
    ({"retention_days": True}, "retention_days"),
    ({"useradd_home": "home/{account}"}, "absolute"),
    ({"useradd_home": "/home/{account}:0:0"}, "passwd"),
    ({"useradd_shell": "/bin/sh\nevil"}, "passwd"),
    ({"useradd_home": "/home/{user}"}, "only use"),
    ({"account_db_root": "relative"}, "absolute"),
    ({"colour": "blue"}, "unknown setting"),
])
def test_bad_settings_are_refused_with_a_reason(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        AccessPolicy.from_mapping(settings)


@pytest.mark.parametrize("name", ["alice;id", "alice\n", "Alice", "-e", "", "a/b", "a" * 33, 7])
def test_account_names_are_checked(name):
    with pytest.raises(InvalidAccountName):
        check_account_name(name, download_id=1)


@pytest.mark.parametrize("name", ["root", "nobody"])
def test_reserved_names_are_refused_before_any_lookup(name):
    with pytest.raises(SystemAccountRefused):
        check_account_name(name)


def test_useradd_is_an_argument_list_pinned_to_the_uid_range():
    policy = AccessPolicy(accounts="create", account_db_root="/srv/sftp-accounts",
                          useradd_home="/data/{account}", min_uid=5000, max_uid=6000)
    argv = useradd_argv(policy, "alice", "/usr/sbin/useradd")
    assert argv[0] == "/usr/sbin/useradd" and argv[-2:] == ["--", "alice"]
    assert ["--prefix", "/srv/sftp-accounts"] == argv[1:3]
    assert "/data/alice" in argv and "UID_MIN=5000" in argv and "UID_MAX=6000" in argv


def test_records_are_plain_json_and_round_trip():
    action = Action(ActionKind.GRANT_ACL, "alice/dl/a.nxs", ObjectKind.FILE, account="alice",
                    uid=1001, acl={AclKey(False, AclTag.USER, 1001): "r--"},
                    previous={"acl": {}, "extended_acl": False, "default_acl": False})
    record = action.to_record(42)
    assert json.loads(json.dumps(record))["acl"] == {"user:1001": "r--"}
    assert record["download_id"] == 42 and record["kind"] == "grant-acl"
    assert Action.from_record(record) == action


def test_getfacl_parsing_and_perm_union():
    text = ("user::rw-\nuser:1001:r--\t#effective:r--\ngroup::r--\ngroup:50:r-x\nmask::r-x\n"
            "other::---\ndefault:user::rwx\ndefault:user:1001:r-x\n")
    assert parse_getfacl(text) == {AclKey(False, AclTag.USER, 1001): "r--",
                                   AclKey(False, AclTag.GROUP, 50): "r-x",
                                   AclKey(True, AclTag.USER, 1001): "r-x"}
    assert perms_union("r--", "--x") == "r-x" and perms_union("---", "--x") == "--x"


def test_command_line_flags_build_the_policy(monkeypatch):
    """`pollcat sweep --access JSON` is the block's `access` field, one declaration for both."""
    import json

    from pollcat.cli import _parser, build_config

    monkeypatch.setenv("POLLCAT_PASSWORD", "x")
    base = ["sweep", "--icat-url", "http://h", "--ids-url", "http://h", "--topcat-url",
            "http://h", "--facility-name", "F", "--username", "u", "--route", "t=file:///srv"]

    def policy(access: dict | None):
        extra = ["--access", json.dumps(access)] if access is not None else []
        return build_config(_parser().parse_args(base + extra)).routes["t"].access_policy

    assert policy({}) == AccessPolicy()
    built = policy({"accounts": "create", "on_missing": "hold", "file_mode": "0644",
                    "acl_group": "staff", "retention_days": 15, "default_acl": False})
    assert built.accounts is AccountsMode.CREATE and built.file_mode == 0o644
    assert built.acl_group == "staff" and not built.default_acl
    assert built.retention_days == 15
    with pytest.raises(ConfigurationError, match="ACL mask"):
        policy({"file_mode": "0600"})
