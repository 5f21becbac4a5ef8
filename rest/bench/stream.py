"""`rest bench stream`: the streaming student's per-chunk latency, first-frame latency, real-time factor and memory
for streams of several lengths (is the cost flat from 10 s to 10 min?).

Each chunk is timed as a live stream runs it: the audio encoder's streaming step on the chunk's new samples, the
rollout (K denoising steps + the cache write, rest/streaming/rollout.py) and the VAE's streaming decode of the
chunk's frames. Audio is pushed when a chunk's whole audio window (its frames + the DiT's and the encoder's
look-ahead) has arrived, so the first chunk waits for `audio buffering` of media time before its compute starts:

    first-frame latency = audio buffering (first chunk + look-ahead) + compute of the first chunk + its VAE decode

(docs/design.md, "Streaming latency"). The portrait's ID-Sink is written before the audio starts (`setup_ms`, not on
the latency path).

How near the hardware (rest/bench/flops.py): `flops_per_chunk` is the FLOP count of one steady-state chunk by
component (FlopCounterMode on weightless meta copies of the models: matmuls, convolutions and attention; not
elementwise ops or norms), `peak` the FLOP/s of a large matmul timed in the same run and dtype, and each stream's
`achieved` the FLOP/s of its median steady-state chunk per component (audio, denoiser, decode, and the whole
chunk) with its fraction of that peak (`over_peak`; the audio encoder runs in float32 whatever --dtype says).
`time_by_op_kind` profiles one more steady-state chunk per component: the wall time spent in the counted ops
(matmul, conv, attention), in every other op, and outside any op (Python, dispatch, launch overhead).

Random weights by default (speed does not depend on them), or `--weights FOLDER` with `denoiser/`,
`audio_encoder/` and either `vae/` or a `student.json` / `teacher.json` naming the VAE folder (a pipeline folder
of `rest export-pipeline` works: its `pipeline.json` gives K and the levels).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rest.bench.common import device_info, rss_kib, synchronize
from rest.bench.flops import (
    achieved,
    chunk_flops,
    chunk_samples,
    peak_flops,
    push_chunk_audio,
    time_by_op_kind,
    warm_session,
)
from rest.config import get_preset
from rest.diffusion.flow import FlowMatchingConfig, flow_sigmas
from rest.errors import RestError
from rest.exports import PipelineConfig, StudentInfo, TeacherInfo, load_audio_path, load_vae
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.vae import CausalVideoVAE
from rest.streaming import StreamingSession, chunk_audio_span, chunk_video_frames


def load_stream_models(
    preset: str, weights: str | None, depth: int | None = None
) -> tuple[dict, PipelineConfig | StudentInfo | TeacherInfo | None]:
    """(models, info): the denoiser (block_causal), audio encoder and VAE, random or from `weights`; info is the
    folder's pipeline.json, student.json or teacher.json, the first there is (None for random weights or none)."""
    if weights is None:
        torch.manual_seed(0)
        audio_encoder = AudioEncoder()
        overrides = {"attention_mode": "block_causal", "audio_dim": audio_encoder.config.out_dim}
        if depth is not None:
            overrides["depth"] = depth
        models = {
            "denoiser": DenoiserDiT.from_preset(preset, **overrides),
            "audio_encoder": audio_encoder,
            "vae": CausalVideoVAE.from_preset(preset),
        }
        return models, None
    folder = Path(weights)
    found = [cls for cls in (PipelineConfig, StudentInfo, TeacherInfo) if (folder / cls.FILE).is_file()]
    info = found[0].read(folder) if found else None
    if (folder / "vae").is_dir():
        vae_dir = folder / "vae"
    elif isinstance(info, (StudentInfo, TeacherInfo)):
        vae_dir = Path(info.vae)
    else:
        raise RestError(f"{folder}: no vae/ folder and no student.json / teacher.json naming the VAE")
    denoiser = load_local(DenoiserDiT, folder / "denoiser", "denoiser")
    if denoiser.attention_mode != "block_causal":
        raise RestError(
            f"{folder / 'denoiser'} is a {denoiser.attention_mode} denoiser (a teacher); the stream benchmark runs a "
            f"streaming student: pass the export/ folder of train/student.py, or no --weights for random weights"
        )
    models = {
        "denoiser": denoiser,
        "audio_encoder": load_audio_path(getattr(info, "audio", "mel"), folder / "audio_encoder", "audio encoder"),
        "vae": load_vae(vae_dir),
    }
    return models, info


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux)


def _memory_mb(device: torch.device, peak: bool) -> float:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**20
    return rss_kib("VmHWM" if peak else "VmRSS") / 1024


def _tenths(values: list[float]) -> list[list[float]]:
    """Consecutive tenths of a stream's chunks (fewer parts for short streams): does the cost drift within it?"""
    parts = min(10, len(values))
    return [values[i * len(values) // parts : (i + 1) * len(values) // parts] for i in range(parts)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@torch.no_grad()
def run_stream(new_session: Callable[[], StreamingSession], num_chunks: int, device: torch.device) -> dict:
    """Stream `num_chunks` chunks of random audio through `new_session()`; per-chunk times (s) of the audio step,
    rollout and decode."""
    g = torch.Generator().manual_seed(0)
    synchronize(device)
    t0 = time.perf_counter()
    session = new_session()  # writes the ID-Sink
    synchronize(device)
    setup = time.perf_counter() - t0
    denoiser = session.denoiser
    times = {"audio": [], "denoise": [], "decode": []}
    sent = 0  # samples pushed so far
    mem_after_first = 0.0
    for chunk in range(num_chunks):
        # The chunk can start once the audio through its window and the encoder's look-ahead has arrived.
        needed = chunk_samples(session, chunk)
        samples = (0.1 * torch.randn(1, needed - sent, generator=g)).to(device)
        sent = needed
        t0 = time.perf_counter()
        session.buffer_features(session.encode_audio(samples))
        synchronize(device)
        t1 = time.perf_counter()
        latents = session.next_latents()
        synchronize(device)
        t2 = time.perf_counter()
        frames = session.decode(latents)
        synchronize(device)
        t3 = time.perf_counter()
        if frames.shape[2] != chunk_video_frames(denoiser, chunk):
            raise RuntimeError(f"chunk {chunk} decoded to {frames.shape[2]} frames")
        times["audio"].append(t1 - t0)
        times["denoise"].append(t2 - t1)
        times["decode"].append(t3 - t2)
        if chunk == 0:
            mem_after_first = _memory_mb(device, peak=False)
    return {
        "setup_s": setup,
        "times": times,
        "mem_growth_mb": _memory_mb(device, peak=False) - mem_after_first,
        "cache_mb": session.cache.nbytes / 2**20,
    }


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def compile_blocks(denoiser: DenoiserDiT, mode: str) -> None:
    """torch.compile each DiT block in place (regional compilation: the blocks hold nearly all of a chunk's FLOPs,
    and every block shares one compiled graph per input shape).

    Shapes are static (`dynamic=False`): a stream's blocks see the sink pass and one shape per context size m = 0
    .. context_chunks while the cache fills (a compile each), then one shape for the rest of the stream, since the
    cache is preallocated. "reduce-overhead" also replays each block from a CUDA graph (CUDA only). The whole
    `velocity` is not compiled here: measured before the cache kept `num_context` as an attribute, its reading of
    `chunks_written` (a Python int that changes every chunk) recompiled it every chunk; it has not been retried.
    """
    if mode not in COMPILE_MODES:
        raise RestError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    for block in denoiser.blocks:
        block.compile(mode=mode, dynamic=False)


@torch.no_grad()
def profile_chunk(
    models: dict, latent_size: int, sigmas: torch.Tensor, context_timestep: float, device: torch.device
) -> dict:
    """`time_by_op_kind` of each component of one steady-state chunk (a fresh stream brought to steady state)."""
    session = warm_session(
        models["denoiser"], models["vae"], models["audio_encoder"], latent_size, sigmas, context_timestep
    )
    out = {"audio": time_by_op_kind(lambda: push_chunk_audio(session), device)}
    latents = []
    out["denoiser"] = time_by_op_kind(lambda: latents.append(session.next_latents()), device)
    out["decode"] = time_by_op_kind(lambda: session.decode(latents[0]), device)
    return out


@torch.no_grad()
def bench_stream(
    preset: str,
    device: torch.device,
    seconds: list[float],
    steps: int | None = None,
    weights: str | None = None,
    dtype: torch.dtype = torch.float32,
    depth: int | None = None,
    warmup_chunks: int = 8,
    compile_mode: str | None = None,
    analyse: bool = True,
) -> dict:
    """Per-chunk and first-frame latency, real-time factor and memory of streams of each length in `seconds`;
    with `compile_mode`, the denoiser's blocks run under torch.compile in that mode (`compile_blocks`).
    analyse: also count the FLOPs, time the peak and profile a chunk (module docstring)."""
    p = get_preset(preset)
    models, info = load_stream_models(preset, weights, depth)
    denoiser, audio_encoder, vae = models["denoiser"], models["audio_encoder"], models["vae"]
    if denoiser.config.audio_dim != audio_encoder.config.out_dim:
        raise RestError(
            f"the denoiser expects {denoiser.config.audio_dim}-d audio features, the audio encoder gives "
            f"{audio_encoder.config.out_dim}"
        )
    casts = {torch.float32: "float", torch.bfloat16: "bfloat16", torch.float16: "half"}
    for model in models.values():
        model.eval().to(device)
    for model in (denoiser, vae):  # nn.Module's casts (floating-point tensors only); the audio encoder stays fp32
        getattr(model, casts[dtype])()
    if compile_mode is not None:
        compile_blocks(denoiser, compile_mode)
    trained = isinstance(info, (PipelineConfig, StudentInfo))  # the streaming settings of a student
    steps = steps or (info.steps if trained else 1)
    size = p.resolution // vae.spatial_compression
    shift = info.shift if trained else FlowMatchingConfig().shift_for(denoiser.tokens_per_frame(size, size))
    context_timestep = info.context_timestep if trained else 0.0
    portrait = torch.randn(1, vae.config.latent_channels, 1, size, size, device=device, dtype=dtype)
    sigmas = flow_sigmas(steps, shift)

    def new_session() -> StreamingSession:
        return StreamingSession(
            denoiser, vae, portrait, sigmas, audio_encoder=audio_encoder, context_timestep=context_timestep
        )

    fps = audio_encoder.config.fps
    t, c = denoiser.config.temporal_compression, denoiser.config.chunk_latent_frames
    chunk_s = t * c / fps  # media time of a steady-state chunk
    first_frames = chunk_video_frames(denoiser, 0)

    run_stream(new_session, warmup_chunks, device)  # allocator and kernel warm-up
    streams, medians_per_stream = [], []
    for length in seconds:
        frames = int(length * fps)  # whole video frames of media
        if frames < first_frames:
            raise RestError(f"a {length} s stream is shorter than the first chunk ({first_frames} frames)")
        num_chunks = 1 + (frames - first_frames) // (t * c)
        _peak_reset(device)
        run = run_stream(new_session, num_chunks, device)
        peak = _memory_mb(device, peak=True)
        times = run["times"]
        total = [a + b + d for a, b, d in zip(times["audio"], times["denoise"], times["decode"], strict=True)]
        steady = total[1:] or total
        buffering = (chunk_audio_span(denoiser, 0)[1] + audio_encoder.lookahead_frames) / fps
        first = {
            "audio_buffering_ms": 1000 * buffering,
            "compute_ms": 1000 * (times["audio"][0] + times["denoise"][0]),
            "decode_ms": 1000 * times["decode"][0],
        }
        first["total_ms"] = first["audio_buffering_ms"] + first["compute_ms"] + first["decode_ms"]
        medians = {  # seconds of a steady-state chunk (the first one is excluded)
            "audio": statistics.median(times["audio"][1:] or times["audio"]),
            "denoiser": statistics.median(times["denoise"][1:] or times["denoise"]),
            "decode": statistics.median(times["decode"][1:] or times["decode"]),
            "chunk": statistics.median(steady),
        }
        medians_per_stream.append(medians)
        streams.append(
            {
                "seconds": float(length),
                "chunks": num_chunks,
                "video_frames": first_frames + (num_chunks - 1) * t * c,
                "chunk_ms_median": 1000 * statistics.median(steady),
                "chunk_ms_p95": 1000 * _percentile(steady, 0.95),
                "chunk_ms_max": 1000 * max(steady),
                "chunk_ms_median_per_tenth": [1000 * statistics.median(part) for part in _tenths(steady)],
                "audio_ms_median": 1000 * medians["audio"],
                "denoise_ms_median": 1000 * medians["denoiser"],
                "decode_ms_median": 1000 * medians["decode"],
                "real_time_factor": statistics.median(steady) / chunk_s,
                "real_time_factor_mean": sum(steady) / (len(steady) * chunk_s),
                "first_frame": first,
                "setup_ms": 1000 * run["setup_s"],
                "peak_mem_mb": peak,
                "mem_growth_mb": run["mem_growth_mb"],
                "wall_s": sum(total),
            }
        )
    analysis = {}
    if analyse:
        flops = chunk_flops(denoiser, vae, audio_encoder, size, steps, shift, context_timestep)
        analysis = {
            "flops_per_chunk": flops.as_dict(),
            "peak": peak_flops(device, dtype),
            "time_by_op_kind": profile_chunk(models, size, sigmas, context_timestep, device),
        }
        per_component = {"audio": flops.audio, "denoiser": flops.denoiser, "decode": flops.decode}
        per_component["chunk"] = flops.total
        for stream, medians in zip(streams, medians_per_stream, strict=True):
            stream["achieved"] = achieved(per_component, medians, analysis["peak"]["flop_s"])
    longest = max(streams, key=lambda r: r["seconds"])
    shortest = min(streams, key=lambda r: r["seconds"])
    return {
        "benchmark": "stream",
        "preset": preset,
        "weights": weights or "random",
        "dtype": str(dtype).replace("torch.", ""),
        **device_info(device),
        "params_m": {name: sum(q.numel() for q in m.parameters()) / 1e6 for name, m in models.items()},
        "depth": denoiser.config.depth,
        "width": denoiser.config.width,
        "steps": steps,
        "compile_mode": compile_mode,
        "shift": shift,
        "context_timestep": context_timestep,
        "chunk_latent_frames": c,
        "context_chunks": denoiser.config.context_chunks,
        "chunk_ms_media": 1000 * chunk_s,
        "audio_lookahead_ms": 1000 * (audio_encoder.lookahead_frames + denoiser.config.audio_lookahead) / fps,
        "cache_mb": run["cache_mb"],
        "streams": streams,
        "chunk_latency_ratio_longest_over_shortest": longest["chunk_ms_median"] / shortest["chunk_ms_median"],
        **analysis,
    }


__all__ = ["COMPILE_MODES", "bench_stream", "compile_blocks", "load_stream_models", "profile_chunk", "run_stream"]
