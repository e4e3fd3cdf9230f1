"""Browser fixtures for the playground: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by scripts/ci-deps.sh) driven by Selenium, offline, and a `Page`
helper that works the page the way a user does (typing, clicking, picking files).

Servers: the real one comes from tests/e2e/conftest.py's `running_server`; the stand-in engine
server here is the real app (real HTTP, SSE framing and reasoning splitter) over the scripted
engine of tests/fake_engine.py, served by uvicorn in a thread, for output a random tiny model
cannot be made to produce (see test_reasoning_block_apart_from_the_answer).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from server.app import create_app
from server.model.tokenizer import TikTokenTokenizer
from server.settings import load_settings
from tests.fake_engine import FakeEngine

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 900)
T = TypeVar("T")


def chrome_options(
    user_data_dir: Path, window: tuple[int, int] = WINDOW
) -> webdriver.ChromeOptions:
    """Headless, offline-friendly Chromium: no first-run, no background or component traffic."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data_dir}",
        f"--window-size={window[0]},{window[1]}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # "none": chromedriver otherwise treats the page as still loading while a fetch streams
    # (each command after Enter blocked until the answer was complete); Page.open waits for
    # the page's own start-up itself.
    options.page_load_strategy = "none"
    return options


def start_browser(user_data_dir: Path, window: tuple[int, int] = WINDOW) -> webdriver.Chrome:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium / chromedriver not installed (scripts/ci-deps.sh installs them)")
    return webdriver.Chrome(
        service=Service(str(CHROMEDRIVER)), options=chrome_options(user_data_dir, window)
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    driver = start_browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], T | None], timeout: float, what: str, poll: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


@dataclass
class Page:
    """The playground in the browser, at `base_url`."""

    driver: webdriver.Chrome
    base_url: str

    def open(self) -> Page:
        self.driver.get_log("browser")  # drop what earlier pages logged
        self.driver.get(self.base_url + "/")
        ready = "return document.body !== null && document.body.dataset.state === 'ready'"
        wait_for(lambda: self.driver.execute_script(ready), 10, "the page to start")
        return self

    def by_id(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def console_errors(self) -> list[str]:
        """Browser log entries at SEVERE level (console.error, failed loads, CSP) since the last
        call (reading the log drains it)."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def set_field(self, element_id: str, value: str) -> None:
        """Set a settings field (some live in the collapsed Advanced section)."""
        self.driver.execute_script(
            "arguments[0].value = arguments[1];", self.by_id(element_id), value
        )

    def model_names(self) -> list[str]:
        script = "return [...document.querySelectorAll('#model option')].map((o) => o.value)"
        return list(self.driver.execute_script(script))

    def enter_key(self, key: str) -> None:
        field = self.by_id("api-key")
        field.clear()
        field.send_keys(key + Keys.TAB)  # leaving the field stores the key and loads the models

    def attach(self, *paths: Path) -> None:
        """Pick files with the file input; wait until their thumbnails are shown."""
        count = "return document.querySelectorAll('#attachments .chip').length"
        before = self.driver.execute_script(count)
        self.by_id("files").send_keys("\n".join(str(p) for p in paths))
        wait_for(lambda: self.driver.execute_script(count) == before + len(paths), 10, "files")

    def ask(self, text: str) -> None:
        """Type the question, press Enter (Enter sends) and wait for its answer to appear."""
        before = len(self.answers())
        prompt = self.by_id("prompt")
        prompt.send_keys(text)
        prompt.send_keys(Keys.ENTER)
        wait_for(lambda: len(self.answers()) > before, 10, "the request to start")

    def clear(self) -> None:
        self.by_id("clear").click()

    def answers(self) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, "#conversation .msg.assistant")

    def last(self, selector: str) -> WebElement:
        return self.answers()[-1].find_element(By.CSS_SELECTOR, selector)

    def text_of(self, selector: str) -> str:
        """textContent (also of hidden elements; .text only sees rendered text)."""
        return str(self.last(selector).get_property("textContent") or "")

    def wait_done(self, timeout: float = 60) -> str:
        """Wait until the last answer has its stats line (set when the request ends)."""
        # Polled slowly: each WebDriver command takes the renderer's time from the stream.
        return wait_for(
            lambda: self.text_of(".stats") if self.answers() else None,
            timeout,
            "the answer",
            poll=0.5,
        )

    def alert_text(self) -> str | None:
        try:
            return str(self.driver.switch_to.alert.text)
        except NoAlertPresentException:
            return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StandInServer:
    base_url: str
    engine: FakeEngine


@contextlib.contextmanager
def serve_stand_in(engine: FakeEngine) -> Iterator[StandInServer]:
    """The real app on a real port (uvicorn in a thread) over `engine`."""
    settings = load_settings({"model": "fake/model", "served_model_name": ["stand-in"]})
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings, engine), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, "the stand-in server")
        yield StandInServer(f"http://127.0.0.1:{port}", engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def stand_in_server(kimi_tokenizer: TikTokenTokenizer) -> Iterator[StandInServer]:
    """The scripted engine as a Thinking model: its answer streams
    `◁think▷ I see it◁/think▷ red` a piece at a time."""
    script = ["◁think▷", " I see", " it", "◁/think▷", " red"]
    with serve_stand_in(FakeEngine(kimi_tokenizer, script=script, reasoning=True)) as server:
        yield server


@pytest.fixture(scope="module")
def slow_stand_in_server(kimi_tokenizer: TikTokenTokenizer) -> Iterator[StandInServer]:
    """The scripted engine at a steady model's pace: 2000 words, one every 20 ms (40 s)."""
    engine = FakeEngine(kimi_tokenizer, script=[" word"] * 2000, step_delay=0.02)
    with serve_stand_in(engine) as server:
        yield server
