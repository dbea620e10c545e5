"""Debian's headless Chromium driven by Selenium through Debian's chromedriver (no browser download).
Missing locally: the browser tests skip; under CI=true they fail (scripts/setup-env.sh installs both
when SELFHEAL_NEED_BROWSER=1, which scripts/test.sh sets)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import _in_ci

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "chromedriver")
#: Chromium as root in a container: no sandbox, nothing that phones home, a fresh profile
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--disable-extensions", "--window-size=1400,1700")


def _find(names: tuple[str, ...]) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A fresh headless Chromium (Selenium WebDriver) with its own profile directory."""
    binary, driver_path = _find(CHROMIUM), _find(DRIVER)
    if binary is None or driver_path is None:
        message = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if _in_ci():
            pytest.fail(f"{message}; CI must run the browser tests", pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="selfheal-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


def until(driver: Any, predicate: Callable[[Any], Any], what: str, timeout: float = 30.0) -> Any:
    """Wait for ``predicate(driver)`` to be truthy (conditions, never guessed delays)."""
    from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate(driver)
        except (StaleElementReferenceException, NoAlertPresentException):  # re-rendered / not there yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; page text:\n"
                                 f"{driver.find_element('tag name', 'body').text[:3000]}")
        time.sleep(0.05)
