"""`rest bench serve`: a load test of `rest serve` on loopback.

N clients connect at once, each uploads the portrait, starts a stream and sends its audio in real time (40 ms
pieces paced by the wall clock, the file looped to `seconds`), then ends the stream. Per session: first-frame
latency seen by the client (first audio sent -> first frame received) and by the server, the server's real-time
factor (model compute / media time), frames received against the frames the audio should give, dropped frames,
and errors. The server runs in this process (uvicorn in a thread), so the resident memory before, right after
and a few seconds after the sessions (after garbage collection) is the server's plus the clients'.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import statistics
import struct
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

PIECE_S = 0.04


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _client(url: str, portrait_id: str, audio: np.ndarray, sample_rate: int, index: int) -> dict:
    import websockets

    piece = int(PIECE_S * sample_rate)
    result = {"session": index, "frames": 0, "error": None}
    first_send = first_frame = None
    try:
        async with websockets.connect(url, max_size=2**24) as ws:
            await ws.send(json.dumps({"type": "start", "portrait": portrait_id, "seed": index}))
            ready = json.loads(await ws.recv())
            if ready.get("type") != "ready":
                raise RuntimeError(ready.get("message", str(ready)))

            async def sender():
                nonlocal first_send
                start = time.perf_counter()
                for i, s in enumerate(range(0, len(audio), piece)):
                    await asyncio.sleep(max(0.0, start + i * PIECE_S - time.perf_counter()))
                    if first_send is None:
                        first_send = time.perf_counter()
                    await ws.send(audio[s : s + piece].astype("<f4").tobytes())
                await ws.send(json.dumps({"type": "end"}))

            task = asyncio.create_task(sender())
            async for message in ws:
                if isinstance(message, bytes):
                    struct.unpack("<I", message[:4])
                    result["frames"] += 1
                    if first_frame is None:
                        first_frame = time.perf_counter()
                    continue
                msg = json.loads(message)
                if msg["type"] == "error":
                    raise RuntimeError(msg["message"])
                if msg["type"] == "done":
                    result.update(
                        server_rtf=msg["rtf"],
                        server_first_frame_latency_s=msg["first_frame_latency_s"],
                        dropped=msg["dropped"],
                    )
            await task
    except Exception as err:  # reported per session, the load test goes on
        result["error"] = f"{type(err).__name__}: {err}"
    if first_send is not None and first_frame is not None:
        result["client_first_frame_latency_s"] = first_frame - first_send
    return result


def bench_serve(weights: str | Path, sessions: int, seconds: float, portrait: str | Path, audio_path=None) -> dict:
    import uvicorn

    from rest.media import read_audio
    from rest.pipelines import TalkingHeadPipeline
    from rest.serve import ServeOptions, create_app

    pipe = TalkingHeadPipeline.from_pretrained(weights)
    app = create_app(pipe, ServeOptions(max_sessions=sessions, idle_timeout_s=30.0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_max_size=2**22))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(f"{base}/api/portraits", data=Path(portrait).read_bytes(), method="POST")
    portrait_id = json.loads(urllib.request.urlopen(request).read())["id"]

    sr = pipe.sample_rate
    if audio_path is not None:
        speech = read_audio(audio_path, sr)
    else:  # a modulated tone: the load does not depend on the content
        t = np.arange(sr * 4) / sr
        speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    audio = np.resize(speech, int(seconds * sr))
    gc.collect()
    rss_before = _rss_mb()
    start = time.perf_counter()

    async def run_all():
        url = f"ws://127.0.0.1:{port}/ws"
        return await asyncio.gather(*(_client(url, portrait_id, audio, sr, i) for i in range(sessions)))

    results = asyncio.run(run_all())
    wall = time.perf_counter() - start
    rss_after = _rss_mb()
    time.sleep(2.0)
    gc.collect()
    rss_settled = _rss_mb()
    server.should_exit = True
    thread.join(timeout=10)

    t = pipe.vae.temporal_compression
    frames_expected = 1 + t * ((int(round(seconds * pipe.fps)) - 1) // t)  # whole chunks, as the stream gives
    ok = [r for r in results if r["error"] is None]

    def summary(key: str) -> dict | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        if not values:
            return None
        return {"median": statistics.median(values), "max": max(values), "min": min(values)}

    return {
        "benchmark": "serve",
        "weights": str(weights),
        "sessions": sessions,
        "seconds": seconds,
        "wall_s": wall,
        "frames_expected_per_session": frames_expected,
        "errors": [r["error"] for r in results if r["error"] is not None],
        "server_rtf": summary("server_rtf"),
        "client_first_frame_latency_s": summary("client_first_frame_latency_s"),
        "server_first_frame_latency_s": summary("server_first_frame_latency_s"),
        "frames_received": summary("frames"),
        "dropped": summary("dropped"),
        "rss_mb": {"before": rss_before, "after": rss_after, "after_gc_2s": rss_settled},
        "per_session": results,
    }


__all__ = ["bench_serve"]
