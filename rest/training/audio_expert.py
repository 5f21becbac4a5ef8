"""Audio expert: pretrain the streaming audio encoder to hear the mouth, before the teacher uses it.

The teacher trains its audio encoder jointly with the denoiser, through the flow loss only. On SynthTalk, where the
mouth is a few tokens of an 8 x 8 latent, that signal is weak: trained at the denoiser's rate the encoder
can collapse to a constant, and frozen at its random initialisation it gives the teacher almost no audio response
(docs/experiments.md). This stage gives the encoder a direct target instead: the per-frame mouth openness of the
clips (SynthTalk's `mouth_open` labels), read through a linear head from the encoder's features over windows of
audio, with the encoder's own look-ahead and causality. The teacher then starts from it (`audio_encoder_init`,
usually frozen).

Real speech: synthetic voices are clean, level, dry and full-band, with digital silence between sentences, and an
expert trained on them alone learns the synthesizer, not speech. Two things aim at that gap: SynthTalk speaks with
voices built from real recordings (festival, flite) beside espeak-ng, and with `augment` every training window
passes through `rest.data.augment.SpeechAugment` (speed, reverberation, band limits, spectral tilt, noise and
babble, mu-law, level), so that the head must read the mouth through what microphones and rooms do. How far they
close it on real speech is measured by `evaluation/real_speech_study.py` (docs/experiments.md: so far within the
noise of 8 clips). `speed` resamples the labels with the audio; every other transform keeps their timing.

Keeping a trained generator: a denoiser trained on one encoder's features cannot read another's. With
`feature_teacher` (that encoder, frozen) the expert starts from the teacher's weights and learns, beside the head's
loss, to give on the augmented window the features the teacher gives on the clean one (mean squared distance over
the teacher's feature variance, weight `feature_weight`). The result reads rooms, microphones and the new voices in
the feature space the generator already knows, and replaces the encoder of a pipeline folder without retraining
its denoiser (`rest export-pipeline --audio-encoder`).

Held-out check: the correlation of the head's prediction with the labels on clips of other splits (unseen voices
and identities), per clip and averaged; written to `metrics.json` next to the export. The export is an audio
expert folder (`rest.models.audio.AudioExpert`): the encoder at the top, which the teacher's `audio_encoder_init`
loads as it is, and the head in `head/`.

    python train/audio_expert.py --data runs/demo/synthtalk --output runs/demo/audio_expert [--steps 1500]
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from rest.data.augment import AugmentConfig, SpeechAugment, speed
from rest.data.shards import ShardReader
from rest.errors import RestError
from rest.models.audio import AudioEncoder, AudioExpert, MouthHead
from rest.models.loading import load_local
from rest.models.mouth import LABEL_KEY
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
    tracks: list[_Track],
    batch_size: int,
    frames: int,
    spf: int,
    lookahead: int,
    gen: np.random.Generator,
    augment: SpeechAugment | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random windows: audio (B, (frames + lookahead) * spf) as heard, the same before augmentation, and the labels
    of their first `frames` frames.

    With `augment`, each window is cut `speed` times longer and played back at that rate (audio and labels), then
    passes through the augmentation chain, with a window of another clip as its possible babble; the clean copy is
    the played-back window before the chain (so its timing is the augmented one's).
    """
    span = frames + lookahead
    audio, clean, labels = [], [], []
    for i in gen.integers(0, len(tracks), batch_size):
        track = tracks[i]
        rate = augment.speed_factor(gen) if augment is not None else 1.0
        src = int(np.ceil(span * rate)) + 1  # source frames the window needs at this rate
        n = min(len(track.labels), len(track.audio) // spf)
        start = int(gen.integers(0, max(1, n - src)))
        a = track.audio[start * spf : (start + src) * spf]
        a = np.pad(a, (0, src * spf - len(a)))
        y = track.labels[start : start + src]
        y = np.pad(y, (0, src - len(y)), mode="edge")
        if rate != 1.0:
            a, y = speed(a, y, rate, spf)
        a, y = a[: span * spf], y[:frames]
        clean.append(a)
        if augment is not None:
            other = tracks[int(gen.integers(0, len(tracks)))].audio
            offset = int(gen.integers(0, max(1, len(other) - len(a))))
            babble = np.pad(other[offset : offset + len(a)], (0, max(0, len(a) - len(other) + offset)))
            a = augment(a, gen, babble=babble)
        audio.append(a)
        labels.append(y)
    return torch.from_numpy(np.stack(audio)), torch.from_numpy(np.stack(clean)), torch.from_numpy(np.stack(labels))


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
    augment: AugmentConfig | None = None,
    feature_teacher: str | Path | None = None,
    feature_weight: float = 1.0,
) -> Path:
    """Train an AudioEncoder (arguments `config`) with a linear openness head (`MouthHead`), on windows augmented by
    `augment` (None: as they are), optionally held to a frozen `feature_teacher`'s features (module docstring);
    export the audio expert folder to `output` with `metrics.json`. Returns `output`."""
    if steps < 1:
        raise RestError(f"steps must be at least 1, got {steps}")
    torch.manual_seed(seed)
    reader = ShardReader(shard_root)
    teacher = None
    if feature_teacher is not None:
        if config:
            raise RestError("with feature_teacher the encoder is a copy of the teacher: give no encoder config")
        teacher = (
            load_local(AudioEncoder, feature_teacher, "feature teacher (AudioEncoder)").eval().requires_grad_(False)
        )
        encoder = load_local(AudioEncoder, feature_teacher, "feature teacher (AudioEncoder)")
    else:
        encoder = AudioEncoder(**(config or {}))
    spf = encoder.samples_per_frame
    if reader.sample_rate // reader.fps != spf:
        raise RestError(
            f"{shard_root} has {reader.sample_rate // reader.fps} audio samples per video frame, the audio encoder "
            f"expects {spf}: set its sample_rate / fps to match the shards"
        )
    train, held_out = _tracks(reader, (split,)), _tracks(reader, eval_splits)
    head = MouthHead(encoder.config.out_dim, (LABEL_KEY,))
    augmenter = SpeechAugment(augment, encoder.config.sample_rate) if augment is not None else None
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    gen = np.random.default_rng(seed)
    lookahead = encoder.lookahead_frames
    t0, log = time.perf_counter(), []
    bar = tqdm(range(1, steps + 1), desc="audio expert")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, lr, min(100, steps // 10), steps)
        audio, clean, labels = _windows(train, batch_size, window_frames, spf, lookahead, gen, augmenter)
        features = encoder(audio)[:, :window_frames]  # (B, frames, D)
        loss = head_loss = F.mse_loss(head(features)[..., 0], labels)
        if teacher is not None:
            with torch.no_grad():
                target = teacher(clean)[:, :window_frames]  # (B, frames, D)
            feature_loss = F.mse_loss(features, target) / target.var()
            loss = head_loss + feature_weight * feature_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(mse=f"{head_loss.item():.4f}")
        if step % 250 == 0 or step == steps:
            corr = heldout_correlation(encoder, head, held_out)
            entry = {"step": step, "mse": head_loss.item(), "heldout_corr": float(np.mean(corr))}
            if teacher is not None:
                entry["feature_loss"] = feature_loss.item()
            log.append(entry)
            bar.write(f"audio expert step {step} | mse {loss.item():.4f} | held-out corr {entry['heldout_corr']:.3f}")
    output = Path(output)
    AudioExpert(encoder, head).save(output)  # `corr`: the last step's evaluation, of these weights
    metrics = {
        "label_variance": float(np.var(np.concatenate([t.labels for t in train]))),
        "heldout_corr": float(np.mean(corr)),
        "heldout_corr_per_clip": corr,
        "heldout_splits": list(eval_splits),
        "steps": steps,
        "augment": None if augment is None else asdict(augment),
        "feature_teacher": None if feature_teacher is None else str(feature_teacher),
        "feature_weight": feature_weight if feature_teacher is not None else None,
        "wall_s": time.perf_counter() - t0,
        "log": log,
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return output


__all__ = ["heldout_correlation", "train_audio_expert"]
