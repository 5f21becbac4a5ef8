"""Voice activity per video frame: which frames of a clip are speech and which are silence.

Used to score a mouth at rest: a talking head should close its mouth in pauses, and `mouth_rest_ratio` compares the
generated mouth's opening in silent frames with that in speech frames. Two detectors:

- `silero`: the Silero VAD network (MIT), whose weights ship inside the `silero-vad` wheel (offline;
  `pip install silero-vad`). Robust to room noise and music beds. Used when installed.
- `energy`: frame energy against the clip's own range: a frame is speech when its RMS lies above
  `floor + threshold * (peak - floor)` in dB, where floor and peak are the 10th and 99th percentiles of the clip's
  frame levels; a clip whose levels span less than `min_range_db` is all silence (a silent file or steady noise).
  Speech spans are then closed over gaps shorter than `hangover_s` and stripped of bursts shorter than
  `min_speech_s`. No dependency.

Both answer per video frame (`fps`, 640 samples per frame at 16 kHz): a frame is speech when at least half of its
samples lie inside a detected speech span.
"""

from __future__ import annotations

import numpy as np

from rest.errors import RestError

BACKENDS = ("auto", "silero", "energy")


def silero_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("silero_vad") is not None


def _close_gaps(speech: np.ndarray, max_gap: int) -> np.ndarray:
    """Set runs of False no longer than `max_gap` that lie between two True frames to True."""
    out = speech.copy()
    idx = np.flatnonzero(speech)
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if 1 < b - a <= max_gap + 1:
            out[a:b] = True
    return out


def _drop_short(speech: np.ndarray, min_len: int) -> np.ndarray:
    """Set runs of True shorter than `min_len` to False."""
    out = speech.copy()
    edges = np.flatnonzero(np.diff(np.r_[0, speech.astype(np.int8), 0]))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if end - start < min_len:
            out[start:end] = False
    return out


def energy_vad(
    samples: np.ndarray,
    sample_rate: int = 16000,
    fps: int = 25,
    threshold: float = 0.35,
    min_range_db: float = 15.0,
    hangover_s: float = 0.2,
    min_speech_s: float = 0.08,
) -> np.ndarray:
    """Speech flag per video frame (F,) bool from frame energy (module docstring)."""
    spf = sample_rate // fps
    n = len(samples) // spf
    if n == 0:
        return np.zeros(0, bool)
    frames = np.asarray(samples[: n * spf], np.float64).reshape(n, spf)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)  # dB
    floor, peak = np.percentile(level, 10), np.percentile(level, 99)
    if peak - floor < min_range_db:
        return np.zeros(n, bool)
    speech = level > floor + threshold * (peak - floor)
    speech = _close_gaps(speech, round(hangover_s * fps))
    return _drop_short(speech, max(1, round(min_speech_s * fps)))


def silero_vad(samples: np.ndarray, sample_rate: int = 16000, fps: int = 25) -> np.ndarray:
    """Speech flag per video frame (F,) bool from Silero VAD's speech timestamps (its default settings)."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    if sample_rate != 16000:
        raise RestError(f"silero VAD runs at 16 kHz here, got {sample_rate} Hz; resample first")
    global _SILERO
    if _SILERO is None:
        _SILERO = load_silero_vad()
    spans = get_speech_timestamps(torch.from_numpy(np.asarray(samples, np.float32)), _SILERO, sampling_rate=16000)
    spf = sample_rate // fps
    inside = np.zeros(len(samples), bool)
    for span in spans:
        inside[span["start"] : span["end"]] = True
    n = len(samples) // spf
    return inside[: n * spf].reshape(n, spf).mean(axis=1) >= 0.5


_SILERO = None


def speech_frames(samples: np.ndarray, sample_rate: int = 16000, fps: int = 25, backend: str = "auto") -> np.ndarray:
    """Speech flag per video frame (F,) bool; backend "auto" is silero when installed, else energy."""
    if backend not in BACKENDS:
        raise RestError(f"unknown VAD backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "silero" if silero_available() else "energy"
    if backend == "silero":
        if not silero_available():
            raise RestError("the silero VAD needs its wheel: pip install silero-vad (weights inside, offline)")
        return silero_vad(samples, sample_rate, fps)
    return energy_vad(samples, sample_rate, fps)


def vad_name(backend: str = "auto") -> str:
    """The detector that `speech_frames(backend=...)` runs."""
    if backend == "auto":
        return "silero" if silero_available() else "energy"
    return backend


def mouth_rest_ratio(aperture: np.ndarray, speech: np.ndarray, min_frames: int = 5) -> float:
    """Mean aperture over silent frames / mean aperture over speech frames (nan when either has < min_frames).

    0 is a mouth shut in every pause; 1 a mouth as open in pauses as in speech.
    """
    n = min(len(aperture), len(speech))
    a, s = np.asarray(aperture[:n], np.float64), np.asarray(speech[:n], bool)
    if s.sum() < min_frames or (~s).sum() < min_frames:
        return float("nan")
    talking = a[s].mean()
    return float(a[~s].mean() / talking) if talking > 0 else float("nan")


__all__ = ["BACKENDS", "energy_vad", "mouth_rest_ratio", "silero_available", "silero_vad", "speech_frames", "vad_name"]
