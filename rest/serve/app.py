"""`rest serve`: an HTTP + WebSocket server for live talking heads, with a web page.

Protocol (one WebSocket per stream, `/ws`):

    client -> server  text   {"type": "start", "portrait": ID, "seed": 0}   ID from POST /api/portraits, or
                                                                             "bundled:NAME" of GET /api/portraits
    client -> server  binary float32 little-endian mono PCM at 16 kHz, any length up to `max_message_bytes`
    client -> server  text   {"type": "end"}                                 no more audio: flush the last chunk
    server -> client  text   {"type": "ready", "fps", "resolution", "sample_rate"}   after "start"
    server -> client  binary 4-byte little-endian frame index, then one JPEG frame
    server -> client  text   {"type": "stats", "frames", "rtf", "first_frame_latency_s", "dropped"}  about 1/s
    server -> client  text   {"type": "done", ...stats}, then the server closes (code 1000)
    server -> client  text   {"type": "error", "message"}, then the server closes with 1008 (bad message),
                             1009 (message too big), 1013 (server full) or 1001 (idle for `idle_timeout_s`)

Each session has its own stream state and a worker thread that runs the model (the event loop never does), so
sessions do not wait on each other's generation beyond the CPU they share. Frames go to the client through a
bounded per-session outbox (`frame_queue` frames): a client that does not read fast enough loses the oldest
unsent frames (counted as `dropped` in the stats) instead of growing the server's memory or stalling the model.
A malformed message ends that session only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
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

from rest.errors import RestError

STATIC = Path(__file__).parent / "static"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class ServeOptions:
    max_sessions: int = 4  # concurrent WebSocket streams; more are refused with close code 1013
    max_upload_bytes: int = 8 * 2**20  # portrait uploads
    max_message_bytes: int = 2**20  # one audio message (about 16 s of float32 audio)
    idle_timeout_s: float = 60.0  # a session that sends nothing for this long is closed
    frame_queue: int = 50  # frames buffered per client (2 s at 25 fps) before the oldest are dropped
    max_portraits: int = 64  # uploaded portraits kept (least recently used are forgotten)
    jpeg_quality: int = 85


def _decode_image(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except Exception as err:  # PIL raises many types for bad data
        raise RestError(f"not a readable image ({type(err).__name__})") from None


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


class _Closed(Exception):
    def __init__(self, code: int, message: str):
        self.code, self.message = code, message


def create_app(pipe, options: ServeOptions | None = None, portraits_dir: str | Path | None = None):
    """The FastAPI app serving `pipe` (a TalkingHeadPipeline) with `options` (ServeOptions)."""
    opts = options or ServeOptions()
    executor = ThreadPoolExecutor(max_workers=max(1, opts.max_sessions), thread_name_prefix="rest-session")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="REST live talking heads", lifespan=lifespan)
    app.state.pipe, app.state.options = pipe, opts
    app.state.portraits = OrderedDict()  # id -> Portrait
    app.state.active = 0
    app.state.sessions_total = 0
    app.state.executor = executor
    bundled = {}
    if portraits_dir is not None:
        bundled = {p.stem: p for p in sorted(Path(portraits_dir).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

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
            "steps": cfg.steps,
            "active_sessions": app.state.active,
            "max_sessions": opts.max_sessions,
        }

    @app.get("/api/portraits")
    def list_portraits():
        return {"bundled": list(bundled)}

    @app.get("/api/portraits/{name}")
    def bundled_portrait(name: str):
        if name not in bundled:
            return error(404, f"no bundled portrait {name!r}")
        return FileResponse(bundled[name])

    def remember(portrait) -> str:
        key = uuid.uuid4().hex[:12]
        app.state.portraits[key] = portrait
        while len(app.state.portraits) > opts.max_portraits:
            app.state.portraits.popitem(last=False)
        return key

    @app.post("/api/portraits")
    async def upload_portrait(request: Request):
        size = int(request.headers.get("content-length") or 0)
        if size > opts.max_upload_bytes:
            return error(413, f"the upload is {size} bytes; the limit is {opts.max_upload_bytes}")
        data = b""
        async for piece in request.stream():
            data += piece
            if len(data) > opts.max_upload_bytes:
                return error(413, f"the upload is over the limit of {opts.max_upload_bytes} bytes")
        if not data:
            return error(400, "empty upload: send the image file as the request body")
        try:
            image = _decode_image(data)
            portrait = await asyncio.get_running_loop().run_in_executor(
                None, lambda: pipe.prepare_portrait(image, name="uploaded portrait")
            )
        except RestError as err:
            return error(400, str(err))
        h, w = image.shape[:2]
        return {"id": remember(portrait), "width": w, "height": h}

    def resolve_portrait(ref):
        if not isinstance(ref, str):
            raise _Closed(1008, "start needs a portrait id (POST /api/portraits, or bundled:NAME)")
        if ref.startswith("bundled:"):
            name = ref.split(":", 1)[1]
            if name not in bundled:
                raise _Closed(1008, f"no bundled portrait {name!r}")
            if ref not in app.state.portraits:
                from rest.media import read_image

                app.state.portraits[ref] = pipe.prepare_portrait(read_image(bundled[name]), name=name)
            return app.state.portraits[ref]
        if ref not in app.state.portraits:
            raise _Closed(1008, f"unknown portrait id {ref!r}: upload it with POST /api/portraits first")
        return app.state.portraits[ref]

    @app.websocket("/ws")
    async def stream(ws: WebSocket):
        await ws.accept()
        if app.state.active >= opts.max_sessions:
            await ws.send_text(json.dumps({"type": "error", "message": f"server full ({opts.max_sessions} sessions)"}))
            await ws.close(code=1013)
            return
        app.state.active += 1
        app.state.sessions_total += 1
        session = _Session(ws, pipe, opts, app.state.executor)
        try:
            await session.run(resolve_portrait)
        except WebSocketDisconnect:
            pass
        finally:
            app.state.active -= 1
            session.close()

    return app


class _Session:
    """One WebSocket stream: receive loop, model calls in the executor, a sender task with a bounded outbox."""

    def __init__(self, ws, pipe, opts: ServeOptions, executor: ThreadPoolExecutor):
        self.ws, self.pipe, self.opts, self.executor = ws, pipe, opts, executor
        self.outbox: deque = deque()  # bytes (frames) and dicts (JSON messages), in order
        self.pending = asyncio.Event()  # set when the outbox has items
        self.drained = asyncio.Event()  # set when the sender has sent everything
        self.drained.set()
        self.dropped = 0
        self.sent = 0
        self.stream = None
        self.sender: asyncio.Task | None = None
        self.lock = asyncio.Lock()  # model calls of one session run in order
        self.last_stats = 0.0

    def close(self) -> None:
        if self.sender is not None:
            self.sender.cancel()

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

    def _enqueue_frames(self, frames: np.ndarray) -> None:
        for frame in frames:
            self._put(struct.pack("<I", self.sent) + _jpeg(frame, self.opts.jpeg_quality))
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
        s = self.stream.stats() if self.stream is not None else {}
        return {**s, "frames_sent": self.sent - self.dropped, "dropped": self.dropped}

    async def _model(self, fn, *args):
        async with self.lock:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _fail(self, code: int, message: str) -> None:
        self.close()
        try:
            await self.ws.send_text(json.dumps({"type": "error", "message": message}))
            await self.ws.close(code=code)
        except Exception:  # the client may be gone already
            pass

    async def run(self, resolve_portrait) -> None:
        self.sender = asyncio.create_task(self._send_loop())
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), timeout=self.opts.idle_timeout_s)
                except asyncio.TimeoutError:
                    raise _Closed(1001, f"idle for {self.opts.idle_timeout_s:g} s: session closed") from None
                if message["type"] == "websocket.disconnect":
                    return
                data, text = message.get("bytes"), message.get("text")
                if data is not None:
                    await self._audio(data)
                elif text is not None:
                    if await self._control(text, resolve_portrait):
                        return
        except _Closed as closed:
            await self._fail(closed.code, closed.message)

    async def _control(self, text: str, resolve_portrait) -> bool:
        if len(text) > self.opts.max_message_bytes:
            raise _Closed(1009, "message too big")
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            raise _Closed(1008, "text messages must be JSON objects") from None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "start":
            if self.stream is not None:
                raise _Closed(1008, "this session has already started")
            portrait = resolve_portrait(msg.get("portrait"))
            seed = msg.get("seed", 0)
            if not isinstance(seed, int):
                raise _Closed(1008, "seed must be an integer")
            try:
                self.stream = await self._model(lambda: self.pipe.stream(portrait, seed=seed))
            except RestError as err:
                raise _Closed(1008, str(err)) from None
            p = self.pipe
            self._put({"type": "ready", "fps": p.fps, "resolution": p.resolution, "sample_rate": p.sample_rate})
            return False
        if kind == "end":
            if self.stream is None:
                raise _Closed(1008, "end before start")
            frames = await self._model(self.stream.flush)
            self._enqueue_frames(frames)
            self._put({"type": "done", **self.stats()})
            await self.drained.wait()
            await self.ws.close(code=1000)
            return True
        raise _Closed(1008, f"unknown message type {kind!r} (expected start, end, or binary audio)")

    async def _audio(self, data: bytes) -> None:
        if self.stream is None:
            raise _Closed(1008, 'audio before start: send {"type": "start", "portrait": ID} first')
        if len(data) > self.opts.max_message_bytes:
            raise _Closed(1009, f"audio message of {len(data)} bytes; the limit is {self.opts.max_message_bytes}")
        if len(data) % 4:
            raise _Closed(1008, f"audio must be float32 samples (a multiple of 4 bytes), got {len(data)} bytes")
        samples = np.frombuffer(data, "<f4")
        if not np.isfinite(samples).all():
            raise _Closed(1008, "audio contains NaN or infinite samples")
        frames = await self._model(self.stream.push_audio, samples)
        self._enqueue_frames(frames)
        now = time.perf_counter()
        if now - self.last_stats > 1.0:
            self.last_stats = now
            self._put({"type": "stats", **self.stats()})


__all__ = ["ServeOptions", "create_app"]
