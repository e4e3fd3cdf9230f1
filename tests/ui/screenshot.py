"""Take docs/playground.png: the playground answering a question about a picture.

    .venv/bin/python -m tests.ui.screenshot [--out docs/playground.png] [-- server flags...]

Starts the real server the way the browser tests do (its default model unless server flags say
otherwise), draws a red circle on a dark background (the demo checkpoint's visual domain), asks
"What color is the circle?" in headless Chromium at 1280x900 and saves the page.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from tests.e2e.conftest import running_server
from tests.ui.conftest import WINDOW, Page, start_browser, wait_for

REPO = Path(__file__).resolve().parents[2]
QUESTION = "What color is the circle?"


def picture(path: Path) -> Path:
    image = Image.new("RGB", (320, 224), (34, 34, 38))
    ImageDraw.Draw(image).ellipse((110, 62, 210, 162), fill=(230, 40, 40))
    image.save(path)
    return path


def optimise(png: bytes) -> bytes:
    """The screenshot as an adaptive-palette PNG (a flat UI loses nothing visible)."""
    out = io.BytesIO()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "playground.png")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("server_flags", nargs="*")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with running_server(work, *args.server_flags) as server:
            driver = start_browser(work / "profile")
            try:
                width, height = WINDOW  # the viewport itself, not the window around it
                driver.execute_cdp_cmd(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                )
                page = Page(driver, server.base_url).open()
                wait_for(page.model_names, 10, "the model list")
                page.set_field("max-tokens", str(args.max_tokens))
                page.attach(picture(work / "circle.png"))
                page.ask(QUESTION)
                page.wait_done(120)
                page.by_id("prompt").click()  # focus back where a user would type next
                answer = page.text_of(".answer")
                shot = optimise(driver.get_screenshot_as_png())
            finally:
                driver.quit()
    args.out.write_bytes(shot)
    print(f"{args.out}: {len(shot)} bytes; answer: {answer!r}")  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1:])
