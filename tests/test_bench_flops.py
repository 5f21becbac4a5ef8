"""FLOP counts, measured peak and achieved / peak (rest/bench/flops.py), teacher vs student cost, the compiled chunk
step, and `rest bench gpu` (its dry run on the CPU; the CUDA paths are marked `gpu`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch._dynamo

from rest.bench.flops import (
    H100_SXM_BF16_DENSE,
    ChunkFlops,
    achieved,
    chunk_flops,
    count_flops,
    peak_flops,
    preset_chunk_flops,
    push_chunk_audio,
    step_arguments,
    warm_session,
)
from rest.bench.gpu import predict
from rest.bench.stream import bench_stream, compile_blocks
from rest.bench.teacher import bench_teacher
from rest.cli import main
from rest.diffusion.flow import flow_sigmas
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.vae import CausalVideoVAE
from rest.streaming.rollout import velocity

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_models(depth: int = 1, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Random tiny models (non-zero weights everywhere, so that every block changes its input)."""
    torch.manual_seed(0)
    encoder = AudioEncoder().eval()
    denoiser = DenoiserDiT.from_preset("tiny", attention_mode="block_causal", depth=depth).eval()
    for p in denoiser.parameters():
        torch.nn.init.normal_(p, std=0.05)
    vae = CausalVideoVAE.from_preset("tiny").eval()
    denoiser.to(device=device, dtype=dtype)
    return denoiser, vae.to(device=device, dtype=dtype), encoder.to(device)


# ----------------------------------------------------------------------------- counting


def test_count_flops_linear_and_cpu_attention():
    linear = torch.nn.Linear(64, 32)
    flops, out = count_flops(lambda: linear(torch.randn(8, 64)))
    assert out.shape == (8, 32) and flops == 2 * 8 * 64 * 32  # one multiply-add = 2 FLOPs; the bias is not counted
    # PyTorch's table misses the CPU attention kernel; counted here as QK^T and PV.
    q, k = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 24, 8)
    flops, _ = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    assert flops == 2 * (2 * 1 * 2 * 16 * 24 * 8)


def test_tiny_chunk_counted_on_meta_equals_a_real_run():
    meta = preset_chunk_flops("tiny", steps=2, depth=2, device="meta")
    real = preset_chunk_flops("tiny", steps=2, depth=2, device="cpu")
    assert meta == real
    assert min(meta.audio, meta.denoiser_step, meta.chunk_inputs, meta.cache_write, meta.decode) > 0
    assert meta.frames == 4 and meta.total == meta.audio + meta.denoiser + meta.decode


def test_chunk_flops_steady_and_linear_in_steps():
    denoiser, vae, encoder = tiny_models(depth=2)
    one = chunk_flops(denoiser, vae, encoder, 8, steps=1, shift=2.0, check_steady=True)  # raises if not steady
    two = chunk_flops(denoiser, vae, encoder, 8, steps=2, shift=2.0)
    assert one.with_steps(2) == two
    assert two.denoiser - one.denoiser == one.denoiser_step


def test_peak_and_achieved():
    peak = peak_flops(torch.device("cpu"), torch.float32, size=256, repeats=2)
    assert peak["matmul_n"] == 256 and peak["flop_s"] == pytest.approx(2 * 256**3 / peak["median_s"])
    out = achieved({"a": 100.0, "b": 30.0}, {"a": 2.0, "b": 3.0}, peak_flop_s=100.0)
    assert out == {"a": {"flop_s": 50.0, "over_peak": 0.5}, "b": {"flop_s": 10.0, "over_peak": 0.1}}


def test_prediction_is_flops_over_mfu_times_peak():
    flops = ChunkFlops(audio=1, denoiser=10, denoiser_step=4, chunk_inputs=1, cache_write=5, decode=9, steps=1,
                       frames=8, fps=25)  # fmt: skip
    p = predict(flops, peak_flop_s=100.0, mfu=0.5)
    assert p["flops_per_chunk"] == 20 and p["chunk_ms"] == pytest.approx(1000 * 20 / 50)
    assert p["fps"] == pytest.approx(8 / 0.4) and p["real_time_factor"] == pytest.approx(0.4 / (8 / 25))
    assert predict(flops.with_steps(3), 100.0, 0.5)["flops_per_chunk"] == 28  # two more steps of 4


# ----------------------------------------------------------------------------- the benches


def test_bench_stream_reports_flops_peak_and_achieved():
    result = bench_stream("tiny", torch.device("cpu"), [0.5], depth=1, warmup_chunks=1)
    flops, peak = result["flops_per_chunk"], result["peak"]["flop_s"]
    assert flops["total"] == flops["audio"] + flops["denoiser"] + flops["decode"] > 0
    stream = result["streams"][0]
    chunk = stream["achieved"]["chunk"]
    assert chunk["flop_s"] == pytest.approx(flops["total"] / (stream["chunk_ms_median"] / 1000))
    assert chunk["over_peak"] == pytest.approx(chunk["flop_s"] / peak)
    denoiser = stream["achieved"]["denoiser"]
    assert denoiser["flop_s"] == pytest.approx(flops["denoiser"] / (stream["denoise_ms_median"] / 1000))
    kinds = result["time_by_op_kind"]
    assert kinds["denoiser"]["ms"]["matmul"] > 0 and kinds["decode"]["ms"]["conv"] > 0
    assert kinds["decode"]["ms"]["matmul"] == 0  # the VAE is convolutions only


def test_teacher_vs_student_per_generated_second():
    result = bench_teacher("tiny", torch.device("cpu"), latent_frames=3, steps=50, repeats=1, student_chunks=5)
    cost = result["vs_student"]
    teacher, student = cost["teacher"], cost["student"]
    assert teacher["compute_s"] == result["compute_s_per_video_s_cfg"] and teacher["cfg_branches"] == 3
    assert cost["teacher_over_student_time"] == pytest.approx(teacher["compute_s"] / student["compute_s"])
    # FLOPs are exact: 50 guided steps on a whole clip against one step (plus the cache write) per chunk.
    assert cost["teacher_over_student_flops"] > 20


# ----------------------------------------------------------------------------- compiled chunk step


@pytest.mark.slow  # inductor builds C++ kernels: about a minute on 2 busy cores
def test_compiled_chunk_step_equals_eager_and_does_not_recompile():
    denoiser, vae, encoder = tiny_models(depth=1)
    torch._dynamo.reset()
    with torch.no_grad():
        session = warm_session(denoiser, vae, encoder, 8, flow_sigmas(1, 2.0))
        push_chunk_audio(session)
        x, t, inputs = step_arguments(session)
        x = torch.randn_like(x)
        eager = velocity(denoiser, session.cache, x, t, inputs)
        if shutil.which("cc") or shutil.which("gcc"):
            compile_blocks(denoiser, "default")  # inductor
        else:
            for block in denoiser.blocks:  # no C compiler: inductor cannot build its kernels
                block.compile(backend="aot_eager", dynamic=False)
        compiled = velocity(denoiser, session.cache, x, t, inputs)
        assert torch.allclose(compiled, eager, atol=1e-5), (compiled - eager).abs().max()
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs >= 1
        for _ in range(2):  # later steady-state chunks: the same shapes, no new graph
            session.decode(session.next_latents())
            push_chunk_audio(session)
            velocity(denoiser, session.cache, *step_arguments(session))
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- rest bench gpu


@pytest.mark.slow
def test_bench_gpu_dry_run_writes_one_json(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--device", "cpu", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["dry_run"] is True and result["plan"]["preset"] == "tiny"
    eager = result["stream"]["eager"]
    assert eager["fps"] == pytest.approx(4 / (eager["chunk_ms_median"] / 1000)) and eager["peak_mem_mb"] > 0
    assert "fps" in result["stream"]["default"] or "error" in result["stream"]["default"]
    assert result["mfu"]["eager"] == eager["mfu_vs_measured_peak"] > 0
    base = result["flops"]["base"]
    assert base["frames"] == 8 and base["total"] > result["flops"]["tiny"]["total"]
    prediction = result["prediction"]["by_steps"]["1"]
    assert prediction["flops_per_chunk"] == base["total"]
    assert prediction["fps"] == pytest.approx(8 * 0.4 * H100_SXM_BF16_DENSE / base["total"])
    assert set(result["vae"]) >= {"ours", "theirs", "ratio_ours_over_theirs"}
    assert result["teacher_vs_student"]["teacher_over_student_flops"] > 20


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@cuda
def test_cuda_bf16_chunk_uses_fused_attention():
    from torch.profiler import ProfilerActivity, profile

    denoiser, vae, encoder = tiny_models(depth=2, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        session = warm_session(denoiser, vae, encoder, 8, flow_sigmas(1, 2.0))
        push_chunk_audio(session)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            latents = session.next_latents()
    names = {event.key for event in prof.key_averages()}
    fused = {"aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
             "aten::_scaled_dot_product_cudnn_attention"}  # fmt: skip
    assert names & fused, sorted(n for n in names if "attention" in n)
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_chunk_step_equals_eager(mode):
    denoiser, vae, encoder = tiny_models(depth=2, device="cuda", dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        session = warm_session(denoiser, vae, encoder, 8, flow_sigmas(1, 2.0))
        push_chunk_audio(session)
        args = step_arguments(session)
        eager = velocity(denoiser, session.cache, *args).float()
        compile_blocks(denoiser, mode)
        for _ in range(3):  # reduce-overhead records its CUDA graphs on the first calls, then replays them
            compiled = velocity(denoiser, session.cache, *args).float().clone()
        assert torch.allclose(compiled, eager, atol=3e-2, rtol=3e-2), (compiled - eager).abs().max()
    torch._dynamo.reset()


@pytest.mark.gpu
@cuda
def test_cuda_peak_and_chunk_flops_in_bf16():
    peak = peak_flops(torch.device("cuda"), torch.bfloat16, size=4096, repeats=3)
    assert peak["flop_s"] > 0
    denoiser, vae, encoder = tiny_models(depth=2, device="cuda", dtype=torch.bfloat16)
    real = chunk_flops(denoiser, vae, encoder, 8, steps=1, shift=2.0, meta=False)  # CUDA's fused attention kernels
    assert real == chunk_flops(denoiser, vae, encoder, 8, steps=1, shift=2.0)  # == the meta count
