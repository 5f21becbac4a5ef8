"""`rest preprocess` (rest/data/preprocess.py): real clips -> face-cropped shards; bad inputs skipped; resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rest.cli import main
from rest.data.face import Box, FaceDetector
from rest.data.preprocess import CropOptions, PreprocessOptions, SkipClip, clip_ids_for, face_track, preprocess_folder
from rest.data.shards import ShardReader
from rest.media import write_video


def _bad_inputs(folder) -> dict[str, str]:
    """Broken or unusable inputs, and a word their skip reason must contain."""
    (folder / "notes.mp4").write_text("this is not a video")
    (folder / "empty.mp4").write_bytes(b"")
    frames = np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), dtype=np.uint8)
    write_video(folder / "silent.mp4", frames, fps=25)  # no audio track
    write_video(folder / "short.mp4", frames[:10], fps=25, audio=np.zeros(6400, np.float32))  # 0.4 s
    (folder / "readme.txt").write_text("not a video suffix: ignored")
    return {"notes.mp4": "unreadable", "empty.mp4": "empty", "silent.mp4": "no audio", "short.mp4": "too short"}


def test_preprocess_real_clip_bad_inputs_and_resume(tmp_path, shared_data, capsys):
    videos = tmp_path / "in" / "sub"
    videos.mkdir(parents=True)
    (videos / "hdtf a.mp4").symlink_to(shared_data / "video" / "hdtf_a_8s.mp4")  # a space: sanitized in the id
    expected_reasons = _bad_inputs(videos)
    out = tmp_path / "out"
    options = PreprocessOptions(resolution=128, max_seconds=2.0)

    summary = preprocess_folder(tmp_path / "in", out, options, workers=0, progress=False)
    assert (summary.written, summary.skipped) == (1, 4)

    # Bad inputs: one report line each, with a reason that says what is wrong.
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    reasons = {r["source"].split("/")[-1]: r["reason"] for r in report}
    assert set(reasons) == set(expected_reasons)
    for name, word in expected_reasons.items():
        assert word in reasons[name], (name, reasons[name])

    # The real clip: 2 s at 25 fps, 128 px crops, audio aligned to the frames, a smooth face track.
    reader = ShardReader(out)
    (record,) = reader.records
    assert record.clip_id == "sub__hdtf_a"
    assert (record.num_frames, record.resolution, record.num_samples) == (50, 128, 50 * 640)
    assert record.extra["detector"] == FaceDetector().name
    assert reader.frames(record.clip_id).shape == (50, 128, 128, 3)
    assert reader.audio(record.clip_id).shape == (50 * 640,)
    assert np.abs(reader.audio(record.clip_id)).max() > 0.01  # speech, not padding
    boxes = reader.meta(record.clip_id)["face_box"]
    assert boxes.shape == (50, 4)
    side = boxes[:, 2] - boxes[:, 0]
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], side, rtol=1e-5)  # square
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.abs(np.diff(centre, axis=0)).max() < 0.01 * side.mean()  # no frame-to-frame jitter
    assert np.abs(np.diff(side)).max() < 0.01 * side.mean()
    assert 100 < centre[:, 0].mean() < 412 and 100 < centre[:, 1].mean() < 412  # the face is mid-frame (512 px)

    # Resume (through the CLI): nothing is redone, known-bad inputs are not retried.
    manifest = (out / "manifest.jsonl").read_text()
    code = main(["preprocess", "--input", str(tmp_path / "in"), "--output", str(out), "--preset", "tiny"])
    assert code == 0
    assert "wrote 0 clips" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_text() == manifest
    assert len((out / "report.jsonl").read_text().splitlines()) == 4


def test_wrong_preset_for_existing_root_is_an_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    _bad_inputs(tmp_path / "in")
    args = ["preprocess", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--workers", "0"]
    assert main(args) == 0
    assert "skipped 4" in capsys.readouterr().out
    assert main([*args, "--preset", "base"]) == 2
    assert "resolution: root has 128, writer asked for 512" in capsys.readouterr().err


class _NoisyDetector:
    """A face at (200, 180) of side 100, with +-3 px noise, one wild outlier and misses."""

    name = "dlib-hog"

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        if self.calls == 4:
            return [Box(0, 0, 300, 300, 1.0)]  # a wrong detection
        if self.calls in (6, 7):
            return []  # missed
        x, y = 200 + self.rng.normal(0, 3, 2)
        return [Box(x - 50, y - 50, x + 50, y + 50, 1.0)]


def test_face_track_removes_outliers_and_jitter():
    frames = np.zeros((100, 8, 8, 3), np.uint8)  # the fake detector ignores the pixels
    options = CropOptions(detect_every=5, box_shift=0.0, box_scale=1.5, keep_inside=False)
    track = face_track(frames, _NoisyDetector(), options)
    centre = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
    side = track.boxes[:, 2] - track.boxes[:, 0]
    assert np.abs(centre - 200).max() < 6 and np.abs(side - 150).max() < 4  # the outlier left no trace
    assert np.abs(np.diff(centre, axis=0)).max() < 1.0
    assert track.detected.sum() == len(track.keyframes) - 2


def test_face_track_needs_a_face():
    class Blind:
        name = "dlib-hog"

        def detect(self, image):
            return []

    with pytest.raises(SkipClip, match="face found in only 0 of"):
        face_track(np.zeros((30, 8, 8, 3), np.uint8), Blind())


def test_clip_ids(tmp_path):
    paths = [tmp_path / p for p in ("a/x y.mp4", "a/x y.mov", "b/.hidden.mp4", "c/é.webm")]
    ids = clip_ids_for(paths, tmp_path)
    assert ids[0].startswith("a__x_y_") and ids[1].startswith("a__x_y_") and ids[0] != ids[1]
    assert ids[2:] == ["b__.hidden", "c___"]


def test_encode_latents_chunked_equals_whole():
    vae_module = pytest.importorskip("rest.models.vae")
    import torch

    from rest.data.preprocess import encode_latents
    from rest.media import frames_to_tensor

    torch.manual_seed(0)
    vae = vae_module.CausalVideoVAE.from_preset("tiny", block_out_channels=(8, 16, 16), latent_channels=4).eval()
    frames = np.random.default_rng(0).integers(0, 255, (19, 32, 32, 3), dtype=np.uint8)  # 19 -> first 17 = 1 + 4*4
    latents, metadata = encode_latents(vae, frames, chunk_frames=6)
    with torch.no_grad():
        whole = vae.encode(frames_to_tensor(frames[:17])[None]).latent_dist
    assert metadata["num_frames"] == "17" and latents["mean"].shape == (4, 5, 2, 2)
    torch.testing.assert_close(latents["mean"], whole.mean[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(latents["logvar"], whole.logvar[0], atol=1e-5, rtol=1e-4)
