"""Shard format (rest/data/shards.py) and the training dataset that reads it (rest/data/dataset.py)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from rest.data.dataset import TalkingClipDataset, reference_index
from rest.data.shards import ShardError, ShardReader, ShardWriter, read_manifest
from rest.errors import RestError

R, FPS, SR = 64, 25, 16000
SPF = SR // FPS  # audio samples per frame


def smooth_frames(num_frames: int, seed: int = 0) -> np.ndarray:
    """Natural-ish test frames: colour gradients with a moving soft blob, uint8 (F, R, R, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:R, 0:R] / R
    phase = rng.uniform(0, 2 * np.pi, 3)
    out = []
    for n in range(num_frames):
        cx, cy = 0.5 + 0.25 * np.cos(n / 5), 0.5 + 0.25 * np.sin(n / 5)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.05)
        rgb = [0.5 + 0.3 * np.sin(2 * np.pi * (x + y) + p) + 0.4 * blob for p in phase]
        out.append(np.stack(rgb, -1))
    return (np.clip(np.stack(out), 0, 1) * 255).round().astype(np.uint8)


def index_frames(num_frames: int) -> np.ndarray:
    """Frames that carry their own index: left half gray level 16*(n % 16) + 8, right half 16*(n // 16) + 8."""
    frames = np.zeros((num_frames, R, R, 3), np.uint8)
    for n in range(num_frames):
        frames[n, :, : R // 2] = 16 * (n % 16) + 8
        frames[n, :, R // 2 :] = 16 * (n // 16) + 8
    return frames


def decode_index(frames: np.ndarray) -> np.ndarray:
    """Inverse of `index_frames` for uint8 (N, R, R, 3), robust to H.264 error < 8 levels."""
    low = np.round((frames[:, 8:-8, 4 : R // 2 - 4].mean(axis=(1, 2, 3)) - 8) / 16)
    high = np.round((frames[:, 8:-8, R // 2 + 4 : -4].mean(axis=(1, 2, 3)) - 8) / 16)
    return (16 * high + low).astype(int)


def index_audio(num_frames: int, offset: int = 0) -> np.ndarray:
    """Audio whose sample i is (offset + i) / 2**20: exact in float32, so the sample index can be read back."""
    return ((offset + np.arange(num_frames * SPF)) / 2**20).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def writer(root: Path, **kwargs) -> ShardWriter:
    return ShardWriter(root, resolution=R, fps=FPS, sample_rate=SR, **kwargs)


#################################################################################
#                                  Shard format                                 #
#################################################################################


def test_round_trip(tmp_path):
    frames = smooth_frames(13)
    audio = np.random.default_rng(1).uniform(-1, 1, 13 * SPF).astype(np.float32)
    meta = {"face_box": np.random.default_rng(2).normal(size=(13, 4)).astype(np.float32), "label": np.arange(13)}
    latents = {"mean": torch.randn(4, 4, 2, 2), "logvar": torch.randn(4, 4, 2, 2)}
    record = writer(tmp_path, source="unit").write_clip(
        "clip-0", frames, audio, meta=meta, split="val", extra={"k": 1}, latents=latents, latents_metadata={"v": "1"}
    )
    assert (record.num_frames, record.num_samples, record.split, record.source) == (13, 13 * SPF, "val", "unit")

    reader = ShardReader(tmp_path)
    assert reader.info == {"format": "rest-shards", "version": 1, "resolution": R, "fps": FPS, "sample_rate": SR}
    assert reader.records == [record]
    decoded = reader.frames("clip-0")
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert psnr(decoded, frames) > 35
    np.testing.assert_array_equal(reader.frames("clip-0", 3, 4), decoded[3:7])
    np.testing.assert_array_equal(reader.frames_at("clip-0", [5, 1, 5]), decoded[[5, 1, 5]])
    np.testing.assert_array_equal(reader.audio("clip-0"), audio)
    got_meta = reader.meta("clip-0")
    assert set(got_meta) == set(meta)
    for key in meta:
        np.testing.assert_array_equal(got_meta[key], meta[key])
    got_latents = reader.latents("clip-0")
    for key in latents:
        torch.testing.assert_close(got_latents[key], latents[key], rtol=0, atol=0)
    assert reader.latents_metadata("clip-0")["v"] == "1"
    with pytest.raises(ShardError, match="outside"):
        reader.frames("clip-0", 10, 4)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"frames": np.zeros((5, R, R, 3), np.float32)}, "uint8"),
        ({"frames": np.zeros((5, R + 2, R + 2, 3), np.uint8)}, "uint8"),
        ({"audio": np.zeros(5 * SPF, np.float64)}, "float32"),
        ({"audio": np.zeros(7 * SPF, np.float32)}, "do not match"),
        ({"meta": {"x": np.zeros(4)}}, "leading dimension"),
        ({"meta": {"file": np.zeros(5)}}, "meta key"),
        ({"clip_id": "../escape"}, "invalid clip id"),
        ({"clip_id": ".tmp-x"}, "invalid clip id"),
    ],
)
def test_write_clip_validates(tmp_path, change, match):
    args = {"clip_id": "ok", "frames": np.zeros((5, R, R, 3), np.uint8), "audio": np.zeros(5 * SPF, np.float32)}
    args.update(change)
    w = writer(tmp_path)
    with pytest.raises(ShardError, match=match):
        w.write_clip(args.pop("clip_id"), args.pop("frames"), args.pop("audio"), **args)
    assert read_manifest(tmp_path) == [] and not any((tmp_path / "clips").iterdir())


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    w = writer(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)  # frames.mp4 and audio.npy are written, then meta fails
    with pytest.raises(OSError, match="disk full"):
        w.write_clip("a", smooth_frames(5), np.zeros(5 * SPF, np.float32))
    assert list((tmp_path / "clips").iterdir()) == []
    assert not (tmp_path / "manifest.jsonl").exists() or read_manifest(tmp_path) == []
    assert not w.has("a")


def test_leftovers_of_a_killed_run_are_cleaned(tmp_path):
    writer(tmp_path).write_clip("done", smooth_frames(5), np.zeros(5 * SPF, np.float32))
    dead = tmp_path / "clips" / ".tmp-half-999999999"  # no such process
    dead.mkdir()
    (dead / "frames.mp4").write_bytes(b"partial")
    orphan = tmp_path / "clips" / "orphan"  # renamed, but killed before the manifest line
    orphan.mkdir()
    (orphan / "frames.mp4").write_bytes(b"stale")

    w = writer(tmp_path)
    assert not dead.exists()
    assert w.has("done") and not w.has("orphan") and not w.has("half")
    assert [r.clip_id for r in ShardReader(tmp_path).records] == ["done"]
    w.write_clip("orphan", smooth_frames(5), np.zeros(5 * SPF, np.float32))  # replaces the stale folder
    assert ShardReader(tmp_path).frames("orphan").shape == (5, R, R, 3)


def test_resume_and_info_mismatch(tmp_path):
    writer(tmp_path).write_clip("a", smooth_frames(5), np.zeros(5 * SPF, np.float32))
    again = writer(tmp_path)
    assert again.has("a") and not again.has("b")
    with pytest.raises(ShardError, match="already in"):
        again.write_clip("a", smooth_frames(5), np.zeros(5 * SPF, np.float32))
    with pytest.raises(ShardError, match="resolution: root has 64, writer asked for 128"):
        ShardWriter(tmp_path, resolution=128, fps=FPS, sample_rate=SR)
    with pytest.raises(ShardError, match="fps"):
        ShardWriter(tmp_path, resolution=R, fps=30, sample_rate=SR)


def _write_three(root: str, worker: int) -> None:
    w = writer(Path(root))
    for i in range(3):
        w.write_clip(f"w{worker}-{i}", smooth_frames(5, seed=i), np.zeros(5 * SPF, np.float32), extra={"w": worker})


def test_concurrent_writers(tmp_path):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_three, args=(str(tmp_path), k)) for k in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    expected = sorted(f"w{k}-{i}" for k in (0, 1) for i in (0, 1, 2))
    assert sorted(json.loads(line)["clip_id"] for line in lines) == expected
    reader = ShardReader(tmp_path)
    assert all(reader.frames(r.clip_id).shape == (5, R, R, 3) for r in reader.records)


def test_report_skip(tmp_path):
    w = writer(tmp_path)
    w.report_skip("bad.mp4", "no audio track", clip_id="bad")
    assert json.loads((tmp_path / "report.jsonl").read_text()) == {
        "source": "bad.mp4",
        "reason": "no audio track",
        "clip_id": "bad",
    }


#################################################################################
#                                    Dataset                                    #
#################################################################################


@pytest.fixture(scope="module")
def index_root(tmp_path_factory) -> Path:
    """Two clips (40 and 17 frames) whose pixels and samples encode their frame and sample indices."""
    root = tmp_path_factory.mktemp("index_shards")
    w = writer(root)
    for clip_id, F in (("long", 40), ("short", 17)):
        w.write_clip(clip_id, index_frames(F), index_audio(F), meta={"frame": np.arange(F)})
    w.write_clip("other-split", index_frames(20), index_audio(20), split="val")
    return root


def test_dataset_alignment(index_root):
    N, lookahead = 9, 2
    ds = TalkingClipDataset(index_root, num_frames=N, temporal_compression=4, audio_lookahead_frames=lookahead)
    assert len(ds) == 2  # the val clip is left out
    lengths = {"long": 40, "short": 17}
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            s, F = item["start"], lengths[item["clip_id"]]
            assert item["video"].shape == (3, N, R, R) and item["video"].dtype == torch.float32
            assert item["ref"].shape == (3, 1, R, R)
            assert -1 <= item["video"].min() and item["video"].max() <= 1
            frames = ((item["video"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
            np.testing.assert_array_equal(decode_index(frames), np.arange(s, s + N))
            # Audio: the samples of exactly those frames, then the look-ahead (zeros past the end of the clip).
            audio = item["audio"].numpy()
            assert audio.shape == ((N + lookahead) * SPF,)
            inside = min(len(audio), (F - s) * SPF)
            np.testing.assert_array_equal(audio[:inside] * 2**20, s * SPF + np.arange(inside))
            assert not audio[inside:].any()
            np.testing.assert_array_equal(item["meta"]["frame"].numpy(), np.arange(s, s + N))
            # Reference: the frame it says, far from the window when the clip allows it.
            ref = ((item["ref"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
            r = item["ref_index"]
            assert decode_index(ref)[0] == r
            distance = s - r if r < s else r - (s + N - 1)
            far_exists = s - N >= 0 or s + N - 1 + N <= F - 1
            assert distance >= (N if far_exists else 1)


def test_dataset_is_deterministic(index_root):
    def starts(seed, epoch):
        ds = TalkingClipDataset(index_root, num_frames=5, temporal_compression=4, seed=seed)
        ds.set_epoch(epoch)
        return [(ds[i]["start"], ds[i]["ref_index"]) for i in range(len(ds))]

    assert starts(0, 0) == starts(0, 0)
    assert len({tuple(starts(0, e)) for e in range(6)}) > 1  # epochs draw new windows


def test_dataset_windows_and_errors(index_root):
    ds = TalkingClipDataset(index_root, num_frames=13, temporal_compression=4, split=None, random_windows=False)
    assert [(ds.clips[c].clip_id, s) for c, s in ds.windows] == [  # clips in turn: evaluation sets spread
        ("long", 13),  # each clip's middle window first: clips open alike
        ("short", 0),
        ("other-split", 0),
        ("long", 26),
        ("long", 0),
    ]
    with pytest.raises(RestError, match="1 \\+ 4\\*k"):
        TalkingClipDataset(index_root, num_frames=8, temporal_compression=4)
    with pytest.raises(RestError, match="no clip"):
        TalkingClipDataset(index_root, num_frames=41, temporal_compression=4)
    features = TalkingClipDataset(index_root, num_frames=5, temporal_compression=4, audio_features=lambda a: a[::640])
    assert features[0]["audio_features"].shape == (5,)


def test_reference_index_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):  # long video: always at least `gap` frames away
        r = reference_index(100, 40, 9, 9, rng)
        assert r <= 40 - 9 or r >= 48 + 9
    assert reference_index(20, 3, 9, 9, rng) == 19  # too short for the gap: farthest frame outside the window
    assert reference_index(20, 11, 9, 9, rng) == 0
    assert 0 <= reference_index(9, 0, 9, 9, rng) < 9  # the window is the whole video


def test_dataset_in_forked_dataloader_workers(index_root):
    """Decoders opened in the parent are not touched by forked workers, and items do not depend on the worker."""
    ds = TalkingClipDataset(index_root, num_frames=5, temporal_compression=4, seed=3)
    expected = [(ds[i]["clip_id"], ds[i]["start"], ds[i]["ref_index"]) for i in range(len(ds))]  # opens decoders
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork")
    got = [(b["clip_id"][0], int(b["start"]), int(b["ref_index"])) for b in loader]
    assert got == expected
