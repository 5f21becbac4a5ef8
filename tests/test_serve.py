"""`rest serve` (rest/serve/app.py): page and API, streaming sessions, caps, the slow-client policy, and malformed
messages that close only their own session."""

import io
import json
import struct
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from rest.errors import RestError  # noqa: E402
from rest.pipelines import TalkingHeadPipeline  # noqa: E402
from rest.serve import ServeOptions, create_app  # noqa: E402
from rest.serve.app import _Session  # noqa: E402


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
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(tmp_path / "blank.png")
    options = ServeOptions(max_sessions=2, max_upload_bytes=200_000, max_upload_pixels=1_000_000, idle_timeout_s=2.0)
    app = create_app(pipe, options, tmp_path)
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
    assert info["chunk_frames"] == 4 and info["max_sessions"] == 2
    assert client.get("/api/portraits").json() == {"bundled": ["blank", "face"]}
    assert client.get("/api/portraits/face").status_code == 200
    assert client.get("/api/portraits/nobody").status_code == 404
    assert len(upload(client, face_image)) == 12


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"not an image", 400, "not a readable image"),
        (b"", 400, "empty upload"),
        ("blank", 400, "no face found"),
        ("tiny", 400, "needs at least 64"),
        ("huge", 400, "the limit is 1000000 pixels"),  # a 4 kB PNG that would decode to 12 MB
        (b"x" * 300_000, 413, "limit is 200000"),
    ],
)
def test_bad_uploads(client, body, status, message):
    images = {"blank": (120, 120), "tiny": (40, 40), "huge": (2000, 2000)}
    if isinstance(body, str):
        body = png(np.full((*images[body], 3), 128, np.uint8))
    response = client.post("/api/portraits", content=body)
    assert response.status_code == status and message in response.json()["error"]


def test_session_streams_frames_in_order(client, face_image):
    pid = upload(client, face_image)
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait": pid, "seed": 1}))
        ready = json.loads(ws.receive_text())
        assert ready == {"type": "ready", "fps": 25, "resolution": 64, "sample_rate": 16000, "chunk_frames": 4}
        indices, done = stream(ws, 2.0)
    assert indices == list(range(50))  # 2 s at 25 fps: the end pads the last chunk with silence
    assert done["frames"] == 50 and done["frames_sent"] == 50 and done["dropped"] == 0
    assert done["rtf"] > 0 and done["first_frame_latency_s"] > 0


@pytest.mark.parametrize("seconds, frames", [(1.3, 32), (0.02, 0), (0.0, 0)])
def test_frame_count_is_the_audio_duration(client, seconds, frames):
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
        assert json.loads(ws.receive_text())["type"] == "ready"
        indices, done = stream(ws, seconds, piece=999)
    assert len(indices) == done["frames"] == frames == round(seconds * 25)


def test_app_from_a_pipeline_folder(test_pipeline):
    with TestClient(create_app(test_pipeline)) as c:
        assert c.get("/api/info").json()["resolution"] == 64


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
    with client.websocket_connect("/ws") as c:  # the two finished streams gave their places back
        c.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
        assert json.loads(c.receive_text())["type"] == "ready"


@pytest.mark.parametrize(
    "messages, code, message",
    [
        (["not json"], 1008, "must be JSON"),
        (["[1, 2]"], 1008, "must be JSON objects"),
        ([json.dumps({"type": "end"})], 1008, "end before start"),
        ([json.dumps({"type": "start", "portrait": "bundled:face", "seed": "x"})], 1008, "seed must be an integer"),
        ([json.dumps({"type": "start", "portrait": "bundled:face", "seed": 2**70})], 1008, "from 0 to 1844674407"),
        ([json.dumps({"type": "start", "portrait": "bundled:face", "seed": -1})], 1008, "got -1"),
        ([json.dumps({"type": "start", "portrait": "bundled:blank"})], 1008, "no face found"),
        ([json.dumps({"type": "start", "portrait": "bundled:nobody"})], 1008, "no bundled portrait"),
        ([json.dumps({"type": "start"})], 1008, "start needs a portrait id"),
        (["START", json.dumps({"type": "start", "portrait": "bundled:face"})], 1008, "already started"),
        ([b"\x00\x00\x80\x3f"], 1008, "audio before start"),
        (["START", b"\x00\x00\x00"], 1008, "multiple of 4 bytes"),
        (["START", json.dumps({"type": "pause"})], 1008, "unknown message type 'pause'"),
        ([json.dumps({"type": "start", "portrait": "nope"})], 1008, "unknown portrait id"),
        (["START", b"\x00" * (2**20 + 4)], 1009, "the limit is"),
        (["START", json.dumps({"type": "end", "pad": "x" * 2**20})], 1009, "the limit is"),
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
        assert len(stream(ws, 0.5)[0]) == 12


def test_idle_session_is_closed(client, face_image):
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
        assert json.loads(ws.receive_text())["type"] == "ready"
        error = json.loads(ws.receive_text())  # nothing sent for idle_timeout_s = 2
        assert "idle for 2 s" in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1001


def test_a_slow_client_loses_its_oldest_frames_not_its_messages(pipe):
    """The outbox policy: past `frame_queue` unsent frames the oldest frames go; JSON messages always stay."""
    session = _Session(None, pipe, ServeOptions(frame_queue=3), None, None, chunk_frames=4)
    session.enqueue_frames([b"a", b"b"])
    session._put({"type": "stats"})
    session.enqueue_frames([b"c", b"d", b"e"])
    kept = [item if isinstance(item, dict) else struct.unpack("<I", item[:4])[0] for item in session.outbox]
    assert kept == [{"type": "stats"}, 2, 3, 4] and session.dropped == 2 and session.sent == 5


@pytest.mark.parametrize(
    "error, message, code",
    [
        (ValueError("boom"), "server error: ValueError: boom", 1011),  # a server fault
        # RestError means bad input (here the pipeline refusing a value): 1008 with its message, not 1011
        (RestError("emotion label 7 is out of range"), "emotion label 7 is out of range", 1008),
    ],
)
def test_a_failing_session_closes_alone_with_its_code(client, pipe, monkeypatch, error, message, code):
    def fail(portrait, seed=0):
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(pipe, "stream", fail)
        with client.websocket_connect("/ws") as ws:
            ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
            assert json.loads(ws.receive_text()) == {"type": "error", "message": message}
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == code
    with client.websocket_connect("/ws") as ws:  # the server still serves
        ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
        assert json.loads(ws.receive_text())["type"] == "ready"


def test_bench_serve_runs_a_short_load_test(test_pipeline, face_image, tmp_path):
    pytest.importorskip("websockets")
    from rest.bench.serve import bench_serve, format_table

    Image.fromarray(face_image).save(tmp_path / "face.png")
    result = bench_serve(test_pipeline, sessions=2, seconds=1.0, portrait=tmp_path / "face.png", rounds=2)
    assert result["errors"] == [] and result["sessions_with_all_frames"] == 4  # 2 sessions in each of 2 rounds
    assert [r["frames"] for r in result["per_session"]] == [25] * 4 and result["frames_expected_per_session"] == 25
    assert [r["round"] for r in result["per_session"]] == [0, 0, 1, 1]
    assert result["client_first_frame_latency_s"]["max"] > 0 and result["rss_mb"]["before"] > 0
    assert len(result["rss_mb"]["after_each_round"]) == 2
    assert result["max_frame_gap_s"]["max"] > 0 and result["uploads"] is None
    table = format_table(result)
    assert "25/25" in table and "after each round" in table and "max gap ms" in table
    assert result["batching"]["largest_batch"] == 2 and "batched steps, up to 2 sessions" in table


def test_bench_serve_uploads_large_portraits_during_the_sessions(test_pipeline, face_image, tmp_path):
    pytest.importorskip("websockets")
    from rest.bench.serve import bench_serve, format_table

    Image.fromarray(face_image).save(tmp_path / "face.png")
    result = bench_serve(test_pipeline, sessions=1, seconds=2.0, portrait=tmp_path / "face.png", upload_every=0.5)
    uploads = result["uploads"]
    assert result["errors"] == [] and result["sessions_with_all_frames"] == 1
    assert uploads["count"] >= 1 and uploads["ok"] == uploads["count"] and uploads["errors"] == []
    assert uploads["pixels"] == "6300x6300" and uploads["seconds"]["max"] > 0
    assert "uploads of a 6300x6300 PNG" in format_table(result)


def test_audio_samples_are_clipped_as_files_are(client):
    """Samples of 1e30 give the frames of full-scale samples (read_audio clips files to [-1, 1] the same way)."""
    signs = np.sign(np.random.default_rng(0).standard_normal(8000)).astype("<f4")
    frames = []
    for samples in (signs * np.float32(1e30), signs):
        with client.websocket_connect("/ws") as ws:
            ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face", "seed": 3}))
            assert json.loads(ws.receive_text())["type"] == "ready"
            ws.send_bytes(samples.tobytes())
            ws.send_text(json.dumps({"type": "end"}))
            received = []
            while (message := ws.receive()).get("text") is None or json.loads(message["text"])["type"] != "done":
                if message.get("bytes") is not None:
                    received.append(message["bytes"])
        frames.append(received)
    assert len(frames[0]) == 12 and frames[0] == frames[1]


def large_png(face_image: np.ndarray, side: int) -> bytes:
    """The face scaled up to side x side (nearest neighbour: a small file, about a second to decode)."""
    return png(np.asarray(Image.fromarray(face_image).resize((side, side), Image.NEAREST)))


def test_a_large_upload_does_not_stall_a_live_stream(pipe, face_image, tmp_path):
    """A 5000 x 5000 PNG (25 Mpx, about a second to decode and check) uploaded while a stream plays in real time:
    the decode runs in a decoder thread, so the frames keep their pace (a chunk of 4 frames every 160 ms); decoded
    on the event loop it held every stream for the whole decode."""
    Image.fromarray(face_image).save(tmp_path / "face.png")
    body = large_png(face_image, 5000)
    app = create_app(pipe, ServeOptions(max_upload_pixels=40_000_000, idle_timeout_s=10.0), tmp_path)
    seconds, piece = 5.0, 640  # 40 ms pieces, sent as a microphone would
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype("<f4")
    upload = {}
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
        assert json.loads(ws.receive_text())["type"] == "ready"

        def send_audio():
            start = time.perf_counter()
            for i in range(0, len(audio), piece):
                time.sleep(max(0.0, start + (i + piece) / 16000 - time.perf_counter()))
                ws.send_bytes(audio[i : i + piece].tobytes())
            ws.send_text(json.dumps({"type": "end"}))

        def send_upload():
            first_frame.wait(10)
            upload["start"] = time.perf_counter()
            upload["response"] = client.post("/api/portraits", content=body)
            upload["end"] = time.perf_counter()

        first_frame = threading.Event()
        threads = [threading.Thread(target=send_audio), threading.Thread(target=send_upload)]
        for thread in threads:
            thread.start()
        arrivals = []
        while True:
            message = ws.receive()
            if message.get("bytes") is not None:
                arrivals.append(time.perf_counter())
                first_frame.set()
            elif json.loads(message["text"])["type"] == "done":
                break
        for thread in threads:
            thread.join()
    response = upload["response"]
    assert response.status_code == 200 and response.json()["width"] == 5000, response.text
    assert len(arrivals) == 125
    during = sum(upload["start"] < t < upload["end"] for t in arrivals)
    assert during >= 8, f"{during} frames arrived during the upload: it did not overlap the stream"
    gaps = np.diff(arrivals)
    assert gaps.max() < 0.5, (
        f"largest gap between frames {gaps.max():.2f} s (upload took {upload['end'] - upload['start']:.2f} s)"
    )


def test_uploads_past_the_decode_queue_are_refused(pipe, face_image, tmp_path, monkeypatch):
    """One decoder, no queue: while one upload decodes, the next gets 503; afterwards uploads work again."""
    import rest.serve.app as serve_app

    release, started = threading.Event(), threading.Event()
    decode = serve_app._decode_image

    def slow_decode(data, max_pixels):
        started.set()
        release.wait(10)
        return decode(data, max_pixels)

    monkeypatch.setattr(serve_app, "_decode_image", slow_decode)
    app = create_app(pipe, ServeOptions(max_decodes=1, upload_queue=0))
    with TestClient(app) as client:
        first = {}
        thread = threading.Thread(
            target=lambda: first.update(r=client.post("/api/portraits", content=png(face_image)))
        )
        thread.start()
        assert started.wait(10)
        busy = client.post("/api/portraits", content=png(face_image))
        assert busy.status_code == 503 and "busy with 1 other upload(s)" in busy.json()["error"]
        release.set()
        thread.join()
        assert first["r"].status_code == 200
        assert client.post("/api/portraits", content=png(face_image)).status_code == 200


def _run_batcher(pipe, face_image, audio, fail=None, timeout=120):
    """Streams of `audio` (one array per stream) through a StreamBatcher, all pushed before it starts; the order of
    the callbacks: (stream index, "frames" | "done" | "error", payload)."""
    from rest.serve.batcher import StreamBatcher

    portrait = pipe.prepare_portrait(face_image)
    batcher = StreamBatcher(pipe)
    events, finished = [], threading.Event()
    streams = [pipe.stream(portrait, seed=i) for i in range(len(audio))]
    for i, s in enumerate(streams):

        def record(kind, payload=None, i=i):
            events.append((i, kind, payload))
            if sum(kind in ("done", "error") for _, kind, _ in events) == len(streams):
                finished.set()

        batcher.add(
            s, lambda f, r=record: r("frames", f), lambda r=record: r("done"), lambda e, r=record: r("error", e)
        )
        if fail == i:
            s.feed = lambda samples: (_ for _ in ()).throw(RestError("bad audio"))
        batcher.push(s, audio[i])
        batcher.end(s)
    batcher.start()
    assert finished.wait(timeout)
    batcher.stop()
    return events, batcher


def test_batcher_steps_streams_together_and_a_backlog_does_not_hold_up_the_others(pipe, face_image):
    """A stream with 4 s of audio waiting and one with 0.3 s: the short one is done after as many of the long one's
    chunks as its own (one chunk per stream per round), not after all of them; batched rounds; each stream's frames
    are its frames alone (within uint8 rounding)."""
    rng = np.random.default_rng(0)
    audio = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (64000, 4800)]
    events, batcher = _run_batcher(pipe, face_image, audio)
    order = [(i, kind) for i, kind, _ in events]
    short_done = order.index((1, "done"))
    short_chunks = order.count((1, "frames"))  # 0.3 s: 3 chunks (1 + 4 + 4 frames)
    assert short_chunks == 3 and order[:short_done].count((0, "frames")) <= short_chunks
    assert order.count((0, "frames")) == 26  # 4 s: 1 + 25 chunks, most of them after the short stream ended
    assert batcher.largest_batch == 2 and order[-1] == (0, "done")
    portrait = pipe.prepare_portrait(face_image)
    for i in (0, 1):
        got = np.concatenate([f for j, kind, f in events if j == i and kind == "frames"])
        expected = pipe(portrait, audio[i], seed=i)
        assert got.shape == expected.shape and np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_batcher_reports_a_failing_stream_alone(pipe, face_image):
    audio = [np.zeros(8000, np.float32)] * 2
    events, _ = _run_batcher(pipe, face_image, audio, fail=0)
    errors = [(i, str(payload)) for i, kind, payload in events if kind == "error"]
    assert errors == [(0, "bad audio")]
    assert (1, "done") in [(i, kind) for i, kind, _ in events]
    assert sum(f.shape[0] for i, kind, f in events if i == 1 and kind == "frames") == 12


def test_a_client_far_ahead_of_its_frames_waits_and_gets_them_all(pipe, face_image, tmp_path):
    """max_backlog_s = 2: five seconds sent at once are read as the frames catch up, and every frame arrives."""
    Image.fromarray(face_image).save(tmp_path / "face.png")
    app = create_app(pipe, ServeOptions(max_backlog_s=2.0), tmp_path)
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait": "bundled:face"}))
        assert json.loads(ws.receive_text())["type"] == "ready"
        indices, done = stream(ws, 5.0, piece=16000)
    assert indices == list(range(125)) and done["frames"] == 125
    with pytest.raises(RestError, match="at least 2 s"):
        create_app(pipe, ServeOptions(max_backlog_s=0.5))


def test_batcher_joins_a_streams_pieces_that_arrived_during_a_step():
    from rest.serve.batcher import END, _coalesced

    a, b = object(), object()
    inbox = [(a, np.ones(2)), (b, np.zeros(1)), (a, np.full(3, 2.0)), (a, END), (b, np.zeros(2))]
    joined = _coalesced(inbox)
    assert [entry for entry, _ in joined] == [a, b]
    (pieces_a, pieces_b) = (items for _, items in joined)
    assert pieces_a[0].tolist() == [1, 1, 2, 2, 2] and pieces_a[1] is END and len(pieces_a) == 2
    assert len(pieces_b) == 1 and pieces_b[0].shape == (3,)
