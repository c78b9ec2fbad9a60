"""The y_t slider of notebook 01 in a real browser: Voilà runs a copy of the notebook, headless Chromium (driven by
Playwright) moves the slider, and the image must change.

test_viz.py already checks, without a browser, that setting ``slider.value`` draws the right frame; this test
covers what only a browser can: the widget front end renders, the slider's change reaches the kernel, and the new
PNG comes back. Recipe and pitfalls: shared/BROWSER-TESTS.md (Voilà: no menus, no token, runs the cells itself).
Skips, saying why, where Playwright, Voilà or Chromium is missing. Chromium: $CHROMIUM, else `chromium` on PATH.
"""
import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("voila", reason="voila is not installed (pip install voila)")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("Chromium is not installed (apt-get install chromium, or set $CHROMIUM)", allow_module_level=True)

pytestmark = pytest.mark.browser

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_forward_process.ipynb"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SERVER_START_S, NOTEBOOK_RUN_S, REDRAW_S = 90, 300, 60  # generous: the CPU may be shared

# The widget's <img> shows a blob: URL (ipywidgets Image) or a data: URL (an Output area): read its bytes either way.
READ_IMG = """async (img) => {
  const buf = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let s = ""; for (let i = 0; i < buf.length; i += 0x8000) s += String.fromCharCode(...buf.subarray(i, i + 0x8000));
  return btoa(s);
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def voila_url(tmp_path):
    """Voilà serving a copy of notebook 01 from tmp_path (never the repository's file); stopped by its own PID."""
    if not NOTEBOOK.exists():
        pytest.skip(f"{NOTEBOOK} not found")
    shutil.copy(NOTEBOOK, tmp_path / "nb.ipynb")
    port = _free_port()
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="",
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    log = open(tmp_path / "voila.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "voila", "nb.ipynb", "--no-browser", "--Voila.ip=127.0.0.1",
                             f"--port={port}", "--Voila.port_retries=0", "--show_tracebacks=True"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                log_tail = (tmp_path / "voila.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"voila exited with status {proc.returncode}:\n{log_tail}")
            try:
                with urllib.request.urlopen(url + "api/status", timeout=5):  # not "/": that would run the notebook
                    break
            except urllib.error.HTTPError:  # it answered
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"voila did not answer within {SERVER_START_S} s")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _pixels(b64_png: str):
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(base64.b64decode(b64_png)), format="png")


def test_yt_slider_redraws_the_image(voila_url, tmp_path):
    import numpy as np

    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            page.goto(voila_url, wait_until="commit", timeout=SERVER_START_S * 1000)  # Voilà streams the run
            slider = page.locator(".t-slider")
            image = page.locator("img.sr3-frame")
            pw.expect(slider).to_be_visible(timeout=NOTEBOOK_RUN_S * 1000)  # Voilà has run every cell
            pw.expect(image).to_be_visible(timeout=REDRAW_S * 1000)
            readout = slider.locator(".widget-readout")
            pw.expect(readout).to_have_text("300")  # t_init of the notebook's widget
            src_before = image.get_attribute("src")
            before = image.evaluate(READ_IMG)

            # One change, not many: type t into the readout (contenteditable) and press Enter.
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("1500")
            page.keyboard.press("Enter")
            pw.expect(readout).to_have_text("1500", timeout=REDRAW_S * 1000)
            deadline = time.monotonic() + REDRAW_S
            while image.get_attribute("src") == src_before:  # the kernel redraws and sends the new PNG
                assert time.monotonic() < deadline, "the image did not change after the slider moved"
                page.wait_for_timeout(200)
            after = image.evaluate(READ_IMG)
        except Exception:  # keep what explains it: a screenshot, the page's text, Voilà's log (printed on failure)
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'failure.png'}\npage text (end):\n{page.inner_text('body')[-2000:]}")
            print(f"voila log (end):\n{(tmp_path / 'voila.log').read_text(errors='replace')[-3000:]}")
            raise
        finally:
            browser.close()

    a, b = _pixels(before), _pixels(after)
    assert a.shape == b.shape and a.ndim == 3
    assert float(np.abs(a - b).mean()) > 0.01, "the image at t = 1500 looks like the one at t = 300"
