"""The latent probe (rest/metrics/latent_probe.py, evaluation/latent_probe.py): latent frames pair with the labels
of the frames they cover, the ridge readout finds a label the latents carry and not one they do not."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rest.data.shards import ShardWriter
from rest.errors import RestError
from rest.metrics.latent_probe import latent_label_pairs, ridge_probe
from rest.models.vae import CausalVideoVAE

REPO = Path(__file__).resolve().parents[1]
R, FRAMES, T = 32, 81, 4


def mouth_labels(k: int) -> np.ndarray:
    return np.clip(0.5 + 0.5 * np.sin(np.arange(FRAMES) * (0.23 + 0.07 * k) + k), 0, 1).astype(np.float32)


def mouth_frames(labels: np.ndarray) -> np.ndarray:
    frames = np.full((len(labels), R, R, 3), 60, np.uint8)
    frames[:, 20:26, 10:22] = (labels * 255).astype(np.uint8)[:, None, None, None]
    return frames


def brightness_encoder(frames: np.ndarray) -> torch.Tensor:
    """Latent frame j = mean patch brightness of the frames it covers (frame 0 alone, then groups of T)."""
    b = frames[:, 20:26, 10:22, 0].mean(axis=(1, 2)) / 255.0
    groups = [b[:1]] + [b[T * (j - 1) + 1 : T * j + 1] for j in range(1, 1 + (len(b) - 1) // T)]
    return torch.tensor([g.mean() for g in groups], dtype=torch.float32).view(1, -1, 1, 1)


def test_latent_frames_pair_with_the_frames_they_cover():
    labels = mouth_labels(0)
    x, y = latent_label_pairs([(mouth_frames(labels), labels)], brightness_encoder, T)
    assert x.shape == (20, 1) and y.shape == (20,)  # 81 frames -> 21 latent frames, the first skipped
    assert np.allclose(y[0], labels[1:5].mean()) and np.allclose(y[-1], labels[77:81].mean())
    assert np.allclose(x[:, 0], y, atol=2 / 255)
    with pytest.raises(RestError, match="no latent frames"):
        latent_label_pairs([(mouth_frames(labels[:3]), labels[:3])], brightness_encoder, T)


def test_ridge_readout_finds_what_is_encoded_and_nothing_else():
    rng = np.random.default_rng(0)
    y_train, y_test = rng.uniform(size=400), rng.uniform(size=200)
    mixing = rng.standard_normal((1, 16))

    def features(y):  # the label mixed into 16 dims, plus noise
        return y[:, None] @ mixing + 0.1 * rng.standard_normal((len(y), 16))

    found = ridge_probe(features(y_train), y_train, features(y_test), y_test, ridge=1.0)
    assert found["corr"] > 0.95 and found["dims"] == 16 and found["test_samples"] == 200
    noise = ridge_probe(rng.standard_normal((400, 16)), y_train, rng.standard_normal((200, 16)), y_test)
    assert abs(noise["corr"]) < 0.2


def test_probe_script_on_shards(tmp_path):
    writer = ShardWriter(tmp_path / "shards", resolution=R)
    rng = np.random.default_rng(0)
    for k in range(6):
        labels = mouth_labels(k)
        audio = (0.1 * rng.standard_normal(FRAMES * 640)).astype(np.float32)
        split = "train" if k < 4 else "test_id"
        writer.write_clip(f"clip{k}", mouth_frames(labels), audio, meta={"mouth_open": labels}, split=split)
    torch.manual_seed(0)
    arch = {"latent_channels": 4, "patch_size": 2, "block_out_channels": [8, 16, 32], "layers_per_block": 1}
    CausalVideoVAE.from_preset("tiny", **arch).save_pretrained(tmp_path / "vae")
    out = tmp_path / "probe.json"
    args = ["--data", str(tmp_path / "shards"), "--vae", str(tmp_path / "vae"), "--seconds", "3.2"]
    args += ["--ridge", "1", "--output", str(out)]
    run = subprocess.run(
        [sys.executable, str(REPO / "evaluation" / "latent_probe.py"), *args], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["train_samples"] == 4 * 20 and result["test_samples"] == 2 * 20 and result["dims"] == 4 * 4 * 4
    assert result["corr"] > 0.5  # even a random VAE's latents keep a bright patch's brightness linearly
