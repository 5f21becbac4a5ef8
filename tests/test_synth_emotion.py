"""SynthTalk emotions: the expression tracks (rest/data/synth/emotion.py) and how the renderer draws the controls."""

from __future__ import annotations

import numpy as np
import pytest

from rest.data.synth.emotion import CONTROLS, EMOTIONS, EXPRESSIONS, expression_track
from rest.data.synth.generate import identity_face
from rest.data.synth.render import FaceRenderer

RES = 96  # large enough that a brow or a lip corner moves by whole pixels


@pytest.fixture(scope="module")
def renderer() -> FaceRenderer:
    face = identity_face(0, 10)
    assert face.beard == 0 and not face.moustache and face.glasses == "none" and face.hat == "none"  # all in view
    return FaceRenderer(face, RES)  # dark brows and darker lips on light skin


def _gray(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float64).mean(-1)


def _centroid_y(weight: np.ndarray) -> float:
    rows = np.arange(weight.shape[0])[:, None]
    return float((weight * rows).sum() / weight.sum())


def _centre_col(renderer: FaceRenderer) -> float:
    """The image column of the face's midline."""
    return (renderer.face.center[0] + 1) / renderer.px_img - 0.5


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(R, R) bool: pixels that differ by more than rounding."""
    return np.abs(a.astype(int) - b.astype(int)).max(-1) > 2


def test_zero_controls_draw_the_same_frame_as_no_controls(renderer):
    pose = dict(mouth_open=0.4, mouth_width=0.9, blink=0.3, yaw=4.0, pitch=-2.0, roll=1.0, gaze=(0.2, -0.1))
    zeros = dict.fromkeys(CONTROLS, 0.0)
    assert np.array_equal(renderer.render(**pose), renderer.render(**pose, **zeros))
    assert np.array_equal(renderer.render(), renderer.render(**zeros))


def test_raised_inner_brows_move_dark_pixels_up_above_the_eyes(renderer):
    neutral, raised = renderer.render(), renderer.render(brow_inner=1.0)
    changed = _changed(neutral, raised)
    e = renderer.eye_crop
    assert changed.any() and not changed[: e.y0].any() and not changed[e.y1 :].any()
    eye_row = (renderer.face.eye_y * renderer.face.scale + renderer.face.center[1] + 1) / renderer.px_img
    rows = np.nonzero(changed.any(1))[0]
    assert rows.max() < eye_row  # only the brows changed, all above the eyes' centre line
    # The brows are darker than the skin: where the frame got darker they arrived, where it got lighter they left.
    arrived = np.clip(_gray(neutral) - _gray(raised), 0, None)
    left = np.clip(_gray(raised) - _gray(neutral), 0, None)
    assert _centroid_y(arrived) < _centroid_y(left) - 1.0
    # The inner ends move next to the nose, the outer ends towards the temples.
    cols = np.abs(np.arange(renderer.R) - _centre_col(renderer))  # (R,) pixels from the face's midline

    def mean_col(frame: np.ndarray) -> float:
        change = np.abs(_gray(frame) - _gray(neutral))
        return float((change * cols).sum() / change.sum())

    assert mean_col(raised) < mean_col(renderer.render(brow_outer=1.0)) - 1.0


def test_smile_lifts_and_frown_lowers_the_lip_corners_only(renderer):
    f = renderer.face
    smile, frown, neutral = renderer.render(smile=1.0), renderer.render(smile=-1.0), renderer.render()
    m = renderer.mouth_crop
    for frame in (smile, frown):
        changed = _changed(neutral, frame)
        assert changed.any() and not changed[: m.y0].any() and not changed[m.y1 :].any()
        assert not changed[:, : m.x0].any() and not changed[:, m.x1 :].any()
    # At the corners (the outer parts of the mouth) the dark lips arrive above where they leave for a smile, below
    # for a frown.
    corners = np.abs(np.arange(renderer.R) - _centre_col(renderer)) > 0.5 * f.mouth_w * f.scale / renderer.px_img
    for frame, sign in ((smile, 1.0), (frown, -1.0)):
        arrived = np.clip(_gray(neutral) - _gray(frame), 0, None) * corners
        left = np.clip(_gray(frame) - _gray(neutral), 0, None) * corners
        assert sign * (_centroid_y(left) - _centroid_y(arrived)) > 1.0


def test_wide_lids_show_more_sclera_than_a_squint(renderer):
    ys, xs = renderer.eye_crop.slices

    def sclera(frame: np.ndarray) -> int:  # bright and grey, unlike skin or iris
        crop = frame[ys, xs].astype(int)
        return int(((crop.min(-1) > 150) & (np.ptp(crop, -1) < 30)).sum())

    wide, neutral, squint = (sclera(renderer.render(lid=v)) for v in (1.0, 0.0, -1.0))
    assert wide > neutral > squint > 0
    assert sclera(renderer.render(lid=1.0, blink=1.0)) == sclera(renderer.render(lid=-1.0, blink=1.0)) == 0


def test_jaw_opens_the_mouth_and_adds_to_the_speech_opening(renderer):
    ys, xs = renderer.mouth_crop.slices

    def dark(frame: np.ndarray) -> float:  # how much darker than the lips the crop is: the inside of the mouth
        return float(np.clip(90.0 - _gray(frame[ys, xs]), 0, None).sum())

    assert dark(renderer.render(jaw=0.25)) > 2 * dark(renderer.render())
    assert np.array_equal(renderer.render(mouth_open=0.15, jaw=0.25), renderer.render(mouth_open=0.4))
    assert np.array_equal(renderer.render(mouth_open=0.9, jaw=0.25), renderer.render(mouth_open=1.0))


def test_crops_hold_the_features_at_extreme_controls(renderer):
    """At the ends of the control ranges, nothing drawn reaches a crop's border (it would be cut off there)."""
    cases = [
        (renderer.eye_crop, {}, dict(brow_inner=1.0, brow_outer=1.0, lid=1.0)),
        (renderer.eye_crop, {}, dict(brow_inner=-1.0, brow_outer=-1.0, brow_down=1.0, lid=-1.0)),
        (renderer.eye_crop, {}, dict(brow_inner=1.0, brow_outer=-1.0, brow_down=-1.0)),
        (renderer.mouth_crop, dict(mouth_open=1.0, mouth_width=1.2), dict(smile=1.0)),
        (renderer.mouth_crop, dict(mouth_open=1.0, mouth_width=0.7), dict(smile=-1.0)),
        (renderer.mouth_crop, dict(mouth_width=1.2), dict(smile=1.0)),
        (renderer.mouth_crop, dict(mouth_width=0.7), dict(smile=-1.0)),
    ]
    for crop, pose, controls in cases:
        changed = _changed(renderer.render(**pose), renderer.render(**pose, **controls))[crop.slices]
        assert changed.any(), controls
        border = np.concatenate([changed[0], changed[-1], changed[:, 0], changed[:, -1]])
        assert not border.any(), controls


def test_out_of_range_controls_fail_with_a_message(renderer):
    with pytest.raises(ValueError, match="smile=1.5"):
        renderer.render(smile=1.5)
    with pytest.raises(ValueError, match="jaw"):
        renderer.render(jaw=-0.1)


def test_expression_tracks_neutral_is_zero_and_the_others_ramp_into_range():
    fps, frames = 25, 150
    for emotion, name in enumerate(EMOTIONS):
        track = expression_track(emotion, frames, fps, np.random.default_rng(7))
        assert track.intensity.dtype == np.float32 and track.controls.shape == (frames, len(CONTROLS))
        if name == "neutral":
            assert not track.intensity.any() and not track.controls.any()
            continue
        after_onset = track.intensity[fps:]  # the ramp lasts at most 1 s
        assert after_onset.min() >= 0.2 - 1e-6 and after_onset.max() <= 1.0 + 1e-6
        assert track.intensity[0] < after_onset.mean()  # it ramps in
        np.testing.assert_allclose(track.controls, track.intensity[:, None] * EXPRESSIONS[emotion].controls()[None])
        again = expression_track(emotion, frames, fps, np.random.default_rng(7))
        assert np.array_equal(track.controls, again.controls) and np.array_equal(track.intensity, again.intensity)
        other = expression_track(emotion, frames, fps, np.random.default_rng(8))
        assert not np.array_equal(track.intensity, other.intensity)


@pytest.mark.skipif(
    not __import__("rest.data.synth.speech", fromlist=["espeak_available"]).espeak_available(),
    reason="libespeak-ng.so.1 not found: apt-get install espeak-ng",
)
def test_make_clip_labels_the_emotion_and_renders_without_changing_the_labels():
    from rest.data.synth.generate import VOICES, ClipPlan, SynthConfig, make_clip

    voice = next(i for i, v in enumerate(VOICES) if v.name == "en-us+m3")
    plan, cfg = ClipPlan("id0003_test", 3, 0, voice, 3.0, "train"), SynthConfig(resolution=64, seed=2)
    happy = make_clip(plan, cfg, emotion=EMOTIONS.index("happy"), render=False)
    n = len(happy.meta["mouth_open"])
    assert happy.frames.shape == (n, 0, 0, 3) and happy.extra["emotion"] == "happy"
    assert (happy.meta["emotion"] == EMOTIONS.index("happy")).all()
    expected = happy.meta["emotion_intensity"][:, None] * EXPRESSIONS[1].controls()[None]
    assert np.allclose(happy.meta["expression"], expected) and happy.meta["expression"][:, 0].max() > 0.3  # a smile
    rendered = make_clip(plan, cfg, emotion=EMOTIONS.index("happy"))
    assert rendered.frames.shape == (n, 64, 64, 3)
    assert all(np.array_equal(rendered.meta[k], happy.meta[k]) for k in happy.meta)
    assert np.array_equal(rendered.audio, happy.audio)
    neutral = make_clip(plan, cfg, emotion=0, render=False)
    assert not neutral.meta["expression"].any() and np.array_equal(neutral.audio, happy.audio)  # its own stream
    # The emotion scales the head's sway and offsets its pitch, but the clip's random draws stay the same.
    assert np.array_equal(neutral.meta["blink"], happy.meta["blink"])
    assert not np.array_equal(neutral.meta["head_pose"], happy.meta["head_pose"])
