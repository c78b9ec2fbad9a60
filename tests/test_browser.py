"""The course's widgets in a real browser: Voilà runs excerpts of the notebooks, headless Chromium (driven by
Playwright) moves their sliders and clicks their buttons, and what the kernel sends back must change the page.

- notebook 01: the y_t slider redraws the image;
- notebook 03: the schedule explorer's beta_T and T sliders redraw it;
- notebook 04: the reverse-trajectory slider and the forward/reverse slider redraw theirs;
- notebook 09: clicks in the 2AFC study record answers, and the fool rates shown follow them.

The notebooks' own checks (nbval, tests/test_viz.py) already assert, without a browser, that setting
``slider.value`` draws the right frame; these tests cover what only a browser can: the widget front end renders,
a change reaches the kernel, and the new PNG or text comes back.

Speed: one Voilà server and one Chromium serve every test. Each notebook is served as an *excerpt*, a copy holding
its set-up cell and the code cells its widget needs, verbatim, picked by what they contain (a marker that no
longer matches fails the test, so an edit of the notebook cannot silently empty it). Only notebook 09's 50-step
SR3 run (15 s) is replaced, by a stand-in for the candidates: the study's buttons and tally do not depend on
which images it shows. Recipe and pitfalls: shared/BROWSER-TESTS.md. Skips, saying why, where Playwright, Voilà
or Chromium is missing. Chromium: $CHROMIUM, else `chromium` on PATH.
"""
import base64
import contextlib
import io
import json
import os
import re
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

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SERVER_START_S, NOTEBOOK_RUN_S, REDRAW_S = 90, 300, 60  # generous: the CPU may be shared

# notebook excerpt -> (source notebook, markers: a code cell is kept if it contains one; each must match a cell).
# The set-up cell (the one with %matplotlib inline) is always kept; Colab's install cell never is.
EXCERPTS = {
    "nb01.ipynb": ("01_forward_process.ipynb", ["schedule = Schedule.linear(", "frames = viz.forward_frames(",
                                                "viz.yt_widget(y_0, schedule, noise, t_init=300)"]),
    "nb03.ipynb": ("03_training_objective.ipynb", ["schedule = Schedule.linear(", "schedule_explorer_figure(",
                                                   "widget = viz_schedule.schedule_explorer("]),
    "nb04.ipynb": ("04_reverse_process.ipynb", ["schedule = Schedule.linear(", "photos = dict(bundled_eval_images",
                                                "sr3_mini.load_pretrained()", "return_trajectory=True",
                                                "extra = {", "widget = viz.trajectory_widget(",
                                                "noise_fr = torch.randn(", "widget_fr = viz.forward_reverse_widget("]),
    "nb09.ipynb": ("09_fool_rate.ipynb", ["class TwoAFCStudy", "study = TwoAFCStudy("]),
}
# Notebook 09: stand-ins for the candidates (its cell runs SR3 for 50 steps on 16 crops), inserted before the
# study's class; and, appended, the answer key of the study with x shown, for the test to predict the tally.
STANDIN_09 = """photos = bundled_eval_images()
y_0 = torch.stack([p[:, 96:160, 96:160] for _, p in photos])[:3]   # 3 crops: 6 trials with two candidates
x = downsample(y_0, 4)
OUTPUTS = {"SR3": upsample(x, 4).clamp(-1, 1), "regression": upsample(x, 4).clamp(-1, 1).flip(-1)}"""
KEY_09 = """key = widgets.HTML(json.dumps([[m, left] for (m, _), left in zip(study.trials, study.photo_left)]))
key.add_class("afc-key")
key"""

# The widget's <img> shows a blob: URL (ipywidgets Image) or a data: URL (an Output area): read its bytes either way.
READ_IMG = """async (img) => {
  const buf = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let s = ""; for (let i = 0; i < buf.length; i += 0x8000) s += String.fromCharCode(...buf.subarray(i, i + 0x8000));
  return btoa(s);
}"""


def _excerpt(name: str, dest: Path) -> None:
    import nbformat

    source, markers = EXCERPTS[name]
    nb = nbformat.read(NOTEBOOKS / source, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and "nbval-skip" not in c.metadata.get("tags", [])]
    missing = [m for m in markers if not any(m in c.source for c in code)]
    assert not missing, f"{source}: no code cell contains {missing} any more; update EXCERPTS in {__file__}"
    kept = [c for c in code if "%matplotlib inline" in c.source or any(m in c.source for m in markers)]
    if name == "nb09.ipynb":
        kept.insert(1, nbformat.v4.new_code_cell(STANDIN_09))
        kept.append(nbformat.v4.new_code_cell("import json\n" + KEY_09))
    for c in kept:
        c.outputs, c.execution_count = [], None
    nb.cells = kept
    nbformat.write(nb, dest / name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    """One Voilà server for every test, serving the excerpts from a temporary folder (never the repository's
    files); stopped by its own PID. Yields (base URL, log path)."""
    root = tmp_path_factory.mktemp("voila")
    for name in EXCERPTS:
        _excerpt(name, root)
    port = _free_port()
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="",
               JUPYTER_RUNTIME_DIR=str(root / "runtime"), JUPYTER_CONFIG_DIR=str(root / "config"))
    log_path = root / "voila.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "voila", str(root), "--no-browser", "--Voila.ip=127.0.0.1",
                             f"--port={port}", "--Voila.port_retries=0", "--show_tracebacks=True"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"voila exited with status {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(url + "api/status", timeout=5):  # not a notebook: that would run it
                    break
            except urllib.error.HTTPError:  # it answered
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"voila did not answer within {SERVER_START_S} s")
                time.sleep(0.3)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def chromium():
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_excerpt(voila, chromium, tmp_path):
    """``with open_excerpt("nb01.ipynb") as page:`` a page on which Voilà runs that excerpt; if the block fails, a
    screenshot, the page's text and Voilà's log are printed (pytest shows them)."""
    url, log_path = voila

    @contextlib.contextmanager
    def _open(name):
        page = chromium.new_page(viewport={"width": 1300, "height": 1000})
        try:
            page.goto(f"{url}voila/render/{name}", wait_until="commit", timeout=SERVER_START_S * 1000)  # streams
            yield page
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'failure.png'}\npage text (end):\n{page.inner_text('body')[-2000:]}")
            print(f"voila log (end):\n{log_path.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            page.close()  # Voilà shuts the excerpt's kernel down

    return _open


def _widget_of(page, css_class):
    """The slider with this CSS class, and the image of the widget box holding it."""
    slider = page.locator(f".{css_class}")
    pw.expect(slider).to_be_visible(timeout=NOTEBOOK_RUN_S * 1000)  # Voilà has run the cells up to it
    box = slider.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]")
    image = box.locator("img.sr3-frame")
    pw.expect(image).to_be_visible(timeout=REDRAW_S * 1000)
    return slider, image


def _expect_readout(slider, value: float) -> None:
    """Wait until the slider's readout shows ``value`` (as a number: formats differ between ipywidgets 7 and 8)."""
    readout = slider.locator(".widget-readout")
    deadline = time.monotonic() + REDRAW_S
    while True:
        text = readout.inner_text().strip()
        try:
            if abs(float(text) - value) <= 1e-6 * abs(value):
                return
        except ValueError:
            pass
        assert time.monotonic() < deadline, f"the readout shows {text!r}, not {value}"
        time.sleep(0.1)


def _set_slider(page, slider, image, text: str) -> tuple:
    """One change, not many: type the value into the readout (contenteditable) and press Enter; wait for the
    kernel's new PNG. Returns the pixels (before, after)."""
    readout = slider.locator(".widget-readout")
    src_before, before = image.get_attribute("src"), image.evaluate(READ_IMG)
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    _expect_readout(slider, float(text))
    deadline = time.monotonic() + REDRAW_S
    while image.get_attribute("src") == src_before:  # the kernel redraws and sends the new PNG
        assert time.monotonic() < deadline, f"the image did not change after the slider was set to {text}"
        page.wait_for_timeout(200)
    return _pixels(before), _pixels(image.evaluate(READ_IMG))


def _pixels(b64_png: str):
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(base64.b64decode(b64_png)), format="png")


def _differ(a, b, at_least=0.01) -> bool:
    import numpy as np

    return a.shape == b.shape and a.ndim == 3 and float(np.abs(a - b).mean()) > at_least


def test_yt_slider_redraws_the_image(open_excerpt):
    """Notebook 01: y_t at t = 300, then at t = 1500 (much noisier)."""
    with open_excerpt("nb01.ipynb") as page:
        _test_yt(page)


def _test_yt(page):
    slider, image = _widget_of(page, "t-slider")
    _expect_readout(slider, 300)  # t_init of the notebook's widget
    a, b = _set_slider(page, slider, image, "1500")
    assert _differ(a, b), "the image at t = 1500 looks like the one at t = 300"


def test_schedule_explorer_redraws_for_beta_T_and_T(open_excerpt):
    """Notebook 03: the explorer starts at SR3's schedule (beta_T = 0.01, T = 2000); beta_T = 0.1 and then
    T = 1000 each redraw the curves and the images at p(gamma)'s quartiles."""
    with open_excerpt("nb03.ipynb") as page:
        _test_explorer(page)


def _test_explorer(page):
    beta, image = _widget_of(page, "beta-slider")
    steps = page.locator(".T-slider")
    _expect_readout(beta, 0.01)  # shown as "0.0100" by ipywidgets 8 (d3's ".3g")
    _expect_readout(steps, 2000)
    a, b = _set_slider(page, beta, image, "0.1")
    assert _differ(a, b, 0.002), "beta_T = 0.1 drew the same figure as beta_T = 0.01"
    b, c = _set_slider(page, steps, image, "1000")
    assert _differ(b, c, 0.002), "T = 1000 drew the same figure as T = 2000"


def test_reverse_trajectory_and_forward_reverse_sliders(open_excerpt):
    """Notebook 04: the trajectory slider (snapshot k = 0, pure noise, -> k = 100, the sample) and the
    forward/reverse slider (k = 0 -> k = 75, t = 25) each redraw their own image and leave the other alone."""
    with open_excerpt("nb04.ipynb") as page:
        _test_trajectory(page)


def _test_trajectory(page):
    k_slider, k_image = _widget_of(page, "k-slider")
    fr_slider, fr_image = _widget_of(page, "fr-slider")
    for s in (k_slider, fr_slider):
        _expect_readout(s, 0)
    fr_src = fr_image.get_attribute("src")
    a, b = _set_slider(page, k_slider, k_image, "100")
    assert _differ(a, b), "the trajectory's last snapshot looks like its first"
    assert fr_image.get_attribute("src") == fr_src, "moving the trajectory slider redrew the forward/reverse image"
    k_src = k_image.get_attribute("src")
    a, b = _set_slider(page, fr_slider, fr_image, "75")
    assert _differ(a, b), "forward/reverse at t = 25 looks like at t = 100"
    assert k_image.get_attribute("src") == k_src, "moving the forward/reverse slider redrew the trajectory image"


def _tally(status_text: str) -> dict:
    """'... SR3: fooled 1 of 2 (50%); regression: fooled 0 of 1 (0%)' -> {model: (fooled, answered)}, checking
    each percentage against its counts."""
    found = re.findall(r"(SR3|regression): fooled (\d+) of (\d+)(?: \((\d+)%\))?", status_text)
    assert found, f"no fool rate in {status_text!r}"
    tally = {}
    for model, k, n, pct in found:
        k, n = int(k), int(n)
        assert (pct == "") == (n == 0), status_text
        if n:
            assert int(pct) == round(100 * k / n), f"{model}: {k} of {n} shown as {pct}%"
        tally[model] = (k, n)
    return tally


def test_2afc_clicks_record_answers_and_update_the_fool_rate(open_excerpt):
    """Notebook 09: answer every trial of the study with x shown by clicking its buttons; after each click the
    next trial's images appear and the fool rates shown equal those the answer key predicts; at the end the buttons
    are disabled. The study without x is left untouched."""
    with open_excerpt("nb09.ipynb") as page:
        _test_2afc(page)


def _test_2afc(page):
    key_box = page.locator(".afc-key")
    pw.expect(key_box).to_be_visible(timeout=NOTEBOOK_RUN_S * 1000)
    key = json.loads(key_box.inner_text())  # per trial: [model, photo on the left?]
    left, right = page.locator("button.afc-left"), page.locator("button.afc-right")
    status = page.locator(".afc-status")
    pw.expect(left).to_have_count(2)  # two studies: with x, then without
    pw.expect(status.first).to_contain_text(f"trial 1 of {len(key)}")
    other_status = status.nth(1).inner_text()
    image = left.first.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]//img")  # this study's
    expected = {"SR3": [0, 0], "regression": [0, 0]}
    for k, (model, photo_left) in enumerate(key):
        click_left = photo_left if k % 2 == 0 else not photo_left  # right on even trials, fooled on odd ones
        src_before = image.get_attribute("src")
        (left if click_left else right).first.click()
        expected[model][0] += click_left != photo_left  # fooled: took the other candidate for the photo
        expected[model][1] += 1
        if k + 1 < len(key):
            pw.expect(status.first).to_contain_text(f"trial {k + 2} of {len(key)}", timeout=REDRAW_S * 1000)
            deadline = time.monotonic() + REDRAW_S
            while image.get_attribute("src") == src_before:
                assert time.monotonic() < deadline, f"trial {k + 2}'s images did not appear"
                page.wait_for_timeout(100)
        else:
            pw.expect(status.first).to_contain_text("done.", timeout=REDRAW_S * 1000)
        assert _tally(status.first.inner_text()) == {m: tuple(v) for m, v in expected.items()}, f"after click {k + 1}"
    pw.expect(left.first).to_be_disabled()
    pw.expect(right.first).to_be_disabled()
    assert status.nth(1).inner_text() == other_status and left.nth(1).is_enabled()
