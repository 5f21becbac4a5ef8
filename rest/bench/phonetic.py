"""`rest bench phonetic`: the phonetic channel's cost per pushed piece, against the mel audio encoder's, over a long
stream.

The speech is pushed in 40 ms pieces (one video frame), as a live stream pushes it, into `PhoneticExpert.step` and,
as the baseline measured in the same run, into the mel `AudioEncoder.step` (the bundled model's encoder). Reported
per tenth of the stream: the mean and worst time per piece, so that a cost that grows with the stream's length
shows; the longest utterance the decoder held (restarts keep it bounded), the final segments it kept, and the
resident memory at the start and the end.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from rest.bench.common import rss_kib
from rest.bench.stream import _percentile, _tenths
from rest.data.phonetic import PhoneticExpert
from rest.models.audio import AudioEncoder

PIECE = 640  # 40 ms at 16 kHz


def bench_phonetic(
    audio: np.ndarray, seconds: float, encoder: AudioEncoder | None, settle_s: float = 0.0, threads: int = 1
) -> dict:
    """`audio`: 16 kHz speech, looped to `seconds`. `encoder`: the baseline (None: skip it)."""
    torch.set_num_threads(threads)
    total = int(seconds * 16000) // PIECE * PIECE
    stream = np.resize(np.asarray(audio, np.float32), total)
    expert = PhoneticExpert(settle_s=settle_s)
    rss_start = rss_kib("VmRSS")
    times, longest, frames = [], 0.0, 0
    for start in range(0, total, PIECE):
        t0 = time.perf_counter()
        frames += len(expert.step(stream[start : start + PIECE]))
        times.append(time.perf_counter() - t0)
        longest = max(longest, expert.decoder.utterance_s)
    frames += len(expert.flush())
    result = {
        "bench": "phonetic",
        "expert": expert.describe(),
        "seconds": total / 16000,
        "pieces": len(times),
        "frames": frames,
        "threads": threads,
        "rtf": sum(times) / (total / 16000),
        "piece_ms": {"p50": 1000 * _percentile(times, 0.5), "p99": 1000 * _percentile(times, 0.99)},
        "piece_ms_by_tenth": {
            "mean": [1000 * float(np.mean(t)) for t in _tenths(times)],
            "max": [1000 * max(t) for t in _tenths(times)],
        },
        "longest_utterance_s": longest,
        "max_utterance_s": expert.max_utterance_s,
        "segments_held_at_end": len(expert.decoder.segments),
        "rss_mb": {"start": rss_start / 1024, "end": rss_kib("VmRSS") / 1024},
        "lookahead_ms": 1000 * expert.lookahead_s,
    }
    if encoder is not None:
        with torch.inference_mode():
            state, base = encoder.init_state(1), []
            for start in range(0, total, PIECE):
                t0 = time.perf_counter()
                _, state = encoder.step(torch.from_numpy(stream[start : start + PIECE])[None], state)
                base.append(time.perf_counter() - t0)
        result["mel_encoder"] = {
            "rtf": sum(base) / (total / 16000),
            "piece_ms": {"p50": 1000 * _percentile(base, 0.5), "p99": 1000 * _percentile(base, 0.99)},
            "lookahead_ms": 1000 * encoder.lookahead_s,
        }
        result["vs_mel_encoder"] = result["rtf"] / result["mel_encoder"]["rtf"]
    return result


__all__ = ["bench_phonetic"]
