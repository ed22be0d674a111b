"""acceld's dashboard in a real browser: a real acceld (real converter, ``oci`` driver) on the test
registry, a headless Chromium, the page followed live without reloading.

Set ``ACCEL_SCREENSHOTS=DIR`` to keep the screenshots (the README's one is ``docs/dashboard.png``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from accel.config import WebhookConfig
from tests.integration.test_acceld import SECRET, TOKEN, Acceld, free_port, push_event
from tests.integration.test_acceld_registry import push_images
from tests.support.configs import config_dict
from tests.support.faultproxy import FaultProxy
from tests.support.images import skopeo_available
from tests.support.registry import RegistryServer
from tests.ui.conftest import Browser

pytestmark = pytest.mark.integration

WAIT = 90.0


@pytest.fixture
def proxy(registry_plain: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry_plain.host) as running:
        yield running


@pytest.fixture
def daemon(proxy: FaultProxy, registry_plain: RegistryServer, tmp_path: Path) -> Iterator[Acceld]:
    if not skopeo_available():
        pytest.skip("skopeo is not installed")
    source = registry_plain.source().model_copy(update={"webhook": WebhookConfig(auth_header=SECRET)})
    config = config_dict(
        tmp_path / "work",
        {proxy.host: source},
        driver="oci",
        tag_suffix="-oci",
        worker=1,  # one conversion at a time: a held one keeps the next PENDING
        server__host="127.0.0.1",
        server__port=free_port(),
        server__api_token=TOKEN,
    )
    running = Acceld(tmp_path, config, fake=False).start()
    try:
        yield running
    finally:
        running.stop()


class Page:
    def __init__(self, browser: Browser, origin: str) -> None:
        self.browser = browser
        self.driver = browser.driver
        self.origin = origin

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        # The page re-renders its table when the data changes: an element found a moment ago may be gone.
        wait = WebDriverWait(
            self.driver, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        )
        return wait.until(lambda _: condition(), what)

    def row_status(self, source: str) -> str | None:
        for row in self.driver.find_elements(By.CSS_SELECTOR, "#tasks tbody tr"):
            cells = row.find_elements(By.TAG_NAME, "td")
            if len(cells) > 1 and cells[1].text == source:
                return str(cells[0].text)
        return None

    def open_row(self, source: str) -> None:
        def clicked() -> bool:
            for row in self.driver.find_elements(By.CSS_SELECTOR, "#tasks tbody tr"):
                cells = row.find_elements(By.TAG_NAME, "td")
                if len(cells) > 1 and cells[1].text == source:
                    cells[0].find_element(By.TAG_NAME, "button").click()
                    return True
            return False

        self.until(clicked, f"the row of {source}")

    def detail(self) -> tuple[str | None, str]:
        panel = self.driver.find_element(By.ID, "detail")
        return panel.get_attribute("data-status"), str(panel.get_attribute("data-id"))

    def notice(self) -> str:
        return str(self.driver.find_element(By.ID, "notice").text)

    def click(self, element_id: str) -> None:
        self.driver.find_element(By.ID, element_id).click()

    def screenshot(self, path: Path, width: int, height: int) -> None:
        self.browser.resize(width, height)
        self.until(lambda: self.driver.execute_script("return window.innerWidth") == width, "resized")
        self.driver.execute_script("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))
        keep = os.environ.get("ACCEL_SCREENSHOTS")
        if keep:
            shutil.copy(path, Path(keep) / path.name)


def test_dashboard_follows_and_acts(
    browser: Browser,
    daemon: Acceld,
    proxy: FaultProxy,
    registry_plain: RegistryServer,
    tmp_path: Path,
) -> None:
    pushed = push_images(registry_plain, tmp_path, ["ui/alpha", "ui/beta"])
    alpha, beta = (ref.replace(registry_plain.host, proxy.host) for ref in pushed)
    alpha_digest = pushed[alpha.replace(proxy.host, registry_plain.host)]
    origin = f"http://{daemon.addr}"
    page = Page(browser, origin)
    driver = browser.driver

    # The token is entered once, kept for the tab in sessionStorage: here set before the page loads.
    driver.get(f"{origin}/api/v1/health")
    driver.execute_script("sessionStorage.setItem('acceld-token', arguments[0])", TOKEN)
    driver.get(f"{origin}/")
    assert driver.current_url == f"{origin}/ui/"
    page.until(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed"), "first poll")

    # A webhook during the test: seen PROCESSING (its blob download held), then COMPLETED, no reload.
    hold = proxy.hold("GET", r"/blobs/", after=0)
    assert daemon.webhook(push_event(alpha, digest=alpha_digest)).status_code == 200
    page.until(lambda: page.row_status(alpha) == "PROCESSING", "alpha PROCESSING")
    assert hold.reached.is_set()

    # "Convert an image" from the page: queued behind alpha, then canceled from its detail.
    field = driver.find_element(By.ID, "convert-source")
    field.send_keys(beta)
    field.send_keys(Keys.ENTER)
    page.until(lambda: page.detail()[0] == "PENDING", "beta PENDING in the detail")
    page.until(lambda: page.row_status(beta) == "PENDING", "beta PENDING in the table")
    page.click("d-cancel")
    page.until(lambda: page.detail()[0] == "CANCELED", "beta CANCELED")

    hold.release.set()
    page.until(lambda: page.row_status(alpha) == "COMPLETED", "alpha COMPLETED")
    page.open_row(alpha)
    page.until(lambda: page.detail()[0] == "COMPLETED", "alpha's detail")
    stages = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#d-timeline .stage span:first-child")]
    assert {"pull", "push"} <= set(stages), stages
    assert f"{alpha}-oci" in driver.find_element(By.ID, "d-fields").text

    # A failing image shows its reason in full.
    missing = f"{proxy.host}/ui/missing:v1"
    assert daemon.webhook(push_event(missing, digest="sha256:" + "0" * 64)).status_code == 200
    page.until(lambda: page.row_status(missing) == "FAILED", "missing FAILED")
    page.open_row(missing)
    page.until(lambda: page.detail()[0] == "FAILED", "missing's detail")
    reason = driver.find_element(By.ID, "d-reason")
    assert reason.is_displayed() and "not found" in reason.text.lower(), reason.text

    # Everything so far: no console error, no request that left acceld's origin.
    assert browser.console_errors() == []
    urls = browser.requested_urls()
    assert urls and all(url.startswith(f"{origin}/") or url.startswith("data:") for url in urls), urls

    page.screenshot(tmp_path / "dashboard.png", 1280, 900)
    page.screenshot(tmp_path / "dashboard-narrow.png", 390, 844)
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.browser.resize(1280, 900)

    # Without the token the API refuses the retry, and the page says so.
    _, failed_id = page.detail()
    page.click("token-forget")
    page.click("d-retry")
    page.until(lambda: "Refused: 401" in page.notice(), "retry refused")
    with daemon.client() as client:
        before = client.get(f"/api/v1/conversions/{failed_id}", headers=_api()).json()
    assert before["status"] == "FAILED"

    # With it, the retry runs the task again (attempts start over; it ends anew).
    token = driver.find_element(By.ID, "token")
    token.send_keys(TOKEN)
    token.send_keys(Keys.ENTER)
    page.until(lambda: page.detail()[0] == "FAILED" and not page.notice(), "the page reads again")
    page.click("d-retry")
    with daemon.client() as client:

        def attempted_again() -> bool:
            task = client.get(f"/api/v1/conversions/{failed_id}", headers=_api()).json()
            return task["status"] != "FAILED" or task["finished"] != before["finished"]

        page.until(attempted_again, "retried")


def test_keyboard_reaches_every_control(browser: Browser, daemon: Acceld) -> None:
    """Tab walks the page's controls in order; none is skipped or unreachable."""
    origin = f"http://{daemon.addr}"
    driver = browser.driver
    driver.get(f"{origin}/ui/")
    wanted = ["convert-source", "token", "f-status", "f-driver", "f-repo", "f-search"]
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    reached = []
    for _ in range(20):
        active = driver.switch_to.active_element
        element_id = active.get_attribute("id")
        if element_id:
            reached.append(element_id)
        active.send_keys(Keys.TAB)
    order = [e for e in reached if e in wanted]
    assert order[: len(wanted)] == wanted, reached


def _api() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
