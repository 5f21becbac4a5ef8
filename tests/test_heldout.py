"""The held-out SynthTalk study (rest/metrics/heldout.py): clip selection, both generation paths, and the scoring
against a regressor that reads the mouth exactly (ground truth must then correlate perfectly)."""

import numpy as np
import pytest
import torch

from rest.data.shards import ShardWriter
from rest.diffusion.flow import Guidance, flow_sigmas
from rest.metrics.heldout import Models, format_summary, heldout_clips, heldout_study, identity_scores, summarize
from rest.metrics.identity import identity_similarity
from rest.metrics.lipsync_gt import PixelRidgeMouth, mouth_visibility, within_group_correlation

R, FRAMES = 32, 110


class MouthBrightness:
    """A 'regressor' that reads openness off the frame exactly: the mean of the mouth patch's red channel."""

    def predict(self, frames: np.ndarray) -> np.ndarray:
        return frames[:, 20:24, 12:20, 0].mean(axis=(1, 2)) / 255.0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    writer = ShardWriter(tmp_path_factory.mktemp("heldout") / "shards", resolution=R)
    rng = np.random.default_rng(0)
    for k, split in enumerate(["train", "test_id", "test_voice"]):
        labels = np.clip(0.5 + 0.5 * np.sin(np.arange(FRAMES) * (0.3 + 0.1 * k)), 0, 1).astype(np.float32)
        frames = np.full((FRAMES, R, R, 3), 60, np.uint8)
        frames[:, 20:24, 12:20, 0] = (labels * 255).astype(np.uint8)[:, None, None]
        frames[:, 2:8, 2:8] = (255, 255, 201 + 27 * k)  # the clip's "face", for the WhiteSquareFaces embedder
        audio = (0.1 * rng.standard_normal(FRAMES * 640)).astype(np.float32)
        writer.write_clip(f"clip{k}", frames, audio, meta={"mouth_open": labels}, split=split)
    return writer.root


def test_clip_selection(root):
    clips = heldout_clips(root, seconds=2.0, max_clips=4)
    assert [c.clip_id for c in clips] == ["clip1", "clip2"]  # held-out splits only, alternating
    clip = clips[0]
    assert clip.frames.shape == (50, R, R, 3) and clip.labels.shape == (50,) and clip.audio.shape == (50 * 640,)
    # The portrait: the most closed mouth at least a second after the window.
    assert MouthBrightness().predict(clip.portrait[None])[0] < 0.05
    with pytest.raises(Exception, match="no clips in splits"):
        heldout_clips(root, splits=("val",))


def test_study_scores_both_paths(root, tiny_models):
    vae, audio, teacher, student = tiny_models
    methods = {
        "teacher": (Models(vae, audio, teacher, 1.0), {"kind": "teacher", "steps": 2, "guidance": Guidance()}),
        "student_K1": (
            Models(vae, audio, student, 1.0),
            {"kind": "student", "sigmas": flow_sigmas(1, 1.0), "context_timestep": 0.0},
        ),
    }
    clips = heldout_clips(root, seconds=2.0)
    train = heldout_clips(root, ("train",), seconds=2.0)
    judge = PixelRidgeMouth().fit([c.frames for c in train], [c.labels for c in train])
    with torch.no_grad():
        result = heldout_study(clips, methods, MouthBrightness(), seed=0, progress=False, vae=vae, pixel_judge=judge)
    rows = result["per_clip"]
    assert len(rows) == 2 * (3 + 2 * 2)
    assert {(r["method"], r.get("audio")) for r in rows} == {
        ("ground_truth", None),
        ("vae_reconstruction", None),
        ("vae_frames", None),
        ("teacher", "own"),
        ("teacher", "shuffled"),
        ("student_K1", "own"),
        ("student_K1", "shuffled"),
    }
    generated = [r for r in rows if "audio" in r]
    assert all(r["frames"] == 49 and r["seconds_per_video_second"] > 0 for r in generated)  # 1 + 4k of 50 frames
    summary = result["summary"]
    assert summary["ground_truth"]["lipsync_corr"] == pytest.approx(1.0, abs=1e-3)
    assert summary["ground_truth"]["lipsync_offset"] == 0
    # The second judge, fit on the training clip only, reads the held-out clips' mouths; frames out of order do not.
    assert summary["ground_truth"]["lipsync_pixel_corr"] > 0.95 and "shuffled_lipsync_pixel_corr" in summary["teacher"]
    scrambled = np.random.default_rng(0).permutation(clips[0].frames)
    assert abs(np.corrcoef(judge.predict(scrambled), clips[0].labels[: len(scrambled)])[0, 1]) < 0.3
    for clip in clips:  # the amplitude: the reading's least-squares slope on the labels
        truth = next(r for r in rows if r["method"] == "ground_truth" and r["clip"] == clip.clip_id)
        reading = MouthBrightness().predict(clip.frames)
        assert truth["lipsync_slope"] == pytest.approx(np.polyfit(clip.labels, reading, 1)[0]) and reading.std() > 0
    assert {"lipsync_corr", "shuffled_lipsync_corr", "seconds_per_video_second"} <= set(summary["teacher"])
    assert summary["teacher"]["clips"] == 2
    assert "lipsync_within_group" in summary["vae_reconstruction"] and "lipsync_corr" in summary["vae_frames"]
    assert [r["clip"] for r in rows if r["method"] == "vae_frames"] == ["clip1", "clip2"]
    table = format_summary(summary)
    assert table.count("\n") == 2 + 4 and "| student_K1 |" in table


def test_study_scores_identity_against_another_identitys_frames(root, tiny_models, white_square_faces):
    vae, audio, _, student = tiny_models
    spec = {"kind": "student", "sigmas": flow_sigmas(1, 1.0), "context_timestep": 0.0}
    clips = heldout_clips(root, seconds=2.0)
    with torch.no_grad():
        result = heldout_study(
            clips, {"student_K1": (Models(vae, audio, student, 1.0), spec)}, MouthBrightness(), white_square_faces
        )
    rows = {(r["method"], r["clip"], r.get("audio")): r for r in result["per_clip"]}
    assert len(rows) == 2 * (1 + 1 + 2)  # ground truth, other identity, own and shuffled audio
    for clip, other in zip(clips, clips[::-1], strict=True):
        truth = rows["ground_truth", clip.clip_id, None]
        assert truth["csim_dlib"] == pytest.approx(1.0) and truth["csim_dlib_at_portrait"] == pytest.approx(1.0)
        row = rows["other_identity", clip.clip_id, None]
        expected = identity_similarity(white_square_faces, clip.portrait, other.frames, stride=5)["value"]
        assert row["csim_dlib"] == pytest.approx(expected) and expected < 0.999
        at = identity_similarity(white_square_faces, clip.portrait, other.frames, stride=5, at_reference=True)
        assert row["csim_dlib_at_portrait"] == pytest.approx(at["value"])
        assert "lipsync_corr" not in row
        assert "csim_dlib_at_portrait" in rows["student_K1", clip.clip_id, "own"]
        assert "csim_dlib" not in rows["student_K1", clip.clip_id, "shuffled"]
    summary = result["summary"]
    assert summary["other_identity"]["csim_dlib_at_portrait_clips"] == 2
    # An embedder that cannot align (ArcFace) still gets the detected-face score, and no score at the portrait.
    detect_only = lambda image: white_square_faces(image)  # noqa: E731
    scores = identity_scores(detect_only, clips[0].portrait, clips[1].frames, 5)
    assert scores == {"csim_dlib": pytest.approx(rows["other_identity", clips[0].clip_id, None]["csim_dlib"])}
    assert "| other_identity | - | - | - |" in format_summary(summary)


def test_within_group_correlation():
    labels = np.random.default_rng(0).random(41)
    assert within_group_correlation(labels, labels, 4) == pytest.approx(1.0)
    # One value per group of 4 (frames 1-4, 5-8, ...), however well it follows the groups' means: no motion inside.
    means = np.concatenate([labels[:1], np.repeat(labels[1:].reshape(-1, 4).mean(1), 4)])
    assert np.isnan(within_group_correlation(means, labels, 4))
    noisy = means + 0.1 * (labels - means)  # a tenth of the motion inside the groups, scaled: still correlation 1
    assert within_group_correlation(noisy, labels, 4) == pytest.approx(1.0)
    assert within_group_correlation(-labels, labels, 4) == pytest.approx(-1.0)
    assert np.isnan(within_group_correlation(labels[:8], labels[:8], 4))  # fewer than two groups


def test_mouth_visibility_counts_only_what_follows_the_labels():
    """The demo portrait's criterion: the RMS grey-level change inside the box that the labels explain."""
    rng = np.random.default_rng(0)
    labels = rng.random(60)
    frames = np.full((60, 40, 40, 3), 100.0)
    frames[:, 20:30, 10:30] += 40.0 * labels[:, None, None, None]  # the mouth: half of the box follows the labels
    frames[:, :10] += 80.0 * rng.random(60)[:, None, None, None]  # head motion above the box: not counted
    box = (0.5, 1.0, 0.25, 0.75)  # rows 20-40, columns 10-30
    expected = np.sqrt(0.5 * (40.0 * labels.std()) ** 2)
    assert mouth_visibility(frames, labels, box) == pytest.approx(expected, rel=1e-6)
    # Twice the lip contrast, twice the score; motion that does not follow the labels scores near 0.
    assert mouth_visibility(100 + 2 * (frames - 100), labels, box) == pytest.approx(2 * expected, rel=1e-6)
    unrelated = frames.copy()
    unrelated[:, 20:30, 10:30] = 100.0 + 40.0 * rng.random(60)[:, None, None, None]
    assert mouth_visibility(unrelated, labels, box) < 0.3 * expected
    assert mouth_visibility(frames, np.full(60, 0.5), box) == 0.0  # constant labels explain nothing


def test_summary_counts_the_clips_with_a_face():
    """CSIM averages over the clips where dlib found a face; the summary says how many, next to the clips scored."""
    rows = [
        {"clip": "a", "method": "m", "audio": "own", "lipsync_corr": 0.5, "csim_dlib": 0.9},
        {"clip": "b", "method": "m", "audio": "own", "lipsync_corr": 0.1, "csim_dlib": None},
        {"clip": "a", "method": "m", "audio": "shuffled", "lipsync_corr": 0.0, "csim_dlib": 0.8},
    ]
    summary = summarize(rows)["m"]
    assert summary["clips"] == 2 and summary["csim_dlib_clips"] == 1
    assert summary["csim_dlib"] == pytest.approx(0.9) and summary["lipsync_corr"] == pytest.approx(0.3)
    assert "| 0.900 (1/2) |" in format_summary({"m": summary})
