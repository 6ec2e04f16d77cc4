"""pollcat.globus against the Globus emulation (sim/simfacility/globus), through globus-sdk."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pollcat.errors import InvalidUserName, PermanentError, TransientError, UnsafePathError
from pollcat.globus import (
    GlobusAccessHook,
    GlobusAuthenticationFailed,
    GlobusGrantConflict,
    GlobusGrants,
    GlobusIdentityUnknown,
    GlobusPermissionDenied,
    GlobusRuleLimit,
    GlobusSettings,
    GlobusUnavailable,
    folder_link,
)
from simfacility.globus import Role, RunningGlobus, running_globus

CLIENT_ID = str(uuid.uuid4())
SECRET = "pollcat-client-secret-value"
COLLECTION = str(uuid.uuid4())
FOREIGN = str(uuid.uuid4())
FULL = str(uuid.uuid4())

SPEC = {
    "idp_domains": ["idp.example.org"],
    "clients": [{"id": CLIENT_ID, "secret": SECRET}],
    "identities": [{"username": "alice@idp.example.org", "email": "alice@example.org"},
                   {"username": "carol@elsewhere.example.org"}],
    "collections": [
        {"id": COLLECTION, "managers": {CLIENT_ID: "access_manager"}},
        {"id": FOREIGN},
        {"id": FULL, "rule_limit": 0, "managers": {CLIENT_ID: "access_manager"}},
    ],
}


@pytest.fixture
def globus() -> Iterator[RunningGlobus]:
    with running_globus(SPEC) as server:
        yield server


@pytest.fixture
def grants(globus) -> Callable[..., GlobusGrants]:
    def make(**overrides) -> GlobusGrants:
        settings = dict(client_id=CLIENT_ID, client_secret=SECRET, collection_id=COLLECTION,
                        username_template="{user}@idp.example.org", max_retries=0,
                        auth_url=globus.auth_url, transfer_url=globus.transfer_url)
        settings.update(overrides)
        return GlobusGrants(GlobusSettings(**settings))
    return make


def rules(globus: RunningGlobus, collection: str = COLLECTION) -> dict[str, dict]:
    return globus.state.collections[collection].rules


def identity(globus: RunningGlobus, username: str) -> str:
    return next(i.id for i in globus.state.identities.values() if i.username == username)


def test_grant_creates_a_read_rule_with_expiry_and_link(globus, grants):
    now = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)
    grant = grants(lifetime_days=10).grant("alice/dl-7", "simple/alice", download_id=7, now=now)

    rule = rules(globus)[grant.rule_id]
    assert (rule["principal_type"], rule["principal"], rule["path"], rule["permissions"]) == (
        "identity", identity(globus, "alice@idp.example.org"), "/alice/dl-7/", "r")
    assert rule["expiration_date"] == "2030-05-11T12:00:00+00:00"
    assert grant.created and grant.path == "/alice/dl-7/"
    assert grant.link == (f"https://app.globus.org/file-manager?origin_id={COLLECTION}"
                          f"&origin_path=/alice/dl-7/")
    assert SECRET not in repr(grant.record()) and "access_token" not in repr(grant.record())


def test_grant_is_idempotent_and_keeps_the_rule_id(globus, grants):
    g = grants()
    first = g.grant("alice/dl-7", "simple/alice", download_id=7)
    again = g.grant("alice/dl-7/", "simple/alice", download_id=7)
    assert again.rule_id == first.rule_id and not again.created
    assert list(rules(globus)) == [first.rule_id]


def test_existing_rule_is_adopted_and_its_expiry_moved(globus, grants):
    g = grants(lifetime_days=3)
    first = g.grant("alice/dl-7", "simple/alice",
                    now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    later = g.grant("alice/dl-7", "simple/alice")
    assert later.rule_id == first.rule_id
    assert rules(globus)[first.rule_id]["expiration_date"] == later.expiration_date
    assert later.expiration_date > first.expiration_date


def test_existing_rw_rule_for_the_same_folder_is_a_conflict(globus, grants):
    globus.state.collections[COLLECTION].rules["x1"] = {
        "id": "x1", "principal_type": "identity", "path": "/alice/dl-7/", "permissions": "rw",
        "principal": identity(globus, "alice@idp.example.org"), "expiration_date": None}
    with pytest.raises(GlobusGrantConflict) as info:
        grants().grant("alice/dl-7", "simple/alice", download_id=7)
    assert isinstance(info.value, PermanentError)
    assert "download 7" in str(info.value) and "'rw'" in str(info.value)


def test_user_who_never_logged_in_is_provisioned_and_granted(globus, grants):
    grant = grants().grant("dave/dl-8", "simple/dave", download_id=8)
    ident = globus.state.identities[grant.identity_id]
    assert (ident.username, ident.status) == ("dave@idp.example.org", "unused")
    assert rules(globus)[grant.rule_id]["principal"] == grant.identity_id


def test_unknown_identity_provider_is_permanent_with_a_clear_reason(globus, grants):
    g = grants(username_template="{user}@unknown-idp.example.net")
    with pytest.raises(GlobusIdentityUnknown) as info:
        g.grant("erin/dl-9", "simple/erin", download_id=9)
    assert isinstance(info.value, PermanentError)
    message = str(info.value)
    assert "download 9" in message and "erin@unknown-idp.example.net" in message
    assert rules(globus) == {}


def test_identity_map_by_username_and_by_identity_id(globus, grants):
    carol = identity(globus, "carol@elsewhere.example.org")
    g = grants(identity_map={"uows/123": "carol@elsewhere.example.org", "uows/456": carol})
    assert g.grant("c1", "uows/123").identity_id == carol
    assert g.grant("c2", "uows/456").identity_id == carol


def test_names_that_cannot_form_a_username_are_refused(grants):
    with pytest.raises(InvalidUserName):
        grants().username_for("simple/al ice")


def test_unsafe_directory_is_refused_before_any_call(globus, grants):
    with pytest.raises(UnsafePathError):
        grants().grant("alice/../bob", "simple/alice")
    assert list(globus.state.requests) == []


def test_missing_role_is_permission_denied(globus, grants):
    with pytest.raises(GlobusPermissionDenied) as info:
        grants(collection_id=FOREIGN).grant("alice/dl-7", "simple/alice", download_id=7)
    err = info.value
    assert isinstance(err, PermanentError)
    assert (err.status, err.code, err.download_id) == (403, "PermissionDenied", 7)
    assert "access_manager" in str(err) and "[globus-transfer 403 PermissionDenied]" in str(err)


def test_rule_limit_is_permanent(globus, grants):
    with pytest.raises(GlobusRuleLimit) as info:
        grants(collection_id=FULL).grant("alice/dl-7", "simple/alice", download_id=7)
    assert isinstance(info.value, PermanentError) and info.value.code == "LimitExceeded"


def test_5xx_is_transient(globus, grants):
    globus.state.add_fault(service="transfer", method="POST", path_pattern="/access$",
                           status=503, times=None)
    with pytest.raises(GlobusUnavailable) as info:
        grants().grant("alice/dl-7", "simple/alice", download_id=7)
    assert isinstance(info.value, TransientError) and info.value.status == 503


def test_5xx_on_identity_lookup_is_transient(globus, grants):
    globus.state.add_fault(service="auth", path_pattern="identities", status=502, times=None)
    with pytest.raises(GlobusUnavailable) as info:
        grants().grant("alice/dl-7", "simple/alice", download_id=7)
    assert info.value.service == "globus-auth"


def test_timeout_is_transient(globus, grants):
    globus.state.add_fault(service="transfer", method="POST", path_pattern="/access$",
                           delay_s=2.0)
    with pytest.raises(GlobusUnavailable) as info:
        grants(http_timeout_s=0.3).grant("alice/dl-7", "simple/alice", download_id=7)
    assert isinstance(info.value, TransientError) and "could not be reached" in str(info.value)


def test_wrong_client_secret_is_permanent_and_never_echoed(globus, grants):
    with pytest.raises(GlobusAuthenticationFailed) as info:
        grants(client_secret="not-the-secret-xyz").grant("alice/dl-7", "simple/alice",
                                                         download_id=7)
    assert isinstance(info.value, PermanentError)
    assert "not-the-secret-xyz" not in str(info.value)
    assert "not-the-secret-xyz" not in repr(
        GlobusSettings(client_id="c", client_secret="not-the-secret-xyz", collection_id="x"))


def test_notify_email_only_when_enabled(globus, grants):
    grants().grant("alice/dl-1", "simple/alice", email="alice@example.org")
    assert globus.state.notifications == []
    grants(notify_email=True).grant("alice/dl-2", "simple/alice", email="alice@example.org")
    assert [(n["to"], n["path"]) for n in globus.state.notifications] == [
        ("alice@example.org", "/alice/dl-2/")]


def test_revoke_deletes_and_a_missing_rule_counts_as_done(globus, grants):
    g = grants()
    grant = g.grant("alice/dl-7", "simple/alice")
    assert g.revoke(grant.rule_id, download_id=7) is True
    assert rules(globus) == {}
    assert g.revoke(grant.rule_id, download_id=7) is False


def test_revoke_of_a_rule_deleted_out_of_band_counts_as_revoked(globus, grants):
    """Globus answers 404 `AccessRuleNotFound` for a rule already deleted (someone removed it
    in the web app): nothing is left to revoke, so it is done, not an error."""
    g = grants()
    grant = g.grant("alice/dl-7", "simple/alice")
    del rules(globus)[grant.rule_id]                 # deleted out of band
    assert g.revoke(grant.rule_id, download_id=7) is False
    deletes = [r for r in globus.state.requests if r[0] == "DELETE"]
    assert len(deletes) == 1 and deletes[0][2].endswith(f"/access/{grant.rule_id}")


def test_revoke_of_an_expired_rule_counts_as_revoked(globus, grants):
    g = grants()
    grant = g.grant("alice/dl-7", "simple/alice")
    rules(globus)[grant.rule_id]["expiration_date"] = "2020-01-01T00:00:00+00:00"
    assert g.revoke(grant.rule_id, download_id=7) is False


@pytest.mark.parametrize("code", ["AccessRuleNotFound", "ClientError.NotFound",
                                  "EndpointNotFound", "SomeFutureNotFound"])
def test_revoke_takes_any_404_as_already_gone(globus, grants, code):
    g = grants()
    grant = g.grant("alice/dl-7", "simple/alice")
    globus.state.add_fault(service="transfer", method="DELETE", status=404, code=code)
    assert g.revoke(grant.rule_id, download_id=7) is False


@pytest.mark.parametrize(("status", "code", "error"), [
    (503, None, GlobusUnavailable), (403, "PermissionDenied", GlobusPermissionDenied)])
def test_revoke_that_fails_otherwise_raises(globus, grants, status, code, error):
    """Only a 404 counts as gone: a rule Globus still holds is never taken for revoked."""
    g = grants()
    grant = g.grant("alice/dl-7", "simple/alice")
    globus.state.add_fault(service="transfer", method="DELETE", status=status, code=code)
    with pytest.raises(error) as info:
        g.revoke(grant.rule_id, download_id=7)
    assert info.value.download_id == 7 and grant.rule_id in rules(globus)


def test_reconcile_removes_only_pollcats_orphans(globus, grants):
    g = grants()
    live = g.grant("deliveries/alice/dl-1", "simple/alice")
    orphan = g.grant("deliveries/alice/dl-2", "simple/alice")
    outside = g.grant("staff/alice/notes", "simple/alice")
    alice = identity(globus, "alice@idp.example.org")
    globus.state.collections[COLLECTION].rules["rw-1"] = {
        "id": "rw-1", "principal_type": "identity", "principal": alice, "permissions": "rw",
        "path": "/deliveries/alice/dl-3/", "expiration_date": None}
    globus.state.collections[COLLECTION].rules["grp-1"] = {
        "id": "grp-1", "principal_type": "group", "principal": str(uuid.uuid4()),
        "permissions": "r", "path": "/deliveries/bob/dl-4/", "expiration_date": None}

    assert g.reconcile(["deliveries/alice/dl-1"], managed_prefix="deliveries") == []  # young
    removed = g.reconcile(["deliveries/alice/dl-1"], managed_prefix="deliveries",
                          min_age=dt.timedelta(0))

    assert [(o.rule_id, o.path) for o in removed] == [(orphan.rule_id,
                                                       "/deliveries/alice/dl-2/")]
    assert set(rules(globus)) == {live.rule_id, outside.rule_id, "rw-1", "grp-1"}
    assert globus.state.collections[COLLECTION].roles  # the role rule is untouched
    assert g.reconcile(["deliveries/alice/dl-1"], managed_prefix="deliveries",
                       min_age=dt.timedelta(0)) == []


def test_folder_link_quotes_the_path():
    assert folder_link("abc", "alice/my run/") == (
        "https://app.globus.org/file-manager?origin_id=abc&origin_path=/alice/my%20run/")


@dataclass(frozen=True)
class Ctx:
    download_id: int
    icat_user: str
    download_dir: str
    email: str | None = None


def test_access_hook_plan_apply_revoke_and_rerun(globus, grants):
    hook = GlobusAccessHook(grants())
    ctx = Ctx(11, "simple/alice", "alice/dl-11")
    ledger: list[dict] = []

    planned = hook.plan(ctx)
    assert [p.path for p in planned] == ["/alice/dl-11/"]
    assert rules(globus) == {}                      # planning changes nothing
    assert hook.apply(ctx, planned, ledger.append) == 1
    [rec] = ledger
    assert (rec["hook"], rec["kind"], rec["download_id"], rec["path"]) == (
        "globus", "grant-globus-acl", 11, "/alice/dl-11/")
    assert rec["rule_id"] in rules(globus) and rec["collection_id"] == COLLECTION
    assert SECRET not in repr(rec)

    assert hook.plan(ctx) == []                     # a rerun plans nothing

    undone: list[dict] = []
    assert hook.revoke(ctx, ledger, undone.append) == 1
    assert rules(globus) == {} and undone[0]["was_present"] is True
    assert hook.revoke(ctx, ledger) == 1            # already gone: still done, no error


def test_preflight_reports_the_role_or_the_failure(globus, grants):
    assert grants().preflight() == "access_manager"
    globus.state.collections[FOREIGN].roles[CLIENT_ID] = Role.RESTRICTED_ADMINISTRATOR
    assert grants(collection_id=FOREIGN).preflight() is None   # can read, role not shown
    with pytest.raises(GlobusAuthenticationFailed):
        grants(client_secret="wrong-secret").preflight()
