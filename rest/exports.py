"""What one stage hands to the next: the VAE, teacher, student and pipeline folders, read into typed objects.

Each trained stage exports a folder of `save_pretrained` models and, beside them, a JSON file of the settings the
next stage must use::

    VAE         vae/                     CausalVideoVAE (its latent shift and scale are in its config.json)
    teacher     export/teacher.json      TeacherInfo, plus denoiser/ (bidirectional) and audio_encoder/
    student     export/student.json      StudentInfo, plus denoiser/ (block_causal) and audio_encoder/
    pipeline    pipeline.json            PipelineConfig, plus vae/, audio_encoder/ and denoiser/
    motion      motion.json              MotionInfo, plus rig/ (MotionRig) and denoiser/ (a teacher's or a student's)

The JSON files are read with the strictness of the configs (rest/config.py): an unknown key, a missing one or a
value of the wrong type is an error naming the file and the key. Fields that older exports lack have defaults.
Training writes these files and inference reads them through this one module, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from rest.config import ConfigError, from_dict, to_dict
from rest.data.phonetic import PhoneticAudioEncoder
from rest.diffusion.flow import Guidance
from rest.errors import RestError
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.vae import CausalVideoVAE

InfoT = TypeVar("InfoT", bound="ExportInfo")

# The audio paths a denoiser can read: "mel", the learned AudioEncoder (an audio_encoder/ folder beside the
# denoiser); "phonetic", the phonetic channel (rest.data.phonetic.PhoneticAudioEncoder: no weights, no folder).
AUDIO_PATHS = ("mel", "phonetic")

PIPELINE_FORMAT, PIPELINE_VERSION = "rest-pipeline", 1
TEACHER_HINT = "point at the export/ folder of a train/teacher.py run"
STUDENT_HINT = "point at the export/ folder of a train/student.py run"
PIPELINE_HINT = (
    "train one (python train/demo.py, or train/vae.py -> train/teacher.py -> train/student.py, then "
    "`rest export-pipeline --student RUN/export --output FOLDER`), or put a pipeline folder there "
    "(pipeline.json, vae/, audio_encoder/, denoiser/)"
)


#################################################################################
#                                 The JSON files                                #
#################################################################################


class ExportInfo:
    """Strict read and write of one export's JSON file (`FILE` in the export folder)."""

    FILE: ClassVar[str]

    @classmethod
    def read(cls: type[InfoT], folder: str | Path, hint: str = "") -> InfoT:
        """`folder/FILE` -> the dataclass; a missing or malformed file, or an unknown key, is a RestError."""
        return from_dict(cls, _read_json(Path(folder) / cls.FILE, hint), where=str(Path(folder) / cls.FILE))

    def write(self, folder: str | Path) -> Path:
        """Write `folder/FILE` (indented JSON, keys in field order); returns its path."""
        path = Path(folder) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(to_dict(self), indent=2) + "\n")
        return path


def _read_json(path: Path, hint: str) -> dict:
    if not path.is_file():
        raise RestError(f"{path} not found" + (f": {hint}" if hint else ""))
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RestError(f"{path}: not valid JSON ({err})") from None


@dataclass(frozen=True, kw_only=True)
class TeacherInfo(ExportInfo):
    """teacher.json: what train/teacher.py hands to the student's distillation and to offline sampling."""

    FILE: ClassVar[str] = "teacher.json"

    vae: str  # the VAE folder the teacher's latents come from
    shift: float  # timestep shift of the teacher's training levels
    num_train_timesteps: int = 1000  # the denoiser's timestep embedding reads t * this
    step: int  # training step of the exported EMA weights
    train_latent_frames: int | None = None  # latent frames of a training clip: the window offline sampling uses
    audio: str = "mel"  # the audio path the denoiser reads (AUDIO_PATHS)


@dataclass(frozen=True, kw_only=True)
class StudentInfo(ExportInfo):
    """student.json: the streaming settings the generator must use with train/student.py's export, and where it
    came from."""

    FILE: ClassVar[str] = "student.json"

    steps: int  # K, denoising steps per chunk at the end of distillation
    sigmas: tuple[float, ...]  # the K + 1 levels flow_sigmas(K, shift), from 1 to 0
    shift: float  # timestep shift of the levels (the teacher's unless the experiment set one)
    context_timestep: float  # level the cached past is re-noised to (rest/streaming/rollout.py)
    chunk_latent_frames: int  # latent frames per streaming chunk
    context_chunks: int  # chunks kept in the ID-Context cache
    window_chunks: int  # chunks of a distillation window
    teacher_substeps: int = 1  # teacher Euler steps per student step of the target (1 before it was recorded)
    teacher_guidance: Guidance  # CFG scales baked into the teacher's targets
    teacher: str  # the teacher export distilled from
    vae: str  # the VAE folder of the teacher
    step: int  # training step of the exported EMA weights
    audio: str = "mel"  # the audio path the denoiser reads (AUDIO_PATHS)


@dataclass(frozen=True, kw_only=True)
class MotionInfo(ExportInfo):
    """motion.json: a face-motion model (rest/training/motion.py): what its audio path is, and for a streaming
    student the settings its stream must use."""

    FILE: ClassVar[str] = "motion.json"

    stage: str  # "teacher" (bidirectional) or "student" (block_causal, streams)
    audio: str  # the audio path the denoiser reads: "phonetic" (rest.data.phonetic.PhoneticAudioEncoder)
    emotions: tuple[str, ...]  # emotion names in label order (the denoiser's null label follows them)
    shift: float  # timestep shift
    steps: int  # denoising steps per chunk (the student's K; the teacher's default sampling steps)
    sigmas: tuple[float, ...]  # flow_sigmas(steps, shift)
    context_timestep: float = 0.0  # level the cached past is re-noised to (students)
    window_frames: int  # frames of a training window (the teacher's offline sampling window)
    teacher: str | None = None  # the teacher export a student was distilled from
    step: int  # training step of the exported EMA weights
    # the starting noise's scale per rig parameter (StreamingSession's noise_scale), chosen on training clips
    # (evaluation/motion_study.py --calibrate); None = 1, what the student trained on
    noise_scale: tuple[float, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class PipelineSource(StudentInfo):
    """pipeline.json's `training`: the student.json a pipeline was assembled from, and the audio encoder that
    replaced the student's own, if one did (`rest export-pipeline --audio-encoder`)."""

    audio_encoder: str | None = None

    @classmethod
    def of(cls, student: StudentInfo, audio_encoder: str | None = None) -> PipelineSource:
        own = {f.name: getattr(student, f.name) for f in dataclasses.fields(StudentInfo)}
        return cls(**own, audio_encoder=audio_encoder)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig(ExportInfo):
    """pipeline.json: everything generation needs besides the three models."""

    FILE: ClassVar[str] = "pipeline.json"

    preset: str  # the preset the models were trained for (rest/config.py)
    resolution: int  # side of the square frames, pixels
    steps: int  # K, denoising steps per chunk the student was distilled for
    shift: float  # timestep shift of the student's levels
    fps: int = 25
    sample_rate: int = 16000
    context_timestep: float = 0.0  # level the cached past is re-noised to
    chunk_latent_frames: int = 1
    context_chunks: int = 3
    num_emotions: int = 0  # emotion / style labels 0 .. n-1 (label n, or none given, is the null label)
    audio: str = "mel"  # the audio path the denoiser reads (AUDIO_PATHS): "mel" loads audio_encoder/
    format: str = PIPELINE_FORMAT
    version: int = PIPELINE_VERSION
    training: PipelineSource | None = None  # provenance: the student export's student.json (None: not trained)

    @classmethod
    def read(cls, folder: str | Path, hint: str = PIPELINE_HINT) -> PipelineConfig:
        """pipeline.json, its format and version checked before its keys."""
        path = Path(folder) / cls.FILE
        data = _read_json(path, f"{folder} is not a pipeline folder; {hint}")
        if not isinstance(data, dict) or data.get("format") != PIPELINE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{path}: format {found!r} is not {PIPELINE_FORMAT!r}")
        version = data.get("version", PIPELINE_VERSION)
        if isinstance(version, int) and version > PIPELINE_VERSION:
            raise ConfigError(f"{path}: version {version} is newer than this REST reads ({PIPELINE_VERSION}); upgrade")
        return from_dict(cls, data, where=str(path))


#################################################################################
#                                  The folders                                  #
#################################################################################


def load_vae(folder: str | Path, what: str = "VAE") -> CausalVideoVAE:
    """A VAE export (train/vae.py's export/, or a pipeline's vae/)."""
    return load_local(CausalVideoVAE, folder, what)


def load_audio_path(audio: str, folder: Path, what: str) -> AudioEncoder | PhoneticAudioEncoder:
    """The audio path `audio` (AUDIO_PATHS) of an export: the AudioEncoder in `folder`, or the phonetic channel."""
    if audio == "phonetic":
        return PhoneticAudioEncoder()
    if audio != "mel":
        raise RestError(f"unknown audio path {audio!r} ({what}); this version reads {', '.join(AUDIO_PATHS)}")
    return load_local(AudioEncoder, folder, what)


def _load_networks(folder: Path, role: str, audio: str) -> tuple[DenoiserDiT, AudioEncoder | PhoneticAudioEncoder]:
    denoiser = load_local(DenoiserDiT, folder / "denoiser", f"{role} denoiser")
    audio_encoder = load_audio_path(audio, folder / "audio_encoder", f"{role} audio encoder")
    return denoiser, audio_encoder


def load_teacher(folder: str | Path) -> tuple[DenoiserDiT, AudioEncoder, TeacherInfo]:
    """The teacher export: denoiser (bidirectional), audio encoder and teacher.json."""
    folder = Path(folder)
    info = TeacherInfo.read(folder, TEACHER_HINT)
    denoiser, audio_encoder = _load_networks(folder, "teacher", info.audio)
    if denoiser.attention_mode != "bidirectional":
        raise RestError(f"{folder / 'denoiser'} is {denoiser.attention_mode!r}; the ASD teacher is bidirectional")
    return denoiser, audio_encoder, info


def load_student(folder: str | Path) -> tuple[DenoiserDiT, AudioEncoder, StudentInfo]:
    """The student export: denoiser (block_causal), audio encoder and student.json."""
    folder = Path(folder)
    info = StudentInfo.read(folder, STUDENT_HINT)
    denoiser, audio_encoder = _load_networks(folder, "student", info.audio)
    return denoiser, audio_encoder, info


def load_pipeline(folder: str | Path) -> tuple[CausalVideoVAE, AudioEncoder, DenoiserDiT, PipelineConfig]:
    """A pipeline folder: its VAE, audio encoder, streaming denoiser and pipeline.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RestError(f"no pipeline folder at {folder}: {PIPELINE_HINT}")
    config = PipelineConfig.read(folder)
    return (
        load_vae(folder / "vae", "pipeline VAE"),
        load_audio_path(config.audio, folder / "audio_encoder", "pipeline audio encoder"),
        load_local(DenoiserDiT, folder / "denoiser", "pipeline denoiser"),
        config,
    )


__all__ = [
    "AUDIO_PATHS",
    "ExportInfo",
    "MotionInfo",
    "PIPELINE_FORMAT",
    "PIPELINE_HINT",
    "PIPELINE_VERSION",
    "PipelineConfig",
    "PipelineSource",
    "StudentInfo",
    "TeacherInfo",
    "load_audio_path",
    "load_pipeline",
    "load_student",
    "load_teacher",
    "load_vae",
]
