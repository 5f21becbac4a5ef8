"""`rest bench serve`: a load test of `rest serve` on loopback.

N clients connect at once, each uploads the portrait, starts a stream and sends its audio in real time (40 ms
pieces, each sent when its last sample would have been spoken, the file looped to `seconds`), then ends the stream.
Per session: first-frame latency seen by the client (first audio sent -> first frame received) and by the server,
the server's real-time factor (model compute / media time), frames received against round(seconds * fps), dropped
frames, and errors. By default the server runs in this process (uvicorn in a thread), so the resident memory
before, right after and a few seconds after the sessions (after garbage collection) is the server's plus the
clients'; with `url` the test drives a running server and reports no memory.
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

from rest.bench.common import rss_kib

PIECE_S = 0.04


async def _client(url: str, portrait_id: str, audio: np.ndarray, sample_rate: int, index: int) -> dict:
    import websockets

    piece = int(PIECE_S * sample_rate)
    result = {"session": index, "frames": 0, "error": None}
    first_send = first_frame = None
    try:
        async with websockets.connect(url, max_size=2**24, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", "portrait": portrait_id, "seed": index}))
            ready = json.loads(await ws.recv())
            if ready.get("type") != "ready":
                raise RuntimeError(ready.get("message", str(ready)))

            async def sender():
                nonlocal first_send
                start = time.perf_counter()
                for i, s in enumerate(range(0, len(audio), piece)):
                    await asyncio.sleep(max(0.0, start + (i + 1) * PIECE_S - time.perf_counter()))
                    if first_send is None:
                        first_send = time.perf_counter()
                    await ws.send(audio[s : s + piece].astype("<f4").tobytes())
                await ws.send(json.dumps({"type": "end"}))

            task = asyncio.create_task(sender())
            expected_index = 0
            async for message in ws:
                if isinstance(message, bytes):
                    frame_index = struct.unpack("<I", message[:4])[0]
                    if frame_index < expected_index:
                        raise RuntimeError(f"frame {frame_index} came after frame {expected_index - 1}")
                    expected_index = frame_index + 1
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


def _start_server(weights: str | Path, sessions: int):
    """uvicorn in a thread on a free port: (base url, server)."""
    import uvicorn

    from rest.pipelines import TalkingHeadPipeline
    from rest.serve import ServeOptions, create_app

    app = create_app(TalkingHeadPipeline.from_pretrained(weights), ServeOptions(max_sessions=sessions))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_ping_interval=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def bench_serve(
    weights: str | Path | None,
    sessions: int,
    seconds: float,
    portrait: str | Path,
    audio_path: str | Path | None = None,
    url: str | None = None,
    rounds: int = 1,
) -> dict:
    """Run the load test against `url` (http://HOST:PORT of a running `rest serve`), or a server started here on
    `weights`, `rounds` times in a row (the same server). Returns the result dict (summaries over all sessions,
    then `per_session`). With an in-process server, `rss_mb.after_each_round` (after garbage collection) shows
    whether the server keeps memory from finished sessions: a leak grows it every round."""
    if rounds < 1 or sessions < 1:
        raise ValueError(f"need at least one round and one session, got rounds={rounds}, sessions={sessions}")
    from rest.media import read_audio

    server = thread = None
    if url is None:
        base, server, thread = _start_server(weights, sessions)
    else:
        base = url.rstrip("/")
    try:
        info = json.loads(urllib.request.urlopen(f"{base}/api/info").read())
        request = urllib.request.Request(f"{base}/api/portraits", data=Path(portrait).read_bytes(), method="POST")
        portrait_id = json.loads(urllib.request.urlopen(request).read())["id"]

        sr, fps = info["sample_rate"], info["fps"]
        if audio_path is not None:
            speech = read_audio(audio_path, sr)
        else:  # a modulated tone: the load does not depend on the content
            t = np.arange(sr * 4) / sr
            speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        audio = np.resize(speech, int(seconds * sr))
        gc.collect()
        rss_before = rss_kib("VmRSS") / 1024
        start = time.perf_counter()

        async def run_all():
            ws_url = base.replace("http", "ws", 1) + "/ws"
            return await asyncio.gather(*(_client(ws_url, portrait_id, audio, sr, i) for i in range(sessions)))

        results, rss_rounds = [], []
        for round_index in range(rounds):
            if round_index:  # memory after the previous round, after garbage collection
                gc.collect()
                rss_rounds.append(rss_kib("VmRSS") / 1024)
            results += [{"round": round_index, **r} for r in asyncio.run(run_all())]
        wall = time.perf_counter() - start
        rss_after = rss_kib("VmRSS") / 1024
        time.sleep(2.0)
        gc.collect()
        rss_settled = rss_kib("VmRSS") / 1024
        rss_rounds.append(rss_settled)
    finally:
        if server is not None:
            server.should_exit = True
            thread.join(timeout=10)

    frames_expected = round(len(audio) * fps / sr)  # the server sends the audio's duration in frames
    for r in results:
        r["frames_expected"] = frames_expected
    ok = [r for r in results if r["error"] is None]

    def summary(key: str) -> dict | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        if not values:
            return None
        return {"median": statistics.median(values), "max": max(values), "min": min(values)}

    return {
        "benchmark": "serve",
        "server": url or f"in-process on {weights}",
        "preset": info["preset"],
        "resolution": info["resolution"],
        "sessions": sessions,
        "rounds": rounds,
        "seconds": seconds,
        "wall_s": wall,
        "frames_expected_per_session": frames_expected,
        "sessions_with_all_frames": sum(r["frames"] == frames_expected for r in ok),
        "errors": [r["error"] for r in results if r["error"] is not None],
        "server_rtf": summary("server_rtf"),
        "client_first_frame_latency_s": summary("client_first_frame_latency_s"),
        "server_first_frame_latency_s": summary("server_first_frame_latency_s"),
        "frames_received": summary("frames"),
        "dropped": summary("dropped"),
        "rss_mb": None
        if url
        else {"before": rss_before, "after": rss_after, "after_gc_2s": rss_settled, "after_each_round": rss_rounds},
        "per_session": results,
    }


def format_table(result: dict) -> str:
    """One line per session, then the memory line: what `rest bench serve` prints before the JSON."""
    ms = lambda s: "-" if s is None else f"{1000 * s:.0f}"  # noqa: E731
    lines = [
        f"{result['rounds']} x {result['sessions']} sessions x {result['seconds']:g} s on {result['server']} "
        f"({result['preset']}, "
        f"{result['resolution']} px), wall {result['wall_s']:.1f} s",
        f"{'round':>5} {'session':>7} {'latency client ms':>17} {'latency server ms':>17} {'RTF':>5} {'frames':>11} "
        f"{'dropped':>7}  error",
    ]
    for r in result["per_session"]:
        rtf = "-" if r.get("server_rtf") is None else f"{r['server_rtf']:.2f}"
        frames = f"{r['frames']}/{r['frames_expected']}"
        lines.append(
            f"{r['round']:>5} {r['session']:>7} {ms(r.get('client_first_frame_latency_s')):>17} "
            f"{ms(r.get('server_first_frame_latency_s')):>17} {rtf:>5} {frames:>11} {r.get('dropped', '-'):>7}  "
            f"{r['error'] or ''}"
        )
    rss = result["rss_mb"]
    if rss is not None:
        lines.append(
            f"RSS (server + clients) MB: before {rss['before']:.0f}, after {rss['after']:.0f}, "
            f"after gc + 2 s {rss['after_gc_2s']:.0f}; after each round "
            + ", ".join(f"{v:.0f}" for v in rss["after_each_round"])
        )
    return "\n".join(lines)


__all__ = ["bench_serve", "format_table"]
