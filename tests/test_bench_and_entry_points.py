"""`rest bench vae`, the VAE reconstruction helpers and the infer/evaluation entry points."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rest.cli import main
from rest.media import write_video
from rest.metrics.reconstruction import reconstruction_metrics
from rest.models.vae import CausalVideoVAE, reconstruct

REPO = Path(__file__).resolve().parents[1]


def test_bench_vae_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "vae", "--preset", "tiny", "--frames", "5", "--resolution", "32", "--repeats", "1",
                 "--output", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["preset"] == "tiny" and result["latent_frames"] == 2 and result["torch"] == torch.__version__
    for key in ("encode_whole_fps", "decode_whole_fps", "encode_stream_fps", "decode_stream_fps"):
        assert result["ours"][key] > 0
    assert result["theirs"]["name"] == "diffusers.AutoencoderKLLTXVideo"
    ratio = result["ratio_ours_over_theirs"]["decode_whole_fps"]
    assert ratio == pytest.approx(result["ours"]["decode_whole_fps"] / result["theirs"]["decode_whole_fps"])


def test_bench_rejects_bad_requests(capsys):
    assert main(["bench", "vae", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "vae", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --device cuda:")
        assert "built without CUDA" in err or "no CUDA device" in err


def test_reconstruct_streamed_equals_whole_and_metrics():
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    whole = reconstruct(vae, frames)
    streamed = reconstruct(vae, frames, chunk_frames=4)
    assert whole.shape == (9, 32, 32, 3)  # cut to 1 + 4k frames
    assert np.abs(whole.astype(int) - streamed.astype(int)).max() <= 1  # equal up to uint8 rounding
    same = reconstruction_metrics(frames[:9], frames[:9])
    assert same["ssim"] == pytest.approx(1.0) and same["psnr"] > 60
    noisy = np.clip(frames[:9].astype(int) + 8, 0, 255).astype(np.uint8)
    assert reconstruction_metrics(frames[:9], noisy)["psnr"] == pytest.approx(20 * np.log10(255 / 8), abs=0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_metrics(frames[:9], frames[:5])


def test_reconstruction_entry_points(tmp_path):
    torch.manual_seed(0)
    CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).save_pretrained(tmp_path / "vae")
    frames = np.random.default_rng(1).integers(0, 256, (13, 48, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "clip.mp4", frames, audio=np.zeros(13 * 640, np.float32))
    run = [sys.executable, "--vae", str(tmp_path / "vae"), "--resolution", "32"]
    proc = subprocess.run(
        [run[0], str(REPO / "infer" / "vae_reconstruct.py"), *run[1:], "--input", str(tmp_path / "clip.mp4"),
         "--output", str(tmp_path / "side.mp4")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "13 frames, PSNR" in proc.stdout and (tmp_path / "side.mp4").is_file()
    proc = subprocess.run(
        [run[0], str(REPO / "evaluation" / "vae_reconstruction.py"), *run[1:], "--videos", str(tmp_path),
         "--stream", "--output", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["videos"]) == {"clip.mp4", "side.mp4"} and result["streaming"] is True


def test_metrics_log_and_training_curve_plot(tmp_path):
    from rest.training.common import MetricsLog

    log = MetricsLog(tmp_path)
    for step in (10, 20, 30, 20):  # a resumed run logs step 20 again
        log.write("train", {"step": step, "loss": 1.0 / step})
    log.write("eval", {"step": 30, "psnr": 21.5})
    assert [r["step"] for r in MetricsLog.read(tmp_path, "train")] == [10, 20, 30, 20]
    assert MetricsLog.read(tmp_path / "metrics.jsonl", "eval")[0]["psnr"] == 21.5
    assert len(MetricsLog.read(tmp_path)) == 5
    out = tmp_path / "curve.png"
    args = [str(tmp_path / "metrics.jsonl"), "--eval-key", "psnr", "--output", str(out)]
    subprocess.run([sys.executable, str(REPO / "evaluation" / "plot_training.py"), *args], check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
