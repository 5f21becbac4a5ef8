"""The stage hand-off files (rest/exports.py): strict reads that name the file and the key, round trips, and the files
already on disk (the bundled pipeline, exports written before a field existed) still read."""

import json
from pathlib import Path

import pytest

from rest.config import ConfigError, to_dict
from rest.diffusion.flow import Guidance
from rest.errors import RestError
from rest.exports import PipelineConfig, PipelineSource, StudentInfo, TeacherInfo

BUNDLED = Path(__file__).resolve().parents[1] / "weights" / "rest-tiny"

STUDENT = {  # a student.json as train/student.py writes it
    "steps": 1,
    "sigmas": [1.0, 0.0],
    "shift": 2.0,
    "context_timestep": 0.2,
    "chunk_latent_frames": 1,
    "context_chunks": 3,
    "window_chunks": 6,
    "teacher_substeps": 4,
    "teacher_guidance": {"audio": 7.0, "portrait": 2.0},
    "teacher": "runs/demo/teacher_audio/export",
    "vae": "runs/demo/vae/export",
    "step": 150,
    "audio": "phonetic",
}


def _write(folder: Path, name: str, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))
    return folder


@pytest.mark.skipif(not (BUNDLED / "pipeline.json").is_file(), reason="no bundled weights in weights/rest-tiny")
def test_the_bundled_pipeline_reads_and_round_trips(tmp_path):
    config = PipelineConfig.read(BUNDLED)
    assert (config.preset, config.steps, config.shift, config.context_timestep) == ("tiny", 1, 2.0, 0.2)
    assert config.training.teacher_guidance == Guidance(audio=7.0, portrait=2.0)
    assert config.training.audio_encoder is None
    assert config.audio == config.training.audio == "mel"  # written before the audio path was recorded
    original = json.loads((BUNDLED / "pipeline.json").read_text())
    written = json.loads(config.write(tmp_path).read_text())
    added = {"audio": "mel"}  # fields newer than the file, at their defaults
    assert written == {**original, **added, "training": {**original["training"], **added, "audio_encoder": None}}
    assert [k for k in written if k not in added] == list(original)  # the same keys in the same order


def test_student_info_round_trip_and_old_files(tmp_path):
    info = StudentInfo.read(_write(tmp_path / "new", "student.json", STUDENT))
    assert info.sigmas == (1.0, 0.0) and info.teacher_guidance.audio == 7.0 and info.teacher_substeps == 4
    assert json.loads(info.write(tmp_path / "again").read_text()) == STUDENT
    # Exports written before `teacher_substeps` was recorded distilled from one teacher step per student step.
    old = {k: v for k, v in STUDENT.items() if k not in ("teacher_substeps", "audio")}
    old_info = StudentInfo.read(_write(tmp_path / "old", "student.json", old))
    assert old_info.teacher_substeps == 1
    assert old_info.audio == "mel"  # ... and before the audio path was recorded, read the mel encoder
    # The provenance of a pipeline whose audio encoder replaced the student's own (export-pipeline --audio-encoder).
    source = PipelineSource.of(info, "runs/demo/audio_robust")
    assert to_dict(source) == {**STUDENT, "audio_encoder": "runs/demo/audio_robust"}


def test_teacher_info_round_trip(tmp_path):
    TeacherInfo(vae="runs/vae/export", shift=1.5, step=7, train_latent_frames=9).write(tmp_path)
    data = json.loads((tmp_path / "teacher.json").read_text())
    expected = {"vae": "runs/vae/export", "shift": 1.5, "num_train_timesteps": 1000, "step": 7}
    expected.update(train_latent_frames=9, audio="mel")
    assert data == expected
    old = {k: v for k, v in data.items() if k not in ("train_latent_frames", "audio")}
    old_info = TeacherInfo.read(_write(tmp_path / "old", "teacher.json", old))
    assert old_info.train_latent_frames is None and old_info.audio == "mel"


def test_reads_are_strict(tmp_path):
    with pytest.raises(RestError, match=r"student.json not found: point at"):
        StudentInfo.read(tmp_path, "point at the export/ folder")
    folder = _write(tmp_path / "typo", "student.json", {**STUDENT, "context_timestpe": 0.2})
    with pytest.raises(ConfigError, match=r"typo/student.json: unknown key 'context_timestpe' for StudentInfo"):
        StudentInfo.read(folder)
    folder = _write(tmp_path / "missing", "student.json", {k: v for k, v in STUDENT.items() if k != "vae"})
    with pytest.raises(ConfigError, match=r"missing/student.json: .*'vae'"):
        StudentInfo.read(folder)
    folder = _write(tmp_path / "type", "teacher.json", {"vae": "v", "shift": "fast", "step": 1})
    with pytest.raises(ConfigError, match=r"teacher.json.shift: expected float, got 'fast'"):
        TeacherInfo.read(folder)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "teacher.json").write_text("{")
    with pytest.raises(RestError, match="not valid JSON"):
        TeacherInfo.read(tmp_path / "broken")


def test_pipeline_format_version_and_nested_keys(tmp_path):
    base = to_dict(PipelineConfig(preset="tiny", resolution=128, steps=1, shift=2.0))
    assert PipelineConfig.read(_write(tmp_path / "ok", "pipeline.json", base)).training is None
    with pytest.raises(ConfigError, match="format 'other' is not 'rest-pipeline'"):
        PipelineConfig.read(_write(tmp_path / "format", "pipeline.json", {**base, "format": "other"}))
    with pytest.raises(ConfigError, match="version 2 is newer than this REST reads"):
        PipelineConfig.read(_write(tmp_path / "version", "pipeline.json", {**base, "version": 2}))
    nested = {**base, "training": {**STUDENT, "sigma": [1.0, 0.0]}}
    with pytest.raises(ConfigError, match=r"pipeline.json.training: unknown key 'sigma'"):
        PipelineConfig.read(_write(tmp_path / "nested", "pipeline.json", nested))
