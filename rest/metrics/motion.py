"""Scores of generated face motion (rest/pipelines/motion.py) against SynthTalk's labels and real speakers' mouths.

Held-out SynthTalk (clips of a motion set's `test_id` / `test_voice` splits: identities and voices never trained on):

- mouth: `jaw_open` against the label, correlation and mean absolute error, for the clip's own audio features and
  for another held-out clip's (the shuffled control; the same frames, the other clip's features cut to length);
- blinks: blink rate (closures crossing 0.5, per minute) of the output and of the labels;
- head and gaze: the standard deviation of each angle and the distribution of its frame-to-frame speed (median and
  95th percentile of |dx| * fps), output against labels: a frozen head has speed 0, a jittery one a large median;
- emotion: a nearest-centroid classifier trained on the training split's labels (window means of the expression
  parameters and the head pitch over 2 s windows, standardised) labels each output window; accuracy against the
  emotion asked for. Its accuracy on the held-out labels themselves is the ceiling.

Sampling temperature (`calibrate_noise_scale`): the starting noise's scale (motion.json's `noise_scale`), chosen
from a grid on training clips (never the held-out ones) to match the labels' head motion: the median frame-to-frame
speed of the head's three angles, as log ratios.

Real speech: the predicted `jaw_open` against the real speaker's inner-lip aperture (dlib landmarks,
rest/metrics/landmarks.py), best correlation within +-2 frames, as the video model's real-speech study scores it.
"""

from __future__ import annotations

import numpy as np

from rest.metrics.landmarks import lipsync_landmarks
from rest.models.rig import RIG_INDEX

EXPRESSION_PARAMS = ("smile", "brow_inner", "brow_outer", "brow_down", "lid", "head_pitch")
HEAD_PARAMS = ("head_yaw", "head_pitch", "head_roll", "gaze_x", "gaze_y")
WINDOW_FRAMES = 50  # 2 s at 25 fps


def blink_rate(blink: np.ndarray, fps: int) -> float:
    """Blinks per minute: upward crossings of 0.5 by the eyelid closure (F,)."""
    closed = blink >= 0.5
    onsets = int(np.count_nonzero(closed[1:] & ~closed[:-1]) + (closed[0] if len(closed) else 0))
    return onsets / max(len(blink) / fps / 60, 1e-9)


def speed(x: np.ndarray, fps: int) -> np.ndarray:
    """Frame-to-frame speed |dx| * fps (units per second), (F - 1,)."""
    return np.abs(np.diff(x)) * fps


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _windows(frames: np.ndarray) -> np.ndarray:
    """Window means of EXPRESSION_PARAMS over consecutive 2 s windows: (W, 6)."""
    cols = [RIG_INDEX[p] for p in EXPRESSION_PARAMS]
    n = len(frames) // WINDOW_FRAMES
    x = frames[: n * WINDOW_FRAMES, cols].reshape(n, WINDOW_FRAMES, len(cols))
    return x.mean(axis=1)


class EmotionClassifier:
    """Nearest centroid over standardised window means of the expression parameters (module docstring)."""

    def __init__(self, frames: list[np.ndarray], emotions: list[int], num_emotions: int):
        windows = [_windows(f) for f in frames]
        x = np.concatenate(windows)
        y = np.concatenate([np.full(len(w), e) for w, e in zip(windows, emotions, strict=True)])
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean) / self.std
        self.centroids = np.stack(
            [z[y == k].mean(0) if (y == k).any() else np.full(z.shape[1], np.inf) for k in range(num_emotions)]
        )

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """Rig frames (F, P) -> the emotion of each 2 s window, (W,)."""
        z = (_windows(frames) - self.mean) / self.std
        return np.argmin(((z[:, None, :] - self.centroids[None]) ** 2).sum(-1), axis=1)

    def accuracy(self, frames: list[np.ndarray], emotions: list[int]) -> float:
        hits = [self.predict(f) == e for f, e in zip(frames, emotions, strict=True)]
        hits = np.concatenate(hits) if hits else np.zeros(0, bool)
        return float(hits.mean()) if len(hits) else float("nan")


def motion_statistics(frames: np.ndarray, fps: int) -> dict[str, float]:
    """Blink rate, and per head/gaze parameter its std and speed median / 95th percentile."""
    out = {"blink_per_min": blink_rate(frames[:, RIG_INDEX["blink"]], fps)}
    for name in HEAD_PARAMS:
        x = frames[:, RIG_INDEX[name]]
        v = speed(x, fps)
        out[f"{name}/std"] = float(x.std())
        out[f"{name}/speed_p50"] = float(np.median(v)) if len(v) else 0.0
        out[f"{name}/speed_p95"] = float(np.percentile(v, 95)) if len(v) else 0.0
    return out


def mouth_scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    n = min(len(pred), len(label))
    return {"corr": _corr(pred[:n], label[:n]), "mae": float(np.abs(pred[:n] - label[:n]).mean())}


def real_mouth_scores(jaw: np.ndarray, aperture: np.ndarray) -> dict:
    """The predicted jaw opening against a real speaker's aperture: best correlation within +-2 frames and lag."""
    n = min(len(jaw), len(aperture))
    return lipsync_landmarks(jaw[:n], aperture[:n])


def heldout_motion_study(
    pipe,
    train_clips: list,
    test_clips: list,
    seed: int = 0,
    progress: bool = True,
    blinks: bool = True,
    saccades: bool = False,
) -> dict:
    """Generate every held-out clip from its own features and emotion (and from the next clip's features, the
    shuffled control) and score it against its labels (module docstring). Clips are `MotionClip`s of a motion set;
    blinks, saccades: the stream's blink and gaze processes (`MotionPipeline.stream`; the defaults as shipped)."""
    from tqdm import tqdm

    from rest.data.synth.emotion import EMOTIONS

    fps = pipe.fps
    classifier = EmotionClassifier([c.rig for c in train_clips], [c.emotion for c in train_clips], len(EMOTIONS))
    rows, outputs = [], []
    jaw = RIG_INDEX["jaw_open"]
    for i, clip in enumerate(tqdm(test_clips, desc="held-out motion", unit="clip", disable=not progress)):
        other = test_clips[(i + 1) % len(test_clips)]
        n = min(len(clip.features), len(other.features))
        emotion = EMOTIONS[clip.emotion]
        own = pipe.animate_features(clip.features, emotion, seed, blinks=blinks, saccades=saccades)
        shuffled = pipe.animate_features(other.features[:n], emotion, seed, blinks=blinks, saccades=saccades)
        outputs.append(own)
        row = {"clip": clip.clip_id, "split": clip.split, "emotion": emotion}
        row.update({f"mouth/{k}": v for k, v in mouth_scores(own[:, jaw], clip.rig[:, jaw]).items()})
        row.update({f"mouth_shuffled/{k}": v for k, v in mouth_scores(shuffled[:, jaw], clip.rig[:n, jaw]).items()})
        row.update({f"out/{k}": v for k, v in motion_statistics(own, fps).items()})
        row.update({f"label/{k}": v for k, v in motion_statistics(clip.rig[: len(own)], fps).items()})
        rows.append(row)
    emotions = [c.emotion for c in test_clips]
    return {
        "clips": rows,
        "mean": mean_of(rows),
        "emotion_accuracy": classifier.accuracy(outputs, emotions),
        "emotion_accuracy_labels": classifier.accuracy([c.rig for c in test_clips], emotions),
    }


CALIBRATION_GRID = (0.0, 0.1, 0.25, 0.5, 1.0)  # noise scales tried
CALIBRATION_KEYS = ("head_yaw/speed_p50", "head_pitch/speed_p50", "head_roll/speed_p50")


def motion_mismatch(out: dict[str, float], label: dict[str, float]) -> float:
    """How far generated head motion is from the labels': the mean |log ratio| of the median frame-to-frame speeds
    of yaw, pitch and roll (floored at 1e-3 rad/s, so a frozen head stays finite)."""
    return float(np.mean([abs(np.log((out[k] + 1e-3) / (label[k] + 1e-3))) for k in CALIBRATION_KEYS]))


def calibrate_noise_scale(
    pipe,
    clips: list,
    grid: tuple[float, ...] = CALIBRATION_GRID,
    seconds: float = 8.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Choose the pipeline's noise scale (module docstring) on the first `seconds` of `clips` (MotionClips of the
    training split): each scale of the grid, for every rig parameter, is scored by `motion_mismatch` of the clips'
    pooled statistics, the stream's blink process on. Returns the chosen `noise_scale` tuple (RIG_PARAMS order) and
    every scale's statistics; `pipe.noise_scale` is left as found."""
    from tqdm import tqdm

    from rest.data.synth.emotion import EMOTIONS

    fps, n = pipe.fps, int(seconds * pipe.fps)
    label = _pooled([motion_statistics(c.rig[:n], fps) for c in clips], [len(c.rig[:n]) for c in clips])
    before = pipe.noise_scale.clone()
    rows = []
    try:
        for scale in tqdm(grid, desc="noise scale", unit="setting", disable=not progress):
            pipe.noise_scale.fill_(scale)
            outs = [pipe.animate_features(c.features[:n], EMOTIONS[c.emotion], seed + i) for i, c in enumerate(clips)]
            out = _pooled([motion_statistics(x, fps) for x in outs], [len(x) for x in outs])
            rows.append({"scale": scale, "mismatch": motion_mismatch(out, label), **out})
    finally:
        pipe.noise_scale.copy_(before)
    best = min(rows, key=lambda r: r["mismatch"])
    return {"noise_scale": (best["scale"],) * len(RIG_INDEX), "label": label, "settings": rows, "best": best}


def _pooled(stats: list[dict[str, float]], lengths: list[int]) -> dict[str, float]:
    """Per-clip statistics -> one set, weighted by the clips' lengths."""
    w = np.asarray(lengths, np.float64) / max(sum(lengths), 1)
    return {k: float(sum(wi * s[k] for wi, s in zip(w, stats, strict=True))) for k in stats[0]}


def real_motion_study(pipe, clips: list, seed: int = 0, progress: bool = True) -> dict:
    """The predicted jaw opening for each real clip's audio (and the next clip's: shuffled) against the real speaker's
    aperture, and its rest ratio (pauses over speech, `mouth_rest_ratio`); clips are `RealClip`s
    (rest.metrics.realspeech)."""
    from tqdm import tqdm

    from rest.metrics.realspeech import loudness_envelope
    from rest.metrics.vad import mouth_rest_ratio

    jaw = RIG_INDEX["jaw_open"]
    rows = []
    for i, clip in enumerate(tqdm(clips, desc="real speech motion", unit="clip", disable=not progress)):
        other = clips[(i + 1) % len(clips)]
        own = pipe.animate(clip.audio, seed=seed)[:, jaw]
        shuffled = pipe.animate(other.audio, seed=seed)[:, jaw]
        n = min(len(own), len(shuffled), len(clip.aperture))
        rows.append(
            {
                "clip": clip.name,
                "own": real_mouth_scores(own, clip.aperture)["corr"],
                "shuffled": real_mouth_scores(shuffled[:n], clip.aperture[:n])["corr"],
                "loudness": real_mouth_scores(loudness_envelope(clip.audio), clip.aperture)["corr"],
                # on the opening a rig receives (ARKit JawOpen, clipped to 0 .. 1): the rig value dips below 0
                "rest_ratio": mouth_rest_ratio(np.clip(own[: len(clip.speech)], 0, 1), clip.speech[: len(own)]),
            }
        )
    return {"clips": rows, "mean": mean_of(rows)}


def mean_of(rows: list[dict]) -> dict[str, float]:
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))] if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


__all__ = [
    "CALIBRATION_GRID",
    "EXPRESSION_PARAMS",
    "EmotionClassifier",
    "HEAD_PARAMS",
    "blink_rate",
    "calibrate_noise_scale",
    "heldout_motion_study",
    "mean_of",
    "motion_mismatch",
    "motion_statistics",
    "mouth_scores",
    "real_mouth_scores",
    "real_motion_study",
    "speed",
]
