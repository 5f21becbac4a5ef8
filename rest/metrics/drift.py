"""Drift over long streams: identity similarity and sharpness per window of a long streaming generation.

The streaming student generates a long stream (e.g. 2 minutes of held-out speech) from one portrait; every
`window_seconds` of output is scored by

- `csim_dlib`: mean identity similarity of the window's frames (every `stride`-th) to the portrait
  (rest/metrics/identity.py), over the frames where dlib finds a face (None when it finds none);
- `faces_found`: the share of those frames where it finds one;
- `csim_dlib_at_portrait`: the same similarity with every frame embedded through the portrait's face alignment
  (identity.py, `at_reference`), so that frames too blurred for the detector are scored, not dropped;
- `sharpness`: mean variance of the Laplacian of the frames' luma (in [0, 255] units), the usual blur measure;
- `mean_abs_diff_portrait`: mean absolute pixel difference to the portrait (colour and layout drift).

Variants at inference (the same trained student):

- `full`: ID-Sink + Context-Cache, as trained;
- `no_sink`: the portrait's keys/values are replaced by the learned null portrait once the first window has slid
  past it (chunk `context_chunks + 1`), so identity is carried only by the context, as in a plain sliding window;
- `no_context`: `context_chunks = 0`, every chunk sees only the ID-Sink and itself.

A student trained without ASD (teacher forcing only) is compared by passing its export as another model.
"""

from __future__ import annotations

import numpy as np
import torch

from rest.media import tensor_to_frames
from rest.streaming import StreamingSession, write_sink

VARIANTS = ("full", "no_sink", "no_context")


def sharpness(frames: np.ndarray) -> float:
    """Mean variance of the 4-neighbour Laplacian of uint8 RGB frames (F, H, W, 3), on luma in [0, 255]."""
    luma = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:] - 4.0 * luma[:, 1:-1, 1:-1]
    return float(lap.var(axis=(1, 2)).mean())


@torch.no_grad()
def stream_frames(
    denoiser,
    vae,
    audio_encoder,
    portrait_latents: torch.Tensor,
    audio: np.ndarray,
    sigmas: torch.Tensor,
    variant: str = "full",
    context_timestep: float = 0.0,
    seed: int = 0,
    push_frames: int = 25,
):
    """Stream `audio` through the student second by second; yields uint8 frame blocks (F', H, W, 3) as they come.

    The stream ends with its last whole chunk (`end="whole_chunks"`). `denoiser` must already have the variant's
    context (`no_context`: a copy with context_chunks = 0); `no_sink` swaps the sink after the push that completes
    chunk context_chunks + 1."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    session = StreamingSession(
        denoiser,
        vae,
        portrait_latents,
        sigmas,
        audio_encoder=audio_encoder,
        context_timestep=context_timestep,
        seed=seed,
        end="whole_chunks",
    )
    step = push_frames * audio_encoder.samples_per_frame
    sink_replaced = variant != "no_sink"
    samples = torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None]
    for start in range(0, samples.shape[1], step):
        frames = session.push_audio(samples[:, start : start + step])
        if not sink_replaced and session.chunks_done > denoiser.config.context_chunks:
            write_sink(denoiser, session.cache, portrait_latents, null_portrait=True, replace=True)
            sink_replaced = True
        if frames.shape[2]:
            yield tensor_to_frames(frames[0])
    frames = session.finish()
    if frames.shape[2]:
        yield tensor_to_frames(frames[0])


def drift_curve(
    blocks,
    portrait: np.ndarray,
    embedder=None,
    fps: int = 25,
    window_seconds: float = 10.0,
    stride: int = 5,
) -> list[dict]:
    """Score the frames of `blocks` (an iterable of uint8 (F', H, W, 3)) per window of `window_seconds`."""
    from rest.metrics.identity import identity_similarity

    window = int(round(window_seconds * fps))
    rows, pending, start = [], [], 0

    def score(frames: np.ndarray) -> None:
        row = {
            "start_s": start / fps,
            "frames": len(frames),
            "sharpness": sharpness(frames),
            "mean_abs_diff_portrait": float(np.abs(frames.astype(np.float32) - portrait.astype(np.float32)).mean()),
        }
        if embedder is not None:
            detected = identity_similarity(embedder, portrait, frames, stride=stride)
            row["csim_dlib"] = detected["value"]
            row["faces_found"] = detected["frames_scored"] / max(1, len(frames[::stride]))
            at_portrait = identity_similarity(embedder, portrait, frames, stride=stride, at_reference=True)
            row["csim_dlib_at_portrait"] = at_portrait["value"]
        rows.append(row)

    for block in blocks:
        pending.append(block)
        frames = np.concatenate(pending)
        while len(frames) >= window:
            score(frames[:window])
            start += window
            frames = frames[window:]
        pending = [frames]
    frames = np.concatenate(pending)
    if len(frames) >= window // 2:  # a last partial window of at least half the length
        score(frames)
    return rows


__all__ = ["VARIANTS", "drift_curve", "sharpness", "stream_frames"]
