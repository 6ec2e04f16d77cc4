"""The blocks pass Prefect's own block standards, are connections with methods, and refuse
mistakes before a run fails."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from pollcat.blocks import DeliveryTarget, PollcatFacility
from pollcat.config import FacilityConfig, SweepSettings, TargetConfig
from pollcat.errors import ConfigurationError

pytestmark = pytest.mark.prefect


@pytest.mark.parametrize("block", [PollcatFacility, DeliveryTarget])
class TestAllBlocksAdhereToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block):
        return block


def test_each_setting_is_declared_once():
    """Block fields are the config models' fields: same names, defaults and descriptions."""
    for model in (FacilityConfig, SweepSettings):
        for name, field in model.model_fields.items():
            mine = PollcatFacility.model_fields[name]
            assert mine.description == field.description, name
            assert mine.get_default(call_default_factory=True) == field.get_default(
                call_default_factory=True) or name == "state_dir", name
    for name, field in TargetConfig.model_fields.items():
        assert DeliveryTarget.model_fields[name].description == field.description, name


def test_a_layout_without_the_download_is_refused_when_the_block_is_made():
    with pytest.raises(ConfigurationError, match="name the download"):
        DeliveryTarget(url="file:///srv/x", layout="{user}/{datafile}")


def test_routes_to_missing_targets_are_refused_at_save(tmp_path):
    DeliveryTarget(url=f"file://{tmp_path}").save("blk-real", overwrite=True)
    facility = PollcatFacility(
        facility_name="LILS", icat_url="http://127.0.0.1:9", ids_url="http://127.0.0.1:9",
        topcat_url="http://127.0.0.1:9", username="pollcat", password="x",
        routes={"globus": "blk-real", "scarf": "blk-typo"})
    with pytest.raises(ConfigurationError, match="'scarf'.*'blk-typo'"):
        facility.save("blk-facility", overwrite=True)
    facility.routes = {"globus": "blk-real"}
    facility.save("blk-facility", overwrite=True)
    loaded = PollcatFacility.load("blk-facility")
    cfg = loaded.pipeline_config()
    assert cfg.routes["globus"].url == f"file://{tmp_path}"
    assert loaded.password.get_secret_value() == "x"
    fs, root = DeliveryTarget.load("blk-real").get_filesystem()
    assert fs.isdir(root)


def test_blocks_register_from_anywhere(tmp_path):
    """Through the prefect.collections entry point, not a checkout on sys.path."""
    res = subprocess.run([sys.executable, "-c", "import pollcat.blocks, sys; "
                          "print(pollcat.blocks.__file__)"], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert res.stdout.strip().endswith("pollcat/blocks/__init__.py")
    res = subprocess.run([sys.executable, "-c", "import flows"], cwd=tmp_path,
                         capture_output=True, text=True, check=False)
    assert res.returncode != 0  # no generic top-level package is installed


def test_a_globus_target_block_keeps_its_client_secret_masked():
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    settings = {"client_id": "c1", "client_secret": "very-secret-value",
                "collection_id": "col-1", "username_template": "{user}@idp.example.org"}
    DeliveryTarget(url="file:///srv/gcs", globus=settings).save("blk-globus", overwrite=True)
    cfg = DeliveryTarget.load("blk-globus").to_config()
    assert cfg.globus_settings.client_secret == "very-secret-value"

    async def doc():
        async with get_client() as client:
            return await client.read_block_document_by_name(
                "blk-globus", "pollcat-delivery-target", include_secrets=False)

    assert "very-secret-value" not in str(run_coro_as_sync(doc()).data)
