"""`rest bench teacher`: seconds per denoising step of the bidirectional teacher on a whole clip, with and without
the classifier-free-guidance batch, and the compute per generated second of video at a given step count.

Teacher vs student (`vs_student`): in the same run, the same weights switched to `block_causal` stream chunk by
chunk as the student does (`rollout_chunk`: K Euler steps plus the cache write, against the ID-Context cache),
and the two denoisers' cost per generated second is compared, measured (seconds) and counted (FLOPs, PyTorch's
FlopCounterMode on a weightless meta copy, rest/bench/flops.py). The teacher generates a clip of `latent_frames`
in `steps` guided steps; a longer video costs it more per second than this (its windows overlap). The student's
figure is its median steady-state chunk (a full cache) over the chunk's media time.

Random weights (speed does not depend on them). Audio features are random tensors: the audio encoder and the VAE
decode are not part of a denoising step and are not timed here (see `rest bench vae`, `rest bench stream`); both
models need the same of them per generated second.
"""

from __future__ import annotations

import statistics
import time

import torch

from rest.bench.common import device_info, peak_memory_of, synchronize, time_call
from rest.bench.flops import count_flops, on_meta
from rest.config import get_preset
from rest.diffusion.flow import FlowMatchingConfig, Guidance, flow_sigmas, guided_velocity
from rest.models.dit import DenoiserDiT
from rest.streaming import IDContextCache, chunk_audio_span, rollout_chunk, write_sink


@torch.no_grad()
def bench_teacher(
    preset: str,
    device: torch.device,
    latent_frames: int = 9,
    steps: int = 50,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    guidance: Guidance | None = None,
    student_steps: int | None = 1,
    student_chunks: int = 12,
) -> dict:
    """Time one denoising step (one forward) for a clip of `latent_frames` latent frames plus the portrait; with
    `student_steps` (K), also the student's streaming cost per generated second over `student_chunks` chunks."""
    p = get_preset(preset)
    guidance = guidance or Guidance(audio=2.0, portrait=1.5)  # both scales != 1: the full three-branch CFG batch
    torch.manual_seed(0)
    dit = DenoiserDiT.from_preset(preset).eval().to(device)
    # nn.Module's casts (floating-point tensors only); ModelMixin.to(dtype) warns about fp32 modules we do not have.
    {torch.float32: dit.float, torch.bfloat16: dit.bfloat16, torch.float16: dit.half}[dtype]()
    c, s, t = p.vae.latent_channels, p.latent_size, p.vae.temporal_compression
    frames = 1 + t * (latent_frames - 1)
    x = torch.randn(1, c, latent_frames, s, s, device=device, dtype=dtype)
    timesteps = torch.full((1, latent_frames), 0.5, device=device, dtype=dtype)
    audio = torch.randn(1, frames, dit.config.audio_dim, device=device, dtype=dtype)
    portrait = torch.randn(1, c, 1, s, s, device=device, dtype=dtype)

    def step_plain():
        dit(x, timesteps, audio, portrait)

    def step_cfg():
        guided_velocity(dit, x, timesteps, audio, portrait, guidance)

    seconds = frames / p.fps  # media time of the clip
    plain = time_call(step_plain, device, repeats=repeats)["median_s"]
    cfg = time_call(step_cfg, device, repeats=repeats)["median_s"]
    n = dit.tokens_per_frame(s, s)
    result = {
        "benchmark": "teacher",
        "preset": preset,
        "dtype": str(dtype).replace("torch.", ""),
        **device_info(device),
        "params_m": sum(q.numel() for q in dit.parameters()) / 1e6,
        "depth": dit.config.depth,
        "width": dit.config.width,
        "heads": dit.config.num_heads,
        "latent_frames": latent_frames,
        "video_frames": frames,
        "video_seconds": seconds,
        "tokens": (1 + latent_frames) * n,  # portrait + clip
        "steps": steps,
        "step_s": plain,
        "step_cfg_s": cfg,
        "cfg_branches": len(guidance.branches),
        "compute_s_per_video_s": steps * plain / seconds,
        "compute_s_per_video_s_cfg": steps * cfg / seconds,
    }
    # Memory after the timings (the CPU measurement changes malloc's behaviour, see peak_memory_of); the first
    # measurement only settles the allocator (memory freed before it may still be resident and get reused).
    peak_memory_of(step_cfg, device)
    result["step_peak_mem_mb"] = peak_memory_of(step_plain, device)
    result["step_cfg_peak_mem_mb"] = peak_memory_of(step_cfg, device)
    if student_steps is not None:
        meta = on_meta(dit)  # counted on a weightless copy, in float32 (FLOPs do not depend on the dtype)
        inputs = [a.to("meta", torch.float32) for a in (x, timesteps, audio, portrait)]
        step_flops, _ = count_flops(lambda: guided_velocity(meta, *inputs, guidance))
        teacher = {
            "steps": steps,
            "cfg_branches": len(guidance.branches),
            "compute_s": result["compute_s_per_video_s_cfg"],
            "flops": steps * step_flops / seconds,
        }
        dit.set_attention_mode("block_causal")  # the same weights as a streaming student
        student = student_cost(dit, s, p.fps, student_steps, student_chunks, device)
        result["vs_student"] = {
            "per_generated_second": "denoiser compute (s) and FLOPs per second of generated video",
            "teacher": teacher,
            "student": student,
            "teacher_over_student_time": teacher["compute_s"] / student["compute_s"],
            "teacher_over_student_flops": teacher["flops"] / student["flops"],
        }
    return result


@torch.no_grad()
def student_cost(
    denoiser: DenoiserDiT, latent_size: int, fps: int, steps: int, chunks: int, device: torch.device
) -> dict:
    """The streaming student's denoiser compute (s) and FLOPs per generated second: `chunks` chunks rolled out
    against the ID-Context cache, K = `steps`; the median chunk once the cache is full, over the chunk's media
    time."""
    cfg = denoiser.config
    if chunks <= cfg.context_chunks:
        raise ValueError(f"need more than context_chunks = {cfg.context_chunks} chunks to reach a full cache")
    sigmas = flow_sigmas(steps, FlowMatchingConfig().shift_for(denoiser.tokens_per_frame(latent_size, latent_size)))

    def stream(model: DenoiserDiT, on: torch.device, count_chunk: int | None = None) -> list[float] | int:
        """Roll `chunks` chunks out on `on`: the per-chunk seconds, or the FLOPs of chunk `count_chunk`."""
        g = torch.Generator().manual_seed(0)
        dtype = next(model.parameters()).dtype
        shape = (1, cfg.in_channels, cfg.chunk_latent_frames, latent_size, latent_size)  # a chunk's latents
        portrait = torch.randn(1, cfg.in_channels, 1, latent_size, latent_size, generator=g)
        cache = IDContextCache.for_model(model, 1, latent_size, latent_size)
        write_sink(model, cache, portrait.to(on, dtype))
        times = []
        for chunk in range(chunks if count_chunk is None else count_chunk + 1):
            start, stop = chunk_audio_span(model, chunk)
            audio = torch.randn(1, stop - start, cfg.audio_dim, generator=g).to(on, dtype)
            noise = torch.randn(shape, generator=g).to(on)
            if chunk == count_chunk:
                return count_flops(lambda: rollout_chunk(model, cache, noise, audio, sigmas))[0]  # noqa: B023
            synchronize(on)
            t0 = time.perf_counter()
            rollout_chunk(model, cache, noise, audio, sigmas)
            synchronize(on)
            times.append(time.perf_counter() - t0)
        return times

    chunk_s = cfg.temporal_compression * cfg.chunk_latent_frames / fps
    steady = stream(denoiser, device)[cfg.context_chunks :]  # chunks that see a full cache
    flops = stream(on_meta(denoiser), torch.device("meta"), count_chunk=cfg.context_chunks)
    return {
        "steps": steps,
        "chunks": chunks,
        "chunk_ms_median": 1000 * statistics.median(steady),
        "compute_s": statistics.median(steady) / chunk_s,
        "flops": flops / chunk_s,
    }


__all__ = ["bench_teacher", "student_cost"]
