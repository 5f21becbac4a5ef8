"""`rest evaluate` end to end on tiny generated videos with weights the tests build in the standard formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from rest.cli import main
from rest.media import read_video, write_video
from rest.metrics.fid import file_sha256
from rest.metrics.identity import dlib_models_dir

FRAMES, SIZE = 48, 32


class _ToyInception(nn.Module):
    """The TorchScript Inception's call interface with cheap, input-dependent 2048-d features."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # (N, 48)
        return torch.cat([pooled, pooled.pow(2) / 255.0], dim=1).repeat(1, 22)[:, :2048]


class _ToyI3D(nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
        pooled = torch.nn.functional.adaptive_avg_pool3d(x, (4, 2, 2)).flatten(1)  # (B, 48)
        return pooled.repeat(1, 9)[:, :400]


def _write_set(folder: Path, names: list[str], seed: int) -> None:
    """Videos whose mouth region (centre) brightens with the loudness of their audio, plus SynthTalk-style labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in names:
        loud = np.convolve(rng.random(FRAMES), np.ones(3) / 3, mode="same")
        frames = np.repeat(rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8), FRAMES, axis=0)
        frames[:, 12:20, 8:24] = (loud * 255).astype(np.uint8)[:, None, None, None]
        audio = (np.repeat(loud, 640) * rng.uniform(-0.5, 0.5, FRAMES * 640)).astype(np.float32)
        write_video(folder / f"{name}.mp4", frames, fps=25, audio=audio)
        np.savez(folder / f"{name}.npz", mouth_open=loud.astype(np.float32))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Self-built weights: TorchScript Inception and I3D, a VGG16 state dict, a SyncNet and a mouth regressor."""
    from rest.models.mouth import MouthRegressor
    from rest.models.perceptual import VGG16Features
    from rest.models.syncnet import SyncNet

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_ToyInception()), str(root / "inception-2015-12-05.pt"))
    torch.jit.save(torch.jit.script(_ToyI3D()), str(root / "i3d_torchscript.pt"))
    torch.save(VGG16Features().state_dict(), root / "vgg16.pth")
    SyncNet(image_size=64, embed_dim=32, fc_dim=32, crop="center").eval().save_pretrained(str(root / "syncnet"))
    MouthRegressor(image_size=32, channels=(8, 8)).eval().save_pretrained(str(root / "mouth_regressor"))
    return {
        "fid": root / "inception-2015-12-05.pt",
        "fvd": root / "i3d_torchscript.pt",
        "lpips": root / "vgg16.pth",
        "lse": root / "syncnet",
        "lipsync_gt": root / "mouth_regressor",
    }


def _run(pred: Path, gt: Path, out: Path, weights: dict[str, Path], metrics: list[str]) -> dict:
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--output", str(out), "--no-progress"]
    args += ["--metrics", *metrics, "--fid-weights", str(weights["fid"]), "--fvd-weights", str(weights["fvd"])]
    args += ["--lpips-vgg", str(weights["lpips"]), "--syncnet-weights", str(weights["lse"])]
    args += ["--mouth-regressor", str(weights["lipsync_gt"])]
    assert main(args) == 0
    return json.loads(out.read_text())


def test_evaluate_end_to_end_identical_and_degraded(tmp_path, weights, capsys):
    gt = tmp_path / "gt"
    _write_set(gt, ["a", "b"], seed=0)
    same = tmp_path / "same"
    shutil.copytree(gt, same)
    (same / "extra.mp4").write_bytes((gt / "a.mp4").read_bytes())  # no ground truth: listed, not evaluated
    metrics = ["psnr", "ssim", "lpips", "fid", "fvd", "lse", "lipsync_gt"]
    if dlib_models_dir() is not None:
        metrics.append("csim")

    r = _run(same, gt, tmp_path / "same.json", weights, metrics)
    table = capsys.readouterr().out
    assert "mean" in table and "fid:" in table and "results:" in table
    assert r["pairs"] == 2 and r["unpaired"] == {"pred_only": ["extra"], "gt_only": []}
    assert set(r["videos"]) == {"a", "b"}
    for metric in ("fid", "fvd", "lse", "lpips", "lipsync_gt"):
        assert r["metrics"][metric]["sha256"] and r["metrics"][metric]["extractor"]
    assert r["metrics"]["fid"]["sha256"] == file_sha256(weights["fid"])[:12]
    a = r["videos"]["a"]
    assert a["psnr"] == "inf" and a["ssim"] == pytest.approx(1.0, abs=1e-4) and a["lpips"] == 0.0
    assert {"lse_c", "lse_d", "lse_offset"} <= a.keys() and a["lse_windows"] == FRAMES - 5
    assert a["lipsync_gt_corr"] is not None and -15 <= a["lipsync_gt_offset"] <= 15
    agg = r["aggregate"]
    assert abs(agg["fid"]["value"]) < 1e-6 and agg["fid"]["frames_pred"] == agg["fid"]["frames_gt"] == 2 * FRAMES
    assert abs(agg["fvd"]["value"]) < 1e-6 and agg["fvd"]["clips_pred"] == 2 * (FRAMES // 16)
    if "csim" in metrics:  # random frames have no face: skipped with the reason, never a number
        assert "no face found" in a["skipped"]["csim"]

    # degraded copies: noisy, frames shuffled, audio delayed by 5 frames
    worse = tmp_path / "worse"
    worse.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        v = read_video(gt / f"{name}.mp4", fps=25)
        noisy = np.clip(v.frames.astype(int) + rng.integers(-40, 41, v.frames.shape), 0, 255).astype(np.uint8)
        delayed = np.concatenate([np.zeros(5 * 640, np.float32), v.audio.samples[: -5 * 640]])
        write_video(worse / f"{name}.mp4", noisy[rng.permutation(len(noisy))], fps=25, audio=delayed)
    r2 = _run(worse, gt, tmp_path / "worse.json", weights, metrics)
    b = r2["videos"]["b"]
    assert 10 < b["psnr"] < 30 and b["ssim"] < 0.9 and b["lpips"] > 0
    assert r2["aggregate"]["fid"]["value"] > 1.0 and r2["aggregate"]["fvd"]["value"] > 1e-3


def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch, capsys):
    _write_set(tmp_path / "gt", ["a"], seed=0)
    monkeypatch.chdir(tmp_path)  # no weights/metrics/ here
    for metric, expected in [
        ("fid", "weights/metrics/inception-2015-12-05.pt"),
        ("fvd", "weights/metrics/i3d_torchscript.pt"),
        ("lse", "weights/metrics/syncnet_v2.model"),
        ("lpips", "weights/metrics/vgg16.pth"),
    ]:
        code = main(["evaluate", "--pred", "gt", "--gt", "gt", "--metrics", metric, "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "--" in err and "nothing is downloaded" in err
    code = main(["evaluate", "--pred", "gt", "--gt", "gt", "--metrics", "fid", "--fid-weights", "nope.pt"])
    assert code == 2 and "weights not found at nope.pt" in capsys.readouterr().err


def test_default_metrics_are_those_with_weights(tmp_path, monkeypatch):
    from rest.metrics.evaluate import EvalOptions, evaluate

    _write_set(tmp_path / "gt", ["a"], seed=0)
    monkeypatch.chdir(tmp_path)
    r = evaluate(EvalOptions(pred=Path("gt"), gt=Path("gt"), progress=False, csim_stride=8))
    assert {"fid", "fvd", "lse", "lpips", "lipsync_gt"} <= r["not_run"].keys()
    assert "weights/metrics" in r["not_run"]["fid"]
    assert {"psnr", "ssim"} <= r["metrics"].keys() and "fid" not in r["aggregate"]


def test_wrong_weight_files_and_unpaired_folders_are_clear_errors(tmp_path, weights, capsys):
    _write_set(tmp_path / "gt", ["a"], seed=0)
    _write_set(tmp_path / "other", ["z"], seed=1)
    bad = tmp_path / "syncnet_v2.model"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    code = main(["evaluate", "--pred", str(tmp_path / "gt"), "--gt", str(tmp_path / "gt"), "--metrics", "lse",
                 "--syncnet-weights", str(bad), "--no-progress"])  # fmt: skip
    assert code == 2 and "not syncnet_python's SyncNet state dict" in capsys.readouterr().err
    code = main(["evaluate", "--pred", str(tmp_path / "other"), "--gt", str(tmp_path / "gt"), "--no-progress"])
    assert code == 2 and "paired by file name" in capsys.readouterr().err


def test_real_video_against_a_blurred_copy(shared_data, tmp_path):
    from rest.metrics.evaluate import EvalOptions, evaluate

    if dlib_models_dir() is None:
        pytest.skip("face-recognition-models not installed")
    v = read_video(shared_data / "video" / "hdtf_a_8s.mp4", fps=25, max_frames=20)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    write_video(tmp_path / "gt" / "clip.mp4", v.frames, fps=25, audio=v.audio.samples)
    frames = torch.from_numpy(v.frames).permute(0, 3, 1, 2).float()
    blurred = torch.nn.functional.avg_pool2d(frames, 5, stride=1, padding=2, count_include_pad=False)
    write_video(tmp_path / "pred" / "clip.mp4", blurred.round().byte().permute(0, 2, 3, 1).numpy(), fps=25)
    opts = EvalOptions(pred=tmp_path / "pred", gt=tmp_path / "gt", metrics=["psnr", "ssim", "csim"], csim_stride=10)
    r = evaluate(opts)["videos"]["clip"]
    assert 20 < r["psnr"] < 40 and 0.5 < r["ssim"] < 0.99
    assert r["csim_dlib"] > 0.9 and r["csim_reference"] == "gt_first_frame"
