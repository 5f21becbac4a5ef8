"""Teacher training: a few steps on a tiny shard dataset, checkpoint + resume at the right step, export loads,
config errors, shipped configs, the entry point."""

import inspect
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rest.config import ConfigError, load_config
from rest.data.dataset import clips_in_turn
from rest.data.shards import ShardReader, ShardWriter
from rest.diffusion import sample
from rest.diffusion.flow import FlowMatchingConfig
from rest.exports import TeacherInfo
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.vae import CausalVideoVAE
from rest.training.common import MetricsLog, latest_checkpoint, read_trainer_state
from rest.training.teacher import (
    TeacherDataConfig,
    TeacherExperiment,
    TeacherTrainConfig,
    train_teacher,
)
from rest.training.vae import measure_latent_scale

REPO = Path(__file__).resolve().parents[1]
DENOISER = {"width": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "frequency_dim": 32}
AUDIO = {
    "conv_channels": 16,
    "num_conv_layers": 1,
    "dim": 16,
    "num_layers": 1,
    "num_heads": 2,
    "attn_window": 4,
    "lookahead_frames": 2,
    "out_dim": 8,
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, Path]:
    """A shard root of three 20-frame 32x32 clips with audio, and a small random VAE (8x spatial, 4x temporal)."""
    root = tmp_path_factory.mktemp("teacher_data")
    writer = ShardWriter(root / "shards", resolution=32)
    yy, xx = np.mgrid[0:32, 0:32]
    rng = np.random.default_rng(0)
    for k in range(3):
        frames = []
        for t in range(20):
            mouth = (np.abs(yy - 22) < 2 + 3 * abs(np.sin(0.5 * t + k))) & (np.abs(xx - 16) < 6)
            frames.append((np.stack([xx / 32, yy / 32, mouth], -1) * 255).astype(np.uint8))
        audio = (0.1 * rng.standard_normal(20 * 640)).astype(np.float32)
        writer.write_clip(f"clip{k}", np.stack(frames), audio)
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32))
    vae.save_pretrained(root / "vae")
    return root / "shards", root / "vae"


def experiment(assets, out: Path, **train) -> TeacherExperiment:
    shards, vae = assets
    return TeacherExperiment(
        data=TeacherDataConfig(root=str(shards), num_frames=9),
        vae=str(vae),
        denoiser=dict(DENOISER),
        audio_encoder=dict(AUDIO),
        train=TeacherTrainConfig(
            output_dir=str(out),
            batch_size=2,
            lr=1e-3,
            warmup_steps=1,
            log_every=1,
            eval_every=0,
            eval_clips=2,
            checkpoint_every=100,
            **train,
        ),
    )


def test_train_resume_export(assets, tmp_path, capsys):
    out = tmp_path / "run"
    export = train_teacher(experiment(assets, out, max_steps=2))
    first = latest_checkpoint(out)
    assert read_trainer_state(first)["step"] == 2
    logs = MetricsLog.read(out, "train")
    assert [m["step"] for m in logs] == [1, 2] and all(np.isfinite(m["loss"]) for m in logs)
    final = MetricsLog.read(out, "eval")[-1]
    assert final["step"] == 2 and {"val_loss", "val_loss_shuffled_audio", "val_loss_null_audio", "audio_gain"} <= set(
        final
    )
    denoiser = load_local(DenoiserDiT, export / "denoiser")
    audio_encoder = load_local(AudioEncoder, export / "audio_encoder")
    info = TeacherInfo.read(export)
    assert info.shift == pytest.approx(2.0 * (16 / 64) ** 0.5) and info.step == 2  # 4x4 latents
    assert info.train_latent_frames == 3  # 9-frame clips: the window offline sampling uses
    assert denoiser.config.in_channels == 4 and denoiser.config.audio_dim == AUDIO["out_dim"]
    assert denoiser.attention_mode == "bidirectional"
    weights_at_2 = {k: v.clone() for k, v in denoiser.state_dict().items()}

    # The exported models generate (smoke: shapes only).
    vae = load_local(CausalVideoVAE, assets[1])
    frames = sample(denoiser, vae, audio_encoder, torch.zeros(3, 32, 32), torch.zeros(1, 5 * 640), steps=1)
    assert frames.shape == (1, 3, 5, 32, 32)

    capsys.readouterr()
    train_teacher(experiment(assets, out, max_steps=4), resume="latest")
    assert f"resumed from {first} at step 2" in capsys.readouterr().out
    assert read_trainer_state(latest_checkpoint(out))["step"] == 4
    steps = [m["step"] for m in MetricsLog.read(out, "train")]
    assert steps == [1, 2, 3, 4]  # the second run trained steps 3 and 4 only
    weights_at_4 = load_local(DenoiserDiT, out / "export" / "denoiser").state_dict()
    assert any(not torch.equal(weights_at_2[k], weights_at_4[k]) for k in weights_at_2)


def test_audio_encoder_learning_rate_scale(assets, tmp_path):
    """Scale 0 freezes the audio encoder at its initialisation (the denoiser still trains); a positive scale trains
    it; a negative scale is refused."""
    cfg = experiment(assets, tmp_path / "frozen", max_steps=2, audio_encoder_lr_scale=0.0)
    torch.manual_seed(cfg.train.seed)  # train_teacher seeds, then builds the audio encoder first
    initial = AudioEncoder(**AUDIO).state_dict()
    export = train_teacher(cfg)
    frozen = load_local(AudioEncoder, export / "audio_encoder").state_dict()
    assert all(torch.allclose(initial[k], frozen[k], rtol=0, atol=1e-6) for k in initial)
    fresh = DenoiserDiT.from_preset("tiny", **DENOISER, in_channels=4, temporal_compression=4, audio_dim=8)
    trained = load_local(DenoiserDiT, export / "denoiser").state_dict()
    assert any(not torch.equal(fresh.state_dict()[k], trained[k]) for k in trained if "final" in k)
    cfg = experiment(assets, tmp_path / "scaled", max_steps=2, audio_encoder_lr_scale=0.5)
    export = train_teacher(cfg)
    scaled = load_local(AudioEncoder, export / "audio_encoder").state_dict()
    assert max((initial[k] - scaled[k]).abs().max().item() for k in initial) > 1e-5
    with pytest.raises(ConfigError, match="audio_encoder_lr_scale must be >= 0"):
        train_teacher(experiment(assets, tmp_path / "bad", max_steps=1, audio_encoder_lr_scale=-1.0))


def test_loss_decreases(assets, tmp_path):
    out = tmp_path / "run"
    cfg = experiment(assets, out, max_steps=40, sample_posterior=False)
    cfg.train.lr, cfg.train.log_every = 3e-3, 10
    train_teacher(cfg)
    losses = [m["loss"] for m in MetricsLog.read(out, "train")]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses


def test_config_errors(assets, tmp_path):
    cfg = experiment(assets, tmp_path / "run", max_steps=1)
    cfg.denoiser["dept"] = 3
    with pytest.raises(ConfigError, match="unknown key 'dept'"):
        train_teacher(cfg)
    cfg = experiment(assets, tmp_path / "run", max_steps=1)
    cfg.denoiser["in_channels"] = 8
    with pytest.raises(ConfigError, match="denoiser.in_channels = 8 contradicts"):
        train_teacher(cfg)
    cfg = experiment(assets, tmp_path / "run", max_steps=1)
    cfg.audio_encoder["lookahead"] = 1
    with pytest.raises(ConfigError, match="unknown key 'lookahead'"):
        train_teacher(cfg)


def test_shipped_configs_load():
    for name in ["teacher_tiny.yaml", "teacher_base.yaml"]:
        cfg = load_config(TeacherExperiment, REPO / "configs" / name)
        assert (cfg.data.num_frames - 1) % (4 if cfg.preset == "tiny" else 8) == 0
        for cls, overrides in ((AudioEncoder, cfg.audio_encoder), (DenoiserDiT, cfg.denoiser)):
            assert set(overrides) <= set(inspect.signature(cls.__init__).parameters), name


def test_train_script_entry_point(assets, tmp_path, monkeypatch):
    """The documented command line: python train/teacher.py --config ... --set ..."""
    shards, vae = assets
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"preset: tiny\nvae: {vae}\ndenoiser: {json.dumps(DENOISER)}\naudio_encoder: {json.dumps(AUDIO)}\n"
        f"data: {{root: {shards}, num_frames: 5}}\n"
        f"train: {{output_dir: {tmp_path / 'run'}, max_steps: 1, batch_size: 1, eval_every: 0, eval_clips: 1}}\n"
    )
    argv = ["train/teacher.py", "--config", str(cfg), "--set", "train.log_every=1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "train" / "teacher.py"), run_name="__main__")
    assert (tmp_path / "run" / "export" / "denoiser" / "config.json").is_file()
    assert MetricsLog.read(tmp_path / "run", "train")[-1]["step"] == 1


def test_cached_latents_dataset_and_training(assets, tmp_path, capsys):
    """`rest preprocess --output ROOT --vae V` caches each clip as one causal stream; TalkingLatentDataset windows
    slice it with the audio of exactly the frames they cover; the teacher trains on them (data.latents)."""
    import shutil

    from rest.cli import main
    from rest.data.dataset import StreamStartBatchSampler, TalkingLatentDataset
    from rest.data.preprocess import vae_fingerprint
    from rest.data.shards import ShardReader
    from rest.errors import RestError

    shards, vae_dir = assets
    root = tmp_path / "shards"
    shutil.copytree(shards, root)
    with pytest.raises(RestError, match=r"have no cached latents \(e.g. clip0\); run `rest preprocess"):
        TalkingLatentDataset(root, num_latent_frames=3, temporal_compression=4)
    assert main(["preprocess", "--output", str(root), "--vae", str(vae_dir), "--no-progress"]) == 0
    assert "latents: 3 clips encoded, 0 already cached" in capsys.readouterr().out
    assert main(["preprocess", "--output", str(root), "--vae", str(vae_dir), "--no-progress"]) == 0
    assert "latents: 0 clips encoded, 3 already cached" in capsys.readouterr().out

    reader = ShardReader(root)
    vae = load_local(CausalVideoVAE, vae_dir)
    ds = TalkingLatentDataset(
        root, num_latent_frames=3, temporal_compression=4, audio_lookahead_frames=2, seed=1, random_windows=False
    )
    assert len(ds) == 3 and all(s == 1 for _, s in ds.windows)  # 5 latent frames per clip: one window from 1
    whole = vae.encode(
        torch.from_numpy(reader.frames("clip0")[:17]).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    )
    item = ds[0]
    assert item["first_latent_frame"] == 1 and item["start_frame"] == 1
    torch.testing.assert_close(item["mean"], whole.latent_dist.mean[0, :, 1:4], atol=1e-4, rtol=0)
    spf = 640
    audio = reader.audio("clip0")
    assert item["audio"].shape == ((12 + 2) * spf,)  # 3 latent frames x 4 video frames + look-ahead
    np.testing.assert_array_equal(item["audio"][: 12 * spf].numpy(), audio[spf : 13 * spf])
    start = ds[(0, True)]
    assert start["first_latent_frame"] == 0 and start["start"] == 0 and start["audio"].shape == ((9 + 2) * spf,)
    torch.testing.assert_close(start["mean"], whole.latent_dist.mean[0, :, :3], atol=1e-4, rtol=0)

    batches = list(StreamStartBatchSampler(ds, 1, 0.5, seed=0))
    assert len(batches) == 3 and {b[0][1] for b in batches} == {True, False}

    other = tmp_path / "other_vae"
    CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).save_pretrained(other)
    with pytest.raises(RestError, match="cached with another VAE"):
        TalkingLatentDataset(root, num_latent_frames=3, temporal_compression=4, vae_fingerprint=vae_fingerprint(other))

    out = tmp_path / "run"
    cfg = experiment((root, vae_dir), out, max_steps=3)
    cfg.data.latents, cfg.data.stream_start_share = True, 0.5
    train_teacher(cfg)
    assert [m["step"] for m in MetricsLog.read(out, "train")] == [1, 2, 3]
    assert np.isfinite(MetricsLog.read(out, "eval")[-1]["val_loss"])
    assert (out / "export" / "denoiser" / "config.json").is_file()


def test_teacher_learns_to_use_the_audio(tmp_path):
    """Clips whose bright patch is on exactly while the audio is loud: after a short training the held-out loss with
    the clip's own audio is clearly below the loss with another clip's audio (audio_gain > 0)."""
    writer = ShardWriter(tmp_path / "shards", resolution=32)
    rng = np.random.default_rng(0)
    frames_per_clip = 100
    for k in range(10):
        loud = np.zeros(frames_per_clip, bool)
        t = 0
        while t < frames_per_clip:  # loud / silent runs of 4 to 9 frames
            n = int(rng.integers(4, 10))
            loud[t : t + n] = rng.random() < 0.5
            t += n
        frames = np.full((frames_per_clip, 32, 32, 3), 80, np.uint8)
        frames[loud, 16:28, 8:24] = 230
        audio = np.concatenate([(0.3 if on else 0.003) * rng.standard_normal(640) for on in loud]).astype(np.float32)
        writer.write_clip(f"clip{k}", frames, audio, split="train" if k < 8 else "test_id")
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32))
    reader = ShardReader(tmp_path / "shards")
    shift, scale = measure_latent_scale(vae, [reader.frames(f"clip{k}") for k in range(4)], 97, torch.device("cpu"))
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)  # unit-variance latents, as an export has
    vae.save_pretrained(tmp_path / "vae")
    cfg = TeacherExperiment(
        data=TeacherDataConfig(root=str(tmp_path / "shards"), num_frames=9, eval_split="test_id"),
        vae=str(tmp_path / "vae"),
        denoiser=dict(DENOISER),
        audio_encoder=dict(AUDIO),
        flow=FlowMatchingConfig(continuation_share=0.0),
        train=TeacherTrainConfig(
            output_dir=str(tmp_path / "run"),
            batch_size=8,
            lr=2e-3,
            warmup_steps=10,
            max_steps=160,
            sample_posterior=False,  # a random VAE's posterior noise would drown the patch
            ema_decay=0.9,
            log_every=40,
            eval_every=0,
            eval_clips=2,
        ),
    )
    train_teacher(cfg)
    final = MetricsLog.read(tmp_path / "run", "eval")[-1]
    assert final["audio_gain"] > 0.01, final  # about 0.04 when measured; ~0 if the audio path were cut
    assert final["val_loss_null_audio"] > final["val_loss"]


def test_evaluation_windows_take_clips_in_turn():
    """Every clip's middle window first (clips open alike), then the next ones, wrapping round to the start."""
    assert clips_in_turn([range(0, 30, 10), range(0, 10, 10), range(5, 25, 10)]) == [
        (0, 10),
        (1, 0),
        (2, 15),
        (0, 20),
        (2, 5),
        (0, 0),
    ]
    assert clips_in_turn([]) == []


def test_init_and_audio_encoder_init(assets, tmp_path):
    """`init` starts both networks from a teacher export, `audio_encoder_init` the audio encoder from its own
    folder (it wins over init's); a folder of another architecture is a config error naming the difference."""
    vae = load_local(CausalVideoVAE, assets[1])
    cfg = experiment(assets, tmp_path / "run")
    torch.manual_seed(1)
    denoiser, audio_encoder = cfg.build_models(vae)
    denoiser.save_pretrained(tmp_path / "teacher" / "denoiser")
    audio_encoder.save_pretrained(tmp_path / "teacher" / "audio_encoder")
    expert = AudioEncoder(**AUDIO)
    expert.save_pretrained(tmp_path / "expert")

    fresh, fresh_audio = cfg.build_models(vae)
    assert not torch.equal(fresh.state_dict()["patch_embed.weight"], denoiser.state_dict()["patch_embed.weight"])
    cfg.init = str(tmp_path / "teacher")
    started, started_audio = cfg.build_models(vae)
    for name, value in denoiser.state_dict().items():
        assert torch.equal(started.state_dict()[name], value), name
    for name, value in audio_encoder.state_dict().items():
        assert torch.equal(started_audio.state_dict()[name], value), name
    cfg.audio_encoder_init = str(tmp_path / "expert")
    _, from_expert = cfg.build_models(vae)
    for name, value in expert.state_dict().items():
        assert torch.equal(from_expert.state_dict()[name], value), name

    AudioEncoder(**{**AUDIO, "dim": 32}).save_pretrained(tmp_path / "wide")
    cfg.audio_encoder_init = str(tmp_path / "wide")
    with pytest.raises(ConfigError, match="audio_encoder_init: .* another architecture .*dim: 32"):
        cfg.build_models(vae)
