"""The console in a real browser: headless Chromium against a ``twistd`` gateway (issue #9).

Debian's ``chromium`` and ``chromium-driver`` (scripts/system-deps.sh) are driven by
selenium through the system chromedriver; selenium-manager is kept offline, so nothing
is downloaded. The terminal is the sans-I/O client over a real UDP socket, served by a
thread so that it answers the CONFIG_GET the browser sends while the test waits on
the page.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from m2mgw.web.auth import first_token
from tests.e2e.support import provisioned, provisioning
from tests.spec_examples import IMEI, SERIAL
from tests.twistd import Gateway, UdpTerminal, gateway

__all__ = ["gateway"]  # the fixture, used by name

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1280,1400",
)
#: A serial that is also markup: the console must show it as text.
MARKUP_SERIAL = "<i>xss</i>123456"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait(driver: WebDriver, what: str, condition: Any, timeout: float = 8) -> Any:
    return WebDriverWait(driver, timeout).until(condition, message=f"console: {what}")


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def row_of(driver: WebDriver, serial: str) -> list[str]:
    """The cells of the terminal list's row for ``serial``, or [] if it is not shown."""
    for tr in driver.find_elements(By.CSS_SELECTOR, "#terminal-list tbody tr"):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        if cells and cells[0] == serial:
            return cells
    return []


def serve(terminal: UdpTerminal, stop: threading.Event) -> None:
    """Answer the gateway (CONFIG_GET included) until ``stop``, keeping every event."""
    while not stop.is_set():
        terminal.receive()


def provision(gateway: Gateway, serial: str, imei: str) -> None:
    gateway.call("POST", "/terminals", provisioning(provisioned(serial=serial, imei=imei)))


def test_console_sees_a_terminal_come_online_and_runs_a_config_get(
    gateway: Gateway, browser: WebDriver, tmp_path: Path
) -> None:
    gateway.start()
    token = first_token(str(tmp_path / "admin-tokens"))
    assert token
    provision(gateway, SERIAL, IMEI)
    provision(gateway, MARKUP_SERIAL, f"{int(IMEI) + 1:015d}")
    console = f"http://127.0.0.1:{gateway.admin}/console/"

    # Log in: a wrong token is refused on the page, the right one opens the dashboard.
    browser.get(console)
    field = wait(browser, "log-in form", lambda d: d.find_element(By.ID, "token"))
    field.send_keys("not-a-token\n")
    wait(browser, "refusal", lambda d: "not valid" in text_of(d, "login-error"))
    field.clear()
    field.send_keys(token + "\n")
    wait(browser, "dashboard", lambda d: text_of(d, "s-known") == "2")
    assert text_of(browser, "s-online") == "0"
    wait(browser, "live events", lambda d: text_of(d, "live") == "live")
    browser.execute_script("window.m2mgwPage = 'first load'")

    # The list: server-side search; markup in a serial stays text.
    browser.find_element(By.LINK_TEXT, "Terminals").click()
    wait(browser, "both terminals listed", lambda d: row_of(d, MARKUP_SERIAL) and row_of(d, SERIAL))
    assert not browser.find_elements(By.CSS_SELECTOR, "#terminal-list i")
    browser.find_element(By.ID, "search").send_keys(SERIAL[-6:])
    wait(browser, "search result", lambda d: not row_of(d, MARKUP_SERIAL))
    assert row_of(browser, SERIAL)[3] == "REGISTERED"

    # The terminal logs in: its row turns LOGGED_IN by the event stream, no reload.
    terminal = UdpTerminal(gateway.udp)
    logged_in = terminal.log_in()
    assert isinstance(logged_in, role.LoggedIn)
    if logged_in.result == 0:
        terminal.send(terminal.client.trap([]))
    stop = threading.Event()
    server = threading.Thread(target=serve, args=(terminal, stop), daemon=True)
    server.start()
    try:
        wait(browser, "terminal online", lambda d: row_of(d, SERIAL)[3:5] == ["LOGGED_IN", "udp"])
        browser.find_element(By.LINK_TEXT, "Dashboard").click()
        wait(browser, "online count", lambda d: text_of(d, "s-online") == "1")
        assert browser.execute_script("return window.m2mgwPage") == "first load"

        # Its page, and a CONFIG_GET of 0x0011 from the form, answered by the terminal.
        browser.find_element(By.LINK_TEXT, "Terminals").click()
        wait(browser, "list again", lambda d: row_of(d, SERIAL))
        browser.find_element(By.LINK_TEXT, SERIAL).click()
        wait(browser, "terminal page", lambda d: "LOGGED_IN" in text_of(d, "t-summary"))
        # The compatibility profile it is served by (issue #10): strict, by the default.
        assert "Compatibility\nstrict (deployment default)" in text_of(browser, "t-summary")
        tags = browser.find_element(By.ID, "r-tags")
        tags.clear()
        tags.send_keys("0x0011")
        browser.find_element(By.CSS_SELECTOR, "#request-form button[type=submit]").click()
        outcome = wait(browser, "request outcome", lambda d: "succeeded" in text_of(d, "r-outcomes")
                       and text_of(d, "r-outcomes"))
        assert "CONFIG_GET" in outcome
        assert "PERIOD_CFG (0x0011) = 90" in outcome
        assert "result 0 (OK)" in outcome  # codes are shown with their names
        wait(browser, "requests table", lambda d: "succeeded" in text_of(d, "t-requests"))
        shot = tmp_path / "console.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stop.set()
        server.join(timeout=5)
    # Log out: back to the log-in, and a reload stays there (the cookie is gone).
    browser.find_element(By.ID, "logout").click()
    wait(browser, "log-in again", lambda d: d.find_elements(By.ID, "token"))
    browser.refresh()
    wait(browser, "log-in after reload", lambda d: d.find_elements(By.ID, "token"))
    assert not browser.find_element(By.ID, "nav").is_displayed()

    asked = [e.message for e in terminal.events if isinstance(e, role.PlatformRequest)]
    assert [(m.COMMAND, [t.tag for t in m.tlvs]) for m in asked] == [(Command.CONFIG_GET, [0x0011])]
    errors = [entry["message"] for entry in browser.get_log("browser")
              if entry["level"] == "SEVERE" and "401" not in entry["message"]]
    assert errors == []
