"""`rest serve --motion`: the `/ws/motion` protocol with the tiny random motion model (frames equal the offline
`animate`, counts, shapes, bad messages), the 404 without a motion model, the CLI's check of --motion, and the
`/motion` page in headless Chromium (skips as tests/test_browser.py does).

With REST_SCREENSHOT_DIR set, the browser test saves motion_page.png there mid-stream, drawn by the bundled
weights/rest-motion when it exists (a trained model makes a face worth looking at), else by the tiny model."""

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.testclient import WebSocketDenialResponse  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from rest.cli import main  # noqa: E402
from rest.models.rig import ARKIT_BLENDSHAPES, ARKIT_ROTATIONS, RIG_PARAMS, arkit_blendshapes  # noqa: E402
from rest.pipelines import TalkingHeadPipeline  # noqa: E402
from rest.pipelines.motion import MotionPipeline  # noqa: E402
from rest.serve import ServeOptions, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ["neutral", "happy", "sad", "angry", "surprised"]  # the tiny model's (rest.data.synth.emotion)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny motion model runs a chunk in about a millisecond: intra-op threads only add synchronisation, which
    costs 30x on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(test_pipeline):
    return TalkingHeadPipeline.from_pretrained(test_pipeline)


@pytest.fixture(scope="module")
def motion(test_motion_model):
    return MotionPipeline.from_pretrained(test_motion_model)


@pytest.fixture
def client(pipe, motion):
    with TestClient(create_app(pipe, ServeOptions(max_sessions=2, idle_timeout_s=30.0), motion=motion)) as c:
        yield c


def speech_like(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype("<f4")


def stream(ws, audio: np.ndarray, piece: int = 640) -> tuple[list[dict], dict]:
    """Send `audio` in pieces of `piece` samples then end; return the "motion" messages and the "done" message."""
    for i in range(0, len(audio), piece):
        ws.send_bytes(audio[i : i + piece].tobytes())
    ws.send_text(json.dumps({"type": "end"}))
    messages = []
    while True:
        msg = json.loads(ws.receive_text())
        if msg["type"] == "done":
            return messages, msg
        assert msg["type"] == "motion", msg
        messages.append(msg)


def start(ws, emotion=None, seed=0) -> dict:
    ws.send_text(json.dumps({"type": "start", "emotion": emotion, "seed": seed}))
    return json.loads(ws.receive_text())


def test_info_and_page(client):
    info = client.get("/api/info").json()
    assert info["motion"] == {"fps": 25, "sample_rate": 16000, "chunk_frames": 2, "emotions": EMOTIONS}
    page = client.get("/motion")
    assert page.status_code == 200 and 'id="face"' in page.text and 'id="mouth"' in page.text
    assert client.get("/static/motion.js").status_code == 200


def test_stream_sends_the_frames_animate_makes(client, motion):
    audio = speech_like(2.0)
    with client.websocket_connect("/ws/motion") as ws:
        ready = start(ws, "happy", seed=3)
        messages, done = stream(ws, audio)
    assert ready == {
        "type": "ready",
        "fps": 25,
        "sample_rate": 16000,
        "chunk_frames": 2,
        "emotion": "happy",
        "names": list(RIG_PARAMS),
        "arkit_names": list(ARKIT_BLENDSHAPES + ARKIT_ROTATIONS),
    }
    assert [m["start"] for m in messages] == list(np.cumsum([0] + [len(m["frames"]) for m in messages[:-1]]))
    assert all(len(m["frames"]) % 2 == 0 for m in messages)  # whole chunks of 2 frames (2 s: no partial end)
    frames = np.array([f for m in messages for f in m["frames"]])  # (50, 14)
    arkit = np.array([a for m in messages for a in m["arkit"]])  # (50, 61)
    assert frames.shape == (50, 14) and arkit.shape == (50, 61) and done == {"type": "done", "frames": 50}
    np.testing.assert_allclose(frames, motion.animate(audio, "happy", seed=3), atol=1e-4)
    shapes = arkit_blendshapes(frames.astype(np.float32))
    np.testing.assert_allclose(arkit, np.stack([shapes[n] for n in ready["arkit_names"]], axis=1), atol=1e-4)


def test_gaze_target_from_start_and_mid_stream(client, motion):
    audio = speech_like(1.6)
    gx, gy = RIG_PARAMS.index("gaze_x"), RIG_PARAMS.index("gaze_y")
    with client.websocket_connect("/ws/motion") as ws:
        ws.send_text(json.dumps({"type": "start", "seed": 2, "gaze": [0.25, 0.5]}))
        assert json.loads(ws.receive_text())["type"] == "ready"
        ws.send_bytes(audio[:8000].tobytes())  # 0.5 s: 10 frames (the rest wait for the look-ahead)
        first = json.loads(ws.receive_text())["frames"]
        ws.send_text(json.dumps({"type": "gaze", "gaze": None}))  # back to the model's gaze
        messages, done = stream(ws, audio[8000:])
    assert {(f[gx], f[gy]) for f in first} == {(0.25, 0.5)}
    later = np.array([f for m in messages for f in m["frames"]])
    assert len(first) + len(later) == done["frames"] == 40
    np.testing.assert_allclose(motion.animate(audio, seed=2, gaze=(0.25, 0.5))[: len(first)], first, atol=1e-4)
    assert np.abs(later[:, [gx, gy]] - [0.25, 0.5]).max() > 0.01  # released


@pytest.mark.parametrize("seconds, frames", [(0.72, 18), (0.3, 8), (0.0, 0)])
def test_frame_count_is_the_audio_duration(client, seconds, frames):
    with client.websocket_connect("/ws/motion") as ws:
        assert start(ws)["emotion"] is None
        messages, done = stream(ws, speech_like(seconds), piece=1000)
    assert sum(len(m["frames"]) for m in messages) == done["frames"] == frames == round(seconds * 25)


@pytest.mark.parametrize(
    "messages, code, message",
    [
        ([{"type": "start", "emotion": "bored"}], 1008, 'unknown emotion "bored": one of neutral, happy, sad'),
        ([{"type": "start", "emotion": 1}], 1008, "unknown emotion 1"),
        ([{"type": "start", "seed": -1}], 1008, "seed must be an integer"),
        ([b"\x00\x00\x80\x3f"], 1008, "audio before start"),
        ([{"type": "end"}], 1008, "end before start"),
        (["not json"], 1008, "must be JSON objects"),
        (["START", b"\x00\x00\x00"], 1008, "multiple of 4 bytes"),
        (["START", {"type": "start"}], 1008, "already started"),
        (["START", {"type": "pause"}], 1008, "unknown message type 'pause'"),
        ([{"type": "start", "gaze": [0.5]}], 1008, "gaze must be [x, y]"),
        ([{"type": "start", "gaze": [0.5, True]}], 1008, "gaze must be [x, y]"),
        (["START", {"type": "gaze", "gaze": [2, 0]}], 1008, "gaze target is two numbers x, y in -1 .. 1"),
        ([{"type": "gaze", "gaze": None}], 1008, "gaze before start"),
    ],
)
def test_bad_messages_close_that_session(client, messages, code, message):
    with client.websocket_connect("/ws/motion") as ws:
        for m in messages:
            if m == "START":
                assert start(ws)["type"] == "ready"
            elif isinstance(m, bytes):
                ws.send_bytes(m)
            else:
                ws.send_text(m if isinstance(m, str) else json.dumps(m))
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and message in error["message"], error
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == code
    with client.websocket_connect("/ws/motion") as ws:  # the server still serves
        assert start(ws)["type"] == "ready"
        assert stream(ws, speech_like(0.4))[1]["frames"] == 10


def test_motion_and_video_streams_share_the_session_cap(client):
    with client.websocket_connect("/ws/motion") as a, client.websocket_connect("/ws/motion") as b:
        for ws in (a, b):  # both started before either reply is read: neither waits idle on the other's start
            ws.send_text(json.dumps({"type": "start"}))
        assert json.loads(a.receive_text())["type"] == json.loads(b.receive_text())["type"] == "ready"
        with client.websocket_connect("/ws") as c:
            assert "server full" in json.loads(c.receive_text())["message"]


def test_without_a_motion_model_the_page_and_socket_say_how_to_start_one(pipe):
    with TestClient(create_app(pipe)) as client:
        assert client.get("/api/info").json()["motion"] is None
        page = client.get("/motion")
        assert page.status_code == 404 and "rest serve --motion FOLDER" in page.json()["error"]
        with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/ws/motion"):
            pass
        assert refused.value.status_code == 404 and "rest serve --motion FOLDER" in refused.value.json()["error"]


def test_cli_refuses_a_missing_motion_folder(capsys, tmp_path):
    code = main(["serve", "--motion", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --motion {tmp_path / 'nowhere'}: no such folder"), err


# ------------------------------------------------------------------------------------------ the page, in a browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(pipe, motion):
    uvicorn = pytest.importorskip("uvicorn")
    real = ROOT / "weights" / "rest-motion"
    if os.environ.get("REST_SCREENSHOT_DIR") and (real / "motion.json").is_file():
        motion = MotionPipeline.from_pretrained(real)
    app = create_app(pipe, ServeOptions(max_sessions=2), motion=motion)
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
    yield f"http://127.0.0.1:{port}/motion"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="chromium not installed (apt-get install chromium)")
def test_motion_page_draws_the_stream_on_the_face(server, speech):
    sync_api = pytest.importorskip("playwright.sync_api")
    args = ["--no-sandbox", "--headless", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 900, "height": 640})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')")
        rest_mouth = page.get_attribute("#mouth", "d")
        page.click("#face", position={"x": 204, "y": 165})  # about (30, -12) in the face's units: eyes right
        gaze = [float(v) for v in page.text_content("#gaze").removeprefix("held at ").split(",")]
        assert 0.3 < gaze[0] < 0.8 and abs(gaze[1]) < 0.25 and not page.is_disabled("#gaze-free")
        page.select_option("#emotion", "happy")
        page.set_input_files("#audio-file", str(speech))
        page.click("#start-file")
        page.wait_for_function("Number(document.getElementById('frames').textContent) >= 20", timeout=30000)
        page.wait_for_function("document.getElementById('mouth').getAttribute('d') !== " + json.dumps(rest_mouth))
        for element in ("latency", "fps"):
            page.wait_for_function(f"/^[0-9]+$/.test(document.getElementById('{element}').textContent)")
        if os.environ.get("REST_SCREENSHOT_DIR"):
            page.screenshot(path=str(Path(os.environ["REST_SCREENSHOT_DIR"]) / "motion_page.png"))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=30000)
        assert page.text_content("#status") == "done: 58 frames"  # 2.3 s of audio at 25 fps
        assert int(page.text_content("#frames")) == 58
        assert 0 < int(page.text_content("#latency")) < 10000 and int(page.text_content("#fps")) >= 0
        assert page.get_attribute("#head", "transform") != "translate(0.00 0.00) rotate(0.00)"  # the head moved
        assert len(page.query_selector_all("#values tr")) == 14
        iris = f"(-28 + 8 * {gaze[0]}).toFixed(2)"  # the irises drawn where the click asked, from the server's frames
        page.wait_for_function(f"document.getElementById('iris-left').getAttribute('cx') === {iris}", timeout=10000)
        page.click("#gaze-free")
        assert page.text_content("#gaze") == "the model's" and page.is_disabled("#gaze-free")
        assert not errors, errors
        browser.close()
