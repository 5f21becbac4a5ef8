"""`rest serve`: an HTTP + WebSocket server for live talking heads, with a web page.

HTTP:

    GET  /                      the demo page (static/)
    GET  /api/info              preset, resolution, fps, sample_rate, chunk_frames, sessions in use and the cap
    GET  /api/portraits         {"bundled": [NAME, ...]}: the portraits of --portraits
    GET  /api/portraits/NAME    one bundled portrait's image
    POST /api/portraits         body: the image file's bytes -> {"id", "width", "height"}, or 400 / 413 / 503
                                {"error"}

WebSocket protocol (one WebSocket per stream, `/ws`):

    client -> server  text   {"type": "start", "portrait": ID, "seed": 0}   ID from POST /api/portraits, or
                                                                             "bundled:NAME" of GET /api/portraits;
                                                                             seed 0 .. 2**64 - 1
    server -> client  text   {"type": "ready", "fps", "resolution", "sample_rate", "chunk_frames"}
    client -> server  binary float32 little-endian mono PCM at 16 kHz, any length up to `max_message_bytes`;
                             samples are clipped to [-1, 1], as audio files are read
    server -> client  binary 4-byte little-endian frame index, then one JPEG frame
    server -> client  text   {"type": "stats", "frames", "rtf", "first_frame_latency_s", "dropped", ...}
                             with the first frames, then about once a second
    client -> server  text   {"type": "end"}                                 no more audio
    server -> client  text   {"type": "done", ...stats}, then the server closes (code 1000)
    server -> client  text   {"type": "error", "message"}, then the server closes with 1008 (the client's
                             mistake: a bad message or value), 1009 (message too big), 1013 (server full), 1001
                             (idle for `idle_timeout_s`) or 1011 (the server failed: a bug, never the client's input)

At "end" the audio is padded with silence to whole chunks and the frames past the audio's duration are not sent,
so a stream of N seconds gets round(N * fps) frames, as `rest generate` does.

Every live stream runs in one model thread (rest/serve/batcher.py): each round it encodes the audio that arrived and
steps all streams with a chunk ready in one batched call (one rollout over their caches, one VAE decode), so N
streams cost far less than N separate forward passes; a stream with a backlog gets one chunk per round like the
others, so it does not hold them up. JPEG encoding runs in worker threads, never on the event loop. Frames go to
the client through a bounded per-session outbox (`frame_queue` frames): a client that does not read fast enough
loses the oldest unsent frames (counted as `dropped` in the stats) instead of growing the server's memory or
stalling the model. A client that sends audio more than `max_backlog_s` ahead of its frames is not read until its
frames catch up. A malformed message ends that session only.

Uploaded portraits are decoded and checked (face detection and crop) in their own `max_decodes` worker threads, never
on the event loop, so a large image (a 6300 x 6300 PNG takes seconds) does not hold up the live streams' frames;
while `max_decodes + upload_queue` uploads are in progress, more are refused with 503.

Motion (`rest serve --motion FOLDER`; without a motion model `/motion` and `/ws/motion` answer 404 saying so):

    GET  /motion                the motion page: speech in, rig parameters drawn live on an SVG face
    GET  /api/info              "motion": {"fps", "sample_rate", "chunk_frames", "emotions"}, or null

    WebSocket `/ws/motion`, one stream per WebSocket, audio as on `/ws`:
    client -> server  text   {"type": "start", "emotion": NAME or null, "seed": 0, "gaze": [X, Y] or null}   NAME
                             from /api/info's emotions; gaze: a target for the eyes, x and y in -1 .. 1 (x to the
                             image's right, y down), null = the model's own gaze
    server -> client  text   {"type": "ready", "fps", "sample_rate", "chunk_frames", "emotion", "names": [14 rig
                             parameters, rest/models/rig.py], "arkit_names": [52 ARKit blendshapes, 9 rotations]}
    client -> server  binary float32 little-endian mono PCM at 16 kHz (as on `/ws`)
    server -> client  text   {"type": "motion", "start": INDEX, "frames": [[14 values], ...], "arkit": [[61 values],
                             ...]}  the frames INDEX.. of each chunk the audio completes, rig values and ARKit values
                             in the orders of "names" and "arkit_names", rounded to 5 decimals
    client -> server  text   {"type": "gaze", "gaze": [X, Y] or null}   a new target from the next chunk on
    client -> server  text   {"type": "end"}
    server -> client  text   {"type": "done", "frames": N}, then the server closes (code 1000); N = round(seconds
                             of audio * fps), as on `/ws`; errors as on `/ws`

A motion stream needs no batcher: a chunk is 14 numbers a frame (no VAE decode, no JPEG), a small fraction of a video
chunk's compute, so each audio message is pushed in a worker thread and its frames are sent before the next message
is read (the back-pressure: a client ahead of the model waits in its socket). Motion streams count against
`max_sessions` like video streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import struct
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from rest.config import MAX_SEED
from rest.errors import RestError
from rest.models.rig import ARKIT_BLENDSHAPES, ARKIT_ROTATIONS, RIG_PARAMS, arkit_blendshapes
from rest.pipelines.portrait import MAX_SIDE
from rest.serve.batcher import StreamBatcher

STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
ARKIT_NAMES = ARKIT_BLENDSHAPES + ARKIT_ROTATIONS
NO_MOTION = (
    "no motion model on this server: start it with `rest serve --motion FOLDER` (a motion model folder such as "
    "weights/rest-motion)"
)


@dataclass
class ServeOptions:
    max_sessions: int = 4  # concurrent WebSocket streams; more are refused with close code 1013
    max_upload_bytes: int = 8 * 2**20  # portrait uploads (413 above)
    max_upload_pixels: int = 40_000_000  # decoded portrait size: a small file can hold a huge image
    max_decodes: int = 1  # uploads decoded at once, each in a thread (CPU the streams lose; 40 Mpx holds ~0.2 GB)
    upload_queue: int = 8  # uploads that may wait for a decoder; more are refused with 503
    max_message_bytes: int = 2**20  # one WebSocket message (about 16 s of float32 audio); 1009 above
    idle_timeout_s: float = 60.0  # a session that sends nothing (or does not read its last frames) this long ends
    frame_queue: int = 50  # frames buffered per client (2 s at 25 fps) before the oldest are dropped
    max_backlog_s: float = 20.0  # audio a client may send ahead of its frames before the server stops reading it
    max_portraits: int = 64  # uploaded portraits kept (least recently used are forgotten)
    jpeg_quality: int = 85


def _decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An upload's bytes -> (uint8 RGB (H, W, 3) at most `MAX_SIDE` a side, the image's (width, height)).

    The image is scaled down while it is decoded (JPEG decodes at a fraction of its size, then a box reduction),
    as `prepare_portrait` would scale it anyway: a 40 Mpx upload takes less than half the CPU time it did."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            w, h = image.size  # read from the header: refuse before decoding
            if w * h > max_pixels:
                raise RestError(f"the image is {w}x{h} pixels; the limit is {max_pixels} pixels")
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)  # loads it; never enlarges
            return np.asarray(image.convert("RGB")), (w, h)
    except RestError:
        raise
    except Exception as err:  # PIL raises many types for bad data
        raise RestError(f"not a readable image ({type(err).__name__})") from None


def _jpegs(frames: np.ndarray, quality: int) -> list[bytes]:
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def _crop_only(portrait):
    """What a stream needs of a prepared Portrait: the crop (the full image, up to 2048^2 px, is for pasting)."""
    r = portrait.crop.shape[0]
    return dataclasses.replace(portrait, image=portrait.crop, box=(0.0, 0.0, float(r), float(r)), face_box=None)


class _Closed(Exception):
    """Ends a session: the client gets {"type": "error", "message"} and the close code."""

    def __init__(self, code: int, message: str):
        self.code, self.message = code, message


# What `/ws` and `/ws/motion` share: reading the client's messages, and ending a session on an error.
def _read_json(text: str, opts: ServeOptions) -> dict:
    """A text message -> its JSON object; raises _Closed for anything else."""
    if len(text) > opts.max_message_bytes:
        raise _Closed(1009, f"text message of {len(text)} characters; the limit is {opts.max_message_bytes}")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        msg = None
    if not isinstance(msg, dict):
        raise _Closed(1008, 'text messages must be JSON objects like {"type": "start", ...}')
    return msg


def _read_seed(msg: dict) -> int:
    seed = msg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise _Closed(1008, f"seed must be an integer from 0 to {MAX_SEED}, got {json.dumps(seed)[:40]}")
    return seed


def _read_audio(data: bytes, opts: ServeOptions) -> np.ndarray:
    """A binary message -> its float32 samples, clipped to [-1, 1] as read_audio clips files (full scale is 1)."""
    if len(data) > opts.max_message_bytes:
        raise _Closed(1009, f"audio message of {len(data)} bytes; the limit is {opts.max_message_bytes}")
    if len(data) % 4:
        raise _Closed(1008, f"audio must be float32 samples (a multiple of 4 bytes), got {len(data)} bytes")
    samples = np.frombuffer(data, "<f4")
    if not np.isfinite(samples).all():
        raise _Closed(1008, "audio contains NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)


async def _send_error(ws: WebSocket, code: int, message: str) -> None:
    try:
        await ws.send_text(json.dumps({"type": "error", "message": message}))
        await ws.close(code=code)
    except Exception:  # the client may be gone already
        pass


async def _guarded(ws: WebSocket, session, cleanup=lambda: None) -> None:
    """Await a session's receive loop; a failure ends that session only, after `cleanup()`, with {"type": "error"}
    and the close code of its cause: _Closed's own, 1008 for the client's input the pipeline refused (RestError),
    1011 for a bug."""
    try:
        await session
        return
    except _Closed as closed:
        code, message = closed.code, closed.message
    except RestError as err:
        code, message = 1008, str(err)
    except WebSocketDisconnect:
        raise
    except Exception as err:  # a bug, not the client's fault: end this session, keep serving the others
        log.exception("session failed")
        code, message = 1011, f"server error: {type(err).__name__}: {err}"
    cleanup()
    await _send_error(ws, code, message)


def create_app(
    pipe, options: ServeOptions | None = None, portraits_dir: str | Path | None = None, motion=None
) -> FastAPI:
    """The FastAPI app serving `pipe` (a TalkingHeadPipeline, or the path of a pipeline folder to load on the CPU).

    options: caps and buffer sizes (ServeOptions). portraits_dir: a folder of portraits offered on the page.
    motion: a MotionPipeline (or the path of a motion model folder to load on the CPU) for `/ws/motion` and the
    `/motion` page; without one they answer 404 (NO_MOTION).
    """
    if isinstance(pipe, (str, Path)):
        from rest.pipelines import TalkingHeadPipeline

        pipe = TalkingHeadPipeline.from_pretrained(pipe)
    if isinstance(motion, (str, Path)):
        from rest.pipelines.motion import MotionPipeline

        motion = MotionPipeline.from_pretrained(motion)
    opts = options or ServeOptions()
    if opts.max_backlog_s < 2.0:  # a stream's frames lag its audio by a chunk and the look-ahead (~0.3 s for tiny)
        raise RestError(f"max_backlog_s must be at least 2 s, got {opts.max_backlog_s:g}")
    executor = ThreadPoolExecutor(max_workers=max(1, opts.max_sessions), thread_name_prefix="rest-session")
    decoder = ThreadPoolExecutor(max_workers=max(1, opts.max_decodes), thread_name_prefix="rest-decode")
    detector_lock = threading.Lock()  # one face detection at a time (the detector is shared, not thread-safe)
    batcher = StreamBatcher(pipe).start()  # runs every live stream, batched

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.stop()
        executor.shutdown(wait=False, cancel_futures=True)
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="REST live talking heads", lifespan=lifespan)
    app.state.pipe, app.state.options, app.state.batcher, app.state.motion = pipe, opts, batcher, motion
    app.state.portraits = OrderedDict()  # id -> Portrait (crop only)
    app.state.active = 0
    app.state.sessions_total = 0
    app.state.uploads = 0  # uploads in progress: reading, waiting for a decoder, or decoding
    bundled = {}
    if portraits_dir is not None:
        if not Path(portraits_dir).is_dir():
            raise RestError(f"--portraits {portraits_dir} is not a folder")
        bundled = {p.stem: p for p in sorted(Path(portraits_dir).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    chunk_frames = pipe.vae.temporal_compression * pipe.config.chunk_latent_frames

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def prepare(image: np.ndarray, name: str):
        with detector_lock:
            return _crop_only(pipe.prepare_portrait(image, name=name))

    def decode_and_prepare(data: bytes):
        """An upload's bytes -> ((width, height), Portrait); runs in a decoder thread."""
        image, size = _decode_image(data, opts.max_upload_pixels)
        return size, prepare(image, "uploaded portrait")

    def remember(key: str, portrait) -> str:
        app.state.portraits[key] = portrait
        app.state.portraits.move_to_end(key)
        while len(app.state.portraits) > opts.max_portraits:
            app.state.portraits.popitem(last=False)
        return key

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info():
        cfg = pipe.config
        return {
            "preset": cfg.preset,
            "resolution": pipe.resolution,
            "fps": pipe.fps,
            "sample_rate": pipe.sample_rate,
            "chunk_frames": chunk_frames,
            "steps": cfg.steps,
            "active_sessions": app.state.active,
            "max_sessions": opts.max_sessions,
            "batched_steps": batcher.steps,
            "largest_batch": batcher.largest_batch,
            "motion": None if motion is None else _motion_info(motion),
        }

    @app.get("/api/portraits")
    def list_portraits():
        return {"bundled": list(bundled)}

    @app.get("/api/portraits/{name}")
    def bundled_portrait(name: str):
        if name not in bundled:
            return error(404, f"no bundled portrait {name!r}")
        return FileResponse(bundled[name])

    @app.post("/api/portraits")
    async def upload_portrait(request: Request):
        limit = opts.max_upload_bytes
        size = int(request.headers.get("content-length") or 0)
        if size > limit:
            return error(413, f"the upload is {size} bytes; the limit is {limit} (rest serve --max-upload-mb)")
        if app.state.uploads >= opts.max_decodes + opts.upload_queue:
            return error(503, f"busy with {app.state.uploads} other upload(s); try again in a few seconds")
        app.state.uploads += 1
        try:
            data = bytearray()
            async for piece in request.stream():
                data += piece
                if len(data) > limit:
                    return error(413, f"the upload is over the limit of {limit} bytes (rest serve --max-upload-mb)")
            if not data:
                return error(400, "empty upload: send the image file as the request body")
            loop = asyncio.get_running_loop()
            (w, h), portrait = await loop.run_in_executor(decoder, decode_and_prepare, bytes(data))
        except RestError as err:
            return error(400, str(err))
        finally:
            app.state.uploads -= 1
        return {"id": remember(uuid.uuid4().hex[:12], portrait), "width": w, "height": h}

    async def resolve_portrait(ref):
        if not isinstance(ref, str):
            raise _Closed(1008, "start needs a portrait id (POST /api/portraits, or bundled:NAME)")
        if ref.startswith("bundled:"):
            name = ref.split(":", 1)[1]
            if name not in bundled:
                raise _Closed(1008, f"no bundled portrait {name!r}")
            if ref not in app.state.portraits:
                from rest.media import read_image

                load = lambda: prepare(read_image(bundled[name]), name)  # noqa: E731
                try:
                    remember(ref, await asyncio.get_running_loop().run_in_executor(None, load))
                except RestError as err:
                    raise _Closed(1008, str(err)) from None
        if ref not in app.state.portraits:
            raise _Closed(1008, f"unknown portrait id {ref!r}: upload it with POST /api/portraits first")
        app.state.portraits.move_to_end(ref)
        return app.state.portraits[ref]

    async def admit(ws: WebSocket) -> bool:
        """Accept `ws` and count it as a session, or refuse it (1013) while `max_sessions` streams are running."""
        await ws.accept()
        if app.state.active >= opts.max_sessions:
            message = f"server full: {opts.max_sessions} sessions are running (rest serve --max-sessions); try later"
            await _send_error(ws, 1013, message)
            return False
        app.state.active += 1
        app.state.sessions_total += 1
        return True

    @app.websocket("/ws")
    async def stream(ws: WebSocket):
        if not await admit(ws):
            return
        session = _Session(ws, pipe, opts, executor, batcher, chunk_frames)
        try:
            await session.run(resolve_portrait)
        except WebSocketDisconnect:
            pass
        finally:
            app.state.active -= 1
            session.close()

    @app.get("/motion")
    def motion_page():
        if motion is None:
            return error(404, NO_MOTION)
        return FileResponse(STATIC / "motion.html")

    @app.websocket("/ws/motion")
    async def motion_stream(ws: WebSocket):
        if motion is None:  # refused at the handshake with an HTTP 404 and its message, as GET /motion
            await ws.send_denial_response(error(404, NO_MOTION))
            return
        if not await admit(ws):
            return
        try:
            await _guarded(ws, _MotionSession(ws, motion, opts, executor).run())
        except WebSocketDisconnect:
            pass
        finally:
            app.state.active -= 1

    return app


class _Session:
    """One WebSocket stream: the receive loop, its stream in the batcher, a sender task with a bounded outbox."""

    def __init__(
        self, ws, pipe, opts: ServeOptions, executor: ThreadPoolExecutor, batcher: StreamBatcher, chunk_frames: int
    ):
        self.ws, self.pipe, self.opts, self.executor, self.batcher = ws, pipe, opts, executor, batcher
        self.chunk_frames = chunk_frames
        self.outbox: deque = deque()  # bytes (frames) and dicts (JSON messages), in order
        self.pending = asyncio.Event()  # set when the outbox has items
        self.drained = asyncio.Event()  # set when the sender has sent everything
        self.drained.set()
        self.progress = asyncio.Event()  # set when frames arrive from the batcher
        self.dropped = 0
        self.sent = 0  # frames produced (and queued) so far: the next frame's index
        self.samples_pushed = 0
        self.stream = None
        self.sender: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.outcome: asyncio.Future | None = None  # None once the last frames are queued; _Closed if it failed
        self.lock = asyncio.Lock()  # this session's model calls and frame deliveries, in order
        self.last_stats: float | None = None

    def close(self) -> None:
        if self.sender is not None:
            self.sender.cancel()
        if self.stream is not None:
            self.batcher.remove(self.stream)
        if self.outcome is not None and self.outcome.done():
            self.outcome.exception()  # retrieved: a failure already reported to the client is not logged again

    def _put(self, item) -> None:
        self.outbox.append(item)
        self.drained.clear()
        self.pending.set()

    async def _send_loop(self) -> None:
        while True:
            await self.pending.wait()
            while self.outbox:
                item = self.outbox.popleft()
                if isinstance(item, bytes):
                    await self.ws.send_bytes(item)
                else:
                    await self.ws.send_text(json.dumps(item))
            self.pending.clear()
            self.drained.set()

    def enqueue_frames(self, jpegs: list[bytes]) -> None:
        """Queue frames (JPEG bytes) with their index; past `frame_queue` unsent frames, drop the oldest."""
        for jpeg in jpegs:
            self._put(struct.pack("<I", self.sent) + jpeg)
            self.sent += 1
        excess = sum(isinstance(x, bytes) for x in self.outbox) - self.opts.frame_queue
        if excess > 0:  # the client is not keeping up: drop its oldest unsent frames, keep the messages
            kept = deque()
            for item in self.outbox:
                if excess > 0 and isinstance(item, bytes):
                    excess -= 1
                    self.dropped += 1
                else:
                    kept.append(item)
            self.outbox = kept

    def stats(self) -> dict:
        s = self.stream.stats() if self.stream is not None else {}  # rtf and compute include the end's padding
        return {**s, "frames": self.sent, "frames_sent": self.sent - self.dropped, "dropped": self.dropped}

    async def _model(self, fn, *args):
        """Run `fn(*args)` in a worker thread, this session's calls one after another."""
        async with self.lock:
            return await self.loop.run_in_executor(self.executor, fn, *args)

    async def _unless_failed(self, awaitable, timeout: float | None = None):
        """`awaitable`'s result, unless the stream fails first (raises its _Closed, from the batcher) or `timeout`
        seconds pass (raises asyncio.TimeoutError); the awaitable is cancelled when it loses."""
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task, self.outcome}, timeout=timeout, return_when="FIRST_COMPLETED")
        if task in done:
            return task.result()
        task.cancel()
        if self.outcome.done():
            self.outcome.result()  # raises the stream's _Closed
        raise asyncio.TimeoutError

    async def _receive(self) -> dict:
        """The next WebSocket message; raises the stream's failure (from the batcher) or the idle timeout."""
        try:
            return await self._unless_failed(self.ws.receive(), self.opts.idle_timeout_s)
        except asyncio.TimeoutError:
            raise _Closed(1001, f"idle for {self.opts.idle_timeout_s:g} s: session closed") from None

    async def run(self, resolve_portrait) -> None:
        self.loop = asyncio.get_running_loop()
        self.outcome = self.loop.create_future()
        self.sender = asyncio.create_task(self._send_loop())
        await _guarded(self.ws, self._loop(resolve_portrait), cleanup=self.close)

    async def _loop(self, resolve_portrait) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                await self._audio(data)
            elif text is not None:
                if await self._control(text, resolve_portrait):
                    return

    async def _control(self, text: str, resolve_portrait) -> bool:
        msg = _read_json(text, self.opts)
        kind = msg.get("type")
        if kind == "start":
            if self.stream is not None:
                raise _Closed(1008, "this session has already started")
            seed = _read_seed(msg)
            portrait = await resolve_portrait(msg.get("portrait"))
            self.stream = await self._model(lambda: self.pipe.stream(portrait, seed=seed))
            self.batcher.add(self.stream, self._on_frames, self._on_done, self._on_error)
            p = self.pipe
            self._put(
                {
                    "type": "ready",
                    "fps": p.fps,
                    "resolution": p.resolution,
                    "sample_rate": p.sample_rate,
                    "chunk_frames": self.chunk_frames,
                }
            )
            return False
        if kind == "end":
            if self.stream is None:
                raise _Closed(1008, "end before start")
            self.batcher.end(self.stream)
            await self.outcome  # the last frames are queued (or the stream failed: _Closed)
            self._put({"type": "done", **self.stats()})
            try:  # a client that stopped reading gets idle_timeout_s to take its last frames
                await asyncio.wait_for(self.drained.wait(), timeout=self.opts.idle_timeout_s)
            except asyncio.TimeoutError:
                raise _Closed(1001, f"the client did not read its frames for {self.opts.idle_timeout_s:g} s") from None
            await self.ws.close(code=1000)
            return True
        raise _Closed(1008, f"unknown message type {kind!r} (expected start, end, or binary audio)")

    async def _audio(self, data: bytes) -> None:
        if self.stream is None:
            raise _Closed(1008, 'audio before start: send {"type": "start", "portrait": ID} first')
        samples = _read_audio(data, self.opts)
        self.batcher.push(self.stream, samples)
        self.samples_pushed += len(samples)
        # Back-pressure: stop reading a client that is far ahead of its frames (its audio waits in server memory).
        while self.samples_pushed / self.pipe.sample_rate - self.sent / self.pipe.fps > self.opts.max_backlog_s:
            self.progress.clear()
            await self._unless_failed(self.progress.wait())

    # Batcher-thread side: hand over to the event loop, nothing else.
    def _on_frames(self, frames: np.ndarray) -> None:
        asyncio.run_coroutine_threadsafe(self._deliver(frames), self.loop)

    def _on_done(self) -> None:
        asyncio.run_coroutine_threadsafe(self._settle(None), self.loop)

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, RestError):  # the client's input, found by the pipeline
            closed = _Closed(1008, str(err))
        else:
            log.error("stream failed", exc_info=err)
            closed = _Closed(1011, f"server error: {type(err).__name__}: {err}")
        asyncio.run_coroutine_threadsafe(self._settle(closed), self.loop)

    # Event-loop side.
    async def _deliver(self, frames: np.ndarray) -> None:
        """A chunk's frames: JPEG-encoded in a worker thread, queued in order, with the stats now and then."""
        async with self.lock:
            jpegs = await self.loop.run_in_executor(self.executor, _jpegs, frames, self.opts.jpeg_quality)
            self.enqueue_frames(jpegs)
            self.progress.set()
            now = time.perf_counter()
            if self.last_stats is None or now - self.last_stats > 1.0:  # the first frames, then once a second
                self.last_stats = now
                self._put({"type": "stats", **self.stats()})

    async def _settle(self, closed: _Closed | None) -> None:
        async with self.lock:  # after the frames delivered before it
            if not self.outcome.done():
                if closed is None:
                    self.outcome.set_result(None)
                else:
                    self.outcome.set_exception(closed)


#################################################################################
#                                 Motion streams                                #
#################################################################################


def _motion_info(motion) -> dict:
    return {
        "fps": motion.fps,
        "sample_rate": motion.sample_rate,
        "chunk_frames": motion.denoiser.config.chunk_latent_frames,  # the rig compresses no time
        "emotions": list(motion.info.emotions),
    }


def _motion_message(start: int, frames: np.ndarray) -> dict:
    """Rig frames (k, 14), the first of them frame `start` of the stream -> the "motion" message."""
    shapes = arkit_blendshapes(frames)
    arkit = np.stack([shapes[name] for name in ARKIT_NAMES], axis=1)  # (k, 61)
    return {
        "type": "motion",
        "start": start,
        "frames": np.round(frames.astype(np.float64), 5).tolist(),  # float64: 0.1 stays 0.1 in JSON
        "arkit": np.round(arkit.astype(np.float64), 5).tolist(),
    }


class _MotionSession:
    """One `/ws/motion` stream (module docstring): the receive loop pushes each audio message in a worker thread and
    sends the frames it completes before reading the next message."""

    def __init__(self, ws: WebSocket, motion, opts: ServeOptions, executor: ThreadPoolExecutor):
        self.ws, self.motion, self.opts, self.executor = ws, motion, opts, executor
        self.stream = None  # the MotionStream, from "start"
        self.frames = 0  # frames sent: the next frame's index

    async def _model(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _send_frames(self, frames: np.ndarray) -> None:
        if len(frames):
            await self.ws.send_text(json.dumps(_motion_message(self.frames, frames)))
            self.frames += len(frames)

    async def run(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self.opts.idle_timeout_s)
            except asyncio.TimeoutError:
                raise _Closed(1001, f"idle for {self.opts.idle_timeout_s:g} s: session closed") from None
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if self.stream is None:
                    raise _Closed(1008, 'audio before start: send {"type": "start", "emotion": NAME or null} first')
                await self._send_frames(await self._model(self.stream.push, _read_audio(data, self.opts)))
            elif text is not None and await self._control(_read_json(text, self.opts)):
                return

    async def _control(self, msg: dict) -> bool:
        """A start or end message; True when the stream has ended."""
        kind = msg.get("type")
        if kind == "start":
            if self.stream is not None:
                raise _Closed(1008, "this session has already started")
            emotion, names = msg.get("emotion"), self.motion.info.emotions
            if emotion is not None and emotion not in names:
                raise _Closed(1008, f"unknown emotion {json.dumps(emotion)[:40]}: one of {', '.join(names)}, or null")
            seed, gaze = _read_seed(msg), self._gaze(msg)
            self.stream = await self._model(self.motion.stream, emotion, seed, gaze)
            info = _motion_info(self.motion)
            ready = {
                "type": "ready",
                **{key: info[key] for key in ("fps", "sample_rate", "chunk_frames")},
                "emotion": emotion,
                "names": list(RIG_PARAMS),
                "arkit_names": list(ARKIT_NAMES),
            }
            await self.ws.send_text(json.dumps(ready))
            return False
        if kind == "gaze":
            if self.stream is None:
                raise _Closed(1008, "gaze before start")
            self.stream.set_gaze(self._gaze(msg))
            return False
        if kind == "end":
            if self.stream is None:
                raise _Closed(1008, "end before start")
            await self._send_frames(await self._model(self.stream.finish))
            await self.ws.send_text(json.dumps({"type": "done", "frames": self.frames}))
            await self.ws.close(code=1000)
            return True
        raise _Closed(1008, f"unknown message type {kind!r} (expected start, gaze, end, or binary audio)")

    def _gaze(self, msg: dict) -> tuple[float, float] | None:
        """The message's "gaze": null, or [x, y] with x, y in -1 .. 1."""
        gaze = msg.get("gaze")
        if gaze is None:
            return None
        if (
            not isinstance(gaze, list)
            or len(gaze) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in gaze)
        ):
            raise _Closed(1008, 'gaze must be [x, y] (numbers in -1 .. 1) or null, e.g. {"gaze": [0.5, -0.2]}')
        try:
            return self.motion.check_gaze(gaze)
        except RestError as err:
            raise _Closed(1008, str(err)) from None


__all__ = ["NO_MOTION", "ServeOptions", "create_app"]
