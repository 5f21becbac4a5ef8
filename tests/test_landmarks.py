"""Lip sync against a real reference (rest/metrics/landmarks.py): the inner-lip aperture, its lagged correlation,
M-LMD / F-LMD, voice activity and the mouth at rest (rest/metrics/vad.py), and `rest evaluate`'s
lipsync_landmarks on known inputs: SynthTalk faces rendered with a mouth that follows a reference, one that does
not, and one that follows it a frame late."""

import numpy as np
import pytest

from rest.metrics.identity import dlib_models_dir
from rest.metrics.landmarks import (
    EYE_CORNERS,
    INNER_LOWER,
    INNER_UPPER,
    aperture,
    landmark_distance,
    lipsync_landmarks,
)
from rest.metrics.vad import energy_vad, mouth_rest_ratio, silero_available, speech_frames

needs_dlib68 = pytest.mark.skipif(dlib_models_dir() is None, reason="needs face-recognition-models (dlib 68 points)")


def _points(gap: float, span: float = 100.0, shift=(0.0, 0.0)) -> np.ndarray:
    """68 landmarks with the eye corners `span` apart and the inner lips `gap` apart (the rest at the origin)."""
    p = np.zeros((68, 2))
    p[EYE_CORNERS[0]], p[EYE_CORNERS[1]] = (0.0, 0.0), (span, 0.0)
    for i, (u, lo) in enumerate(zip(INNER_UPPER, INNER_LOWER, strict=True)):
        p[u] = (40.0 + 10 * i, 80.0)
        p[lo] = (40.0 + 10 * i, 80.0 + gap)
    return p + np.asarray(shift)


def test_aperture_is_the_lip_gap_over_the_eye_span():
    pts = np.stack([_points(10.0), _points(0.0), _points(20.0, span=200.0)])
    np.testing.assert_allclose(aperture(pts), [0.1, 0.0, 0.1])


def test_landmark_distance_ignores_translation_and_scale_but_not_the_mouth():
    ref = np.stack([_points(10.0), _points(5.0)])
    moved = np.stack([_points(10.0, shift=(30, -12)), _points(5.0, shift=(3, 4))])
    same = landmark_distance(moved, ref)
    assert same["m_lmd"] < 1e-9 and same["f_lmd"] < 1e-9 and same["frames"] == 2
    scaled = np.stack([_points(10.0) * 2.0, _points(5.0) * 2.0])
    assert landmark_distance(scaled, ref)["f_lmd"] < 1e-9
    opened = landmark_distance(np.stack([_points(30.0), _points(25.0)]), ref)
    assert opened["m_lmd"] > 0.02 and opened["m_lmd"] > opened["f_lmd"]  # only mouth points moved


def test_lipsync_landmarks_finds_a_lag_inside_the_search():
    rng = np.random.default_rng(0)
    ref = np.convolve(rng.random(200), np.ones(4) / 4, mode="same")
    late = np.r_[ref[:1], ref[:-1]]  # the same mouth one frame later
    result = lipsync_landmarks(late, ref)
    assert result["lag"] == 1 and result["corr"] > 0.99 and result["corr_lag0"] < result["corr"]
    assert lipsync_landmarks(np.r_[ref[1:], ref[-1:]], ref)["lag"] == -1  # one frame early
    assert abs(lipsync_landmarks(rng.permutation(ref), ref)["corr"]) < 0.3


def _render(labels: np.ndarray, identity: int) -> np.ndarray:
    from rest.data.synth.generate import identity_face
    from rest.data.synth.render import FaceRenderer

    renderer = FaceRenderer(identity_face(0, identity), 128)
    return np.stack([renderer.render(mouth_open=float(y)) for y in labels])


@pytest.fixture(scope="module")
def landmarks():
    if dlib_models_dir() is None:
        pytest.skip("needs face-recognition-models (dlib 68 points)")
    from rest.metrics.landmarks import FaceLandmarks68

    return FaceLandmarks68()


def _labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.convolve(rng.random(n + 6), np.ones(6) / 6, mode="valid")[:n] * 2 - 0.4, 0, 1)


@needs_dlib68
def test_rendered_mouths_follow_or_not(landmarks):
    """Two faces speaking the same mouth track read alike; a third speaking another track does not; a face one frame
    late is found one frame late."""
    labels, other = _labels(60, 0), _labels(60, 1)
    ref_points, found = landmarks.track(_render(labels, 4))
    assert found == 60
    ref = aperture(ref_points)
    assert np.corrcoef(ref, labels)[0, 1] > 0.8  # the landmarks read the rendered opening
    follows = aperture(landmarks.track(_render(labels, 6))[0])
    wrong = aperture(landmarks.track(_render(other, 6))[0])
    late = aperture(landmarks.track(_render(np.r_[labels[:1], labels[:-1]], 6))[0])
    assert lipsync_landmarks(follows, ref)["corr"] > 0.8
    assert lipsync_landmarks(wrong, ref)["corr"] < 0.4
    result = lipsync_landmarks(late, ref)
    assert result["lag"] == 1 and result["corr"] > 0.8


@needs_dlib68
def test_fixed_box_reads_frames_without_detection(landmarks):
    frames = _render(_labels(20, 2), 4)
    box = landmarks.detect(frames[0])
    assert box is not None
    points, found = landmarks.track(frames, box=box)
    detected, _ = landmarks.track(frames)
    assert found == 20 and np.corrcoef(aperture(points), aperture(detected))[0, 1] > 0.9


@needs_dlib68
def test_no_face_anywhere_is_an_error(landmarks):
    from rest.errors import RestError

    with pytest.raises(RestError, match="no face found"):
        landmarks.track(np.full((3, 128, 128, 3), 127, np.uint8))


def _bursts(seconds: float, on: list[tuple[float, float]], noise: float = 1e-3, seed: int = 0) -> np.ndarray:
    """A noise floor with voiced bursts (a 150 Hz buzz with harmonics) over the `on` intervals in seconds."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = rng.normal(0, noise, len(t))
    for a, b in on:
        inside = (t >= a) & (t < b)
        x[inside] += 0.3 * np.sign(np.sin(2 * np.pi * 150 * t[inside])) * (1 + 0.3 * np.sin(2 * np.pi * 4 * t[inside]))
    return x.astype(np.float32)


def test_energy_vad_marks_bursts_and_closes_short_gaps():
    audio = _bursts(4.0, [(0.5, 1.5), (1.6, 2.0), (3.0, 3.5)])
    speech = energy_vad(audio)
    assert len(speech) == 100
    assert speech[15:35].all() and speech[42:48].all() and speech[77:85].all()  # inside the bursts
    assert speech[37:40].all()  # the 0.1 s gap between the first two is closed
    assert not speech[:10].any() and not speech[55:72].any() and not speech[92:].any()
    assert not energy_vad(np.zeros(32000, np.float32)).any()  # a silent file
    assert not energy_vad(_bursts(2.0, [], noise=0.05)).any()  # steady noise


@pytest.mark.skipif(not silero_available(), reason="needs silero-vad")
def test_silero_vad_hears_no_speech_in_silence_and_noise():
    assert not speech_frames(np.zeros(32000, np.float32), backend="silero").any()
    assert speech_frames(_bursts(2.0, [], noise=0.01), backend="silero").mean() < 0.2


def test_mouth_rest_ratio():
    speech = np.r_[np.zeros(20, bool), np.ones(30, bool), np.zeros(10, bool)]
    shut = np.where(speech, 0.1, 0.0)
    assert mouth_rest_ratio(shut, speech) == 0.0
    assert mouth_rest_ratio(np.full(60, 0.1), speech) == pytest.approx(1.0)
    assert np.isnan(mouth_rest_ratio(np.full(60, 0.1), np.ones(60, bool)))  # no pause to judge


@needs_dlib68
def test_heldout_study_landmark_judge(landmarks):
    """The held-out study's third judge reads the frames inside the portrait's face box against the labels."""
    from rest.metrics.heldout import HeldoutClip, landmark_judge

    labels = _labels(40, 4)
    frames = _render(labels, 5)
    clip = HeldoutClip("id0005_v000_0000", "test_id", _render(np.zeros(1), 5)[0], np.zeros(1), labels, frames)
    assert landmark_judge(landmarks, clip, frames) > 0.8
    assert landmark_judge(landmarks, clip, _render(_labels(40, 9), 5)) < 0.4
    blank = HeldoutClip("x", "test_id", np.full((128, 128, 3), 127, np.uint8), np.zeros(1), labels, frames)
    assert landmark_judge(landmarks, blank, frames) is None
