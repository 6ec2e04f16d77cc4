"""The emulation's own `/sim` routes: inspect granted rules, inject faults over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import globus_sdk
import pytest
from globus_sdk.transport import RetryConfig

from simfacility.globus import running_globus

CLIENT_ID, SECRET, COLLECTION = str(uuid.uuid4()), "sim-secret", str(uuid.uuid4())


def call(url: str, method: str = "GET", body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def test_sim_routes_show_rules_and_inject_faults():
    spec = {"clients": [{"id": CLIENT_ID, "secret": SECRET}],
            "identities": [{"username": "alice@idp.example.org", "id": str(uuid.UUID(int=7))}],
            "collections": [{"id": COLLECTION, "managers": {CLIENT_ID: "administrator"}}]}
    with running_globus(spec) as server:
        cc = globus_sdk.ConfidentialAppAuthClient(CLIENT_ID, SECRET, base_url=server.auth_url)
        token = cc.oauth2_client_credentials_tokens(
            "urn:globus:auth:scope:transfer.api.globus.org:all").by_resource_server[
            "transfer.api.globus.org"]["access_token"]
        tc = globus_sdk.TransferClient(base_url=server.transfer_url,
                                       authorizer=globus_sdk.AccessTokenAuthorizer(token),
                                       retry_config=RetryConfig(max_retries=0))
        rule_id = tc.add_endpoint_acl_rule(COLLECTION, {
            "DATA_TYPE": "access", "principal_type": "identity",
            "principal": str(uuid.UUID(int=7)), "path": "/dl/", "permissions": "r"})["access_id"]
        assert [r["id"] for r in call(f"{server.url}/sim/rules")[COLLECTION]] == [rule_id]

        call(f"{server.url}/sim/faults", "POST",
             {"service": "transfer", "status": 500, "code": "InternalError", "times": 1})
        with pytest.raises(globus_sdk.TransferAPIError) as info:
            tc.endpoint_acl_list(COLLECTION)
        assert (info.value.http_status, info.value.code) == (500, "InternalError")
        assert len(list(tc.endpoint_acl_list(COLLECTION))) == 2  # the rule + the role's

        with pytest.raises(urllib.error.HTTPError) as bad:
            call(f"{server.url}/sim/faults", "POST", {"service": "transfer", "bogus": 1})
        assert bad.value.code == 400
        assert call(f"{server.url}/sim/faults", "DELETE") == []


def test_mounted_below_a_prefix_as_in_the_facility_app(monkeypatch):
    """The shape the facility app uses: `Mount("/globus", app=build_app(state))`."""
    spec = {"clients": [{"id": CLIENT_ID, "secret": SECRET}],
            "identities": [{"username": "alice@idp.example.org"}],
            "collections": [{"id": COLLECTION, "managers": {CLIENT_ID: "access_manager"}}]}
    with running_globus(spec, mount="/globus") as server:
        assert server.auth_url.endswith("/globus/auth/")
        for name, value in server.sdk_environment().items():
            monkeypatch.setenv(name, value)
        app = globus_sdk.ClientApp("mounted", client_id=CLIENT_ID, client_secret=SECRET,
                                   config=globus_sdk.GlobusAppConfig(token_storage="memory"))
        [alice] = globus_sdk.AuthClient(app=app).get_identities(
            usernames="alice@idp.example.org")["identities"]
        tc = globus_sdk.TransferClient(app=app, retry_config=RetryConfig(max_retries=0))
        server.state.add_fault(service="transfer", method="POST", status=503)
        with pytest.raises(globus_sdk.TransferAPIError) as info:
            tc.add_endpoint_acl_rule(COLLECTION, {
                "DATA_TYPE": "access", "principal_type": "identity", "principal": alice["id"],
                "path": "/dl/", "permissions": "r"})
        assert info.value.http_status == 503       # faults still match below the prefix
        assert call(f"{server.url}/sim/rules") == {COLLECTION: []}
