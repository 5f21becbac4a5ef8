"""`rest bench motion`: the motion stream's cost per chunk over a long stream (10 s .. 10 min).

Speech is pushed in pieces of one chunk's audio (2 frames, 80 ms), as a live stream pushes it, into a
`MotionStream` (rest/pipelines/motion.py). Each push is timed whole and in its parts: the phonetic channel
(`encode_audio`) and the rollout of the chunk it completes (`next_latents` + the rig's decode). Reported per tenth
of the stream: the mean and worst time per chunk, so a cost that grows with the stream's length shows, the resident
memory at the start and the end, and the latency a frame waits (its chunk's audio, the look-ahead, the compute).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from rest.bench.common import rss_kib
from rest.bench.stream import _percentile, _tenths


def bench_motion(pipe, audio: np.ndarray, seconds: float, emotion: str | None = None, threads: int = 1) -> dict:
    """`pipe`: a MotionPipeline; `audio`: 16 kHz speech, looped to `seconds`."""
    torch.set_num_threads(threads)
    chunk_frames = pipe.denoiser.config.chunk_latent_frames
    piece = chunk_frames * pipe.audio.samples_per_frame
    total = int(seconds * pipe.sample_rate) // piece * piece
    stream = np.resize(np.asarray(audio, np.float32), total)
    session = pipe.stream(emotion).session
    rss_start = rss_kib("VmRSS")
    whole, audio_t, rollout_t, frames = [], [], [], 0
    with torch.inference_mode():
        for start in range(0, total, piece):
            t0 = time.perf_counter()
            features = session.encode_audio(torch.from_numpy(stream[start : start + piece])[None])
            session.buffer_features(features)
            t1 = time.perf_counter()
            while session.ready():
                frames += session.decode(session.next_latents()).shape[2]
            t2 = time.perf_counter()
            whole.append(t2 - t0)
            audio_t.append(t1 - t0)
            rollout_t.append(t2 - t1)
        frames += session.finish().shape[2]
    ms = lambda xs: {"p50": 1000 * _percentile(xs, 0.5), "p99": 1000 * _percentile(xs, 0.99)}  # noqa: E731
    chunk_s = piece / pipe.sample_rate
    return {
        "bench": "motion",
        "seconds": total / pipe.sample_rate,
        "chunks": len(whole),
        "chunk_ms_audio": 1000 * chunk_s,
        "frames": frames,
        "threads": threads,
        "emotion": emotion,
        "rtf": sum(whole) / (total / pipe.sample_rate),
        "chunk_ms": ms(whole),
        "phonetic_ms": ms(audio_t),
        "rollout_ms": ms(rollout_t),
        "chunk_ms_by_tenth": {
            "mean": [1000 * float(np.mean(t)) for t in _tenths(whole)],
            "max": [1000 * max(t) for t in _tenths(whole)],
        },
        "rollout_ms_by_tenth": [1000 * float(np.mean(t)) for t in _tenths(rollout_t)],
        "rss_mb": {"start": rss_start / 1024, "end": rss_kib("VmRSS") / 1024},
        # A frame's audio arrives over its chunk; it waits for the chunk's last sample, the look-ahead, the compute.
        "latency_ms_first_frame_of_chunk": 1000 * (chunk_s + pipe.audio.lookahead_s) + ms(whole)["p50"],
        "steps": pipe.info.steps,
        "context_frames": chunk_frames * pipe.denoiser.config.context_chunks,
    }


__all__ = ["bench_motion"]
