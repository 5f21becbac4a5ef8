"""Non-speech motion for SynthTalk: head sway, blinks and gaze, sampled per frame."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class Motion:
    """Per-frame motion labels (and renderer inputs)."""

    head_pose: np.ndarray  # float32 (F, 3): yaw, pitch, roll in degrees
    head_shift: np.ndarray  # float32 (F, 2): x, y translation as a fraction of the frame size
    blink: np.ndarray  # float32 (F,): eyelid closure, 0 open .. 1 closed
    gaze: np.ndarray  # float32 (F, 2): iris offset, -1..1


def smooth_noise(times: np.ndarray, rng: np.random.Generator, band: tuple[float, float] = (0.04, 0.5)) -> np.ndarray:
    """Smooth random signal with unit standard deviation: a sum of 6 sinusoids, frequencies log-uniform in `band` Hz.

    Amplitudes fall as f^-1/2 (slow drifts dominate); the normalisation is the analytic standard deviation of
    the sum, so it does not depend on the clip length.
    """
    freqs = np.exp(rng.uniform(np.log(band[0]), np.log(band[1]), 6))
    amps = freqs**-0.5
    phases = rng.uniform(0, 2 * np.pi, 6)
    signal = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * times[None, :] + phases[:, None])).sum(0)
    return signal / np.sqrt((amps**2).sum() / 2)


def blink_shape(times: np.ndarray, onset: float, close: float, hold: float, open_: float) -> np.ndarray:
    """One blink's eyelid closure at `times`: it closes in `close` s from `onset`, stays shut `hold` s, opens in
    `open_` s."""
    rise = np.clip((times - onset) / close, 0, 1)
    fall = np.clip((times - onset - close - hold) / open_, 0, 1)
    return np.where(times < onset + close + hold, rise, 1.0 - fall) * (times >= onset)


def blink_track(times: np.ndarray, rng: np.random.Generator, interval: tuple[float, float]) -> np.ndarray:
    """Eyelid closure at `times`: blinks every `interval` seconds (uniform), each ~150-250 ms long.

    A blink closes in 50-80 ms, stays shut 30-60 ms and opens in 70-110 ms (opening is slower than closing).
    """
    closure = np.zeros_like(times)
    end = times[-1] if len(times) else 0.0
    t = rng.uniform(0.2, interval[1])
    while t < end + 1.0:
        close, hold, open_ = rng.uniform(0.05, 0.08), rng.uniform(0.03, 0.06), rng.uniform(0.07, 0.11)
        closure = np.maximum(closure, blink_shape(times, t, close, hold, open_))
        t += close + hold + open_ + rng.uniform(*interval)
    return np.clip(closure, 0.0, 1.0)


def blink_events(
    rng: np.random.Generator, interval: tuple[float, float]
) -> Iterator[tuple[float, float, float, float]]:
    """`blink_track`'s blinks without end, (onset, close, hold, open) in seconds, for a stream."""
    t = rng.uniform(0.2, interval[1])
    while True:
        close, hold, open_ = rng.uniform(0.05, 0.08), rng.uniform(0.03, 0.06), rng.uniform(0.07, 0.11)
        yield t, close, hold, open_
        t += close + hold + open_ + rng.uniform(*interval)


class BlinkSchedule:
    """`blink_events` for a stream: the closure of any later frames on demand, in bounded memory."""

    def __init__(self, seed: int, fps: int, interval: tuple[float, float] = (2.0, 6.0)):
        self.fps = fps
        self.events = blink_events(np.random.default_rng(seed), interval)
        self.pending: list[tuple[float, ...]] = []  # drawn events not yet over

    def closure(self, first_frame: int, count: int) -> np.ndarray:
        """The closure of frames first_frame .. first_frame + count - 1, (count,) float32; ask in frame order."""
        times = (first_frame + np.arange(count)) / self.fps
        start, end = first_frame / self.fps, (first_frame + count) / self.fps
        while not self.pending or self.pending[-1][0] < end:
            self.pending.append(next(self.events))
        self.pending = [e for e in self.pending if e[0] + e[1] + e[2] + e[3] >= start]  # over: forgotten
        closure = np.zeros(count)
        for event in self.pending:
            closure = np.maximum(closure, blink_shape(times, *event))
        return np.clip(closure, 0.0, 1.0).astype(np.float32)


def gaze_track(times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fixations of 0.4-3 s joined by instant saccades (a saccade takes about one frame); mostly at the camera."""
    gaze = np.zeros((len(times), 2))
    t = 0.0
    end = times[-1] if len(times) else 0.0
    target = np.zeros(2)
    while t <= end:
        hold = rng.uniform(0.4, 3.0)
        gaze[(times >= t) & (times < t + hold)] = target
        t += hold
        target = np.clip(rng.normal(0, [0.35, 0.2]), -0.8, 0.8) if rng.random() < 0.6 else np.zeros(2)
    return gaze


def gaze_events(rng: np.random.Generator) -> Iterator[tuple[float, float, np.ndarray]]:
    """`gaze_track`'s fixations without end, (start, hold, target) in seconds and -1..1, for a stream."""
    t, target = 0.0, np.zeros(2)
    while True:
        hold = rng.uniform(0.4, 3.0)
        yield t, hold, target
        t += hold
        target = np.clip(rng.normal(0, [0.35, 0.2]), -0.8, 0.8) if rng.random() < 0.6 else np.zeros(2)


class GazeSchedule:
    """`gaze_events` for a stream: the gaze of any later frames on demand, in bounded memory."""

    def __init__(self, seed: int | list[int], fps: int):
        self.fps = fps
        self.events = gaze_events(np.random.default_rng(seed))
        self.pending: list[tuple[float, float, np.ndarray]] = []  # drawn fixations not yet over

    def gaze(self, first_frame: int, count: int) -> np.ndarray:
        """The gaze (x, y) of frames first_frame .. first_frame + count - 1, (count, 2) float32; ask in frame order."""
        times = (first_frame + np.arange(count)) / self.fps
        last = times[-1] if count else first_frame / self.fps
        while not self.pending or self.pending[-1][0] + self.pending[-1][1] <= last:
            self.pending.append(next(self.events))
        self.pending = [e for e in self.pending if e[0] + e[1] > first_frame / self.fps]  # over: forgotten
        gaze = np.zeros((count, 2))
        for start, hold, target in self.pending:
            gaze[(times >= start) & (times < start + hold)] = target
        return gaze.astype(np.float32)


def ema(x: np.ndarray, fps: float, tau: float) -> np.ndarray:
    """Causal exponential moving average with time constant `tau` seconds."""
    alpha = 1.0 - np.exp(-1.0 / (fps * tau))
    out = np.empty(len(x))
    acc = float(x[0]) if len(x) else 0.0
    for i, value in enumerate(x):
        acc += alpha * (value - acc)
        out[i] = acc
    return out


def make_motion(
    num_frames: int,
    fps: int,
    rng: np.random.Generator,
    *,
    sway: float = 1.0,
    blink_interval: tuple[float, float] = (2.0, 6.0),
    mouth_open: np.ndarray | None = None,
) -> Motion:
    """Head sway, blinks and gaze for one clip.

    Sway: yaw / pitch / roll with standard deviations 3.5 / 2 / 1.8 degrees times `sway`, and a shift of about 1%
    of the frame. If `mouth_open` (F,) is given, the head also nods a little with the speech energy.
    """
    times = (np.arange(num_frames) + 0.5) / fps
    yaw = 3.5 * sway * smooth_noise(times, rng)
    pitch = 2.0 * sway * smooth_noise(times, rng)
    roll = 1.8 * sway * smooth_noise(times, rng)
    shift = np.stack([0.012 * sway * smooth_noise(times, rng), 0.008 * sway * smooth_noise(times, rng)], 1)
    if mouth_open is not None and num_frames:
        energy = ema(mouth_open, fps, 0.3)
        pitch = pitch - 4.0 * sway * (energy - energy.mean())  # nod down a little on stressed stretches
        yaw = yaw + 2.0 * sway * (energy - energy.mean()) * np.sign(rng.uniform(-1, 1))
    pose = np.stack([np.clip(yaw, -15, 15), np.clip(pitch, -10, 10), np.clip(roll, -8, 8)], 1)
    return Motion(
        head_pose=pose.astype(np.float32),
        head_shift=np.clip(shift, -0.05, 0.05).astype(np.float32),
        blink=blink_track(times, rng, blink_interval).astype(np.float32),
        gaze=gaze_track(times, rng).astype(np.float32),
    )


__all__ = [
    "BlinkSchedule",
    "GazeSchedule",
    "Motion",
    "blink_events",
    "blink_shape",
    "blink_track",
    "ema",
    "gaze_events",
    "gaze_track",
    "make_motion",
    "smooth_noise",
]
