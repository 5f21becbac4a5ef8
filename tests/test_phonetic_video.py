"""The video model on the phonetic audio path: `rest preprocess --phonetic` caches each clip's features, the
datasets window them like audio, a teacher and a student train on them (`audio_path: phonetic`), their exports and
the pipeline folder carry no audio encoder, and the pipeline streams from samples through the phonetic decoder."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pocketsphinx")

from rest.cli import main  # noqa: E402
from rest.config import ConfigError  # noqa: E402
from rest.data.dataset import TalkingClipDataset, TalkingLatentDataset  # noqa: E402
from rest.data.phonetic import PhoneticAudioEncoder  # noqa: E402
from rest.data.shards import ShardReader, ShardWriter  # noqa: E402
from rest.errors import RestError  # noqa: E402
from rest.exports import PipelineConfig, StudentInfo, TeacherInfo, load_student, load_teacher  # noqa: E402
from rest.media import read_audio  # noqa: E402
from rest.models.vae import CausalVideoVAE  # noqa: E402
from rest.pipelines.talking_head import TalkingHeadPipeline, export_pipeline  # noqa: E402
from rest.training.student import (  # noqa: E402
    ASDConfig,
    StudentDataConfig,
    StudentExperiment,
    StudentTrainConfig,
    train_student,  # noqa: E402
)
from rest.training.teacher import TeacherDataConfig, TeacherExperiment, TeacherTrainConfig, train_teacher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DENOISER = {"width": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "frequency_dim": 32}
FRAMES = 40


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Three 40-frame 32x32 clips speaking pieces of the bundled speech, latents of a small random VAE cached, and
    their phonetic features cached by the CLI."""
    base = tmp_path_factory.mktemp("phonetic_video")
    speech = read_audio(REPO / "assets" / "demo" / "speech.wav", 16000)
    writer = ShardWriter(base / "shards", resolution=32)
    yy, xx = np.mgrid[0:32, 0:32]
    for k in range(3):
        audio = np.ascontiguousarray(speech[k * 8000 : k * 8000 + FRAMES * 640], np.float32)
        frames = []
        for t in range(FRAMES):
            mouth = (np.abs(yy - 22) < 2 + 3 * abs(np.sin(0.5 * t + k))) & (np.abs(xx - 16) < 6)
            frames.append((np.stack([xx / 32, yy / 32, mouth], -1) * 255).astype(np.uint8))
        writer.write_clip(f"clip{k}", np.stack(frames), audio, split="train" if k < 2 else "test_id")
    torch.manual_seed(0)
    CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).save_pretrained(base / "vae")
    shards = base / "shards"
    with pytest.raises(RestError, match=r"no phonetic features .*rest preprocess --output .* --phonetic"):
        TalkingClipDataset(shards, num_frames=9, temporal_compression=4, phonetic=True)
    assert main(["preprocess", "--output", str(shards), "--vae", str(base / "vae"), "--no-progress"]) == 0
    assert main(["preprocess", "--output", str(shards), "--phonetic", "--workers", "0", "--no-progress"]) == 0
    return base


def test_preprocess_caches_the_streams_features_once(root, capsys):
    shards = root / "shards"
    assert main(["preprocess", "--output", str(shards), "--phonetic", "--no-progress"]) == 0
    assert "phonetic: 0 clips decoded, 3 already cached" in capsys.readouterr().out
    reader = ShardReader(shards)
    features = reader.phonetic("clip1")
    assert features.shape == (FRAMES, 3) and features.dtype == np.float32
    np.testing.assert_array_equal(features, PhoneticAudioEncoder().encode(np.array(reader.audio("clip1"))))
    assert features[:, 2].max() == 1.0 and features[:, 0].max() > 0.2  # speech heard, the mouth opens


def test_datasets_window_the_features_as_they_window_samples(root):
    reader = ShardReader(root / "shards")
    features = reader.phonetic("clip0")
    clips = TalkingClipDataset(
        root / "shards", num_frames=9, temporal_compression=4, audio_lookahead_frames=2, phonetic=True,
        random_windows=False,
    )  # fmt: skip
    item = clips[0]
    assert item["clip_id"] == "clip0" and item["audio"].shape == (11, 3)
    np.testing.assert_array_equal(item["audio"].numpy(), features[item["start"] : item["start"] + 11])
    latents = TalkingLatentDataset(root / "shards", num_latent_frames=3, temporal_compression=4, phonetic=True)
    start, later = latents[(0, True)], latents[(0, False)]
    assert start["audio"].shape == (9, 3) and later["audio"].shape == (12, 3)
    clip = reader.phonetic(start["clip_id"])
    np.testing.assert_array_equal(start["audio"].numpy(), clip[:9])
    np.testing.assert_array_equal(later["audio"].numpy(), clip[later["start_frame"] : later["start_frame"] + 12])
    with pytest.raises(RestError, match="augmentation"):
        TalkingLatentDataset(root / "shards", num_latent_frames=3, temporal_compression=4, phonetic=True,
                             augment_audio=object())  # fmt: skip


def teacher_config(root: Path, out: Path, **extra) -> TeacherExperiment:
    return TeacherExperiment(
        data=TeacherDataConfig(root=str(root / "shards"), num_frames=9, latents=True, eval_split="test_id"),
        vae=str(root / "vae"),
        denoiser=dict(DENOISER),
        audio_path="phonetic",
        train=TeacherTrainConfig(
            output_dir=str(out), batch_size=2, lr=1e-3, warmup_steps=1, max_steps=2, log_every=1, eval_every=0,
            eval_clips=1, checkpoint_every=100,
        ),
        **extra,
    )  # fmt: skip


def test_teacher_student_and_pipeline_on_the_phonetic_path(root, tmp_path):
    teacher = train_teacher(teacher_config(root, tmp_path / "teacher"))
    assert TeacherInfo.read(teacher).audio == "phonetic" and not (teacher / "audio_encoder").exists()
    denoiser, audio, _ = load_teacher(teacher)
    assert isinstance(audio, PhoneticAudioEncoder) and denoiser.config.audio_dim == 3

    student = train_student(
        StudentExperiment(
            teacher=str(teacher),
            data=StudentDataConfig(root=str(root / "shards"), eval_split="test_id"),
            asd=ASDConfig(window_chunks=4, steps_schedule=((0, 1),), gt_loss_weight=0.5),
            train=StudentTrainConfig(
                output_dir=str(tmp_path / "student"), batch_size=2, lr=1e-3, warmup_steps=1, max_steps=2,
                log_every=1, eval_every=0, eval_clips=1, checkpoint_every=100,
            ),
        )
    )  # fmt: skip
    assert StudentInfo.read(student).audio == "phonetic" and not (student / "audio_encoder").exists()
    assert isinstance(load_student(student)[1], PhoneticAudioEncoder)

    with pytest.raises(RestError, match="replaces a mel audio encoder"):
        export_pipeline(student, tmp_path / "p", audio_encoder=str(teacher))
    pipe_dir = tmp_path / "pipeline"  # export_pipeline checks the preset's 128 px: assembled at 32 px here
    _assemble(student, root / "vae", pipe_dir)
    config = PipelineConfig.read(pipe_dir)
    assert config.audio == "phonetic" and not (pipe_dir / "audio_encoder").exists()
    pipe = TalkingHeadPipeline.from_pretrained(pipe_dir)
    assert isinstance(pipe.audio_encoder, PhoneticAudioEncoder)
    speech = np.array(ShardReader(root / "shards").audio("clip2"))
    portrait = np.full((64, 64, 3), 128, np.uint8)
    whole = pipe(pipe.prepare_portrait(portrait, crop="as_is"), speech, seed=3)
    assert whole.shape == (FRAMES, 32, 32, 3)
    session = pipe.stream(pipe.prepare_portrait(portrait, crop="as_is"), seed=3)
    pieces = [session.push_audio(speech[i : i + 1234]) for i in range(0, len(speech), 1234)]
    np.testing.assert_array_equal(np.concatenate([*pieces, session.finish()]), whole)


def _assemble(student: Path, vae: Path, output: Path) -> None:
    """A pipeline folder from a student export at this test's 32 px (export_pipeline checks a preset's size)."""
    from rest.exports import PipelineSource, load_vae
    from rest.pipelines.talking_head import write_pipeline

    denoiser, audio, info = load_student(student)
    config = PipelineConfig(
        preset="tiny", resolution=32, steps=info.steps, shift=info.shift, context_timestep=info.context_timestep,
        chunk_latent_frames=denoiser.config.chunk_latent_frames, context_chunks=denoiser.config.context_chunks,
        audio=info.audio, training=PipelineSource.of(info),
    )  # fmt: skip
    write_pipeline(output, load_vae(vae), audio, denoiser, config)


def test_config_errors(root, tmp_path):
    cfg = teacher_config(root, tmp_path / "a")
    cfg.audio_path = "words"
    with pytest.raises(ConfigError, match="audio_path must be one of mel, phonetic"):
        train_teacher(cfg)
    cfg = teacher_config(root, tmp_path / "b")
    cfg.audio_encoder_init = str(tmp_path)
    with pytest.raises(ConfigError, match="phonetic has no audio encoder"):
        train_teacher(cfg)


def test_pipeline_json_without_audio_reads_as_mel(tmp_path, test_pipeline):
    """Folders written before the audio path was recorded are mel pipelines."""
    folder = tmp_path / "old"
    shutil.copytree(test_pipeline, folder)
    data = json.loads((folder / "pipeline.json").read_text())
    data.pop("audio", None)
    (folder / "pipeline.json").write_text(json.dumps(data))
    assert PipelineConfig.read(folder).audio == "mel"
    assert not isinstance(TalkingHeadPipeline.from_pretrained(folder).audio_encoder, PhoneticAudioEncoder)
