"""VAE training: learns, checkpoints, resumes, exports; optional GAN, LPIPS and mouth-expert losses; config errors."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rest.config import ConfigError, load_config
from rest.data.videos import motion_map
from rest.errors import RestError
from rest.media import write_video
from rest.models.loading import load_local
from rest.models.mouth import MouthRegressor
from rest.models.perceptual import LPIPS, VGG16Features
from rest.models.vae import CausalVideoVAE
from rest.training.common import MetricsLog, TrainingRun, latest_checkpoint, read_trainer_state
from rest.training.vae import (
    VAEDataConfig,
    VAEExperiment,
    VAELossConfig,
    VAETrainConfig,
    evaluate_psnr,
    mouth_expert_distance,
    train_vae,
)

REPO = Path(__file__).resolve().parents[1]
SMALL_ARCH = {"latent_channels": 4, "patch_size": 2, "block_out_channels": [8, 16, 32], "layers_per_block": 1}


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    """Two short synthetic videos: a moving blob on a gradient."""
    root = tmp_path_factory.mktemp("videos")
    yy, xx = np.mgrid[0:48, 0:48]
    for k in range(2):
        frames = []
        for t in range(30):
            cx, cy = 24 + 10 * np.cos(0.2 * t + k), 24 + 10 * np.sin(0.2 * t)
            blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < 60).astype(np.float32)
            img = np.stack([xx / 48, yy / 48, blob], -1) * 255
            frames.append(img.astype(np.uint8))
        write_video(root / f"clip{k}.mp4", np.stack(frames), fps=25)
    return root


def experiment(root: Path, out: Path, **train) -> VAEExperiment:
    return VAEExperiment(
        preset="tiny",
        model=dict(SMALL_ARCH),
        data=VAEDataConfig(root=str(root), resolution=32, num_frames=5),
        loss=VAELossConfig(),
        train=VAETrainConfig(
            output_dir=str(out),
            batch_size=2,
            lr=3e-3,
            warmup_steps=5,
            log_every=5,
            eval_every=0,
            checkpoint_every=10,
            **train,
        ),
    )


def test_learns_checkpoints_and_exports(video_dir, tmp_path):
    out = tmp_path / "run"
    export = train_vae(experiment(video_dir, out, max_steps=60))
    train_logs = MetricsLog.read(out, "train")
    assert train_logs[-1]["l1"] < 0.6 * train_logs[0]["l1"], [m["l1"] for m in train_logs]
    evals = MetricsLog.read(out, "eval")
    assert evals and evals[-1]["step"] == 60 and evals[-1]["psnr"] > 15
    vae = load_local(CausalVideoVAE, export)
    assert vae.config.scaling_factor != 1.0  # measured on the data at export
    assert read_trainer_state(latest_checkpoint(out))["step"] == 60


def test_training_with_streamed_context(video_dir, tmp_path):
    """Windows after a no-grad streamed context: the clip read is longer, the loss sees num_frames - 1 frames."""
    cfg = experiment(video_dir, tmp_path / "run", max_steps=6)
    cfg.data.context_frames = 9
    cfg.train.log_every = 1
    train_vae(cfg)
    logs = MetricsLog.read(tmp_path / "run", "train")
    assert len(logs) == 6 and all(np.isfinite(m["l1"]) for m in logs)
    assert {m["samples_per_s"] > 0 for m in logs} == {True}
    cfg.data.context_frames = 8
    with pytest.raises(ValueError, match="context_frames must be 0 or 1 \\+ 4\\*j"):
        train_vae(cfg)


def test_resume_continues_from_the_checkpoint(video_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train_vae(experiment(video_dir, out, max_steps=10))
    first = latest_checkpoint(out)
    state = torch.load(first / "random_states_0.pkl", weights_only=False)
    assert read_trainer_state(first)["step"] == 10 and state is not None
    weights_at_10 = load_local(CausalVideoVAE, out / "export").state_dict()
    capsys.readouterr()
    train_vae(experiment(video_dir, out, max_steps=20), resume="latest")
    assert f"resumed from {first} at step 10" in capsys.readouterr().out
    assert read_trainer_state(latest_checkpoint(out))["step"] == 20
    steps = [m["step"] for m in MetricsLog.read(out, "train")]
    assert steps == [5, 10, 15, 20]  # the second run logged only steps 11..20
    weights_at_20 = load_local(CausalVideoVAE, out / "export").state_dict()
    assert any(not torch.equal(weights_at_10[k], weights_at_20[k]) for k in weights_at_10)


def test_motion_map_marks_what_moves():
    frames = np.full((20, 16, 16, 3), 100, np.uint8)
    frames[::2, 4:8, 10:14] = 200  # a blinking patch on a still frame
    motion = motion_map(frames)
    assert motion.shape == (1, 16, 16)
    assert torch.allclose(motion.mean(), torch.tensor(1.0))
    assert motion[0, 4:8, 10:14].min() > 10 and motion[0, :4].max() == 0


def test_psnr_of_moving_pixels():
    """A 'VAE' that reconstructs all but a blinking patch: the motion PSNR sees the patch, the plain one less."""

    class BlindToThePatch:
        temporal_compression = 4

        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

        def decode(self, z):
            y = z.clone()
            y[:, :, :, 4:8, 10:14] = z[:, :, :1, 4:8, 10:14]  # the patch frozen at its first frame
            return SimpleNamespace(sample=y)

    frames = np.full((9, 16, 16, 3), 100, np.uint8)
    frames[1::2, 4:8, 10:14] = 200
    result = evaluate_psnr(BlindToThePatch(), [frames], 9, torch.device("cpu"))
    plain_mse = (4 / 9) * (16 / 256) * (100 / 255) ** 2  # 4 of 9 frames wrong on 16 of 256 pixels
    assert result["psnr"] == pytest.approx(10 * np.log10(1 / plain_mse), abs=0.01)
    assert result["psnr_motion"] < result["psnr"] - 10  # all the weight is on the patch


def test_fine_tune_from_an_export_with_motion_weighting(video_dir, tmp_path):
    first = train_vae(experiment(video_dir, tmp_path / "a", max_steps=30))
    cfg = experiment(video_dir, tmp_path / "b", max_steps=3)
    cfg.init, cfg.loss.motion_weight, cfg.train.log_every = str(first), 1.0, 1
    train_vae(cfg)
    start_a, start_b = MetricsLog.read(tmp_path / "a", "train")[0], MetricsLog.read(tmp_path / "b", "train")[0]
    assert start_b["l1"] < 0.7 * start_a["l1"]  # starts where run a ended, not from random weights
    assert {"l1", "l1_motion"} <= set(start_b)
    # Video stage after a frames stage: the copied first-frame weights and the temporal L1.
    cfg = experiment(video_dir, tmp_path / "d", max_steps=2)
    cfg.init, cfg.init_from_frames, cfg.loss.temporal_weight, cfg.train.log_every = str(first), True, 1.0, 1
    train_vae(cfg)
    start_d = MetricsLog.read(tmp_path / "d", "train")[0]
    assert 0 < start_d["l1_temporal"] < start_d["l1"]
    assert start_d["loss"] > start_d["l1"] + 0.9 * start_d["l1_temporal"]  # the term is in the loss
    cfg.init = None
    with pytest.raises(ValueError, match="init_from_frames needs init"):
        train_vae(cfg)
    cfg = experiment(video_dir, tmp_path / "c", max_steps=1)
    cfg.init, cfg.model = str(first), {**SMALL_ARCH, "latent_channels": 8}
    with pytest.raises(ValueError, match="another architecture .latent_channels: 4"):
        train_vae(cfg)
    cfg.model = {**SMALL_ARCH, "norm": "none"}  # same weight names and shapes: only the check catches it
    with pytest.raises(ValueError, match="another architecture .norm: 'rms'"):
        train_vae(cfg)


def test_keep_latent_scale_keeps_the_inits_shift_and_scale(video_dir, tmp_path):
    """A fine-tuned VAE whose latents a generator already reads keeps its init's shift and scale (`rest avatar`);
    without the option they are measured on the new data."""
    first = train_vae(experiment(video_dir, tmp_path / "a", max_steps=2))
    start = CausalVideoVAE.from_pretrained(first).config
    cfg = experiment(video_dir, tmp_path / "b", max_steps=2)
    cfg.init, cfg.keep_latent_scale, cfg.train.lr = str(first), True, 0.3  # a large step moves the latents
    kept = CausalVideoVAE.from_pretrained(train_vae(cfg)).config
    assert (kept.shift_factor, kept.scaling_factor) == (start.shift_factor, start.scaling_factor)
    cfg = experiment(video_dir, tmp_path / "c", max_steps=2)
    cfg.init, cfg.train.lr = str(first), 0.3
    measured = CausalVideoVAE.from_pretrained(train_vae(cfg)).config
    assert measured.scaling_factor != pytest.approx(start.scaling_factor, rel=1e-3)
    cfg.init, cfg.keep_latent_scale = None, True
    with pytest.raises(ValueError, match="keep_latent_scale needs init"):
        train_vae(cfg)


def test_ctrl_c_saves_a_checkpoint_to_resume_from(video_dir, tmp_path, monkeypatch, capsys):
    after_step = TrainingRun.after_step

    def interrupt_at_7(self, step, *args, **kwargs):
        after_step(self, step, *args, **kwargs)
        if step == 7:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(TrainingRun, "after_step", interrupt_at_7)
        with pytest.raises(KeyboardInterrupt):
            train_vae(experiment(video_dir, out, max_steps=20))
    assert "interrupted at step 7" in capsys.readouterr().out
    assert read_trainer_state(latest_checkpoint(out))["step"] == 7 and not (out / "export").exists()
    train_vae(experiment(video_dir, out, max_steps=10), resume="latest")
    assert "resumed from" in capsys.readouterr().out
    assert [m["step"] for m in MetricsLog.read(out, "train")] == [5, 10]  # steps 8..10 after the resume


def test_gan_and_perceptual_losses_run(video_dir, tmp_path):
    vgg = tmp_path / "vgg16.pth"
    torch.save({**VGG16Features().state_dict(), "classifier.0.weight": torch.zeros(2, 2)}, vgg)
    cfg = experiment(video_dir, tmp_path / "run", max_steps=4)
    cfg.loss = VAELossConfig(perceptual_weight=0.1, perceptual_vgg=str(vgg), gan_weight=0.1, gan_start_step=2)
    cfg.train.log_every = 1
    train_vae(cfg)
    logs = MetricsLog.read(tmp_path / "run", "train")
    assert "lpips" in logs[0] and "g_loss" not in logs[0]
    assert "g_loss" in logs[-1] and "d_loss" in logs[-1] and np.isfinite(logs[-1]["d_loss"])


def test_mouth_expert_crop_and_distance():
    torch.manual_seed(0)
    expert = MouthRegressor(image_size=16, crop_fraction=0.6, channels=(4, 8)).eval().requires_grad_(False)
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    as_tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    # The differentiable crop is the metric's crop, up to the metric's rounding to uint8.
    torch.testing.assert_close(expert.crop_tensor(as_tensor), expert.preprocess(frames), atol=0.501 / 127.5, rtol=0)
    x = torch.rand(4, 3, 40, 40) * 2 - 1
    assert mouth_expert_distance(expert, x, x).item() < 1e-10
    recon = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    dist = mouth_expert_distance(expert, recon, x)
    dist.backward()
    assert dist.item() > 0 and recon.grad.abs().sum() > 0
    # Only the centred 24 x 24 crop is read, and the expert gets no gradient.
    outside = torch.ones(40, 40, dtype=torch.bool)
    outside[8:32, 8:32] = False
    assert recon.grad[..., outside].abs().sum() == 0 and recon.grad[..., 8:32, 8:32].abs().sum() > 0
    assert all(p.grad is None for p in expert.parameters())


def test_mouth_expert_loss_in_training(video_dir, tmp_path):
    expert = tmp_path / "expert"
    MouthRegressor(image_size=16, channels=(4, 8)).save_pretrained(expert)
    cfg = experiment(video_dir, tmp_path / "run", max_steps=2)
    cfg.loss.mouth_weight, cfg.train.log_every = 0.5, 1
    with pytest.raises(ValueError, match="needs loss.mouth_expert"):
        train_vae(cfg)
    cfg.loss.mouth_expert = str(expert)
    train_vae(cfg)
    start = MetricsLog.read(tmp_path / "run", "train")[0]
    assert start["mouth"] > 0
    assert start["loss"] > start["l1"] + 0.45 * start["mouth"]  # the term is in the loss


def test_lpips_loader_and_math(tmp_path):
    torch.manual_seed(0)
    vgg = tmp_path / "vgg.pth"
    torch.save(VGG16Features().state_dict(), vgg)
    lpips = LPIPS.from_files(vgg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    near, far = lpips(x, x + 0.05 * torch.randn_like(x)), lpips(x, -x)
    assert (near < far).all()
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(RestError, match="not a torchvision VGG16 state dict"):
        LPIPS.from_files(bad)
    with pytest.raises(RestError, match="not found"):
        LPIPS.from_files(tmp_path / "missing.pth")


def test_config_unknown_key_is_named(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("preset: tiny\ndata: {root: x}\ntrain: {max_stepz: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'max_stepz'"):
        load_config(VAEExperiment, path)
    path.write_text("preset: tiny\ndata: {root: x}\nmodel: {latent_chanels: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'latent_chanels'"):
        load_config(VAEExperiment, path).arch()
    path.write_text("preset: huge\ndata: {root: x}\n")
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config(VAEExperiment, path).arch()


def test_shipped_configs_load():
    for name in ["vae_tiny.yaml", "vae_base.yaml", "vae_tiny_overfit.yaml"]:
        cfg = load_config(VAEExperiment, REPO / "configs" / name)
        arch = cfg.arch()
        assert (cfg.data.num_frames - 1) % arch.temporal_compression == 0


def test_train_script_entry_point(video_dir, tmp_path):
    """The documented command line: python train/vae.py --config ... --set ..."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"preset: tiny\nmodel: {json.dumps(SMALL_ARCH)}\n"
        f"data: {{root: {video_dir}, resolution: 32, num_frames: 5}}\n"
        f"train: {{output_dir: {tmp_path / 'run'}, max_steps: 2, log_every: 1, eval_every: 0}}\n"
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "train" / "vae.py"), "--config", str(cfg), "--set", "train.batch_size=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exported EMA weights" in proc.stdout
    assert (tmp_path / "run" / "export" / "config.json").is_file()


def test_face_crop_dataset_on_real_clip(shared_data):
    from rest.data.videos import VideoClipDataset

    dataset = VideoClipDataset(shared_data / "video" / "talking_d_7s.mp4", resolution=64, num_frames=5, crop="face")
    clip = dataset[0]
    assert clip.shape == (3, 5, 64, 64) and clip.min() >= -1 and clip.max() <= 1
    assert dataset.whole_videos()[0].shape == (175, 64, 64, 3)
    center = VideoClipDataset(shared_data / "video" / "talking_d_7s.mp4", resolution=64, num_frames=5)
    assert not np.array_equal(dataset.whole_videos()[0], center.whole_videos()[0])  # the face crop is tighter
