"""Pinned losses of every trainer on its tiny test config: the first steps, the evaluations on the way, and a run
resumed from the step-2 checkpoint. The numbers were recorded on the code before the trainers shared one loop
(issue 27); a change to the loop, the seeding, the data order or a loss that moves them fails here.

The tolerance (`REL`) is for floating-point reduction order only: a real change to the order of random draws or of
the update moves these numbers by more.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_train_student import assets as student_assets  # noqa: F401  (fixture)
from test_train_student import experiment as student_experiment
from test_train_teacher import assets as teacher_assets  # noqa: F401  (fixture)
from test_train_teacher import experiment as teacher_experiment
from test_train_vae import experiment as vae_experiment
from test_train_vae import video_dir  # noqa: F401  (fixture)

from rest.data.shards import ShardWriter
from rest.metrics.syncnet import evaluate_sync
from rest.training.common import MetricsLog, checkpoint_dir
from rest.training.student import train_student
from rest.training.syncnet import SyncNetTrainConfig, train_syncnet
from rest.training.teacher import train_teacher
from rest.training.vae import train_vae

VARIES = {"kind", "time", "wall_s", "steps_per_s", "samples_per_s", "mem_mb"}  # wall clock and memory


def cadence(cfg):
    """3 steps, a status line at each, an evaluation at step 2 (and the final one), checkpoints at steps 2 and 3."""
    cfg.train = replace(cfg.train, max_steps=3, log_every=1, eval_every=2, checkpoint_every=2)
    return cfg


def records(out: Path, kind: str) -> list[dict]:
    """The run's metrics.jsonl records of `kind`, without the wall-clock values; nested dicts flattened."""

    def flat(values: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in values.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}/"))
            elif f"{prefix}{key}" not in VARIES:
                out[f"{prefix}{key}"] = value
        return out

    return [flat(r) for r in MetricsLog.read(out, kind)]


# Float sums in another order (thread split, the memory alignment oneDNN's kernels see, which depends on what the
# suite allocated before) move the third step's numbers by up to about 6e-5 relative between runs of the same code;
# a change in what a step computes moves them by more (a resume that restarts the data order moved the teacher's
# third loss by 5e-4).
REL, ABS = 2e-4, 1e-6


def assert_pinned(got: list[dict], want: list[dict], abs_tol: float = ABS) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w), (g, w)
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=REL, abs=abs_tol), (key, g, w)


def resumed_at_2(train, make_cfg, out: Path, resumed: Path) -> list[dict]:
    """Resume from `out`'s step-2 checkpoint into a fresh run folder; its train records (step 3)."""
    train(make_cfg(resumed), resume=str(checkpoint_dir(out, 2)))
    return records(resumed, "train")


# ----------------------------------------------------------------------------- pinned numbers

TEACHER_TRAIN = [
    {"loss": 2.3217430114746094, "grad_norm": 1.6291477680206299, "step": 1, "lr": 0.001},
    {"loss": 1.9388307332992554, "grad_norm": 1.944496512413025, "step": 2, "lr": 0.001},
    {"loss": 2.005938768386841, "grad_norm": 0.8942546248435974, "step": 3, "lr": 0.00055},
]
TEACHER_EVAL = [
    {
        "step": 2,
        "val_loss": 1.0033695697784424,
        "val_loss_null_audio": 1.0028713941574097,
        "val_loss_shuffled_audio": 1.0035476684570312,
        "audio_gain": 0.0001780986785888672,
    },
    {
        "step": 3,
        "val_loss": 1.0007071495056152,
        "val_loss_null_audio": 1.0001739263534546,
        "val_loss_shuffled_audio": 1.0011225938796997,
        "audio_gain": 0.00041544437408447266,
    },
]
TEACHER_RESUMED = [
    {"loss": 2.0049209594726562, "grad_norm": 0.8882997035980225, "step": 3, "lr": 0.00055},
]
STUDENT_TRAIN = [
    {
        "loss_distill": 0.820521891117096,
        "K": 2.0,
        "loss_gt": 3.003166437149048,
        "loss": 2.3221051692962646,
        "grad_norm": 6.518428325653076,
        "step": 1,
        "lr": 0.001,
    },
    {
        "loss_distill": 0.5779593586921692,
        "K": 2.0,
        "loss_gt": 3.2992608547210693,
        "loss": 2.2275898456573486,
        "grad_norm": 3.506706476211548,
        "step": 2,
        "lr": 0.001,
    },
    {
        "loss_distill": 0.3728204369544983,
        "K": 1.0,
        "loss_gt": 3.7347307205200195,
        "loss": 2.2401857376098633,
        "grad_norm": 4.205571174621582,
        "step": 3,
        "lr": 0.00055,
    },
]
STUDENT_EVAL = [
    {
        "step": 2,
        "val_loss_distill": 0.36659854650497437,
        "val_K": 2.0,
        "val_loss_gt": 2.5230157375335693,
        "val_loss": 1.6281063556671143,
    },
    {
        "step": 3,
        "val_loss_distill": 0.3526453971862793,
        "val_K": 1.0,
        "val_loss_gt": 2.7051503658294678,
        "val_loss": 1.7052205801010132,
    },
]
STUDENT_RESUMED = [
    {
        "loss_distill": 0.3921605348587036,
        "K": 1.0,
        "loss_gt": 3.7355401515960693,
        "loss": 2.2599306106567383,
        "grad_norm": 4.297912120819092,
        "step": 3,
        "lr": 0.00055,
    },
]
VAE_TRAIN = [
    {
        "loss": 0.6719017028808594,
        "l1": 0.6718923449516296,
        "kl": 0.09349329024553299,
        "step": 1,
        "lr": 0.0006000000000000001,
    },
    {
        "loss": 0.6276574730873108,
        "l1": 0.6276411414146423,
        "kl": 0.16360081732273102,
        "step": 2,
        "lr": 0.0012000000000000001,
    },
    {
        "loss": 0.5281898975372314,
        "l1": 0.5281728506088257,
        "kl": 0.17070773243904114,
        "step": 3,
        "lr": 0.0018000000000000002,
    },
]
VAE_EVAL = [
    {
        "step": 2,
        "psnr": 9.693127185085249,
        "psnr_motion": 10.416919117146536,
        "psnr_per_video": [9.686664838993629, 9.699589531176867],
    },
    {
        "step": 3,
        "psnr": 10.519230821941635,
        "psnr_motion": 10.898975925865397,
        "psnr_per_video": [10.515251748941388, 10.523209894941882],
    },
]
VAE_RESUMED = [
    {
        "loss": 0.542753279209137,
        "l1": 0.5427356958389282,
        "kl": 0.17606213688850403,
        "step": 3,
        "lr": 0.0018000000000000002,
    },
]
SYNCNET_TRAIN = [
    {
        "loss": 0.8986364603042603,
        "d_sync": 2.3453269004821777,
        "d_off": 2.7638258934020996,
        "acc": 0.75,
        "step": 1,
        "lr": 0.001,
    },
    {
        "loss": 1.5671905279159546,
        "d_sync": 3.026139736175537,
        "d_off": 2.4367945194244385,
        "acc": 0.25,
        "step": 2,
        "lr": 0.001,
    },
    {
        "loss": 1.0575971603393555,
        "d_sync": 2.317795515060425,
        "d_off": 2.5272207260131836,
        "acc": 0.5,
        "step": 3,
        "lr": 0.00055,
    },
]
SYNCNET_EVAL = [
    {
        "step": 3,
        "clip2/sync/offset": -15,
        "clip2/sync/lse_d": 0.855,
        "clip2/sync/lse_c": 0.09,
        "clip2/delayed_5/offset": 15,
        "clip2/delayed_5/lse_d": 0.855,
        "clip2/delayed_5/lse_c": 0.09,
    },
]


# ----------------------------------------------------------------------------- trainers


def check_trainer(train, make, tmp_path: Path, want_train, want_eval, want_resumed) -> None:
    """Train 3 steps, compare the train and eval records, resume from step 2 and compare step 3."""
    train(make(tmp_path / "run"))
    assert_pinned(records(tmp_path / "run", "train"), want_train)
    assert_pinned(records(tmp_path / "run", "eval"), want_eval)
    assert_pinned(resumed_at_2(train, make, tmp_path / "run", tmp_path / "resumed"), want_resumed)


def test_teacher(teacher_assets, tmp_path):  # noqa: F811
    make = lambda out: cadence(teacher_experiment(teacher_assets, out))  # noqa: E731
    check_trainer(train_teacher, make, tmp_path, TEACHER_TRAIN, TEACHER_EVAL, TEACHER_RESUMED)


def test_student(student_assets, tmp_path):  # noqa: F811
    make = lambda out: cadence(student_experiment(student_assets, out))  # noqa: E731
    check_trainer(train_student, make, tmp_path, STUDENT_TRAIN, STUDENT_EVAL, STUDENT_RESUMED)


def test_vae(video_dir, tmp_path):  # noqa: F811
    make = lambda out: cadence(vae_experiment(video_dir, out))  # noqa: E731
    check_trainer(train_vae, make, tmp_path, VAE_TRAIN, VAE_EVAL, VAE_RESUMED)


@pytest.fixture(scope="module")
def sync_shards(tmp_path_factory) -> Path:
    """Three 40-frame 64x64 clips at 25 fps with 16 kHz audio whose loudness opens a mouth-like bar; the last one
    held out (scored at the end of training)."""
    root = tmp_path_factory.mktemp("sync_shards")
    writer = ShardWriter(root, resolution=64)
    yy, xx = np.mgrid[0:64, 0:64]
    rng = np.random.default_rng(0)
    for k in range(3):
        loud = rng.random(40)
        audio = (np.repeat(loud, 640) * rng.uniform(-0.5, 0.5, 40 * 640)).astype(np.float32)
        frames = []
        for t in range(40):
            mouth = (np.abs(yy - 40) < 1 + 6 * loud[t]) & (np.abs(xx - 32) < 10)
            frames.append((np.stack([xx / 64, yy / 64, mouth], -1) * 255).astype(np.uint8))
        writer.write_clip(f"clip{k}", np.stack(frames), audio, split="train" if k < 2 else "test")
    return writer.root


def sync_config(shards: Path, out: Path) -> SyncNetTrainConfig:
    small = dict(audio_channels=(8, 8, 8, 8, 8, 16), lip_channels=(8, 8, 8, 8, 8, 16), fc_dim=16, embed_dim=16)
    return SyncNetTrainConfig(
        data=str(shards),
        output=str(out),
        model=dict(small, image_size=64),
        steps=3,
        batch_size=4,
        negatives=2,
        min_shift=2,
        max_shift=4,
        warmup_steps=1,
        log_every=1,
        checkpoint_every=2,
    )


def test_syncnet(sync_shards, tmp_path):
    """SyncNet draws each step's batch from (seed, step, rank): a resumed run trains exactly the steps the
    uninterrupted one trains. (The other trainers draw their batches from a data loader whose order a resume
    restarts, so theirs differ a little; their resumed numbers are pinned above as they are.)"""
    make = lambda out: sync_config(sync_shards, out)  # noqa: E731
    train_syncnet(make(tmp_path / "run"), evaluate=evaluate_sync)
    assert_pinned(records(tmp_path / "run", "train"), SYNCNET_TRAIN)
    # LSE-D / LSE-C are reported to 3 decimals: reduction order can flip the last one.
    assert_pinned(records(tmp_path / "run", "eval"), SYNCNET_EVAL, abs_tol=1.001e-3)
    assert_pinned(resumed_at_2(train_syncnet, make, tmp_path / "run", tmp_path / "resumed"), SYNCNET_TRAIN[2:])
