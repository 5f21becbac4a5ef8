"""Train the mouth-openness regressor (`rest.models.mouth.MouthRegressor`) on SynthTalk's `mouth_open` labels.

The network serves twice: as the evaluation's lip-sync judge (`rest.metrics.lipsync_gt`, a regressor trained with
seed 0) and as the mouth expert inside the VAE's and the student's losses (another seed, so that the judge is not
the network the generator learnt to please). Entry point: `train/mouth_regressor.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rest.errors import RestError
from rest.models.mouth import LABEL_KEY, MouthRegressor
from rest.models.vae import reconstruct


def _split_frames_and_labels(
    reader, split: str | None, model: MouthRegressor, vae=None, max_clip_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm import tqdm

    records = [r for r in reader.records if split is None or r.split == split]
    if not records:
        raise RestError(f"no clips of split {split!r} in {reader.root}")
    xs, ys = [], []
    for r in tqdm(records, desc="mouth regressor data", unit="clip", disable=vae is None):
        meta = reader.meta(r.clip_id)
        if LABEL_KEY not in meta:
            raise RestError(f"clip {r.clip_id} in {reader.root} has no {LABEL_KEY!r} labels (not a SynthTalk clip)")
        frames = reader.frames(r.clip_id, 0, max_clip_frames)
        if vae is not None:
            with torch.no_grad():
                frames = reconstruct(vae, frames)  # the first 1 + t*k frames, through the VAE
        xs.append(model.crops(frames))
        ys.append(torch.from_numpy(meta[LABEL_KEY][: len(frames)].astype(np.float32)))
    return torch.cat(xs), torch.cat(ys)


def train_mouth_regressor(
    shard_root: str | Path,
    steps: int = 500,
    *,
    output: str | Path | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    split: str | None = "train",
    seed: int = 0,
    config: dict | None = None,
    log_every: int = 100,
    vae=None,
    max_clip_frames: int | None = None,
) -> MouthRegressor:
    """Train a MouthRegressor on the `mouth_open` labels of a SynthTalk shard root; export it to `output`.

    All frames of the split are cropped and held in memory as uint8 (64 x 64 x 3 bytes each: 12 KiB, so 100k
    frames take 1.2 GB). MSE loss, AdamW, cosine learning-rate decay; a horizontal flip as augmentation (openness
    is symmetric).

    vae: a CausalVideoVAE: train on its reconstructions of the clips instead (a regressor that reads the mouth as
    generators in that VAE's latent space can show it; the study then reports the ceiling it allows).
    max_clip_frames: use the first n frames of each clip.
    """
    from rest.data.shards import ShardReader

    torch.manual_seed(seed)
    model = MouthRegressor(**(config or {}))
    x, y = _split_frames_and_labels(ShardReader(shard_root), split, model, vae, max_clip_frames)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps), eta_min=lr * 0.05)
    gen = torch.Generator().manual_seed(seed)
    t0, running = time.perf_counter(), 0.0
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        xb = x[idx].float() / 127.5 - 1.0  # (B, 3, S, S)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        loss = F.mse_loss(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if log_every and (step % log_every == 0 or step == steps):
            n = log_every if step % log_every == 0 else step % log_every
            print(
                f"mouth regressor step {step} | mse {running / n:.4f} | {step / (time.perf_counter() - t0):.1f} it/s"
            )
            running = 0.0
    model.eval()
    if output is not None:
        model.save_pretrained(str(output))
    return model


__all__ = ["train_mouth_regressor"]
