"""`rest bench gpu`: one run, one JSON, of what a lent GPU must show (issue 28), in under 8 minutes on an H100.

Sections, all measured in the same process:
- `stream`: the `base` student streaming at 512^2 in bf16 (`rest bench stream`): per-chunk latency, fps,
  first-frame latency and peak memory, eager and with the denoiser's blocks under torch.compile (`default`, and
  `reduce-overhead`, which replays them from CUDA graphs); a variant that fails to compile records its error;
- `flops`: the FLOP count of one steady-state chunk by component for both presets (rest/bench/flops.py);
- `mfu`: achieved FLOP/s of each variant's median chunk over the peak measured here (a large matmul), and over
  the H100 SXM datasheet peak (989 TFLOP/s dense bf16; the H200 has the same);
- `vae`: the `base` VAE vs diffusers' LTX-Video VAE at the same 32x / 8x compression (`rest bench vae`);
- `teacher_vs_student`: denoiser cost per generated second, teacher (50 guided steps) vs student (`rest bench
  teacher`'s `vs_student`);
- `prediction`: the FLOP model of `base` on an H100 at 40% MFU: a chunk's FLOPs over 40% of 989 TFLOP/s gives
  its time, and its frames over that time the fps (at K = 1, 2 and 4 steps).

`--dry-run` (automatic without CUDA) runs the same code on the CPU at small sizes (`tiny` with 2 blocks, fp32,
short streams, small VAE clips) and writes the same JSON shape; the prediction is always the `base` one. The
compile variants run last, each only if the run is still within `budget_s` (else recorded as skipped).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rest.bench.common import device_info
from rest.bench.flops import H100_SXM_BF16_DENSE, ChunkFlops, preset_chunk_flops
from rest.bench.stream import bench_stream
from rest.bench.teacher import bench_teacher
from rest.bench.vae import bench_vae
from rest.config import get_preset

PREDICTION_MFU = 0.4


@dataclass(frozen=True)
class Plan:
    """What one run measures; `GPU_PLAN` on CUDA, `DRY_RUN_PLAN` on the CPU."""

    preset: str
    dtype: torch.dtype
    depth: int | None  # the student's blocks (None: the preset's)
    stream_seconds: float  # media time of the timed stream
    compile_modes: tuple[str, ...]  # torch.compile variants of the stream, after the eager one
    vae_frames: int  # 1 + t*k frames of the VAE clip
    vae_resolution: int | None  # None: the preset's
    teacher_latent_frames: int
    teacher_steps: int
    student_steps: int  # K
    student_chunks: int
    repeats: int
    budget_s: float  # no new compile variant after this much of the run


GPU_PLAN = Plan("base", torch.bfloat16, None, 10.0, ("default", "reduce-overhead"), 33, None, 9, 50, 1, 12, 3, 240.0)
DRY_RUN_PLAN = Plan("tiny", torch.float32, 2, 1.0, ("default",), 5, 32, 3, 50, 1, 5, 1, 600.0)

_STREAM_KEYS = ("chunk_ms_median", "chunk_ms_p95", "real_time_factor", "peak_mem_mb", "setup_ms")


def stream_summary(result: dict, flops: dict, peak_flop_s: float) -> dict:
    """The per-chunk latency, fps, first frame, peak memory and MFU of one `bench_stream` result."""
    stream = result["streams"][0]
    chunk_s = stream["chunk_ms_median"] / 1000
    achieved = flops["total"] / chunk_s
    frames = flops["frames"]
    return {
        **{key: stream[key] for key in _STREAM_KEYS},
        "fps": frames / chunk_s,
        "first_frame_ms": stream["first_frame"]["total_ms"],
        "first_frame": stream["first_frame"],
        "achieved_flop_s": achieved,
        "mfu_vs_measured_peak": achieved / peak_flop_s,
        "mfu_vs_h100_datasheet": achieved / H100_SXM_BF16_DENSE,
    }


def predict(flops: ChunkFlops, peak_flop_s: float = H100_SXM_BF16_DENSE, mfu: float = PREDICTION_MFU) -> dict:
    """Chunk time, fps and real-time streams per device of a chunk of `flops` on a device of `peak_flop_s` at
    `mfu` (the FLOPs FlopCounterMode counts: matmuls, convolutions and attention; elementwise work is assumed to
    fit in the remaining time)."""
    chunk_s = flops.total / (mfu * peak_flop_s)
    return {
        "steps": flops.steps,
        "flops_per_chunk": flops.total,
        "chunk_ms": 1000 * chunk_s,
        "fps": flops.frames / chunk_s,
        "real_time_factor": chunk_s / flops.seconds,
        "real_time_streams": flops.seconds / chunk_s,  # one stream per chunk time, without batching
    }


def bench_gpu(device: torch.device, dry_run: bool = False, partial: str | Path | None = None) -> dict:
    """Run every section (module docstring) on `device`; `dry_run` uses `DRY_RUN_PLAN`. The compile variants run
    last, each only while the run is within `plan.budget_s`; `partial`: a file rewritten with what has been
    measured after each section (a run stopped by a time limit keeps its sections)."""
    if device.type != "cuda" and not dry_run:
        raise ValueError(f"rest bench gpu measures a CUDA device; on {device.type} use --dry-run")
    plan = DRY_RUN_PLAN if dry_run else GPU_PLAN
    start = time.perf_counter()
    result = {
        "benchmark": "gpu",
        "dry_run": dry_run,
        **device_info(device),
        "plan": {**asdict(plan), "dtype": str(plan.dtype).replace("torch.", "")},
        "sections_s": {},
    }

    def done(name: str, t0: float) -> None:
        result["sections_s"][name] = time.perf_counter() - t0
        result["wall_s"] = time.perf_counter() - start
        if partial is not None:
            Path(partial).parent.mkdir(parents=True, exist_ok=True)
            Path(partial).write_text(json.dumps(result, indent=2) + "\n")

    # 1. The student's stream, eager, with the FLOP count, the measured peak and a profile of a chunk
    t0 = time.perf_counter()
    common = dict(steps=plan.student_steps, dtype=plan.dtype, depth=plan.depth)
    eager = bench_stream(plan.preset, device, [plan.stream_seconds], **common)
    peak, flops = eager["peak"]["flop_s"], eager["flops_per_chunk"]
    result["peak"] = eager["peak"]
    result["stream"] = {"eager": stream_summary(eager, flops, peak)}
    result["stream_detail"] = {key: eager[key] for key in ("streams", "time_by_op_kind", "params_m", "cache_mb")}
    result["mfu"] = {"eager": result["stream"]["eager"]["mfu_vs_measured_peak"]}
    done("stream_eager", t0)

    # 2. FLOPs of both presets and the H100 prediction for base
    t0 = time.perf_counter()
    counted = {name: preset_chunk_flops(name, steps=plan.student_steps) for name in ("tiny", "base")}
    result["flops"] = {"measured_stream": flops, **{name: f.as_dict() for name, f in counted.items()}}
    base = counted["base"]
    result["prediction"] = {
        "preset": "base",
        "resolution": get_preset("base").resolution,
        "frames_per_chunk": base.frames,
        "assumed_peak_flop_s": H100_SXM_BF16_DENSE,
        "assumed_peak": "H100 SXM, dense bf16, datasheet",
        "mfu": PREDICTION_MFU,
        "by_steps": {str(k): predict(base.with_steps(k)) for k in (1, 2, 4)},
    }
    done("flops_and_prediction", t0)

    # 3. The VAE against LTX-Video at the same compression
    t0 = time.perf_counter()
    result["vae"] = bench_vae(
        plan.preset,
        device,
        frames=plan.vae_frames,
        resolution=plan.vae_resolution,
        repeats=plan.repeats,
        dtype=plan.dtype,
    )
    done("vae", t0)

    # 4. Teacher vs student per generated second
    t0 = time.perf_counter()
    teacher = bench_teacher(
        plan.preset,
        device,
        latent_frames=plan.teacher_latent_frames,
        steps=plan.teacher_steps,
        repeats=plan.repeats,
        dtype=plan.dtype,
        student_steps=plan.student_steps,
        student_chunks=plan.student_chunks,
    )
    result["teacher_vs_student"] = teacher["vs_student"]
    result["teacher"] = {key: teacher[key] for key in ("step_s", "step_cfg_s", "tokens", "video_seconds", "params_m")}
    done("teacher_vs_student", t0)

    # 5. The stream again with the denoiser's blocks compiled, while the budget lasts
    for mode in plan.compile_modes:
        if time.perf_counter() - start > plan.budget_s:
            result["stream"][mode] = {"skipped": f"the run had used its {plan.budget_s:.0f} s budget"}
            continue
        t0 = time.perf_counter()
        torch._dynamo.reset()  # each mode compiles afresh (and stays within dynamo's recompile limit)
        try:
            run = bench_stream(plan.preset, device, [plan.stream_seconds], compile_mode=mode, analyse=False, **common)
        except Exception as err:  # a backend that cannot capture this step: recorded, not fatal to the run
            result["stream"][mode] = {"error": f"{type(err).__name__}: {err}"[:2000]}
        else:
            result["stream"][mode] = stream_summary(run, flops, peak)
            result["mfu"][mode] = result["stream"][mode]["mfu_vs_measured_peak"]
        done(f"stream_{mode}", t0)
    return result


__all__ = ["DRY_RUN_PLAN", "GPU_PLAN", "Plan", "bench_gpu", "predict", "stream_summary"]
