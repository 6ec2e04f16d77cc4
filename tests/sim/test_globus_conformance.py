"""The Globus emulation driven by globus-sdk's own clients, unchanged.

The clients find the emulation only through globus-sdk's supported service-URL variables
(`GLOBUS_SDK_SERVICE_URL_AUTH` / `_TRANSFER`), so what passes here is what the SDK really sends
and really parses: tokens by resource server, identity documents, access documents and
Transfer's error documents (`code`, `message`, `http_status`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import globus_sdk
import pytest
from globus_sdk.transport import RetryConfig

from simfacility.globus import RunningGlobus, running_globus

CLIENT_ID = str(uuid.uuid4())
SECRET = "s3cret-for-tests"
COLLECTION = str(uuid.uuid4())
FOREIGN_COLLECTION = str(uuid.uuid4())
SMALL_COLLECTION = str(uuid.uuid4())
TRANSFER_SCOPE = "urn:globus:auth:scope:transfer.api.globus.org:all"

SPEC = {
    "idp_domains": ["idp.example.org"],
    "clients": [{"id": CLIENT_ID, "secret": SECRET}],
    "identities": [{"username": "alice@idp.example.org", "name": "Alice Smith",
                    "email": "alice@example.org"}],
    "collections": [
        {"id": COLLECTION, "display_name": "LILS deliveries",
         "managers": {CLIENT_ID: "access_manager"}},
        {"id": FOREIGN_COLLECTION, "display_name": "someone else's"},
        {"id": SMALL_COLLECTION, "display_name": "tiny", "rule_limit": 1,
         "managers": {CLIENT_ID: "administrator"}},
    ],
}


@pytest.fixture
def globus(monkeypatch) -> Iterator[RunningGlobus]:
    with running_globus(SPEC) as server:
        for name, value in server.sdk_environment().items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture
def app(globus) -> globus_sdk.ClientApp:
    config = globus_sdk.GlobusAppConfig(token_storage="memory")
    return globus_sdk.ClientApp("pollcat-tests", client_id=CLIENT_ID, client_secret=SECRET,
                                config=config)


@pytest.fixture
def transfer(app) -> globus_sdk.TransferClient:
    return globus_sdk.TransferClient(app=app, retry_config=RetryConfig(max_retries=0))


def alice_id(globus: RunningGlobus) -> str:
    return next(i.id for i in globus.state.identities.values()
                if i.username == "alice@idp.example.org")


def rule_doc(principal: str, path: str = "/dl-1/", **extra) -> dict:
    return {"DATA_TYPE": "access", "principal_type": "identity", "principal": principal,
            "path": path, "permissions": "r", **extra}


def test_client_credentials_grant_returns_a_token_per_resource_server(globus):
    cc = globus_sdk.ConfidentialAppAuthClient(CLIENT_ID, SECRET)
    tokens = cc.oauth2_client_credentials_tokens([TRANSFER_SCOPE, "openid", "profile"])
    by_rs = tokens.by_resource_server
    assert set(by_rs) == {"transfer.api.globus.org", "auth.globus.org"}
    assert by_rs["transfer.api.globus.org"]["scope"] == TRANSFER_SCOPE
    assert by_rs["auth.globus.org"]["expires_at_seconds"] > dt.datetime.now().timestamp()


def test_id_token_verifies_with_the_sdks_decoder(globus):
    cc = globus_sdk.ConfidentialAppAuthClient(CLIENT_ID, SECRET)
    tokens = cc.oauth2_client_credentials_tokens([TRANSFER_SCOPE, "openid"])
    claims = tokens.decode_id_token()      # fetches the OpenID configuration and the JWK
    assert (claims["sub"], claims["aud"]) == (CLIENT_ID, CLIENT_ID)
    assert claims["iss"] == globus.auth_url.rstrip("/")


def test_client_app_learns_its_identity_from_the_id_token(globus, app):
    globus_sdk.AuthClient(app=app).get_identities(usernames="alice@idp.example.org")
    assert app.token_storage.identity_id == CLIENT_ID
    paths = [p for _, service, p in globus.state.requests if service == "auth"]
    assert "/.well-known/openid-configuration" in paths and "/jwk.json" in paths


def test_wrong_client_secret_is_refused_with_invalid_client(globus):
    cc = globus_sdk.ConfidentialAppAuthClient(CLIENT_ID, "wrong")
    with pytest.raises(globus_sdk.AuthAPIError) as info:
        cc.oauth2_client_credentials_tokens(TRANSFER_SCOPE)
    assert info.value.http_status == 401
    assert info.value.code == "invalid_client" or "invalid_client" in info.value.text


def test_identity_lookup_by_username_and_provisioning(globus, app):
    auth = globus_sdk.AuthClient(app=app)
    known = auth.get_identities(usernames="alice@idp.example.org")["identities"]
    assert [(i["id"], i["status"]) for i in known] == [(alice_id(globus), "used")]

    assert auth.get_identities(usernames="newbie@idp.example.org")["identities"] == []
    first = auth.get_identities(usernames="newbie@idp.example.org", provision=True)
    again = auth.get_identities(usernames=["newbie@idp.example.org"], provision=True)
    [made] = first["identities"]
    assert made["status"] == "unused" and made["username"] == "newbie@idp.example.org"
    assert again["identities"][0]["id"] == made["id"]

    foreign = auth.get_identities(usernames="eve@unknown-idp.example.net", provision=True)
    assert foreign["identities"] == []
    by_id = auth.get_identities(ids=[made["id"]])["identities"]
    assert by_id[0]["username"] == "newbie@idp.example.org"


def test_create_get_list_delete_a_permission(globus, transfer):
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=14)).replace(microsecond=0)
    created = transfer.add_endpoint_acl_rule(
        COLLECTION, rule_doc(alice_id(globus), expiration_date=expires.isoformat(),
                             notify_email="alice@example.org"))
    assert created.http_status == 201
    assert created["code"] == "Created" and created["DATA_TYPE"] == "access_create_result"
    rule_id = created["access_id"]

    rule = transfer.get_endpoint_acl_rule(COLLECTION, rule_id)
    assert (rule["id"], rule["path"], rule["permissions"], rule["principal"]) == (
        rule_id, "/dl-1/", "r", alice_id(globus))
    assert dt.datetime.fromisoformat(rule["expiration_date"]) == expires
    assert globus.state.notifications[0]["to"] == "alice@example.org"

    listed = list(transfer.endpoint_acl_list(COLLECTION))
    assert rule_id in [r["id"] for r in listed]
    implicit = [r for r in listed if r["id"] is None]
    assert [(r["principal"], r["role_type"], r["path"]) for r in implicit] == [
        (CLIENT_ID, "access_manager", "/")]

    deleted = transfer.delete_endpoint_acl_rule(COLLECTION, rule_id)
    assert deleted["code"] == "Deleted"
    assert rule_id not in [r["id"] for r in transfer.endpoint_acl_list(COLLECTION)]


def test_duplicate_rule_is_409_exists(globus, transfer):
    transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus)))
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus)))
    assert (info.value.http_status, info.value.code) == (409, "Exists")
    assert "already exists" in info.value.message


def test_unknown_rule_is_404_access_rule_not_found(globus, transfer):
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.delete_endpoint_acl_rule(COLLECTION, str(uuid.uuid4()))
    assert (info.value.http_status, info.value.code) == (404, "AccessRuleNotFound")
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.get_endpoint_acl_rule(COLLECTION, str(uuid.uuid4()))
    assert info.value.code == "AccessRuleNotFound"


def test_delete_of_a_deleted_rule_is_globus_404_access_rule_not_found_document(globus,
                                                                               transfer):
    """Globus: DELETE /v0.10/endpoint/<id>/access/<rule_id> of a rule already deleted answers
    404 with Transfer's error document, code `AccessRuleNotFound` (a client retrying a DELETE
    whose first answer was lost must take it as success)."""
    rule_id = transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus)))["access_id"]
    assert transfer.delete_endpoint_acl_rule(COLLECTION, rule_id)["code"] == "Deleted"
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.delete_endpoint_acl_rule(COLLECTION, rule_id)
    err = info.value
    assert (err.http_status, err.code) == (404, "AccessRuleNotFound")
    body = err.raw_json
    assert set(body) == {"code", "message", "request_id", "resource"}
    assert body["code"] == "AccessRuleNotFound" and rule_id in body["message"]
    assert body["resource"] == f"/endpoint/{COLLECTION}/access/{rule_id}"
    assert body["request_id"] and err.request_id == body["request_id"]
    assert err.message == body["message"]


def test_delete_of_an_expired_rule_is_404_access_rule_not_found(globus, transfer):
    """A permission past its `expiration_date` is gone: deleting it answers as for a deleted
    one."""
    rule_id = transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus)))["access_id"]
    globus.state.collections[COLLECTION].rules[rule_id]["expiration_date"] = (
        "2020-01-01T00:00:00+00:00")
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.delete_endpoint_acl_rule(COLLECTION, rule_id)
    assert (info.value.http_status, info.value.code) == (404, "AccessRuleNotFound")
    assert info.value.raw_json["resource"] == f"/endpoint/{COLLECTION}/access/{rule_id}"


def test_no_role_is_403_permission_denied_and_unknown_collection_404(globus, transfer):
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.add_endpoint_acl_rule(FOREIGN_COLLECTION, rule_doc(alice_id(globus)))
    assert (info.value.http_status, info.value.code) == (403, "PermissionDenied")
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.endpoint_acl_list(str(uuid.uuid4()))
    assert (info.value.http_status, info.value.code) == (404, "EndpointNotFound")


def test_rule_limit_is_409_limit_exceeded(globus, transfer):
    transfer.add_endpoint_acl_rule(SMALL_COLLECTION, rule_doc(alice_id(globus), "/a/"))
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.add_endpoint_acl_rule(SMALL_COLLECTION, rule_doc(alice_id(globus), "/b/"))
    assert (info.value.http_status, info.value.code) == (409, "LimitExceeded")


def test_malformed_access_document_is_400(globus, transfer):
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus), permissions="x"))
    assert (info.value.http_status, info.value.code) == (400, "BadRequest")
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(str(uuid.uuid4())))
    assert info.value.code == "BadRequest"


def test_update_changes_permissions_and_expiry(globus, transfer):
    rule_id = transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus)))["access_id"]
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).replace(microsecond=0)
    updated = transfer.update_endpoint_acl_rule(
        COLLECTION, rule_id, {"DATA_TYPE": "access", "permissions": "rw",
                              "expiration_date": later.isoformat()})
    assert updated["code"] == "Updated"
    rule = transfer.get_endpoint_acl_rule(COLLECTION, rule_id)
    assert rule["permissions"] == "rw"
    assert dt.datetime.fromisoformat(rule["expiration_date"]) == later


def test_expired_permission_disappears(globus, transfer):
    rule_id = transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus)))["access_id"]
    globus.state.collections[COLLECTION].rules[rule_id]["expiration_date"] = (
        "2020-01-01T00:00:00+00:00")
    assert rule_id not in [r["id"] for r in transfer.endpoint_acl_list(COLLECTION)]


def test_injected_503_reaches_the_client_as_service_unavailable(globus, transfer):
    globus.state.add_fault(service="transfer", method="POST", path_pattern="/access$")
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus)))
    assert (info.value.http_status, info.value.code) == (503, "ServiceUnavailable")
    assert transfer.add_endpoint_acl_rule(COLLECTION, rule_doc(alice_id(globus)))["access_id"]


def test_sdk_retries_an_injected_503_by_itself(globus, app):
    transfer = globus_sdk.TransferClient(app=app,
                                         retry_config=RetryConfig(max_sleep=0.05))
    globus.state.add_fault(service="transfer", method="GET", path_pattern="access_list")
    assert isinstance(list(transfer.endpoint_acl_list(COLLECTION)), list)
    gets = [r for r in globus.state.requests if r[0] == "GET" and "access_list" in r[2]]
    assert len(gets) == 2


def test_transfer_call_without_a_token_is_401(globus):
    anonymous = globus_sdk.TransferClient()
    with pytest.raises(globus_sdk.TransferAPIError) as info:
        anonymous.endpoint_acl_list(COLLECTION)
    assert (info.value.http_status, info.value.code) == (401, "AuthenticationFailed")
