"""The demo in a real browser: ``python -m mavos.demo`` on a free local port, driven by headless Chromium.

Two browser sessions upload their own small generated video and mask and run at once; each must get an overlay
video the browser plays and a masks zip equal to what ``InferenceSession`` gives for the same inputs. Another
page goes through bad inputs (each a message in the page) and paints an object with the brush. Chromium is
Debian's package, driven by Playwright; nothing is downloaded. A screenshot of the finished page is saved
(``MAVOS_DEMO_SCREENSHOT=path`` to choose where).
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mavos.checkpoints.loading import load_network
from mavos.data.io import write_mask
from tests.test_demo import H, W, first_mask, make_video, one_thread, reference_masks, write_checkpoint  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MAVOS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL_HINT = ("the browser test needs Debian's Chromium and Playwright's Python package: "
                "`apt-get install -y chromium` (as root; .ci/run does it) and `pip install -e .[dev]`")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STROKE_RGB = np.array([128, 0, 0])  # object 1 in the DAVIS palette: the brush's default colour
LONG = 180_000  # ms: a generous bound for waits on a loaded 2-core machine, not a timing assertion

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None

pytestmark = pytest.mark.skipif(CHROMIUM is None or sync_playwright is None, reason=INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo as a user starts it, with a checkpoint in its project's weights/ folder."""
    root = tmp_path_factory.mktemp("project")
    ckpt = write_checkpoint(root / "weights" / "test.ckpt")
    jobs = root / "jobs"
    port = free_port()
    env = dict(os.environ, PROJECT_ROOT=str(root), GRADIO_HEARTBEAT_INTERVAL="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")  # as this process (one_thread): tiny frames, a shared CPU
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mavos.demo", "ckpt_path=weights/test.ckpt", f"port={port}",
                             f"work_dir={jobs}", "resolution=original", "max_frames=20"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + LONG / 1000
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the demo did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield {"url": url, "root": root, "jobs": jobs, "ckpt": ckpt}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    out = []
    for i, objects in enumerate((2, 1)):
        video = make_video(folder / f"clip{i}.mp4", frames=4, seed=i)
        write_mask(folder / f"clip{i}_mask.png", first_mask(objects))
        out.append((video, folder / f"clip{i}_mask.png", first_mask(objects)))
    (folder / "notes.mp4").write_text("not a video at all")
    write_mask(folder / "small_mask.png", np.ones((40, 50), np.uint8))
    return {"clips": out, "text": folder / "notes.mp4", "small_mask": folder / "small_mask.png"}


@contextmanager
def explained(page, tmp_path: Path):
    """On a failure, add what the page says (its status lines) and save a screenshot beside the test's files."""
    try:
        yield
    except Exception as e:
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        lines = {i: said(page, i) for i in ("video-status", "mask-status", "run-status")}
        raise AssertionError(f"{e}\npage status lines: {lines}\nscreenshot: {shot}") from e


def open_page(browser, url):
    context = browser.new_context(viewport={"width": 1280, "height": 1500})
    page = context.new_page()
    page.set_default_timeout(LONG)
    page.goto(url)
    page.wait_for_selector("#video-upload input[type=file]", state="attached")
    return context, page


def status(page, elem_id: str, contains: str, stale: str | None = None) -> str:
    """Wait for a status line to say ``contains``; fail at once on "something went wrong", or on a problem
    message other than ``stale`` (what the line said before the action)."""
    text = page.wait_for_function(
        f"([id, text, stale]) => {{ const t = {SAID}; return (t.includes(text) ||"
        " t.includes('Something went wrong') || (t.includes('Cannot do that') && t !== stale)) && t }",
        arg=[elem_id, contains, "" if stale is None else stale]).json_value()
    assert contains in text, text
    return text


# what a status line says: its Markdown, without the progress timer Gradio shows beside it while a handler runs
SAID = "(document.querySelector('#' + id + ' .prose') || document.querySelector('#' + id)).innerText"


def said(page, elem_id: str) -> str:
    return page.evaluate(f"id => {SAID}", elem_id)


def upload(page, elem_id: str, path: Path) -> None:
    """Upload into a File component, first clearing the file it shows (its file input is gone until then)."""
    if page.locator(f"#{elem_id} input[type=file]").count() == 0:
        page.locator(f"#{elem_id} button[aria-label='Clear']").click()
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def result_files(page) -> dict[str, bytes]:
    page.wait_for_function("document.querySelectorAll('#downloads a').length >= 2")
    links = page.locator("#downloads a")
    out = {}
    for i in range(links.count()):
        href = links.nth(i).get_attribute("href")
        out[href.rsplit("/", 1)[-1]] = page.context.request.get(href).body()
    return out


def masks_in_zip(data: bytes, memory: str = "mca") -> list[np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(f"{memory}/"))
        return [np.asarray(Image.open(archive.open(n))) for n in names]


def test_two_sessions_upload_run_and_get_the_python_apis_masks(server, browser, inputs, tmp_path):
    pages = [open_page(browser, server["url"]) for _ in inputs["clips"]]
    for (context, page), (video, mask_png, _) in zip(pages, inputs["clips"]):
        upload(page, "video-upload", video)
        assert f"4 frames, {W}x{H}" in status(page, "video-status", "frames")
        upload(page, "mask-upload", mask_png)
        status(page, "mask-status", "Mask loaded")
    for _, page in pages:
        page.click("#run")  # both sessions run at once
    net = load_network(server["ckpt"])
    for (context, page), (video, _, mask) in zip(pages, inputs["clips"]):
        text = status(page, "run-status", "Done")
        assert f"{int(mask.max())} object" in text
        files = result_files(page)
        assert set(files) == {f"{video.stem}_masks.zip", f"{video.stem}_overlay.mp4"}
        got = masks_in_zip(files[f"{video.stem}_masks.zip"])
        expected = reference_masks(net, video, mask, max_long_edge=None)
        assert len(got) == len(expected) == 4
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))
        page.wait_for_function("() => { const v = document.querySelector('#overlay video');"
                               " return v && v.readyState >= 1 && v.videoWidth > 0 }")
        assert page.evaluate("document.querySelector('#overlay video').videoWidth") == W  # the browser decodes it
    shot = Path(os.environ.get("MAVOS_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    pages[0][1].screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    assert len(list(server["jobs"].iterdir())) == 2
    pages[0][0].close()  # a tab closes: its job's files go, the other session's stay
    deadline = time.monotonic() + LONG / 1000
    while len(list(server["jobs"].iterdir())) != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(server["jobs"].iterdir())) == 1
    pages[1][0].close()


# Gradio's status tracker over the editor: hidden (class "hide") unless an event that shows its progress there is
# pending, queued or running. While one is, the tracker covers the canvas, at first showing only a timer
# ("0.7s"), then "queue: 1/1 | ...", then "processing | ...", and a stroke drawn then is lost; so the test waits
# for the tracker itself to hide, not for words in it. (With the editor as a progress target of the mask upload,
# the tracker stayed "processing" for good after the refused mask in about 1 of 5 runs of this file: the app
# now shows that event's progress on its status line, see mavos/demo/app.py.)
EDITOR_IDLE = ("() => { const w = [...document.querySelectorAll('#mask-editor .wrap')];"
               " return w.length > 0 && w.every(e => e.classList.contains('hide')) }")


def paint_across_the_middle(page, tries: int = 5) -> None:
    """A brush stroke (object 1's colour) across the editor's middle, drawn again until the canvas shows it. On
    a loaded machine the editor can show the draw tool before its canvas listens: the drag then only selects
    the page's text and nothing is painted (a user would see that and draw again)."""
    box = page.locator("#mask-editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    assert not shows_stroke_colour(page, cx, cy), "the frame has the stroke's colour already"
    give_up = time.monotonic() + LONG / 1000
    for _ in range(tries):
        page.mouse.move(cx - 20, cy)
        page.mouse.down()
        page.mouse.move(cx + 20, cy, steps=8)
        page.mouse.up()
        page.mouse.move(box["x"] + box["width"] + 40, cy)  # the cursor off the canvas
        wait_until = time.monotonic() + 15
        while time.monotonic() < min(wait_until, give_up):
            if not page.evaluate(EDITOR_IDLE):  # its canvas is covered: the stroke cannot show yet
                wait_until = time.monotonic() + 15
            elif shows_stroke_colour(page, cx, cy):
                return
            time.sleep(0.5)
    if not page.evaluate(EDITOR_IDLE):
        raise AssertionError(f"the editor stayed busy (an event's status over it) for {LONG // 1000} s after a "
                             "stroke (Gradio's frontend never finished handing the canvas over)")
    raise AssertionError(f"the editor showed no stroke after {tries} drags across it")


def shows_stroke_colour(page, x: float, y: float) -> bool:
    """Whether the page shows object 1's palette colour (DAVIS's dark red) all along a 23x3 strip centred on
    (x, y): the middle of the stroke's line, away from the brush's round cursor."""
    shot = page.screenshot(clip={"x": x - 11, "y": y - 1, "width": 23, "height": 3})
    rgb = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=int).reshape(-1, 3)
    return bool((np.abs(rgb - STROKE_RGB).max(axis=1) <= 24).all())


def test_bad_inputs_are_messages_and_painting_makes_the_mask(server, browser, inputs, tmp_path):
    context, page = open_page(browser, server["url"])
    with explained(page, tmp_path):
        bad_inputs_then_paint(page, server, inputs)
    context.close()


def bad_inputs_then_paint(page, server, inputs):
    page.click("#run")
    assert "load a video first" in status(page, "run-status", "load a video first")
    upload(page, "video-upload", inputs["text"])
    refused = status(page, "video-status", "not a video")
    assert "notes.mp4 is not a video this demo can read" in refused
    video, _, _ = inputs["clips"][0]
    upload(page, "video-upload", video)  # the app keeps serving (the refusal stays on screen until it answers)
    status(page, "video-status", "4 frames", refused)
    before = said(page, "run-status")
    page.click("#run")
    assert "holds no object" in status(page, "run-status", "no object", before)
    upload(page, "mask-upload", inputs["small_mask"])
    assert f"small_mask.png is 50x40 but the video is {W}x{H}" in status(page, "mask-status", "50x40")
    # paint object 1 (the brush's default colour) across the middle of the frame, once the frame is in the editor
    page.wait_for_function("() => { const t = document.querySelector('#mask-editor').innerText;"
                           " return t.includes('%') && !t.includes('select the draw tool') }")
    try:
        page.wait_for_function(EDITOR_IDLE, timeout=60_000)
    except Exception as e:  # playwright's TimeoutError
        raise AssertionError("a status stayed over the mask editor for 60 s after the refused mask (nothing "
                             "runs then): the canvas cannot be painted") from e
    paint_across_the_middle(page)
    # then a GrabCut box around the red box (object 1 of the clip: rows 6-19, columns 6-23) as object 3
    # (Gradio maps a click to image pixels only once the shown image has loaded: wait for that before each click)
    shown_and_loaded = ("src => { const i = document.querySelector('#box-image img');"
                        " return i.getAttribute('src') !== src && i.complete && i.naturalWidth > 0 }")
    page.wait_for_function(shown_and_loaded, arg="")
    image = page.locator("#box-image img").first
    corners = image.bounding_box()
    for fx, fy in ((2 / W, 2 / H), (29 / W, 25 / H)):
        shown = image.get_attribute("src")
        page.mouse.click(corners["x"] + fx * corners["width"], corners["y"] + fy * corners["height"])
        page.wait_for_function(shown_and_loaded, arg=shown)  # the corner is drawn: the click reached the server
    page.fill("#grabcut-object input", "3")
    before = said(page, "mask-status")
    page.click("#grabcut")
    assert "GrabCut added object 3" in status(page, "mask-status", "GrabCut", before)
    before = said(page, "run-status")
    page.click("#run")
    status(page, "run-status", "Done", before)
    got = masks_in_zip(result_files(page)[f"{video.stem}_masks.zip"])
    painted = got[0]
    assert set(np.unique(painted)) <= {0, 1, 3}
    assert painted[H // 2, W // 2] == 1  # the stroke across the centre, kept when GrabCut added its object
    assert painted[13, 15] == 3 and (painted == 3).sum() >= 0.7 * 14 * 18  # GrabCut found the red box
    expected = reference_masks(load_network(server["ckpt"]), video, painted, max_long_edge=None)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
