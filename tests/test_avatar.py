"""`rest avatar`: the video split and its checks, and, on a SynthTalk identity's video as "the user's video", an avatar
that reconstructs that identity better than the generic model it was fine-tuned from, as a user runs it."""

import json
from pathlib import Path

import numpy as np
import pytest

from rest.avatar.recipe import AvatarOptions, prepare, typical_frame
from rest.cli import main
from rest.data.shards import ShardReader
from rest.data.synth.speech import espeak_available
from rest.errors import RestError
from rest.exports import PipelineConfig
from rest.media import read_video, write_video

REPO = Path(__file__).resolve().parents[1]


def talking_video(path: Path, seconds: float, size: int = 64) -> Path:
    """A moving pattern with a tone, `seconds` long, at 25 fps and 16 kHz."""
    n = int(seconds * 25)
    yy, xx = np.mgrid[0:size, 0:size]
    frames = [
        (np.stack([xx / size, yy / size, (np.abs(yy - size * 0.7) < 2 + 4 * abs(np.sin(0.3 * t))) * 1.0], -1) * 255)
        for t in range(n)
    ]
    t = np.arange(n * 640) / 16000
    write_video(
        path, np.stack(frames).astype(np.uint8), 25, audio=(0.3 * np.sin(2 * np.pi * 220 * t)), sample_rate=16000
    )
    return path


def test_typical_frame_is_the_one_closest_to_the_mean():
    frames = np.zeros((5, 32, 32, 3), np.uint8)
    frames[[0, 4]] = 200  # outliers
    frames[2] = 40
    assert typical_frame(frames) == 2  # the mean is 80: frame 2 (40) is closer than 0 or 200


def test_prepare_splits_the_video_and_refuses_short_ones(tmp_path, test_pipeline):
    config = PipelineConfig.read(test_pipeline)
    video = talking_video(tmp_path / "me.mp4", 10.0)
    opts = AvatarOptions(video=video, output=tmp_path / "me", base=test_pipeline, video_is_crop=True)
    opts.check()
    split = prepare(opts, config)
    assert (split["frames"], split["train_frames"], split["heldout_frames"], split["segments"]) == (250, 200, 50, 4)
    data, heldout = ShardReader(opts.work_dir / "data"), ShardReader(opts.work_dir / "heldout")
    assert [r.num_frames for r in data.records] == [50, 50, 50, 50]
    assert [r.split for r in data.records] == ["train"] * 4
    assert heldout.records[0].num_frames == 50 and heldout.records[0].split == "heldout"
    real = read_video(video).frames
    assert np.abs(heldout.frames("heldout").astype(int) - real[200:].astype(int)).mean() < 4  # the video's end
    assert (opts.work_dir / "data" / "portrait.png").is_file()
    assert prepare(opts, config) == split  # done: not redone
    other = AvatarOptions(video=talking_video(tmp_path / "other.mp4", 9.0), output=opts.output, base=test_pipeline)
    with pytest.raises(RestError, match="holds an avatar of .*me.mp4, not .*other.mp4"):
        prepare(other, config)

    short = AvatarOptions(video=talking_video(tmp_path / "short.mp4", 3.0), output=tmp_path / "s", base=test_pipeline)
    short.video_is_crop = True
    with pytest.raises(RestError, match="too short for an avatar; it needs at least 8 s"):
        prepare(short, config)
    silent = tmp_path / "silent.mp4"
    write_video(silent, read_video(video).frames, 25)  # no audio track
    with pytest.raises(RestError, match="silent.mp4: no audio track"):
        prepare(AvatarOptions(video=silent, output=tmp_path / "q", base=test_pipeline, video_is_crop=True), config)
    with pytest.raises(RestError, match="--holdout 0.9"):
        AvatarOptions(video=video, output=tmp_path / "x", base=test_pipeline, holdout=0.9).check()
    with pytest.raises(RestError, match="no such file"):
        AvatarOptions(video=tmp_path / "none.mp4", output=tmp_path / "x", base=test_pipeline).check()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(RestError, match="not an avatar folder"):
        AvatarOptions(video=video, output=tmp_path / "taken", base=test_pipeline).check()


@pytest.mark.skipif(not espeak_available(), reason="SynthTalk speech needs espeak-ng: apt-get install espeak-ng")
def test_avatar_of_a_synthtalk_identity_beats_the_generic_model(tmp_path, capsys):
    """The whole command on a held-out SynthTalk identity (procedural: no real person), from the bundled rest-tiny:
    the report scores the avatar above the generic model on the held-out part, in PSNR of the generated frames and
    of the VAE's reconstruction; `rest generate` loads the avatar like any pipeline; a rerun resumes (skips)."""
    from rest.data.synth.generate import SynthConfig, make_clip, plan_clips

    cfg = SynthConfig(seconds=10.0, clip_seconds=(10.0, 10.0), engines=("espeak",))
    plan = plan_clips([9], cfg)[0]
    assert plan.split == "test_id"  # an identity rest-tiny never trained on
    clip = make_clip(plan, cfg)
    video = tmp_path / "me.mp4"
    write_video(video, clip.frames, 25, audio=clip.audio, sample_rate=16000)
    avatar = tmp_path / "avatars" / "me"
    args = ["avatar", "train", "--video", str(video), "--output", str(avatar), "--video-is-crop", "--holdout", "0.25"]
    assert main([*args, "--vae-steps", "40", "--student-steps", "40"]) == 0
    report = json.loads((avatar / "report.json").read_text())
    out = capsys.readouterr().out
    assert "| avatar |" in out and "| base |" in out
    assert report["avatar"]["own"]["psnr"] > report["base"]["own"]["psnr"] + 0.5, report
    assert report["avatar"]["vae_psnr"] > report["base"]["vae_psnr"] + 0.5, report
    assert (avatar / "report_strip.png").is_file()
    info = json.loads((avatar / "avatar.json").read_text())
    assert info["stages"]["vae"]["steps"] == 40 and info["stages"]["student"]["steps"] == 40

    assert main([*args, "--no-eval"]) == 0  # every stage done: nothing retrains
    assert "vae: 40 steps" in capsys.readouterr().out

    speech = tmp_path / "speech.wav"
    from rest.media import write_audio

    write_audio(speech, clip.audio[: 2 * 16000], 16000)
    generated = tmp_path / "out.mp4"
    command = ["generate", "--weights", str(avatar)]  # the avatar's own portrait
    assert main([*command, "--audio", str(speech), "--output", str(generated)]) == 0
    assert read_video(generated).frames.shape[0] == 50
