"""A whole delivery to an S3 target (moto's server on 127.0.0.1): verified objects, the
manifest written last, a presigned link to it in TopCAT's customValue, one e-mail."""

from __future__ import annotations

import json
import urllib.request
import uuid
import zlib

import pytest

from pollcat.delivery_s3 import s3_settings
from pollcat.s3target import S3Target
from pollcat.states import OutcomeKind
from tests.conftest import scenario
from tests.support import pipeline_for, statuses, wait_for, wait_status

moto_server = pytest.importorskip("moto.server")

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_delivery_to_s3(make_sim, tmp_path, endpoint):
    bucket = f"deliveries-{uuid.uuid4().hex[:10]}"
    options = {"key": "k", "secret": "s3-secret-value", "endpoint_url": endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    sim = make_sim(scenario(downloads=[ALICE], topcat={
        "poll_delay_s": 0, "poll_interval_wait_s": 0.2,
        "mail": {"bodies": {"globus": "Your data: ${customValue}"}}}))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path, target_url=f"s3://{bucket}/pollcat",
                        storage_options=options)
    target = pipe.cfg.routes["globus"]
    store = S3Target(s3_settings(target))
    store.fs.call_s3("create_bucket", Bucket=bucket)

    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.COMPLETED, out
    assert statuses(sim.url) == {1: "COMPLETE"}
    for df in sim.store.datafiles.values():
        keys = [k for k in store.fs.find(f"{bucket}/pollcat") if k.endswith("/" + df.name)]
        if df.name not in ("scan_0001.nxs", "readme.txt"):
            continue
        (key,) = keys
        body = store.fs.cat_file(key)
        assert len(body) == df.size and zlib.crc32(body) == int(df.checksum, 16)
    (mail,) = wait_for(lambda: sim.facility.mail_outbox, what="the e-mail")
    link = mail["body"].split("Your data: ", 1)[1].strip()
    assert link.startswith(endpoint) and "pollcat-manifest.json" in link
    manifest = json.loads(urllib.request.urlopen(link, timeout=10).read())
    assert manifest["download_id"] == 1 and len(manifest["files"]) == 2
    assert "s3-secret-value" not in json.dumps(manifest) + out.reason

    # a rerun (an operator's forced retry) uploads nothing again
    pipe.forget(1)
    again = pipe.run_one(pipe.download_by_id(1))
    assert again.outcome in (OutcomeKind.COMPLETED, OutcomeKind.SKIPPED)
    assert again.bytes == 0
