"""Audio expert: pretrain the streaming audio encoder to hear the mouth, before the teacher uses it.

The teacher trains its audio encoder jointly with the denoiser, through the flow loss only. On SynthTalk, where the
mouth is a few tokens of an 8 x 8 latent, that signal is weak: trained at the denoiser's rate the encoder
collapsed to a constant, and frozen at its random initialisation the teacher's audio_gain stayed under 0.001 after
4000 steps (model card). This stage gives the encoder a direct target instead: the per-frame mouth openness of the
clips (SynthTalk's `mouth_open` labels), read through a linear head from the encoder's features over windows of
audio, with the encoder's own look-ahead and causality. The teacher then starts from it (`audio_encoder_init`,
usually frozen).

Held-out check: the correlation of the head's prediction with the labels on clips of other splits (unseen voices
and identities), per clip and averaged; written to `metrics.json` next to the export.

    python train/audio_expert.py --data runs/demo/synthtalk --output runs/demo/audio_expert [--steps 1500]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from rest.data.shards import ShardReader
from rest.errors import RestError
from rest.metrics.lipsync_gt import LABEL_KEY
from rest.models.audio import AudioEncoder
from rest.training.common import lr_at


@dataclass
class _Track:
    """One clip's audio (N,) and labels (F,) in memory."""

    audio: np.ndarray
    labels: np.ndarray


def _tracks(reader: ShardReader, splits: tuple[str, ...]) -> list[_Track]:
    tracks = []
    for record in reader.records:
        if record.split not in splits:
            continue
        labels = reader.meta(record.clip_id).get(LABEL_KEY)
        if labels is None:
            raise RestError(
                f"clip {record.clip_id} has no {LABEL_KEY!r} labels: the audio expert trains on SynthTalk shards "
                f"(`rest synth`), whose clips carry the mouth openness of every frame"
            )
        audio = np.array(reader.audio(record.clip_id), np.float32)  # a writable copy
        tracks.append(_Track(audio, np.asarray(labels, np.float32)))
    if not tracks:
        raise RestError(f"{reader.root} has no clips in splits {', '.join(splits)}")
    return tracks


def _windows(
    tracks: list[_Track], batch_size: int, frames: int, spf: int, lookahead: int, gen: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: audio (B, (frames + lookahead) * spf) and the labels of their first `frames` frames."""
    audio, labels = [], []
    for i in gen.integers(0, len(tracks), batch_size):
        track = tracks[i]
        n = min(len(track.labels), len(track.audio) // spf)
        start = int(gen.integers(0, max(1, n - frames - lookahead)))
        a = track.audio[start * spf : (start + frames + lookahead) * spf]
        audio.append(np.pad(a, (0, (frames + lookahead) * spf - len(a))))
        y = track.labels[start : start + frames]
        labels.append(np.pad(y, (0, frames - len(y)), mode="edge"))
    return torch.from_numpy(np.stack(audio)), torch.from_numpy(np.stack(labels))


@torch.no_grad()
def heldout_correlation(encoder: AudioEncoder, head: nn.Module, tracks: list[_Track]) -> list[float]:
    """Per clip: Pearson correlation of the predicted openness over the whole clip with its labels."""
    encoder.eval()
    out = []
    for track in tracks:
        pred = head(encoder(torch.from_numpy(track.audio)[None]))[0, :, 0].numpy()
        n = min(len(pred), len(track.labels))
        out.append(float(np.corrcoef(pred[:n], track.labels[:n])[0, 1]))
    encoder.train()
    return out


def train_audio_expert(
    shard_root: str | Path,
    output: str | Path,
    steps: int = 1500,
    batch_size: int = 16,
    window_frames: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    config: dict | None = None,
    split: str = "train",
    eval_splits: tuple[str, ...] = ("test_id", "test_voice"),
) -> Path:
    """Train an AudioEncoder (arguments `config`) with a linear openness head; export the encoder to `output`
    (save_pretrained) with `metrics.json`. Returns `output`."""
    if steps < 1:
        raise RestError(f"steps must be at least 1, got {steps}")
    torch.manual_seed(seed)
    reader = ShardReader(shard_root)
    encoder = AudioEncoder(**(config or {}))
    spf = encoder.samples_per_frame
    if reader.sample_rate // reader.fps != spf:
        raise RestError(
            f"{shard_root} has {reader.sample_rate // reader.fps} audio samples per video frame, the audio encoder "
            f"expects {spf}: set its sample_rate / fps to match the shards"
        )
    train, held_out = _tracks(reader, (split,)), _tracks(reader, eval_splits)
    head = nn.Linear(encoder.config.out_dim, 1)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    gen = np.random.default_rng(seed)
    lookahead = encoder.lookahead_frames
    t0, log = time.perf_counter(), []
    bar = tqdm(range(1, steps + 1), desc="audio expert")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, lr, min(100, steps // 10), steps)
        audio, labels = _windows(train, batch_size, window_frames, spf, lookahead, gen)
        pred = head(encoder(audio)[:, :window_frames])[..., 0]  # (B, frames)
        loss = F.mse_loss(pred, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(mse=f"{loss.item():.4f}")
        if step % 250 == 0 or step == steps:
            corr = heldout_correlation(encoder, head, held_out)
            entry = {"step": step, "mse": loss.item(), "heldout_corr": float(np.mean(corr))}
            log.append(entry)
            bar.write(f"audio expert step {step} | mse {loss.item():.4f} | held-out corr {entry['heldout_corr']:.3f}")
    output = Path(output)
    encoder.eval().save_pretrained(str(output))  # `corr`: the last step's evaluation, of these weights
    metrics = {
        "label_variance": float(np.var(np.concatenate([t.labels for t in train]))),
        "heldout_corr": float(np.mean(corr)),
        "heldout_corr_per_clip": corr,
        "heldout_splits": list(eval_splits),
        "steps": steps,
        "wall_s": time.perf_counter() - t0,
        "log": log,
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return output


__all__ = ["heldout_correlation", "train_audio_expert"]
