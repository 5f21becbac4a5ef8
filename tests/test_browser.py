"""The live demo page in a real browser: headless Chromium (Debian's package) driven by Playwright opens the page,
uploads a portrait, streams an audio file and then a fake microphone, receives frames and reads the latency and
real-time-factor displays. Skips when chromium or playwright is missing (.ci/run installs both)."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from rest.pipelines import TalkingHeadPipeline  # noqa: E402
from rest.serve import ServeOptions, create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="chromium not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(test_pipeline, face_image, tmp_path_factory):
    portraits = tmp_path_factory.mktemp("portraits")
    Image.fromarray(face_image).save(portraits / "face.png")
    app = create_app(TalkingHeadPipeline.from_pretrained(test_pipeline), ServeOptions(max_sessions=2), portraits)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/", portraits / "face.png"
    server.should_exit = True
    thread.join(timeout=10)


def test_live_page_streams_a_file_and_the_microphone(server, speech, tmp_path):
    url, portrait = server
    args = ["--no-sandbox", "--headless", "--disable-gpu", "--use-fake-ui-for-media-stream"]
    args += [
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        page.set_input_files("#portrait-file", str(portrait))
        page.wait_for_function("document.getElementById('portrait-status').textContent.includes('face found')")
        page.set_input_files("#audio-file", str(speech))
        page.click("#start-file")
        page.wait_for_function("Number(document.getElementById('frames').textContent) >= 20", timeout=30000)
        for element in ("latency", "rtf", "delay"):
            page.wait_for_function(f"/^[0-9.]+$/.test(document.getElementById('{element}').textContent)")
        shot = tmp_path / "web_live.png"
        page.screenshot(path=str(shot))
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30000)
        latency = int(page.text_content("#latency"))
        rtf = float(page.text_content("#rtf"))
        frames = int(page.text_content("#frames"))
        delay = int(page.text_content("#delay"))  # the sound starts one chunk (160 ms) after the first frame
        assert 0 < latency < 10000 and 0 < rtf < 5 and frames == 58  # 2.3 s of audio at 25 fps
        assert latency + 160 <= delay + 20, (latency, delay)
        drawn = page.evaluate("document.getElementById('video').getContext('2d').getImageData(128, 128, 1, 1).data[3]")
        assert drawn == 255  # the canvas shows a frame

        page.click("#start-mic")  # the fake microphone plays the same file in a loop
        page.wait_for_function("Number(document.getElementById('frames').textContent) >= 10", timeout=30000)
        page.click("#stop")
        assert not errors, errors
        browser.close()
    if os.environ.get("REST_SCREENSHOT"):
        shutil.copy(shot, os.environ["REST_SCREENSHOT"])
