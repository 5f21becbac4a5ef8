"""Every shipped training config loads into its experiment, and the demo recipe's commands name real configs."""

import importlib.util
import sys
from pathlib import Path

import pytest

from rest.config import VAEArch, load_config, parse_overrides
from rest.errors import RestError
from rest.training.motion import MotionExperiment
from rest.training.student import StudentExperiment
from rest.training.teacher import TeacherExperiment
from rest.training.vae import VAEExperiment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = {"vae": VAEExperiment, "teacher": TeacherExperiment, "student": StudentExperiment}
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "accelerate")


def experiment_of(path: Path) -> type:
    if path.parent.name == "motion":  # the face-motion model's stages (train/motion.py)
        return MotionExperiment
    kind = path.stem.split("_")[0]
    if kind not in EXPERIMENTS:
        raise AssertionError(f"{path}: name it vae_*, teacher_* or student_* so its experiment is known")
    return EXPERIMENTS[kind]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_config_loads(path):
    cfg = load_config(experiment_of(path), path)
    if isinstance(cfg, VAEExperiment):
        arch = cfg.arch()
        assert isinstance(arch, VAEArch) and arch.norm in ("rms", "none")


def test_unknown_vae_norm_is_refused_at_load_naming_the_key():
    cfg = load_config(VAEExperiment, REPO / "configs/demo/vae_images.yaml", {"model": {"norm": "group"}})
    with pytest.raises(RestError, match=r"model.*norm.*'group' is not one of \['rms', 'none'\]"):
        cfg.arch()


def test_demo_recipe_commands_load_their_configs(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_recipe", REPO / "train" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    plan = demo.stages(tmp_path / "demo", tmp_path / "weights", identities=4, seconds=2.0)
    names = [name for name, _, _ in plan]
    vae_stages = ["vae_images", "vae_clips", "vae_motion", "vae", "latents"]
    assert [names.index(n) for n in vae_stages] == sorted(names.index(n) for n in vae_stages)
    assert names.index("mouth_expert") < names.index("vae")
    assert names.index("latents") < names.index("teacher")
    assert names.index("teacher") < names.index("audio_expert") < names.index("teacher_audio") < names.index("student")
    assert names.index("student") < names.index("student_mouth") < names.index("export")
    trained = 0
    for name, _, command in plan:
        if "--config" not in command:
            continue
        assert command[0] == sys.executable
        path = REPO / command[command.index("--config") + 1]
        overrides = parse_overrides(command[command.index("--set") + 1 :])
        cfg = load_config(experiment_of(path), path, overrides)
        assert str(tmp_path / "demo") in cfg.train.output_dir, name
        if name == "vae":  # stage 1d reads the expert this recipe trains, with another seed than the study's
            expert = next(c for n, _, c in plan if n == "mouth_expert")
            assert cfg.loss.mouth_expert == expert[expert.index("--output") + 1] == str(tmp_path / "demo/mouth_expert")
            assert expert[expert.index("--seed") + 1] != "0"
        if name == "teacher_audio":  # stage 2b: stage 2's export with the audio expert's encoder, frozen
            audio = next(c for n, _, c in plan if n == "audio_expert")
            assert cfg.init == str(tmp_path / "demo/teacher/export")
            assert cfg.audio_encoder_init == audio[audio.index("--output") + 1] == str(tmp_path / "demo/audio_expert")
            assert cfg.train.audio_encoder_lr_scale == 0
            assert (
                cfg.denoiser
                == load_config(
                    experiment_of(REPO / "configs/demo/teacher.yaml"), REPO / "configs/demo/teacher.yaml"
                ).denoiser
            )
        if name in ("student", "student_mouth", "student_tf"):
            assert cfg.teacher == str(tmp_path / "demo/teacher_audio/export"), name
        if name == "student_mouth":  # stage 3b: stage 3's export, with the VAE's mouth expert (not the study's)
            assert cfg.init == str(tmp_path / "demo/student/export")
            assert cfg.asd.mouth_weight > 0 and cfg.asd.mouth_expert == str(tmp_path / "demo/mouth_expert")
            assert [k for _, k in cfg.asd.steps_schedule] == [1] and cfg.asd.mouth_box is not None
        trained += 1
    assert trained == 9  # vae_images, vae_clips, vae_motion, vae, teacher, teacher_audio, student, 3b, student_tf
    export, study = (next(c for n, _, c in plan if n == name) for name in ("export", "study"))
    shipped = str(tmp_path / "demo/student_mouth/export")
    assert export[export.index("--student") + 1] == study[study.index("--student") + 1] == shipped
    names = ("vae_images.yaml", "vae.yaml", "vae_motion.yaml", "vae_mouth.yaml")
    frames, clips, motion, mouth = (load_config(VAEExperiment, REPO / "configs/demo" / name) for name in names)
    assert frames.arch() == clips.arch() == motion.arch() == mouth.arch()  # each fine-tunes the stage before
    assert clips.init_from_frames and not motion.init_from_frames and not mouth.init_from_frames
    assert mouth.loss.mouth_weight > 0 and motion.loss.mouth_weight == 0
