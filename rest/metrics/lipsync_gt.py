"""Lip sync against ground truth on SynthTalk: how well the generated mouth follows the dataset's `mouth_open` labels.

SynthTalk clips carry a per-frame mouth-openness label (0 closed .. 1 the identity's widest opening). Generated
frames have no label, so a small CNN (`MouthRegressor`, rest/models/mouth.py) trained on SynthTalk shards
estimates the openness of any frame; the metric compares its estimates on the generated video with the labels of
the ground-truth clip:

- `corr`: Pearson correlation at zero lag;
- `offset`, `best_corr`: the lag d in [-max_offset, max_offset] frames maximising corr(pred[t + d], labels[t]),
  i.e. d > 0 when the generated mouth moves d frames *after* the labels.

The ground-truth labels are read from `<name>.npz` (key `mouth_open`) next to the ground-truth video;
`export_shard_videos` writes such pairs from a shard root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rest.errors import RestError
from rest.metrics.fid import Extractor, file_sha256
from rest.models.loading import load_local
from rest.models.mouth import LABEL_KEY, MouthRegressor, box_slices
from rest.models.syncnet import center_crops

MAX_OFFSET = 15  # frames searched either side, as SyncNet's vshift


class PixelRidgeMouth:
    """A second judge of mouth openness without a CNN: ridge regression on the standardised RGB pixels of the lower
    half of the centred crop (`crop_fraction` of the short side, resized to `size`), fit on ground-truth frames.

    A generator trained against a CNN mouth expert (configs/demo/student_mouth.yaml) may learn textures the expert,
    and a regressor like it, read as an open mouth; a linear read-out of the pixels is much harder to satisfy that
    way, so a gap between own and shuffled audio under both judges is a mouth that moves.
    """

    def __init__(self, size: int = 32, crop_fraction: float = 0.6, alpha: float = 10.0):
        # alpha: chosen on SynthTalk's training clips, where the held-out ground truth reads as high at 10 as at 1
        # and lower from 100 on
        self.size, self.crop_fraction, self.alpha = size, crop_fraction, alpha
        self.weights: np.ndarray | None = None

    def features(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB (F, H, W, 3) -> (F, size / 2 * size * 3) float64 in [0, 1]."""
        crops = center_crops(frames, self.crop_fraction, self.size)[:, self.size // 2 :]
        return crops.reshape(len(frames), -1).astype(np.float64) / 255.0

    def fit(self, frames: list[np.ndarray], labels: list[np.ndarray]) -> PixelRidgeMouth:
        """Fit on clips' frames (each (F, H, W, 3)) and their `mouth_open` labels (each (>= F,))."""
        x = np.concatenate([self.features(f) for f in frames])
        y = np.concatenate([lab[: len(f)] for f, lab in zip(frames, labels, strict=True)]).astype(np.float64)
        self.mean, self.scale, self.bias = x.mean(0), x.std(0) + 1e-3, y.mean()
        x = (x - self.mean) / self.scale
        self.weights = np.linalg.solve(x.T @ x + self.alpha * np.eye(x.shape[1]), x.T @ (y - self.bias))
        return self

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """Openness (F,) of uint8 RGB frames (F, H, W, 3)."""
        if self.weights is None:
            raise RuntimeError("PixelRidgeMouth.predict before fit")
        return ((self.features(frames) - self.mean) / self.scale) @ self.weights + self.bias


def load_mouth_regressor(folder: str | Path) -> tuple[MouthRegressor, Extractor]:
    model = load_local(MouthRegressor, folder, "mouth regressor")
    weights = Path(folder) / "diffusion_pytorch_model.safetensors"
    extractor = Extractor(
        "mouth-openness regressor (project-trained on SynthTalk)", str(weights), file_sha256(weights)
    )
    return model.eval().requires_grad_(False), extractor


#################################################################################
#                        Correlation and offset of series                       #
#################################################################################


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def within_group_correlation(pred: np.ndarray, labels: np.ndarray, group: int) -> float:
    """Correlation of `pred` with `labels` within groups of `group` frames, each series less its group means.

    Frames 1..n in groups of `group`, as a causal VAE codes them (frame 0 alone, then one latent per group): near 0
    when each latent shows one mouth for its whole group, 1 when the motion inside the groups is kept.
    """
    n = (min(len(pred), len(labels)) - 1) // group * group
    if n < 2 * group:
        return float("nan")
    p = np.asarray(pred[1 : 1 + n], np.float64).reshape(-1, group)
    y = np.asarray(labels[1 : 1 + n], np.float64).reshape(-1, group)
    return _pearson((p - p.mean(1, keepdims=True)).ravel(), (y - y.mean(1, keepdims=True)).ravel())


def lag_correlation(pred: np.ndarray, labels: np.ndarray, max_offset: int = MAX_OFFSET) -> dict:
    """Correlation at lag 0 and the best lag of `pred` against `labels` (module docstring), over their common length.

    Each lag d correlates the overlapping parts pred[t + d], labels[t]; lags leaving fewer than 2 * max_offset
    frames of overlap are not tried.
    """
    n = min(len(pred), len(labels))
    pred, labels = np.asarray(pred[:n], np.float64), np.asarray(labels[:n], np.float64)
    if n < 3 * max_offset:
        raise ValueError(f"need at least {3 * max_offset} frames for lags up to +-{max_offset}, got {n}")
    corrs = {}
    for d in range(-max_offset, max_offset + 1):
        p = pred[max(d, 0) : n + min(d, 0)]
        q = labels[max(-d, 0) : n - max(d, 0)]
        corrs[d] = _pearson(p, q)
    best = max(corrs, key=lambda d: -np.inf if np.isnan(corrs[d]) else corrs[d])
    return {"corr": corrs[0], "offset": int(best), "best_corr": corrs[best], "frames": n}


def mouth_visibility(frames: np.ndarray, labels: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """How far the mouth's motion changes a clip's pixels: the RMS, in grey levels, of the part of each pixel of
    `box` (top, bottom, left, right as fractions of the frame) that a least-squares line on the `mouth_open`
    labels explains. Head motion and texture that do not follow the labels do not count; a mouth whose lips barely
    contrast with the skin scores low.
    """
    n = min(len(frames), len(labels))
    rows, cols = box_slices(box, *frames.shape[1:3])
    grey = np.asarray(frames[:n, rows, cols], np.float64)
    x = grey.mean(-1).reshape(n, -1)
    x = x - x.mean(0)
    y = np.asarray(labels[:n], np.float64)
    y = y - y.mean()
    if (y * y).sum() == 0:
        return 0.0
    slope = (y @ x) / (y @ y)
    return float(np.sqrt((slope * slope).mean() * (y * y).mean()))


def read_labels(path: str | Path) -> np.ndarray:
    """The `mouth_open` series (F,) of a ground-truth `<name>.npz`."""
    path = Path(path)
    if not path.is_file():
        raise RestError(
            f"lipsync_gt needs the ground-truth labels {path} (key {LABEL_KEY!r}); "
            "write SynthTalk clips with their labels via rest.metrics.lipsync_gt.export_shard_videos"
        )
    with np.load(path) as data:
        if LABEL_KEY not in data.files:
            raise RestError(f"{path} has no {LABEL_KEY!r} array (keys: {', '.join(data.files)})")
        return np.asarray(data[LABEL_KEY], np.float64)


#################################################################################
#                         Shard clips -> evaluation videos                      #
#################################################################################


def export_shard_videos(
    shard_root: str | Path, output: str | Path, *, split: str | None = None, clip_ids: list[str] | None = None
) -> list[Path]:
    """Write clips of a shard root as `<clip_id>.mp4` (frames + audio) and `<clip_id>.npz` (per-frame meta)."""
    from rest.data.shards import ShardReader
    from rest.media import write_video

    reader = ShardReader(shard_root)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in reader.records:
        if (split is not None and r.split != split) or (clip_ids is not None and r.clip_id not in clip_ids):
            continue
        path = out / f"{r.clip_id}.mp4"
        audio = np.array(reader.audio(r.clip_id), dtype=np.float32)
        write_video(path, reader.frames(r.clip_id), fps=r.fps, audio=audio, sample_rate=r.sample_rate, crf=12)
        np.savez(out / f"{r.clip_id}.npz", **reader.meta(r.clip_id))
        written.append(path)
    if not written:
        raise RestError(f"no clip of {shard_root} matches split={split!r}, clip_ids={clip_ids}")
    return written


__all__ = [
    "MAX_OFFSET",
    "PixelRidgeMouth",
    "export_shard_videos",
    "lag_correlation",
    "load_mouth_regressor",
    "mouth_visibility",
    "read_labels",
]
