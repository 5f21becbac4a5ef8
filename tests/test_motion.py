"""The face-motion stream: the rig and its ARKit export, the motion set, the trainer (teacher and student through the
shared rollout), the pipeline's stream against its whole-file output, the files for 3D tools, `rest animate`, and the
motion metrics on inputs with known answers."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rest.data.synth.emotion import EMOTIONS
from rest.data.synth.motion_set import INFO_FILE, MotionClip, labels_to_rig, load_motion_set, save_motion_clip
from rest.data.synth.visemes import VISEME_IDS
from rest.metrics.motion import (
    CALIBRATION_GRID,
    EmotionClassifier,
    blink_rate,
    calibrate_noise_scale,
    heldout_motion_study,
    motion_statistics,
)
from rest.models.rig import ARKIT_BLENDSHAPES, ARKIT_ROTATIONS, RIG_INDEX, RIG_PARAMS, MotionRig, arkit_blendshapes

P = len(RIG_PARAMS)


def _frames(n: int = 10, **values) -> np.ndarray:
    frames = np.zeros((n, P), np.float32)
    for name, value in values.items():
        frames[:, RIG_INDEX[name]] = value
    return frames


def _has_pocketsphinx() -> bool:
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return False
    return True


needs_pocketsphinx = pytest.mark.skipif(not _has_pocketsphinx(), reason="pip install -e '.[metrics]' (pocketsphinx)")

#################################################################################
#                                 The rig                                       #
#################################################################################


def test_arkit_blendshapes_map_each_rig_parameter_to_its_shapes():
    shapes = arkit_blendshapes(_frames(jaw_open=0.7, smile=-0.5, gaze_x=0.5, gaze_y=-0.4, lid=0.3, blink=1.0))
    assert set(shapes) == set(ARKIT_BLENDSHAPES + ARKIT_ROTATIONS) and len(ARKIT_BLENDSHAPES) == 52
    assert np.allclose(shapes["JawOpen"], 0.7)
    assert np.allclose(shapes["MouthFrownLeft"], 0.5) and np.allclose(shapes["MouthFrownRight"], 0.5)
    assert np.allclose(shapes["MouthSmileLeft"], 0.0)
    # Gaze to the image's right is to the subject's left: the left eye looks out, the right eye in.
    assert np.allclose(shapes["EyeLookOutLeft"], 0.5) and np.allclose(shapes["EyeLookInRight"], 0.5)
    assert np.allclose(shapes["EyeLookInLeft"], 0.0) and np.allclose(shapes["EyeLookUpLeft"], 0.4)
    assert np.allclose(shapes["EyeWideLeft"], 0.3) and np.allclose(shapes["EyeSquintRight"], 0.0)
    assert np.allclose(shapes["EyeBlinkRight"], 1.0)
    for name in ARKIT_BLENDSHAPES:
        assert shapes[name].min() >= 0 and shapes[name].max() <= 1, name
    # Rounded lips: a pucker when nearly closed, a funnel when open.
    closed = arkit_blendshapes(_frames(mouth_width=-0.32, jaw_open=0.05))
    opened = arkit_blendshapes(_frames(mouth_width=-0.32, jaw_open=0.6))
    assert closed["MouthPucker"][0] > 0.9 > closed["MouthFunnel"][0]
    assert opened["MouthFunnel"][0] > 0.9 > opened["MouthPucker"][0]
    with pytest.raises(ValueError, match="RIG_PARAMS"):
        arkit_blendshapes(np.zeros((3, P - 1)))


def test_rig_normalisation_round_trip_and_rest_pose(tmp_path):
    rig = MotionRig(mean=tuple(np.linspace(-0.5, 0.5, P)), std=tuple(np.linspace(0.1, 1.0, P)))
    x = torch.randn(2, P, 5, 1, 1)
    assert torch.allclose(rig.denormalize_latents(rig.normalize_latents(x)), x, atol=1e-6)
    assert torch.allclose(rig.denormalize_latents(rig.rest_latent(3)), torch.zeros(3, P, 1, 1, 1), atol=1e-6)
    rig.save_pretrained(tmp_path / "rig")
    again = MotionRig.from_pretrained(tmp_path / "rig")
    assert torch.equal(again.normalize_latents(x), rig.normalize_latents(x))
    with pytest.raises(ValueError, match="std > 0"):
        MotionRig(std=(0.0,) * P)


def test_labels_to_rig_reads_every_label():
    n = 6
    meta = {
        "mouth_open": np.linspace(0, 0.5, n, dtype=np.float32),
        "mouth_width": np.full(n, 0.8, np.float32),
        "viseme": np.array([VISEME_IDS["PP"], 0, 0, 0, 0, 0], np.int16),
        "blink": np.full(n, 0.25, np.float32),
        "gaze": np.tile(np.array([[0.1, -0.2]], np.float32), (n, 1)),
        "head_pose": np.tile(np.array([[10.0, -5.0, 2.0]], np.float32), (n, 1)),
        "expression": np.tile(np.array([[0.5, 0.1, 0.2, 0.3, -0.4, 0.2]], np.float32), (n, 1)),
    }
    rig = labels_to_rig(meta)
    assert rig.shape == (n, P) and rig.dtype == np.float32
    col = lambda name: rig[:, RIG_INDEX[name]]  # noqa: E731
    assert np.allclose(col("jaw_open"), np.clip(meta["mouth_open"] + 0.2, 0, 1))  # speech plus the jaw drop
    assert col("mouth_close").tolist() == [1, 0, 0, 0, 0, 0]
    assert np.allclose(col("mouth_width"), -0.2) and np.allclose(col("smile"), 0.5) and np.allclose(col("lid"), -0.4)
    assert np.allclose(col("head_yaw"), np.radians(10)) and np.allclose(col("gaze_y"), -0.2)


#################################################################################
#                          A motion set, the trainer                            #
#################################################################################


def _synthetic_clip(i: int, split: str, frames: int = 120, seed: int = 0) -> MotionClip:
    """A clip whose mouth is its first feature and whose emotion sets the smile: a model can learn both."""
    rng = np.random.default_rng(seed * 1000 + i)
    features = np.zeros((frames, 3), np.float32)
    features[:, 0] = np.clip(np.convolve(rng.random(frames), np.ones(5) / 5, "same"), 0, 1)
    features[:, 2] = features[:, 0] > 0.3
    emotion = i % len(EMOTIONS)
    rig = np.zeros((frames, P), np.float32)
    rig[:, RIG_INDEX["jaw_open"]] = features[:, 0]
    rig[:, RIG_INDEX["smile"]] = (emotion - 2) * 0.3
    rig[:, RIG_INDEX["brow_inner"]] = 0.2 * (emotion == 2)
    rig[:, RIG_INDEX["head_yaw"]] = 0.05 * np.sin(np.arange(frames) / 20 + i)
    rig[(np.arange(frames) % 60) < 4, RIG_INDEX["blink"]] = 1.0
    return MotionClip(
        f"id{i:04d}_v000_0000", rig, features, emotion, np.ones(frames, np.float32), features[:, 2] > 0, split,
        "en-us+m1", "en-us",
    )  # fmt: skip


@pytest.fixture(scope="module")
def motion_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion_set")
    (root / INFO_FILE).write_text("{}")
    for i in range(12):
        save_motion_clip(root, _synthetic_clip(i, "test_id" if i >= 9 else "train"))
    return root


def test_motion_set_round_trip(motion_set, tmp_path):
    clips = load_motion_set(motion_set, "test_id")
    assert [c.clip_id for c in clips] == ["id0009_v000_0000", "id0010_v000_0000", "id0011_v000_0000"]
    again = _synthetic_clip(9, "test_id")
    assert np.array_equal(clips[0].rig, again.rig) and clips[0].emotion == again.emotion
    with pytest.raises(Exception, match="not a motion set"):
        load_motion_set(tmp_path)


@needs_pocketsphinx
def test_teacher_then_student_train_export_and_stream(motion_set, tmp_path):
    """Both stages run through training_loop and export folders the pipeline loads; the student streams."""
    from rest.config import from_dict
    from rest.pipelines.motion import MotionPipeline
    from rest.training.motion import MotionExperiment, train_motion

    tiny = {
        "width": 32,
        "depth": 2,
        "num_heads": 2,
        "frequency_dim": 32,
        "chunk_latent_frames": 2,
        "context_chunks": 2,
    }
    common = {"batch_size": 4, "max_steps": 3, "log_every": 1, "eval_every": 0, "eval_windows": 4, "warmup_steps": 1}
    teacher = from_dict(
        MotionExperiment,
        {
            "data": {"root": str(motion_set), "window_frames": 16},
            "denoiser": tiny,
            "train": {**common, "output_dir": str(tmp_path / "teacher")},
        },
    )
    export = train_motion(teacher)
    assert json.loads((export / "motion.json").read_text())["stage"] == "teacher"
    with pytest.raises(Exception, match="streams a student"):
        MotionPipeline.from_pretrained(export)
    student = from_dict(
        MotionExperiment,
        {
            "stage": "student",
            "teacher": str(export),
            "data": {"root": str(motion_set)},
            "asd": {"window_chunks": 4, "steps_schedule": [[0, 1]], "teacher_steps": 2, "context_timestep": 0.05},
            "train": {**common, "output_dir": str(tmp_path / "student")},
        },
    )
    pipe = MotionPipeline.from_pretrained(train_motion(student))
    assert pipe.info.stage == "student" and pipe.info.steps == 1
    frames = pipe.animate_features(_synthetic_clip(0, "train").features[:40], "happy")
    assert frames.shape == (40, P) and np.isfinite(frames).all()


#################################################################################
#                           The pipeline and its files                          #
#################################################################################


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced buzz with syllable-rate bursts and pauses (what the phone decoder hears as speech and silence)."""
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    buzz = np.sign(np.sin(2 * np.pi * 120 * t)) * 0.3 + 0.05 * rng.standard_normal(len(t))
    envelope = (np.sin(2 * np.pi * 4 * t) > 0) * (np.sin(2 * np.pi * 0.4 * t) > -0.3)
    return (buzz * envelope).astype(np.float32)


@needs_pocketsphinx
def test_stream_equals_whole_file_and_features(test_motion_model):
    from rest.pipelines.motion import MotionPipeline

    pipe = MotionPipeline.from_pretrained(test_motion_model)
    audio = _speechy(3.0)
    whole = pipe.animate(audio, emotion="sad", seed=3)
    assert whole.shape == (75, P)
    stream = pipe.stream("sad", seed=3)
    pieces = [stream.push(audio[i : i + 777]) for i in range(0, len(audio), 777)] + [stream.finish()]
    assert all(len(p) % 2 == 0 for p in pieces[:-1])  # whole chunks of 2 frames until the end
    assert np.array_equal(np.concatenate(pieces), whole)
    features = pipe.audio.encode(audio)
    assert np.array_equal(pipe.animate_features(features, "sad", seed=3), whole[: len(features) // 2 * 2])
    assert not np.array_equal(pipe.animate(audio, emotion="happy", seed=3), whole)  # the emotion is read
    assert not np.array_equal(pipe.animate(audio, emotion="sad", seed=4), whole)  # and the seed
    with pytest.raises(Exception, match="unknown emotion 'joy'"):
        pipe.animate(audio, emotion="joy")


@needs_pocketsphinx
def test_gaze_target_and_noise_scale(test_motion_model):
    """A gaze target holds the eyes exactly where asked (the rest of the face still generated and still read from
    the stream), from the chunk after set_gaze; a noise scale of 0 makes the output independent of the seed."""
    from dataclasses import replace

    from rest.pipelines.motion import MotionPipeline

    pipe = MotionPipeline.from_pretrained(test_motion_model)
    audio = _speechy(2.0)
    free = pipe.animate(audio, seed=1)
    held = pipe.animate(audio, seed=1, gaze=(0.5, -0.25))
    gaze = [RIG_INDEX["gaze_x"], RIG_INDEX["gaze_y"]]
    np.testing.assert_allclose(held[:, gaze], np.tile([0.5, -0.25], (len(held), 1)), atol=1e-5)
    assert np.abs(free[:, gaze] - held[:, gaze]).max() > 0.1  # the model's own gaze is elsewhere
    assert not np.allclose(np.delete(held, gaze, axis=1), np.delete(free, gaze, axis=1))  # the face continues from it
    stream = pipe.stream(seed=1)
    first = stream.push(audio[:8000])  # 0.5 s: the chunks it completes look where the model looks
    stream.set_gaze((-1.0, 1.0))
    rest = np.concatenate([stream.push(audio[8000:]), stream.finish()])
    np.testing.assert_allclose(first, free[: len(first)], atol=1e-6)
    np.testing.assert_allclose(rest[:, gaze], np.tile([-1.0, 1.0], (len(rest), 1)), atol=1e-5)
    for bad in [(1.5, 0.0), (0.0, float("nan")), (1.0,)]:
        with pytest.raises(Exception, match="gaze target is two numbers"):
            pipe.stream(gaze=bad)

    pipe.noise_scale[:] = 0
    quiet = {"blinks": False, "saccades": False}
    a, b = pipe.animate(audio, seed=1, **quiet), pipe.animate(audio, seed=2, **quiet)
    np.testing.assert_allclose(a, b, atol=1e-6)  # no noise and no idle processes: the seed has nothing to draw
    pipe.noise_scale[:] = 1
    assert not np.allclose(pipe.animate(audio, seed=1, **quiet), b, atol=1e-3)
    with pytest.raises(Exception, match="noise_scale has 3 values"):
        MotionPipeline(pipe.denoiser, pipe.rig, replace(pipe.info, noise_scale=(1.0, 1.0, 1.0)))


# LiveLink Face's CSV header as the app writes it and its importers read it (typed from a take's header, not from
# rest/models/rig.py): the columns a consumer indexes by position.
LIVELINK_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,EyeSquintLeft,"
    "EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,EyeSquintRight,"
    "EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,"
    "MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,MouthStretchLeft,"
    "MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,MouthShrugUpper,MouthPressLeft,MouthPressRight,"
    "MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,"
    "BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,"
    "TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
)


def test_blink_schedule_streams_synthtalks_blinks_in_bounded_memory():
    """The stream's blink process is SynthTalk's blink model: asked 2 frames at a time it gives blink_track's closure
    for the same seed, at SynthTalk's rate, and it keeps only the blinks not yet over."""
    from rest.data.synth.motion import BlinkSchedule, blink_track

    schedule = BlinkSchedule(seed=7, fps=25, interval=(2.0, 6.0))
    parts = [schedule.closure(f, 2) for f in range(0, 25 * 120, 2)]
    assert len(schedule.pending) <= 3  # after 2 minutes: the blinks not yet over, no history
    times = np.arange(25 * 120) / 25
    np.testing.assert_allclose(
        np.concatenate(parts), blink_track(times, np.random.default_rng(7), (2.0, 6.0)), atol=1e-6
    )
    assert 10 <= blink_rate(np.concatenate(parts), 25) <= 20  # one every 2-6 s
    later = BlinkSchedule(seed=7, fps=25)
    later.closure(0, 2)
    assert len(later.pending) <= 2 and later.closure(25 * 3600, 2).shape == (2,) and len(later.pending) <= 3


@needs_pocketsphinx
def test_stream_blinks_from_the_blink_process_or_not_at_all(test_motion_model):
    from rest.data.synth.motion import BlinkSchedule
    from rest.pipelines.motion import MotionPipeline

    pipe = MotionPipeline.from_pretrained(test_motion_model)
    audio = _speechy(4.0)
    frames = pipe.animate(audio, seed=5)
    expected = BlinkSchedule(seed=5, fps=25).closure(0, len(frames))
    np.testing.assert_allclose(frames[:, RIG_INDEX["blink"]], expected, atol=1e-5)
    own = pipe.animate(audio, seed=5, blinks=False)[:, RIG_INDEX["blink"]]
    assert np.abs(own - expected).max() > 0.05  # without the process the lids are the model's


def test_gaze_schedule_streams_synthtalks_fixations_in_bounded_memory():
    """The stream's gaze process is SynthTalk's gaze model: asked 2 frames at a time it gives gaze_track's fixations
    and saccades for the same seed, and it keeps only the fixations not yet over."""
    from rest.data.synth.motion import GazeSchedule, gaze_track

    schedule = GazeSchedule(seed=7, fps=25)
    parts = np.concatenate([schedule.gaze(f, 2) for f in range(0, 25 * 120, 2)])
    assert len(schedule.pending) <= 2  # after 2 minutes: the fixation under way, no history
    np.testing.assert_allclose(parts, gaze_track(np.arange(25 * 120) / 25, np.random.default_rng(7)), atol=1e-6)
    jumps = np.abs(np.diff(parts, axis=0)).max(axis=1) > 0
    assert 20 <= jumps.sum() <= 120 and np.abs(parts).max() <= 0.8  # a fixation every 0.4-3 s, inside the eye
    assert GazeSchedule(seed=7, fps=25).gaze(25 * 3600, 2).shape == (2, 2)


@needs_pocketsphinx
def test_stream_gaze_from_the_gaze_process_when_asked_unless_a_target(test_motion_model):
    from rest.data.synth.motion import GazeSchedule
    from rest.pipelines.motion import MotionPipeline

    pipe = MotionPipeline.from_pretrained(test_motion_model)
    audio = _speechy(4.0)
    gaze = [RIG_INDEX["gaze_x"], RIG_INDEX["gaze_y"]]
    frames = pipe.animate(audio, seed=5, saccades=True)
    np.testing.assert_allclose(frames[:, gaze], GazeSchedule([5, 1], 25).gaze(0, len(frames)), atol=1e-5)
    own = pipe.animate(audio, seed=5)[:, gaze]  # off by default (it costs lip-sync, docs/experiments.md)
    assert np.abs(own - frames[:, gaze]).max() > 0.05  # without the process the eyes are the model's
    held = pipe.animate(audio, seed=5, gaze=(0.3, 0.1), saccades=True)[:, gaze]
    np.testing.assert_allclose(held, np.tile([0.3, 0.1], (len(held), 1)), atol=1e-5)  # a target wins


def test_livelink_csv_reads_as_a_positional_importer_reads_a_take(tmp_path):
    """An importer of LiveLink Face takes: the header byte for byte, then per row the timecode, the count, and the
    61 values by position. The subject's left (the image's right) stays left, column by column."""
    from rest.pipelines.motion import write_livelink_csv

    frames = _frames(5, smile=0.8, head_yaw=0.1)
    frames[:, RIG_INDEX["gaze_x"]] = 0.6  # eyes to the image's right: the subject's left
    write_livelink_csv(tmp_path / "take.csv", frames, 25)
    lines = (tmp_path / "take.csv").read_text().splitlines()
    assert lines[0] == LIVELINK_HEADER
    names = LIVELINK_HEADER.split(",")[2:]
    for line in lines[1:]:
        timecode, count, *values = line.split(",")
        assert re.fullmatch(r"\d\d:\d\d:\d\d:\d\d\.\d\d\d", timecode) and int(count) == len(values) == 61
        shapes = dict(zip(names, map(float, values), strict=True))
        assert shapes["MouthSmileLeft"] == shapes["MouthSmileRight"] > 0.5 and shapes["HeadYaw"] == pytest.approx(0.1)
        assert shapes["EyeLookOutLeft"] > 0 and shapes["EyeLookInRight"] > 0  # both eyes towards the subject's left
        assert shapes["EyeLookInLeft"] == shapes["EyeLookOutRight"] == 0
        assert all(0 <= shapes[n] <= 1 for n in names[:52])


@needs_pocketsphinx
def test_docs_sample_is_what_rest_animate_writes_with_the_bundled_model(tmp_path):
    """docs/motion_sample.csv (`rest animate --audio assets/demo/speech.wav --output docs/motion_sample.csv --emotion
    happy`) reads as a LiveLink take and is what the bundled weights make today: regenerate it when they change."""
    from rest.cli import main

    root = Path(__file__).resolve().parents[1]
    sample, weights = root / "docs" / "motion_sample.csv", root / "weights" / "rest-motion"
    if not (weights / "denoiser" / "diffusion_pytorch_model.safetensors").exists():
        pytest.skip("weights/rest-motion is not here")
    lines = sample.read_text().splitlines()
    assert lines[0] == LIVELINK_HEADER and len(lines) == 1 + 200  # 8 s at 25 fps
    rows = [line.split(",") for line in lines[1:]]
    assert all(int(r[1]) == len(r) - 2 == 61 for r in rows)
    assert (
        main(
            [
                "animate",
                "--audio",
                str(root / "assets/demo/speech.wav"),
                "--output",
                str(tmp_path / "m.csv"),
                "--emotion",
                "happy",
            ]
        )
        == 0
    )
    again = [line.split(",") for line in (tmp_path / "m.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in again] == [r[0] for r in rows]
    np.testing.assert_allclose(
        np.array([r[2:] for r in again], float), np.array([r[2:] for r in rows], float), atol=2e-3
    )
    jaw = np.array([float(r[2 + LIVELINK_HEADER.split(",")[2:].index("JawOpen")]) for r in rows])
    assert jaw.max() > 0.3 and jaw.min() < 0.05  # the mouth opens and closes


def test_livelink_csv_and_json_files(tmp_path):
    from rest.pipelines.motion import livelink_timecode, write_livelink_csv, write_motion_json

    frames = _frames(30, jaw_open=0.4, head_yaw=-0.1)
    frames[:, RIG_INDEX["blink"]] = np.linspace(0, 1, 30)
    write_livelink_csv(tmp_path / "m.csv", frames, 25)
    rows = list(csv.reader(open(tmp_path / "m.csv")))
    assert rows[0][:2] == ["Timecode", "BlendShapeCount"] and rows[0][2:] == list(ARKIT_BLENDSHAPES + ARKIT_ROTATIONS)
    assert len(rows) == 31 and all(len(r) == 63 for r in rows)
    assert rows[1][0] == "00:00:00:00.000" and rows[26][0] == "00:00:01:00.000" and rows[1][1] == "61"
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d:\d\d\.\d\d\d", r[0]) for r in rows[1:])
    col = {name: i for i, name in enumerate(rows[0])}
    assert float(rows[5][col["JawOpen"]]) == pytest.approx(0.4) and float(rows[5][col["HeadYaw"]]) == pytest.approx(
        -0.1
    )
    assert float(rows[30][col["EyeBlinkLeft"]]) == pytest.approx(1.0)
    assert livelink_timecode(25 * 3661 + 7, 25) == "01:01:01:07.000"
    write_motion_json(tmp_path / "m.json", frames, 25, "happy")
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["fps"] == 25 and doc["emotion"] == "happy" and doc["rig_params"] == list(RIG_PARAMS)
    assert len(doc["frames"]) == 30 and doc["frames"][25]["time"] == 1.0
    assert doc["frames"][3]["arkit"][doc["arkit_names"].index("JawOpen")] == pytest.approx(0.4)


@needs_pocketsphinx
def test_rest_animate_writes_both_formats_and_refuses_bad_input(test_motion_model, tmp_path, capsys):
    from rest.cli import main
    from rest.data.synth.motion import GazeSchedule
    from rest.media.encode import write_audio

    wav = tmp_path / "speech.wav"
    write_audio(wav, _speechy(2.0), 16000)
    for name in ("m.csv", "m.json"):
        args = ["animate", "--audio", str(wav), "--output", str(tmp_path / name), "--weights", str(test_motion_model)]
        assert main([*args, "--emotion", "angry"]) == 0
    assert len(list(csv.reader(open(tmp_path / "m.csv")))) == 51
    assert len(json.loads((tmp_path / "m.json").read_text())["frames"]) == 50
    bad = ["animate", "--audio", str(wav), "--weights", str(test_motion_model)]
    assert main([*bad, "--output", str(tmp_path / "m.txt")]) == 2
    assert main([*bad, "--output", str(tmp_path / "x.json"), "--emotion", "joy"]) == 2
    assert main([*bad, "--output", str(tmp_path / "g.json"), "--gaze", "0.5"]) == 2
    assert main([*bad, "--output", str(tmp_path / "g.json"), "--gaze", "0.5,2"]) == 2
    assert main([*bad, "--output", str(tmp_path / "g.json"), "--gaze", "0.5,-0.5"]) == 0
    doc = json.loads((tmp_path / "g.json").read_text())
    assert {tuple(f["rig"][RIG_INDEX["gaze_x"] : RIG_INDEX["gaze_y"] + 1]) for f in doc["frames"]} == {(0.5, -0.5)}
    assert main([*bad, "--output", str(tmp_path / "s.json"), "--saccades", "--no-blinks", "--seed", "3"]) == 0
    rig = np.array([f["rig"] for f in json.loads((tmp_path / "s.json").read_text())["frames"]])
    np.testing.assert_allclose(
        rig[:, [RIG_INDEX["gaze_x"], RIG_INDEX["gaze_y"]]], GazeSchedule([3, 1], 25).gaze(0, 50), atol=1e-4
    )
    assert (
        main(["animate", "--audio", str(wav), "--output", str(tmp_path / "y.json"), "--weights", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "use .json or .csv" in err and "unknown emotion 'joy'" in err and "motion.json not found" in err
    assert "--gaze 0.5: two numbers" in err and "in -1 .. 1" in err


#################################################################################
#                                   Metrics                                     #
#################################################################################


def test_blink_rate_and_motion_statistics_on_known_signals():
    blink = np.zeros(25 * 60)
    for start in range(10, len(blink), 300):  # every 12 s: 5 blinks a minute
        blink[start : start + 5] = 1.0
    assert blink_rate(blink, 25) == pytest.approx(5.0)
    frozen = motion_statistics(_frames(100), 25)
    assert frozen["head_yaw/speed_p50"] == 0 and frozen["head_yaw/std"] == 0
    ramp = _frames(100)
    ramp[:, RIG_INDEX["head_yaw"]] = np.arange(100) * 0.01  # 0.25 rad/s
    assert motion_statistics(ramp, 25)["head_yaw/speed_p50"] == pytest.approx(0.25)


def test_emotion_classifier_and_heldout_study_separate_right_from_wrong():
    train = [_synthetic_clip(i, "train", frames=200) for i in range(10)]
    test = [_synthetic_clip(i, "test_id", frames=200, seed=1) for i in range(5)]
    classifier = EmotionClassifier([c.rig for c in train], [c.emotion for c in train], len(EMOTIONS))
    assert classifier.accuracy([c.rig for c in test], [c.emotion for c in test]) == 1.0
    wrong = [(c.emotion + 1) % len(EMOTIONS) for c in test]
    assert classifier.accuracy([c.rig for c in test], wrong) == 0.0

    class Oracle:  # the jaw follows the features exactly; the expression follows the emotion asked for
        fps = 25

        def animate_features(self, features, emotion, seed, blinks=True, saccades=True):
            out = _frames(len(features) // 2 * 2)
            out[:, RIG_INDEX["jaw_open"]] = features[: len(out), 0]
            out[:, RIG_INDEX["smile"]] = (EMOTIONS.index(emotion) - 2) * 0.3
            out[:, RIG_INDEX["brow_inner"]] = 0.2 * (emotion == "sad")
            return out

    result = heldout_motion_study(Oracle(), train, test, progress=False)
    mean = result["mean"]
    assert mean["mouth/corr"] > 0.99 and mean["mouth/mae"] < 1e-6
    assert abs(mean["mouth_shuffled/corr"]) < 0.3  # another clip's features do not follow this clip's mouth
    assert result["emotion_accuracy"] == 1.0 and result["emotion_accuracy_labels"] == 1.0
    assert mean["label/blink_per_min"] == pytest.approx(30.0) and mean["out/blink_per_min"] == 0.0  # 4 in 8 s


def test_noise_scale_calibration_finds_the_scale_that_matches_the_labels():
    """A fake model whose head jitter grows with the noise scale and matches the labels' head speed at 0.5: the
    calibration finds 0.5, scores every scale of the grid, and leaves the model's scale as it was."""
    clips = [_synthetic_clip(i, "train", frames=250) for i in range(4)]
    for c in clips:  # the labels' head moves as the fake's does at 0.5
        c.rig[:, RIG_INDEX["head_pitch"]] = c.rig[:, RIG_INDEX["head_roll"]] = c.rig[:, RIG_INDEX["head_yaw"]] * 0.5

    class Fake:
        fps = 25
        noise_scale = torch.ones(P)

        def animate_features(self, features, emotion, seed):
            clip = next(c for c in clips if np.shares_memory(c.features, features))
            out = clip.rig[: len(features)].copy()
            step = np.abs(np.diff(out[:, RIG_INDEX["head_yaw"]])).mean() * float(self.noise_scale[0]) / 0.5
            walk = np.cumsum(np.random.default_rng(seed).choice([-1.0, 1.0], len(out)) * step)
            out[:, RIG_INDEX["head_yaw"]] = walk
            out[:, RIG_INDEX["head_pitch"]] = out[:, RIG_INDEX["head_roll"]] = walk * 0.5
            return out

    fake = Fake()
    result = calibrate_noise_scale(fake, clips, seconds=10.0, progress=False)
    assert result["noise_scale"] == (0.5,) * P
    assert [r["scale"] for r in result["settings"]] == list(CALIBRATION_GRID) and result["best"]["mismatch"] < 0.25
    assert torch.equal(fake.noise_scale, torch.ones(P))
