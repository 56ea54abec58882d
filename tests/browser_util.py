"""A real headless Chromium for the studio's tests, through Selenium and the system's chromedriver.

Nothing is downloaded: Chromium and chromedriver come from the system (Debian: ``apt-get install chromium
chromium-driver``; or ``CURVEDIT_CHROMIUM`` / ``CURVEDIT_CHROMEDRIVER``), Selenium from the ``browser`` extra.
``chromium()`` skips the calling test, saying what is missing, where any of them is absent.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> tuple[str | None, str | None]:
    """``(chromium, chromedriver)`` paths, ``None`` for each not found."""
    browser = os.environ.get("CURVEDIT_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = os.environ.get("CURVEDIT_CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


def chromium(download_dir: Path | None = None, width: int = 1280, height: int = 1000):
    """A headless Chromium WebDriver (quit it when done); skips the test where Selenium or a browser is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install "
                                                                 "'curvedit[browser]')")
    browser, driver = find_browser()
    if browser is None or driver is None:
        pytest.skip("no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver; or set "
                    "CURVEDIT_CHROMIUM and CURVEDIT_CHROMEDRIVER)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                                  "download.prompt_for_download": False})
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    if download_dir is not None:
        session.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow",
                                                                "downloadPath": str(download_dir)})
    return session


def wait_for(driver, script: str, timeout: float = 15.0, what: str | None = None):
    """Poll ``return <script>`` in the page until it is truthy; returns its value."""
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what or script} not reached within {timeout} s")
        time.sleep(0.02)


def wait_idle(driver, timeout: float = 15.0) -> None:
    """Until the page has drawn its current amounts: image, strips and the order check."""
    wait_for(driver, "window.curveditStudio && window.curveditStudio.z !== null && window.curveditStudio.idle()",
             timeout, "the studio going idle")


def canvas_rgb(driver, element_id: str):
    """The canvas's pixels as a uint8 ``[H, W, 3]`` array."""
    import numpy as np

    data = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "return [c.height, c.width, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];",
        element_id)
    h, w, rgba = data
    return np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[..., :3]
