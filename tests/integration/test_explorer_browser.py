"""The explorer page in a real browser (Debian's chromium through chromedriver) against a real
uvicorn, Redis and ONNX Runtime: choose a user, see k recommendations, click "like", see the
history grow by one and the list change; strings from the API are shown as text, never run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from loadtests.service_process import ServiceProcess

pytestmark = pytest.mark.integration
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

K = 10


@pytest.fixture(scope="module")
def browser(tmp_path_factory):  # type: ignore[no-untyped-def]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def service(tiny_bundle, redis_server, tmp_path_factory):  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("ui") / "service.log"
    with ServiceProcess(
        tiny_bundle,
        redis_server.url,
        log,
        key_prefix="ui",
        read_keys='["ui-read"]',
        write_keys='["ui-write"]',
    ) as svc:
        yield svc


def _texts(driver, selector: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def _wait(driver, condition, timeout: float = 20):  # type: ignore[no-untyped-def]
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def test_pick_a_user_like_an_item_and_watch_the_ranking_react(
    browser, service, tiny_dataset, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    d = tiny_dataset
    items = [d.items.external(i) for i in range(1, 41)]
    events = [
        {"user_id": "ui-1", "item_id": i, "action": "view", "timestamp": 1000 + n}
        for n, i in enumerate(items)
    ]
    r = httpx.post(service.url + "/events", json={"events": events}, headers={"X-API-Key": "ui-write"})
    assert r.status_code == 200, r.text

    browser.get(service.url + "/ui/")
    browser.find_element(By.ID, "user").send_keys("ui-1")
    browser.find_element(By.ID, "load").click()
    _wait(browser, lambda b: "401" in b.find_element(By.ID, "status").text)  # keys are configured
    browser.find_element(By.ID, "key").send_keys("ui-write")
    browser.find_element(By.ID, "load").click()
    _wait(browser, lambda b: len(_texts(b, "#recs > li")) == K)
    summary = browser.find_element(By.ID, "summary").text
    assert summary.startswith("(40 events")
    assert len(_texts(browser, "#recent > li")) == 8  # the recent window, L = 8
    assert browser.find_elements(By.CSS_SELECTOR, "#buckets .bucket.read")  # history tokens are marked
    before = [
        b.get_attribute("data-item")
        for b in browser.find_elements(By.CSS_SELECTOR, "#recs button[data-action='like']")
    ]
    assert len(before) == K

    browser.find_element(By.CSS_SELECTOR, "#recs button[data-action='like']").click()
    _wait(browser, lambda b: b.find_element(By.ID, "summary").text.startswith("(41 events"))
    _wait(browser, lambda b: len(_texts(b, "#recs > li")) == K)
    after = [
        b.get_attribute("data-item")
        for b in browser.find_elements(By.CSS_SELECTOR, "#recs button[data-action='like']")
    ]
    assert before[0] not in after  # the liked item is now seen: excluded
    assert after != before
    newest = _texts(browser, "#recent > li")[-1]
    assert before[0] in newest
    assert "like" in newest
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    assert (tmp_path / "explorer.png").stat().st_size > 10_000


def test_strings_from_the_api_are_shown_as_text_not_markup(browser, service) -> None:  # type: ignore[no-untyped-def]
    hostile = "<img src=x onerror=\"document.title='owned'\">"
    browser.get(service.url + "/ui/")
    browser.execute_script("sessionStorage.setItem('causerec-key', 'ui-read')")
    browser.get(service.url + "/ui/?user=" + quote(hostile))
    _wait(browser, lambda b: len(_texts(b, "#recs > li")) == K)
    time.sleep(0.3)
    assert browser.title == "causerec explorer"  # no injected handler ran
    assert not browser.find_elements(By.CSS_SELECTOR, "img")
    assert hostile in browser.find_element(By.ID, "status").text  # shown literally
