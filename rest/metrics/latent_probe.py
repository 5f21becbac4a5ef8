"""Latent probe: how much of a per-frame label (SynthTalk's mouth openness) a VAE's latents carry.

A denoiser can only animate what its VAE's latents encode, so this is the first check of a VAE meant for
talking heads, long before a teacher is trained on it. Each clip is encoded whole (posterior mean); every latent
frame after the first (which codes frame 0 alone) is paired with the mean label of the `t` video frames it
covers. Ridge regression on standardised latents is fitted on the training clips, and the probe reports the
Pearson correlation of its predictions with the labels of held-out clips (other identities).

A linear probe is a lower bound on what a denoiser could read, but a useful one: a VAE whose latents the probe
cannot read has, in practice, reconstructions without a moving mouth (docs/experiments.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from rest.errors import RestError


def latent_label_pairs(
    clips: Iterable[tuple[np.ndarray, np.ndarray]],
    encode: Callable[[np.ndarray], torch.Tensor],
    temporal_compression: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, C*h*w), y (N,)) from clips of (uint8 frames (F, H, W, 3), labels (F,)).

    encode: frames -> latents (C, f, h, w) with f = 1 + (F - 1) / t.
    """
    t = temporal_compression
    xs, ys = [], []
    for frames, labels in clips:
        z = encode(frames).float().cpu().numpy()  # (C, f, h, w)
        for j in range(1, z.shape[1]):
            covered = labels[t * (j - 1) + 1 : t * j + 1]
            if len(covered) < t:
                break
            xs.append(z[:, j].ravel())
            ys.append(float(np.mean(covered)))
    if not xs:
        raise RestError("no latent frames to probe: clips need at least 1 + t frames")
    return np.stack(xs).astype(np.float64), np.asarray(ys, np.float64)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def ridge_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, ridge: float = 100.0
) -> dict:
    """Fit ridge regression on standardised features; correlations of its predictions on both sets."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (y_train - y_train.mean()))
    return {
        "corr": _corr(b @ w, y_test),
        "train_corr": _corr(a @ w, y_train),
        "train_samples": len(y_train),
        "test_samples": len(y_test),
        "dims": a.shape[1],
        "ridge": ridge,
    }
