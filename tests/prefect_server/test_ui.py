"""The Prefect UI in a real (headless) Chromium against a real server: an operator adds a target
from the Blocks form, starts a custom run of the deliver deployment with a download id, and sees
the run complete with its artifact. Screenshots go to $POLLCAT_TEST_ARTIFACTS/ui (else the
test's temp directory). `.ci/run` installs Debian's chromium and chromium-driver."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from simfacility.server import running_facility
from tests.conftest import scenario
from tests.prefect_server.server import PrefectServer
from tests.support import crc_hex, delivered_files, statuses, wait_for

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FACILITY_BLOCK = "lils-ui"
DOWNLOAD = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
            "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.shots = Path(os.environ.get("POLLCAT_TEST_ARTIFACTS", tmp_path)) / "ui"
    driver.shots.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _shot(driver, name: str) -> None:
    driver.save_screenshot(str(driver.shots / f"{name}.png"))


def _until(driver, condition, timeout: float = 60):
    """Poll `condition(driver)` every half second (a loaded CI machine renders slowly)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)


def _visible(driver, css: str, timeout: float = 60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    return _until(driver, expected_conditions.visibility_of_element_located(
        (By.CSS_SELECTOR, css)), timeout)


def test_target_from_the_blocks_form_and_a_custom_deliver_run(
        prefect_server: PrefectServer, browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = prefect_server
    with running_facility(scenario(downloads=[DOWNLOAD]), tmp_path / "ids") as sim:
        assert server.python("-m", "deployments.bootstrap").returncode == 0

        # Blocks ▸ pollcat Delivery Target ▸ Create: name and URL, the rest left at defaults
        browser.get(f"{server.url}/blocks/catalog/pollcat-delivery-target/create")
        _visible(browser, "input[type=text]").send_keys("ui-target")
        browser.find_elements(By.TAG_NAME, "textarea")[0].send_keys(
            f"file://{tmp_path}/target")
        _shot(browser, "1-target-form")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(lambda: "/blocks/block/" in browser.current_url, 30, "the new block's page")
        _shot(browser, "2-target-created")
        doc = server.api("GET", "/block_types/slug/pollcat-delivery-target/block_documents/"
                                "name/ui-target").json()
        assert doc["data"]["url"] == f"file://{tmp_path}/target"

        code = (f"from pollcat.blocks import PollcatFacility\n"
                f"PollcatFacility(facility_name='LILS', icat_url={sim.url!r}, "
                f"ids_url={sim.url!r}, topcat_url={sim.url!r}, username='pollcat', "
                f"password='pollpass', routes={{'globus': 'ui-target'}}, "
                f"state_dir='{tmp_path}/state').save({FACILITY_BLOCK!r})\n")
        res = server.python("-c", code)
        assert res.returncode == 0, res.stderr
        res = server.python("-m", "deployments.bootstrap", "--deploy")
        assert res.returncode == 0, res.stdout + res.stderr
        sweep = server.api("GET", f"/deployments/name/pollcat-sweep/sweep-{FACILITY_BLOCK}")
        server.api("PATCH", f"/deployments/{sweep.json()['id']}", json={"paused": True})
        deliver = server.api(
            "GET", f"/deployments/name/pollcat-deliver/deliver-{FACILITY_BLOCK}").json()
        server.worker()

        # Deployments ▸ deliver-<block> ▸ Run ▸ Custom run, with the download id
        browser.get(f"{server.url}/deployments/deployment/{deliver['id']}/run")
        _visible(browser, "input[type=number]").send_keys("1")
        _shot(browser, "3-custom-run-form")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        created = wait_for(lambda: server.api("POST", "/flow_runs/filter", json={
            "flow_runs": {"deployment_id": {"any_": [deliver["id"]]}}}).json(), 30,
            "the custom run to be created")
        _shot(browser, "4-submitted")
        run_id = created[0]["id"]
        run = wait_for(lambda: (r := server.api("GET", f"/flow_runs/{run_id}").json())
                       ["state_type"] in ("COMPLETED", "FAILED", "CRASHED") and r, 120,
                       "the deliver run to finish")
        assert run["state_type"] == "COMPLETED", run["state"]
        assert run["parameters"]["download_id"] == 1 and not run["auto_scheduled"]
        assert statuses(sim.url) == {1: "COMPLETE"}
        files = delivered_files(tmp_path / "target")
        by_name = {df.name: df for df in sim.store.datafiles.values()}
        assert sorted(files) == ["alice/alice_run42/INV-001/1/run-42/notes/readme.txt",
                                 "alice/alice_run42/INV-001/1/run-42/scan_0001.nxs"]
        for rel, path in files.items():
            df = by_name["notes/readme.txt" if rel.endswith("readme.txt") else path.name]
            assert path.stat().st_size == df.size
            assert int(crc_hex(path), 16) == int(df.checksum, 16)

        # the run page shows Completed, and its artifact under the Artifacts tab
        browser.get(f"{server.url}/runs/flow-run/{run_id}")
        _until(browser, lambda d: "Completed" in d.find_element(By.TAG_NAME, "body").text)
        _shot(browser, "5-run-completed")
        artifacts = server.api("POST", "/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
        keys = [a["key"] for a in artifacts if a.get("key")]
        assert keys, artifacts
        _until(browser, lambda d: [e for e in d.find_elements(
            By.XPATH, "//*[normalize-space(.)='Artifacts']") if e.is_displayed()])[-1].click()
        _until(browser, lambda d: keys[0] in d.find_element(By.TAG_NAME, "body").text)
        _shot(browser, "6-run-artifacts")
