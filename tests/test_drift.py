"""Drift metrics (rest/metrics/drift.py): the blur measure, the streamed variants, and windowing."""

import numpy as np
import pytest
import torch

from rest.diffusion.flow import flow_sigmas
from rest.metrics.drift import drift_curve, sharpness, stream_frames


def test_sharpness_falls_with_blur():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    blurred = (sharp.astype(np.float32) + np.roll(sharp, 1, 1) + np.roll(sharp, 1, 2) + np.roll(sharp, 1, (1, 2))) / 4
    assert sharpness(sharp) > 4 * sharpness(blurred.astype(np.uint8))
    assert sharpness(np.full((1, 16, 16, 3), 90, np.uint8)) == 0.0


def test_variants_stream_and_differ_only_after_the_window(tiny_models):
    vae, audio_encoder, _, student = tiny_models
    torch.manual_seed(1)
    portrait = torch.randn(1, 4, 1, 4, 4)
    audio = np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32) * 0.1
    sigmas = flow_sigmas(1, 1.0)
    outs = {}
    for variant in ("full", "no_sink"):
        blocks = list(stream_frames(student, vae, audio_encoder, portrait, audio, sigmas, variant, push_frames=10))
        outs[variant] = np.concatenate(blocks)
    assert len(outs["full"]) == len(outs["no_sink"]) == 73  # 75 frames of audio -> 1 + 4 * 18
    # The sink is replaced after chunk context_chunks + 1 = 3 (frames 0 .. 1 + 4*2); earlier frames are identical.
    np.testing.assert_array_equal(outs["full"][:9], outs["no_sink"][:9])
    assert np.abs(outs["full"][13:].astype(int) - outs["no_sink"][13:].astype(int)).max() > 0
    with pytest.raises(ValueError, match="variant must be one of"):
        next(stream_frames(student, vae, audio_encoder, portrait, audio, sigmas, "no_teacher"))


def test_drift_curve_windows():
    frames = np.random.default_rng(0).integers(0, 256, (60, 16, 16, 3)).astype(np.uint8)
    rows = drift_curve([frames[:7], frames[7:40], frames[40:]], frames[0], window_seconds=1.0)
    assert [r["start_s"] for r in rows] == [0.0, 1.0] and [r["frames"] for r in rows] == [25, 25]
    assert rows[0]["sharpness"] == pytest.approx(sharpness(frames[:25]))
    rows = drift_curve([frames[:40]], frames[0], window_seconds=1.0)  # 15 left over: a partial window (>= half)
    assert [r["frames"] for r in rows] == [25, 15]


def test_drift_curve_scores_identity_on_found_faces_and_at_the_portraits_alignment(white_square_faces):
    portrait = np.zeros((16, 16, 3), np.uint8)
    portrait[4:8, 4:8] = 255
    faded = portrait.copy()
    faded[4:8, 4:8] = (150, 20, 20)  # the face's place, in a colour the detector does not take for a face
    frames = np.concatenate([np.repeat(portrait[None], 25, 0), np.repeat(faded[None], 25, 0)])
    rows = drift_curve([frames], portrait, white_square_faces, window_seconds=1.0, stride=5)
    assert [r["faces_found"] for r in rows] == [1.0, 0.0]
    assert rows[0]["csim_dlib"] == pytest.approx(1.0) and rows[1]["csim_dlib"] is None
    ref, faded_embedding = np.array([256.0, 257.0, 258.0]), np.array([151.0, 22.0, 23.0])
    expected = ref @ faded_embedding / (np.linalg.norm(ref) * np.linalg.norm(faded_embedding))
    assert rows[0]["csim_dlib_at_portrait"] == pytest.approx(1.0)
    assert rows[1]["csim_dlib_at_portrait"] == pytest.approx(expected) and expected < 0.8
