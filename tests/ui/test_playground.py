"""The playground in a real browser (headless Chromium + Selenium) against real servers.

Most tests use the real server (`python -m server`, vLLM, tiny checkpoint) with an API key and a
small image pixel cap; one browser and one server are shared by the module. The reasoning and
Stop tests use the stand-in engine server (tests/ui/conftest.py): the server never splits
reasoning out of constrained output and the random tiny model cannot be made to write the think
markers any other way, so a scripted Thinking model shows the page's reasoning block instead;
and Stop needs an answer that is still streaming when it is pressed, which a scripted engine at
a fixed pace guarantees on a loaded machine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from server.model.tokenizer import TikTokenTokenizer
from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import RunningServer, png, running_server
from tests.media import videos
from tests.ui.conftest import Page, StandInServer, wait_for

KEY = "ui-test-key"
MAX_IMAGE_PIXELS = 40_000
XSS = "<img src=x onerror=alert(1)>"
# A long answer in plain letters: the random tiny model's usual output is mostly rare Unicode,
# whose font fallback makes each layout slow enough to stall a headless browser on 2 cores.
LONG_PLAIN_ANSWER = {"ignore_eos": True, "structured_outputs": {"regex": "[a-z ]+"}}


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        tmp_path_factory.mktemp("ui-server"),
        "--api-key", KEY,
        "--max-image-pixels", str(MAX_IMAGE_PIXELS),
    ) as running:  # fmt: skip
        yield running


@pytest.fixture
def page(browser: webdriver.Chrome, real: RunningServer) -> Page:
    """The real server's page with the key entered and the model list loaded."""
    page = Page(browser, real.base_url).open()
    page.enter_key(KEY)
    wait_for(page.model_names, 10, "the model list")
    page.console_errors()  # drain
    return page


def settings(page: Page, *, max_tokens: int, extra: dict[str, object] | None = None) -> None:
    page.set_field("max-tokens", str(max_tokens))
    page.set_field("extra", json.dumps(extra) if extra else "")


def prompt_tokens(stats: str) -> int:
    match = re.search(r"prompt (\d+) tok", stats)
    assert match, stats
    return int(match.group(1))


def write_png(path: Path, width: int, height: int, color: tuple[int, int, int]) -> Path:
    path.write_bytes(png(width, height, color))
    return path


def test_page_loads_without_console_errors(
    browser: webdriver.Chrome, stand_in_server: StandInServer
) -> None:
    page = Page(browser, stand_in_server.base_url).open()
    assert wait_for(page.model_names, 10, "the model list") == ["stand-in"]
    assert not page.by_id("key-box").is_displayed()  # this server has no key
    assert browser.switch_to.active_element.get_attribute("id") == "prompt"
    assert page.console_errors() == []


@pytest.mark.slow
def test_keyed_server_page_asks_for_the_key(browser: webdriver.Chrome, real: RunningServer) -> None:
    page = Page(browser, real.base_url).open()
    browser.execute_script("sessionStorage.clear(); localStorage.clear();")
    page.open()
    assert page.by_id("key-box").is_displayed()
    assert "needs an API key" in page.by_id("status").text
    assert page.model_names() == []  # nothing asked of the API without a key
    page.enter_key(KEY)
    assert wait_for(page.model_names, 10, "the model list") == [TINY_MODEL_NAME]
    assert browser.execute_script("return sessionStorage.getItem('kimi-vl-api-key')") == KEY
    assert page.console_errors() == []


@pytest.mark.slow
def test_requests_need_the_key(browser: webdriver.Chrome, real: RunningServer) -> None:
    page = Page(browser, real.base_url).open()
    browser.execute_script("sessionStorage.clear(); localStorage.clear();")
    page.open()
    settings(page, max_tokens=4, extra={"ignore_eos": True})
    page.ask("hi")
    wait_for(lambda: page.answers() and page.last(".error").is_displayed(), 20, "the 401")
    assert page.text_of(".error-code") == "HTTP 401 · invalid_api_key"
    assert page.text_of(".error-message")  # the envelope's message
    assert page.text_of(".answer") == ""
    assert any("401" in message for message in page.console_errors())  # the refused fetch

    page.enter_key(KEY)
    wait_for(page.model_names, 10, "the model list")
    page.ask("hi")
    stats = page.wait_done()
    assert len(page.answers()) == 2 and not page.last(".error").is_displayed()
    assert "completion 4 tok" in stats and page.text_of(".answer")


# Records (time, length) of the answer each time the page adds text to it; in the page, since on
# a busy machine WebDriver round trips can stall for a second or more.
RECORD_GROWTH = """
    window.growth = [];
    const box = document.getElementById("conversation");
    new MutationObserver(() => {
        const answer = [...box.querySelectorAll(".answer")].pop();
        if (answer) window.growth.push([performance.now(), answer.textContent.length]);
    }).observe(box, {childList: true, subtree: true, characterData: true});
"""


@pytest.mark.slow
def test_text_answer_streams(page: Page) -> None:
    page.clear()
    settings(page, max_tokens=600, extra=LONG_PLAIN_ANSWER)
    page.driver.execute_script(RECORD_GROWTH)
    page.ask("Tell me a long story.")
    stats = page.wait_done()
    final = len(page.text_of(".answer"))
    growth = [(t, n) for t, n in page.driver.execute_script("return window.growth") if n]
    partial = sorted({n for _, n in growth if n < final})
    # Two partial states before the last is streaming; how many more depends on how the browser
    # batches network reads on a busy machine (four in one 2-core CI run, dozens when quiet).
    assert len(partial) >= 2, f"the answer did not grow in several steps: {growth}"
    assert growth[-1][0] - growth[0][0] > 200, f"the answer came all at once: {growth}"
    assert "completion 600 tok" in stats and "TTFT" in stats and "tok/s" in stats, stats
    assert page.console_errors() == []


@pytest.mark.slow
def test_attached_png_reaches_the_server(page: Page, real: RunningServer, tmp_path: Path) -> None:
    question = "What is in the picture?"
    settings(page, max_tokens=4, extra={"ignore_eos": True})
    page.clear()
    page.ask(question)
    text_only = prompt_tokens(page.wait_done())

    page.clear()
    page.attach(write_png(tmp_path / "blue.png", 96, 64, (30, 60, 220)))
    chip = page.by_id("attachments").find_element(By.CSS_SELECTOR, ".chip")
    thumbnail = chip.find_element(By.TAG_NAME, "img").get_attribute("src") or ""
    assert thumbnail.startswith("data:image/png;base64,")
    assert chip.find_element(By.TAG_NAME, "label").text == "Detail"
    page.ask(question)
    with_image = prompt_tokens(page.wait_done())
    assert page.text_of(".answer")
    shown = page.driver.find_elements(By.CSS_SELECTOR, "#conversation .msg.user .media img")
    assert len(shown) == 1
    assert page.by_id("attachments").find_elements(By.CSS_SELECTOR, ".chip") == []

    tokenizer = TikTokenTokenizer.from_pretrained(str(real.tiny_dir))
    cfg = ImageProcessorConfig.from_dict(
        json.loads((real.tiny_dir / "preprocessor_config.json").read_text())
    )
    block = len(tokenizer.encode_text("image")) + 3  # start, "image", content, end
    assert with_image - text_only == block + num_image_tokens(96, 64, cfg)


@pytest.mark.slow
def test_oversized_image_shows_the_error(page: Page, tmp_path: Path) -> None:
    page.clear()
    settings(page, max_tokens=4)
    page.attach(write_png(tmp_path / "big.png", 300, 300, (200, 40, 40)))
    page.ask("What is this?")
    wait_for(lambda: page.answers() and page.last(".error").is_displayed(), 20, "the error")
    assert page.text_of(".error-code") == "HTTP 400 · image_too_large"
    assert page.text_of(".error-message") == (
        f"The image is 300x300 (90000 pixels); the limit is {MAX_IMAGE_PIXELS} pixels."
    )
    assert "failed" in str(
        page.driver.find_element(By.CSS_SELECTOR, ".msg.user").get_attribute("class")
    )


@pytest.mark.slow
def test_model_output_is_text_not_html(page: Page) -> None:
    page.clear()
    regex = re.escape(XSS).replace("\\ ", " ")
    settings(page, max_tokens=40, extra={"structured_outputs": {"regex": regex}})
    page.ask("Say something.")
    page.wait_done()
    answer = page.last(".answer")
    assert answer.text == XSS  # shown, as text
    assert answer.find_elements(By.CSS_SELECTOR, "*") == []  # no element was made from it
    time.sleep(0.3)
    assert page.alert_text() is None
    assert page.console_errors() == []


@pytest.mark.slow
def test_video_with_its_options(page: Page, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(videos.mp4(seconds=2.0))
    page.clear()
    settings(page, max_tokens=4, extra={"ignore_eos": True})
    page.set_field("video-fps", "2")
    page.set_field("video-frames", "3")
    page.attach(clip)
    assert page.by_id("attachments").find_elements(By.CSS_SELECTOR, ".chip video")
    page.ask("What happens?")
    stats = page.wait_done()
    assert not page.last(".error").is_displayed(), page.text_of(".error")
    assert prompt_tokens(stats) > 3 * 4  # three frames of at least a few tokens each
    page.by_id("copy-curl").click()
    body = page.by_id("snippet").get_attribute("value") or ""
    assert '"video": {\n    "fps": 2,\n    "max_frames": 3\n  }' in body
    page.set_field("video-fps", "")
    page.set_field("video-frames", "")


@pytest.mark.slow
def test_copied_curl_and_python_run(page: Page, real: RunningServer, tmp_path: Path) -> None:
    page.clear()
    settings(page, max_tokens=5, extra={"ignore_eos": True, "seed": 7})
    page.attach(write_png(tmp_path / "small.png", 40, 30, (20, 200, 60)))
    detail = page.by_id("attachments").find_element(By.TAG_NAME, "select")
    detail.find_element(By.CSS_SELECTOR, "option[value=low]").click()
    page.ask("Describe it.")
    page.wait_done()
    env = {**os.environ, "KIMI_VL_API_KEY": KEY}

    page.by_id("copy-curl").click()
    curl = page.by_id("snippet").get_attribute("value") or ""
    assert '"detail": "low"' in curl and "$KIMI_VL_API_KEY" in curl and KEY not in curl
    ran = subprocess.run(["bash", "-c", curl], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert re.search(r'"completion_tokens": ?5\b', ran.stdout), ran.stdout[-2000:]
    assert ran.stdout.rstrip().endswith("data: [DONE]")

    page.by_id("copy-python").click()
    python = page.by_id("snippet").get_attribute("value") or ""
    assert "extra_body=" in python and '"ignore_eos": True' in python and KEY not in python
    ran = subprocess.run(
        [sys.executable, "-c", python], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert "completion_tokens=5" in ran.stdout


STOP_WHEN_UNDER_WAY = """
    const box = document.getElementById("conversation");
    window.stoppedAt = null;
    new MutationObserver((_, observer) => {
        const answer = [...box.querySelectorAll(".answer")].pop();
        if (answer && answer.textContent.length > 100) {
            observer.disconnect();
            window.stoppedAt = Date.now();
            document.getElementById("stop").click();
        }
    }).observe(box, {childList: true, subtree: true, characterData: true});
"""


def test_stop_aborts_generation(
    browser: webdriver.Chrome, slow_stand_in_server: StandInServer
) -> None:
    """Stop mid-answer: the server closes the engine's generator (the abort) at once and no
    step is generated after it. The engine is the scripted one at a fixed pace: on a loaded
    2-core machine the random tiny model's whole answer can reach the page in one piece,
    leaving nothing to stop (abort on disconnect with the real engine: tests/e2e)."""
    engine = slow_stand_in_server.engine
    page = Page(browser, slow_stand_in_server.base_url).open()
    wait_for(page.model_names, 10, "the model list")
    page.clear()
    page.driver.execute_script(STOP_WHEN_UNDER_WAY)
    page.ask("Write forever.")
    assert "stopped" in page.wait_done(60)
    stopped_at = page.driver.execute_script("return window.stoppedAt")
    assert stopped_at is not None
    request_id = engine.requests[-1].request_id
    wait_for(lambda: request_id in engine.closed, 5, "the engine request to be aborted")
    done = engine.steps_done
    time.sleep(0.5)
    assert engine.steps_done == done, "generation went on after Stop"
    assert 0 < done < 2000
    length = len(page.text_of(".answer"))
    time.sleep(0.3)
    assert len(page.text_of(".answer")) == length
    assert page.by_id("send").is_enabled() and not page.by_id("stop").is_enabled()
    assert page.console_errors() == []


def test_reasoning_block_apart_from_the_answer(
    browser: webdriver.Chrome, stand_in_server: StandInServer
) -> None:
    page = Page(browser, stand_in_server.base_url).open()
    wait_for(page.model_names, 10, "the model list")
    page.ask("What color is it?")
    page.wait_done()
    reasoning = page.last(".reasoning")
    assert reasoning.is_displayed()
    assert page.text_of(".reasoning-text") == "I see it"
    assert page.text_of(".answer") == "red"
    assert reasoning.get_attribute("open") is None  # collapsed once the answer began
    reasoning.find_element(By.TAG_NAME, "summary").click()
    assert page.last(".reasoning-text").text == "I see it"
    assert page.console_errors() == []


def test_keyboard_drop_and_paste(browser: webdriver.Chrome, stand_in_server: StandInServer) -> None:
    page = Page(browser, stand_in_server.base_url).open()
    wait_for(page.model_names, 10, "the model list")
    page.clear()
    prompt = page.by_id("prompt")
    prompt.send_keys("first line")
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    prompt.send_keys("second line")
    assert prompt.get_attribute("value") == "first line\nsecond line" and page.answers() == []

    image = base64.b64encode(png(32, 32, (240, 220, 40))).decode()
    deliver = """
        const [b64, name, kind] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], name, {type: "image/png"}));
        const options = {bubbles: true, cancelable: true};
        const event = kind === "drop"
            ? new DragEvent("drop", {...options, dataTransfer: files})
            : new ClipboardEvent("paste", {...options, clipboardData: files});
        document.getElementById(kind === "drop" ? "conversation" : "prompt").dispatchEvent(event);
    """
    page.driver.execute_script(deliver, image, "dropped.png", "drop")
    page.driver.execute_script(deliver, image, "pasted.png", "paste")

    def chips() -> list[str]:
        names = page.by_id("attachments").find_elements(By.CSS_SELECTOR, ".chip .name")
        return [n.text for n in names]

    assert wait_for(lambda: len(chips()) == 2 and chips(), 5, "two attachments") == [
        "dropped.png",
        "pasted.png",
    ]
    prompt.send_keys(Keys.ENTER)
    page.wait_done()
    sent = stand_in_server.engine.requests[-1].multi_modal_data or {}
    assert [im.size for im in sent["image"]] == [(32, 32), (32, 32)]
    assert page.console_errors() == []
