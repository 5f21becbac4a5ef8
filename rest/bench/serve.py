"""`rest bench serve`: a load test of `rest serve` on loopback.

N clients connect at once, each uploads the portrait, starts a stream and sends its audio in real time (40 ms
pieces, each sent when its last sample would have been spoken, the file looped to `seconds`), then ends the stream.
Per session: first-frame latency seen by the client (first audio sent -> first frame received) and by the server,
the server's real-time factor (model compute / media time), frames received against round(seconds * fps), dropped
frames, the largest gap between two frames the client received, and errors. By default the server runs in this
process (uvicorn in a thread), so the resident memory before, right after and a few seconds after the sessions (after
garbage collection) is the server's plus the clients'; with `url` the test drives a running server and reports no
memory.

With `upload_every`, one more client uploads a large portrait (the portrait scaled up to `UPLOAD_SIDE` pixels a
side, about 40 Mpx, as a careless or hostile user might) every that many seconds while the sessions run, one upload
after another: whether uploads hold up the live streams shows in the frame gaps (compare a run without).
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
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from rest.bench.common import rss_kib

PIECE_S = 0.04
UPLOAD_SIDE = 6300  # 39.7 Mpx: just under rest serve's 40 Mpx cap, seconds to decode


async def _client(url: str, portrait_id: str, audio: np.ndarray, sample_rate: int, index: int) -> dict:
    import websockets

    piece = int(PIECE_S * sample_rate)
    result = {"session": index, "frames": 0, "error": None}
    first_send = first_frame = None
    arrivals = []
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
                    arrivals.append(time.perf_counter())
                    if first_frame is None:
                        first_frame = arrivals[0]
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
    if len(arrivals) > 1:
        result["max_frame_gap_s"] = float(np.diff(arrivals).max())
    return result


def large_portrait(portrait: str | Path, side: int = UPLOAD_SIDE) -> bytes:
    """`portrait` scaled up to side x side (nearest neighbour) as PNG bytes: a small file that decodes to a huge
    image, the face still findable."""
    import io

    from PIL import Image

    from rest.media import read_image

    out = io.BytesIO()
    Image.fromarray(read_image(portrait)).resize((side, side), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


async def _uploader(base: str, body: bytes, every: float, stop: asyncio.Event) -> list[dict]:
    """POST `body` to /api/portraits every `every` seconds until `stop` (one at a time: a slow upload delays the
    next); each upload's HTTP status, seconds and error message."""

    def post() -> dict:
        request = urllib.request.Request(f"{base}/api/portraits", data=body, method="POST")
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request) as response:
                status, error = response.status, None
        except urllib.error.HTTPError as err:
            status, error = err.code, err.read().decode(errors="replace")[:200]  # rest serve: {"error": message}
        except OSError as err:
            status, error = None, f"{type(err).__name__}: {err}"
        return {"status": status, "seconds": time.perf_counter() - start, "error": error}

    uploads = []
    start = time.perf_counter()
    while not stop.is_set():
        next_time = start + (len(uploads) + 1) * every
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_time - time.perf_counter()))
        except asyncio.TimeoutError:
            uploads.append(await asyncio.to_thread(post))
    return uploads


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
    upload_every: float | None = None,
) -> dict:
    """Run the load test against `url` (http://HOST:PORT of a running `rest serve`), or a server started here on
    `weights`, `rounds` times in a row (the same server). Returns the result dict (summaries over all sessions,
    then `per_session`). With an in-process server, `rss_mb.after_each_round` (after garbage collection) shows
    whether the server keeps memory from finished sessions: a leak grows it every round. `upload_every`: seconds
    between uploads of a large portrait (`large_portrait`) while the sessions run; None for no uploads."""
    if rounds < 1 or sessions < 1:
        raise ValueError(f"need at least one round and one session, got rounds={rounds}, sessions={sessions}")
    if upload_every is not None and not upload_every > 0:
        raise ValueError(f"upload_every must be a positive number of seconds, got {upload_every}")
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
        large = large_portrait(portrait) if upload_every is not None else None
        gc.collect()
        rss_before = rss_kib("VmRSS") / 1024
        start = time.perf_counter()

        async def run_all():
            ws_url = base.replace("http", "ws", 1) + "/ws"
            stop = asyncio.Event()
            uploader = None if large is None else asyncio.create_task(_uploader(base, large, upload_every, stop))
            clients = await asyncio.gather(*(_client(ws_url, portrait_id, audio, sr, i) for i in range(sessions)))
            stop.set()
            return clients, [] if uploader is None else await uploader

        results, rss_rounds, uploads = [], [], []
        for round_index in range(rounds):
            if round_index:  # memory after the previous round, after garbage collection
                gc.collect()
                rss_rounds.append(rss_kib("VmRSS") / 1024)
            clients, round_uploads = asyncio.run(run_all())
            results += [{"round": round_index, **r} for r in clients]
            uploads += round_uploads
        wall = time.perf_counter() - start
        after = json.loads(urllib.request.urlopen(f"{base}/api/info").read())
        batching = {k: after.get(k) for k in ("batched_steps", "largest_batch")}  # the server's model thread
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
        "max_frame_gap_s": summary("max_frame_gap_s"),
        "uploads": None if large is None else _upload_summary(uploads, upload_every, len(large)),
        "batching": batching,
        "rss_mb": None
        if url
        else {"before": rss_before, "after": rss_after, "after_gc_2s": rss_settled, "after_each_round": rss_rounds},
        "per_session": results,
    }


def _upload_summary(uploads: list[dict], every: float, size: int) -> dict:
    seconds = [u["seconds"] for u in uploads]
    return {
        "every_s": every,
        "pixels": f"{UPLOAD_SIDE}x{UPLOAD_SIDE}",
        "bytes": size,
        "count": len(uploads),
        "ok": sum(u["status"] == 200 for u in uploads),
        "errors": [u["error"] or f"HTTP {u['status']}" for u in uploads if u["status"] != 200],
        "seconds": {"median": statistics.median(seconds), "max": max(seconds)} if seconds else None,
    }


def format_table(result: dict) -> str:
    """One line per session, then the memory line: what `rest bench serve` prints before the JSON."""
    ms = lambda s: "-" if s is None else f"{1000 * s:.0f}"  # noqa: E731
    lines = [
        f"{result['rounds']} x {result['sessions']} sessions x {result['seconds']:g} s on {result['server']} "
        f"({result['preset']}, "
        f"{result['resolution']} px), wall {result['wall_s']:.1f} s",
        f"{'round':>5} {'session':>7} {'latency client ms':>17} {'latency server ms':>17} {'RTF':>5} {'frames':>11} "
        f"{'dropped':>7} {'max gap ms':>10}  error",
    ]
    for r in result["per_session"]:
        rtf = "-" if r.get("server_rtf") is None else f"{r['server_rtf']:.2f}"
        frames = f"{r['frames']}/{r['frames_expected']}"
        lines.append(
            f"{r['round']:>5} {r['session']:>7} {ms(r.get('client_first_frame_latency_s')):>17} "
            f"{ms(r.get('server_first_frame_latency_s')):>17} {rtf:>5} {frames:>11} {r.get('dropped', '-'):>7} "
            f"{ms(r.get('max_frame_gap_s')):>10}  {r['error'] or ''}"
        )
    batching = result.get("batching") or {}
    if batching.get("batched_steps") is not None:
        steps, largest = batching["batched_steps"], batching["largest_batch"]
        lines.append(f"server: {steps} batched steps, up to {largest} sessions each")
    up = result["uploads"]
    if up is not None:
        took = up["seconds"] and f", {up['seconds']['median']:.2f} s median, {up['seconds']['max']:.2f} s max each"
        lines.append(
            f"uploads of a {up['pixels']} PNG ({up['bytes'] / 1e6:.2f} MB) every {up['every_s']:g} s: "
            f"{up['ok']}/{up['count']} accepted{took or ''}; errors: {', '.join(up['errors']) or 'none'}"
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
