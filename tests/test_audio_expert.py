"""Audio expert (rest/training/audio_expert.py): it learns a mouth openness that the audio's loudness carries, on
clips it never saw; the export loads as the teacher's audio encoder; shards without labels are refused."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rest.data.shards import ShardWriter
from rest.errors import RestError
from rest.models.audio import AudioEncoder
from rest.models.loading import load_local
from rest.training.audio_expert import train_audio_expert

REPO = Path(__file__).resolve().parents[1]
AUDIO = {"conv_channels": 16, "num_conv_layers": 1, "dim": 16, "num_layers": 1, "num_heads": 2, "attn_window": 8}
FRAMES = 100


def _write(root: Path, labelled: bool = True) -> Path:
    """Clips whose label is the loudness envelope of their noise audio: 6 train, 2 test_voice."""
    writer = ShardWriter(root, resolution=16)
    rng = np.random.default_rng(0)
    for k in range(8):
        loud = np.convolve(rng.random(FRAMES), np.ones(3) / 3, mode="same").astype(np.float32)
        audio = (np.repeat(loud, 640) * rng.uniform(-0.5, 0.5, FRAMES * 640)).astype(np.float32)
        frames = np.zeros((FRAMES, 16, 16, 3), np.uint8)
        meta = {"mouth_open": loud} if labelled else None
        writer.write_clip(f"clip{k}", frames, audio, meta=meta, split="train" if k < 6 else "test_voice")
    return writer.root


def test_learns_openness_on_unseen_clips(tmp_path):
    root = _write(tmp_path / "shards")
    out = train_audio_expert(
        root,
        tmp_path / "expert",
        steps=400,
        batch_size=8,
        window_frames=32,
        lr=3e-3,
        config=AUDIO,
        eval_splits=("test_voice",),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["heldout_corr_per_clip"]) == 2
    assert metrics["heldout_corr"] > 0.6, metrics["heldout_corr_per_clip"]  # 0.76 measured; misaligned labels: ~0
    assert metrics["log"][-1]["step"] == 400
    encoder = load_local(AudioEncoder, out)
    assert encoder.config.dim == 16 and encoder.lookahead_frames == 2


def test_refuses_clips_without_labels(tmp_path):
    root = _write(tmp_path / "shards", labelled=False)
    with pytest.raises(RestError, match="no 'mouth_open' labels"):
        train_audio_expert(root, tmp_path / "expert", steps=1, config=AUDIO)


def test_entry_point(tmp_path, monkeypatch):
    root = _write(tmp_path / "shards")
    argv = ["audio_expert.py", "--data", str(root), "--output", str(tmp_path / "e"), "--steps", "2"]
    argv += ["--batch-size", "2", "--window-frames", "8"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "train" / "audio_expert.py"), run_name="__main__")
    assert (tmp_path / "e" / "config.json").is_file() and (tmp_path / "e" / "metrics.json").is_file()


def test_feature_teacher_keeps_the_generators_feature_space(tmp_path):
    """With feature_teacher the expert starts as that encoder and, trained on augmented windows, stays close to its
    features on clean audio (what a denoiser trained on it reads), closer than an expert trained without it; the head
    is exported beside it."""
    from rest.data.augment import AugmentConfig
    from rest.models.audio import AudioExpert

    root = _write(tmp_path / "shards")
    teacher_dir = tmp_path / "teacher"
    AudioEncoder(**AUDIO).save_pretrained(teacher_dir)
    kwargs = dict(steps=60, batch_size=4, window_frames=16, lr=3e-3, eval_splits=("test_voice",))
    held = train_audio_expert(
        root, tmp_path / "held", augment=AugmentConfig(), feature_teacher=teacher_dir, feature_weight=10.0, **kwargs
    )
    free = train_audio_expert(root, tmp_path / "free", augment=AugmentConfig(), config=AUDIO, **kwargs)
    metrics = json.loads((held / "metrics.json").read_text())
    assert metrics["feature_teacher"] == str(teacher_dir) and "feature_loss" in metrics["log"][-1]
    teacher = load_local(AudioEncoder, teacher_dir).eval()
    audio = torch.from_numpy(np.random.default_rng(3).uniform(-0.3, 0.3, (1, 40 * 640)).astype(np.float32))
    with torch.no_grad():
        target = teacher(audio)

        def distance(folder):
            return (AudioExpert.load(folder).encoder(audio) - target).square().mean().item() / target.var().item()

        assert distance(held) < 0.5 * distance(free)
    with pytest.raises(RestError, match="give no encoder config"):
        train_audio_expert(root, tmp_path / "x", steps=1, config=AUDIO, feature_teacher=teacher_dir)
