"""`rest serve` (rest/serve/app.py): page and API, streaming sessions, caps, and malformed messages that close only
their own session."""

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from rest.pipelines import TalkingHeadPipeline  # noqa: E402
from rest.serve import ServeOptions, create_app  # noqa: E402


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def pipe(test_pipeline):
    return TalkingHeadPipeline.from_pretrained(test_pipeline)


@pytest.fixture
def client(pipe, face_image, tmp_path):
    Image.fromarray(face_image).save(tmp_path / "face.png")
    app = create_app(pipe, ServeOptions(max_sessions=2, max_upload_bytes=200_000, idle_timeout_s=2.0), tmp_path)
    with TestClient(app) as c:
        yield c


def upload(client, face_image) -> str:
    response = client.post("/api/portraits", content=png(face_image))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def stream(ws, seconds: float, piece: int = 1600) -> tuple[list[int], dict]:
    """Send `seconds` of audio then end; return the frame indices received and the final message."""
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype("<f4")
    for i in range(0, len(audio), piece):
        ws.send_bytes(audio[i : i + piece].tobytes())
    ws.send_text(json.dumps({"type": "end"}))
    indices = []
    while True:
        message = ws.receive()
        if message.get("bytes") is not None:
            data = message["bytes"]
            indices.append(struct.unpack("<I", data[:4])[0])
            assert Image.open(io.BytesIO(data[4:])).size == (64, 64)
        elif message.get("text") is not None:
            msg = json.loads(message["text"])
            if msg["type"] == "done":
                return indices, msg
        else:
            raise AssertionError(f"closed before done: {message}")


def test_page_info_and_portraits(client, face_image):
    page = client.get("/")
    assert page.status_code == 200 and 'id="latency"' in page.text and 'id="rtf"' in page.text
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/api/info").json()
    assert info["resolution"] == 64 and info["fps"] == 25 and info["sample_rate"] == 16000
    assert client.get("/api/portraits").json() == {"bundled": ["face"]}
    assert client.get("/api/portraits/face").status_code == 200
    assert client.get("/api/portraits/nobody").status_code == 404
    assert len(upload(client, face_image)) == 12


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"not an image", 400, "not a readable image"),
        (b"", 400, "empty upload"),
        (None, 400, "no face found"),
        (b"x" * 300_000, 413, "limit is 200000"),
    ],
)
def test_bad_uploads(client, body, status, message):
    body = png(np.full((120, 120, 3), 128, np.uint8)) if body is None else body
    response = client.post("/api/portraits", content=body)
    assert response.status_code == status and message in response.json()["error"]


def test_session_streams_frames_in_order(client, face_image):
    pid = upload(client, face_image)
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait": pid, "seed": 1}))
        assert json.loads(ws.receive_text()) == {"type": "ready", "fps": 25, "resolution": 64, "sample_rate": 16000}
        indices, done = stream(ws, 2.0)
    assert indices == list(range(len(indices))) and len(indices) == 49  # 2 s: 1 + 4 * 12 whole-chunk frames
    assert done["frames"] == 49 and done["frames_sent"] == 49 and done["dropped"] == 0
    assert done["rtf"] > 0 and done["first_frame_latency_s"] > 0


def test_two_sessions_at_once_and_the_cap(client, face_image):
    with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        for ws in (a, b):
            ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
            assert json.loads(ws.receive_text())["type"] == "ready"
        with client.websocket_connect("/ws") as c:  # max_sessions = 2
            assert "server full" in json.loads(c.receive_text())["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                c.receive_text()
            assert closed.value.code == 1013
        frames_a, _ = stream(a, 1.0)
        frames_b, _ = stream(b, 1.0)
        assert len(frames_a) == len(frames_b) == 25


@pytest.mark.parametrize(
    "messages, code, message",
    [
        (["not json"], 1008, "must be JSON"),
        ([b"\x00\x00\x80\x3f"], 1008, "audio before start"),
        (["START", b"\x00\x00\x00"], 1008, "multiple of 4 bytes"),
        (["START", json.dumps({"type": "pause"})], 1008, "unknown message type 'pause'"),
        ([json.dumps({"type": "start", "portrait": "nope"})], 1008, "unknown portrait id"),
        (["START", b"\x00" * (2**20 + 4)], 1009, "the limit is"),
        (["START", np.array([np.nan], "<f4").tobytes()], 1008, "NaN"),
    ],
)
def test_malformed_messages_close_only_that_session(client, face_image, messages, code, message):
    pid = upload(client, face_image)
    with client.websocket_connect("/ws") as ws:
        for m in messages:
            if m == "START":
                ws.send_text(json.dumps({"type": "start", "portrait": pid}))
                assert json.loads(ws.receive_text())["type"] == "ready"
            elif isinstance(m, bytes):
                ws.send_bytes(m)
            else:
                ws.send_text(m)
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and message in error["message"], error
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == code
    with client.websocket_connect("/ws") as ws:  # the server still serves
        ws.send_text(json.dumps({"type": "start", "portrait": pid}))
        assert json.loads(ws.receive_text())["type"] == "ready"
        assert len(stream(ws, 0.5)[0]) == 9


def test_idle_session_is_closed(client, face_image):
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
        assert json.loads(ws.receive_text())["type"] == "ready"
        error = json.loads(ws.receive_text())  # nothing sent for idle_timeout_s = 2
        assert "idle for 2 s" in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1001
