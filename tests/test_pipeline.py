"""TalkingHeadPipeline and `rest generate`: loading, determinism, streaming == whole file, face crop and paste-back,
MP4 duration, batch jobs, and one clear error per bad input with nothing written."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rest.cli import main
from rest.errors import RestError
from rest.media import probe, read_video, write_audio
from rest.pipelines import Paster, TalkingHeadPipeline, export_pipeline


@pytest.fixture(scope="module")
def pipe(test_pipeline):
    return TalkingHeadPipeline.from_pretrained(test_pipeline)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(RestError, match="no pipeline folder at .*train one"):
        TalkingHeadPipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(RestError, match="pipeline.json not found"):
        TalkingHeadPipeline.from_pretrained(tmp_path)


def test_stream_equals_whole_and_seeds(pipe, face_image):
    portrait = pipe.prepare_portrait(face_image)
    assert portrait.crop.shape == (64, 64, 3)
    audio = np.random.default_rng(0).standard_normal(int(2.1 * 16000)).astype(np.float32) * 0.1
    whole = pipe(portrait, audio, seed=5)
    assert whole.shape == (round(2.1 * 25), 64, 64, 3)  # the audio's duration in frames
    np.testing.assert_array_equal(whole, pipe(portrait, audio, seed=5))
    assert not np.array_equal(whole, pipe(portrait, audio, seed=6))

    session = pipe.stream(portrait, seed=5)
    rng, parts, i = np.random.default_rng(1), [], 0
    while i < len(audio):
        n = int(rng.integers(1, 3000))
        parts.append(session.push_audio(audio[i : i + n]))
        i += n
    parts.append(session.finish())
    streamed = np.concatenate(parts)
    assert len(streamed) == len(whole)  # finish() keeps every frame, as the whole-file path does
    assert np.abs(streamed.astype(int) - whole.astype(int)).max() <= 1  # float rounding of chunked audio
    stats = session.stats()
    assert stats["frames"] == len(streamed) and stats["first_frame_latency_s"] > 0 and stats["rtf"] > 0
    assert len(session.finish()) == 0  # a second end of stream has nothing more
    with pytest.warns(FutureWarning, match="finish"):
        assert len(session.flush()) == 0
    with pytest.raises(RestError, match="finished"):
        session.push_audio(audio[:100])
    with pytest.raises(RestError, match="no emotion labels"):
        pipe.stream(portrait, emotion=1)


def test_portrait_checks_and_paste(pipe, face_image):
    with pytest.raises(RestError, match="no face found"):
        pipe.prepare_portrait(np.full((200, 200, 3), 127, np.uint8))
    with pytest.raises(RestError, match="needs at least 64"):
        pipe.prepare_portrait(face_image[:40, :40])
    big = np.asarray(Image.fromarray(face_image).resize((3000, 3000)))
    portrait = pipe.prepare_portrait(big)
    assert max(portrait.image.shape[:2]) == 2048  # downscaled
    paster = Paster(portrait)
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    out = paster.paste(frames)
    assert out.shape == (2, 2048, 2048, 3)
    cx, cy = (portrait.box[0] + portrait.box[2]) / 2, (portrait.box[1] + portrait.box[3]) / 2
    assert out[0, int(cy), int(cx)].max() <= 2  # the crop's centre is the generated (black) frame
    np.testing.assert_array_equal(out[0, 2, 2], portrait.image[2, 2])  # far corner untouched


def test_generate_cli(test_pipeline, face_image, speech, tmp_path, capsys):
    image = tmp_path / "portrait.png"
    Image.fromarray(face_image).save(image)
    out = tmp_path / "out.mp4"
    args = ["generate", "--weights", str(test_pipeline), "--portrait", str(image), "--audio", str(speech)]
    assert main([*args, "--output", str(out), "--no-progress"]) == 0
    info = probe(out)
    assert info.has_audio and info.fps == 25 and (info.width, info.height) == (160, 160)
    assert abs(info.num_frames - 2.3 * 25) <= 1 and abs(info.audio_duration - info.duration) < 0.05
    assert "real-time factor" in capsys.readouterr().out

    crop = tmp_path / "crop.mp4"
    assert main([*args, "--output", str(crop), "--crop-only", "--no-progress"]) == 0
    assert read_video(crop).frames.shape[1:] == (64, 64, 3)

    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"portrait": str(image), "audio": str(speech), "output": str(tmp_path / f"j{i}.mp4"), "seed": i}
        for i in range(2)
    ]
    jobs.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert main(["generate", "--weights", str(test_pipeline), "--jobs", str(jobs), "--no-progress"]) == 0
    assert (tmp_path / "j0.mp4").is_file() and (tmp_path / "j1.mp4").is_file()


def test_generate_bad_inputs(test_pipeline, face_image, speech, tmp_path, capsys):
    image = tmp_path / "portrait.png"
    Image.fromarray(face_image).save(image)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 127, np.uint8)).save(blank)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    long = tmp_path / "long.wav"
    write_audio(long, np.zeros(16000 * 5, np.float32))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(speech.read_bytes()[: len(speech.read_bytes()) // 3])
    out = tmp_path / "out.mp4"
    cases = [
        (["--portrait", str(notes), "--audio", str(speech)], "notes.png"),
        (["--portrait", str(blank), "--audio", str(speech)], "no face found"),
        (["--portrait", str(image), "--audio", str(tmp_path / "missing.wav")], "file not found"),
        (["--portrait", str(image), "--audio", str(empty)], "file is empty"),
        (["--portrait", str(image), "--audio", str(truncated)], "truncated"),
        (["--portrait", str(image), "--audio", str(long), "--max-seconds", "3"], "longer than --max-seconds 3"),
        (["--portrait", str(image), "--audio", str(speech), "--preset", "huge"], "huge"),
        (["--portrait", str(image), "--audio", str(speech), "--preset", "tiny"], "not 'tiny'"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        code = main(["generate", "--weights", str(test_pipeline), *extra, "--output", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (extra, err)
        assert err.count("\n") == 1, err
        assert not out.exists() and not list(tmp_path.glob(".out.mp4*"))
    code = main(
        [
            "generate",
            "--weights",
            str(tmp_path / "none"),
            "--portrait",
            str(image),
            "--audio",
            str(speech),
            "--output",
            str(out),
        ]
    )
    assert code == 2 and "train one" in capsys.readouterr().err


def test_export_pipeline_errors(tmp_path):
    with pytest.raises(RestError, match="student.json not found"):
        export_pipeline(tmp_path, tmp_path / "out")


REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "weights" / "rest-tiny"


@pytest.mark.skipif(not (BUNDLED / "pipeline.json").is_file(), reason="no bundled weights in weights/rest-tiny")
def test_bundled_demo_model_talks(tmp_path):
    """The README's main command on the bundled inputs: an MP4 as long as the speech, whose frames change over time
    (the mouth and head move) but stay close to the portrait."""
    out = tmp_path / "demo.mp4"
    demo = REPO / "assets" / "demo"
    args = ["generate", "--portrait", str(demo / "portrait.png"), "--audio", str(demo / "speech.wav")]
    assert main([*args, "--output", str(out), "--no-progress"]) == 0
    info = probe(out)
    assert abs(info.duration - 8.0) <= 0.04 and info.has_audio
    frames = read_video(out).frames.astype(np.float32)
    portrait = np.asarray(Image.open(demo / "portrait.png").convert("RGB"), np.float32)
    assert np.abs(frames - portrait).mean() < 40  # the portrait, not noise
    assert np.abs(np.diff(frames, axis=0)).mean() > 0.2  # and it moves


def test_export_pipeline_from_a_student_export(test_pipeline, tmp_path, capsys):
    """`rest export-pipeline`: a student export + the VAE student.json names -> a folder that loads, in fp16."""
    import shutil

    import torch

    from rest.config import to_dict
    from rest.diffusion.flow import Guidance, flow_sigmas
    from rest.exports import PipelineConfig, StudentInfo
    from rest.models.vae import CausalVideoVAE

    student = tmp_path / "export"
    for name in ("denoiser", "audio_encoder"):
        shutil.copytree(test_pipeline / name, student / name)
    CausalVideoVAE.from_preset("tiny").save_pretrained(tmp_path / "vae")
    info = StudentInfo(
        steps=2,
        sigmas=tuple(flow_sigmas(2, 1.5).tolist()),
        shift=1.5,
        context_timestep=0.0,
        chunk_latent_frames=1,
        context_chunks=2,
        window_chunks=4,
        teacher_guidance=Guidance(),
        teacher="teacher/export",
        vae=str(tmp_path / "vae"),
        step=10,
    )
    info.write(student)
    out = tmp_path / "pipeline"
    assert main(["export-pipeline", "--student", str(student), "--output", str(out)]) == 0
    assert f"wrote pipeline folder {out}" in capsys.readouterr().out
    config = json.loads((out / "pipeline.json").read_text())
    assert (config["preset"], config["resolution"], config["steps"], config["shift"]) == ("tiny", 128, 2, 1.5)
    assert config["training"] == {**to_dict(info), "audio_encoder": None} and config["context_chunks"] == 2
    pipe = TalkingHeadPipeline.from_pretrained(out)
    assert next(pipe.vae.parameters()).dtype == torch.float32  # stored in fp16, run in fp32
    with pytest.raises(RestError, match="32 tokens a side at the 512 px of preset 'base', which has 16"):
        export_pipeline(student, tmp_path / "base", preset="base")
    # An 8x VAE under a denoiser with 2 x 2 patches has the tiny preset's token grid too.
    CausalVideoVAE.from_preset("tiny", patch_size=2, block_out_channels=(16, 64, 128)).save_pretrained(tmp_path / "v8")
    with pytest.raises(RestError, match="16 tokens a side at the 128 px of preset 'tiny', which has 8"):
        export_pipeline(student, tmp_path / "v8_patch1", vae=tmp_path / "v8")
    from rest.models.dit import DenoiserDiT

    patched = tmp_path / "export_patch2"
    shutil.copytree(student, patched)
    denoiser = DenoiserDiT.from_pretrained(student / "denoiser")
    DenoiserDiT.from_config({**denoiser.config, "patch_size": 2}).save_pretrained(patched / "denoiser")
    folder = export_pipeline(patched, tmp_path / "v8_patch2", vae=tmp_path / "v8")
    assert TalkingHeadPipeline.from_pretrained(folder).vae.spatial_compression == 8
    # --audio-encoder ships another encoder of the student's architecture (a feature-distilled audio expert).
    from rest.models.audio import AudioEncoder

    own = AudioEncoder.from_pretrained(student / "audio_encoder")
    torch.manual_seed(1)
    AudioEncoder.from_config(own.config).save_pretrained(tmp_path / "robust")
    argv = ["export-pipeline", "--student", str(student), "--output", str(tmp_path / "p2")]
    assert main([*argv, "--audio-encoder", str(tmp_path / "robust")]) == 0
    shipped = TalkingHeadPipeline.from_pretrained(tmp_path / "p2").audio_encoder
    assert PipelineConfig.read(tmp_path / "p2").training.audio_encoder == str(tmp_path / "robust")
    replaced = AudioEncoder.from_pretrained(tmp_path / "robust")
    for a, b in zip(shipped.parameters(), replaced.parameters(), strict=True):
        torch.testing.assert_close(a, b.half().float())  # stored in fp16
    assert not torch.equal(next(shipped.parameters()), next(own.parameters()))
    AudioEncoder.from_config({**own.config, "dim": own.config.dim * 2}).save_pretrained(tmp_path / "wider")
    with pytest.raises(RestError, match="architecture differs from the student's own"):
        export_pipeline(student, tmp_path / "p3", audio_encoder=tmp_path / "wider")
