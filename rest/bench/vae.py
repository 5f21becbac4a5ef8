"""`rest bench vae`: encode/decode speed and memory of our causal VAE, whole-clip and streaming, beside
diffusers' `AutoencoderKLLTXVideo` configured to the same compression and measured in the same run."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Callable

import torch

from rest.bench.common import device_info, peak_memory_of, return_freed_memory_to_os, synchronize
from rest.config import get_preset
from rest.models.loading import load_local
from rest.models.vae import CausalVideoVAE


def ltx_peer(preset: str):
    """diffusers' LTX-Video VAE at the preset's compression (random weights: this is a speed comparison).

    LTX compresses by `patch_size * 2^n` in space and `patch_size_t * 2^n` in time, n = number of True in
    `spatio_temporal_scaling`; its widths are set to ours where the level structure allows.
    """
    from diffusers import AutoencoderKLLTXVideo

    p = get_preset(preset)
    a = p.vae
    n_temporal = sum(a.temporal_downsample)
    n_levels = len(a.block_out_channels) - 1  # number of 2x spatial steps after the patchify
    if n_levels != n_temporal:
        raise ValueError("the LTX peer needs joint space-time scaling at every level")
    scaling = tuple([True] * n_levels + [False] * (4 - n_levels))
    widths = tuple(list(a.block_out_channels) + [a.block_out_channels[-1]] * (4 - len(a.block_out_channels)))
    if preset == "base":  # LTX-Video's own widths and depths, at our compression
        kwargs = {}
    else:
        layers = (a.layers_per_block,) * 4 + (a.mid_layers,)
        kwargs = dict(
            block_out_channels=widths,
            decoder_block_out_channels=widths,
            layers_per_block=layers,
            decoder_layers_per_block=layers,
        )
    return AutoencoderKLLTXVideo(
        latent_channels=a.latent_channels,
        patch_size=a.patch_size,
        patch_size_t=1,
        spatio_temporal_scaling=scaling,
        decoder_spatio_temporal_scaling=scaling,
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        **kwargs,
    )


def _fps(frames: int, seconds: float) -> float:
    return frames / seconds


def build_cases(
    preset: str,
    device: torch.device,
    frames: int,
    resolution: int,
    dtype: torch.dtype,
    with_peer: bool,
    weights: str | None,
) -> tuple[dict[str, Callable[[], object]], dict]:
    """The measured calls, by name ("ours/encode_whole", ..., "theirs/decode_whole"), and facts about them.

    Deterministic (seeded), so a fresh process rebuilds exactly the same models and inputs.
    """
    torch.manual_seed(0)
    ours = (load_local(CausalVideoVAE, weights) if weights else CausalVideoVAE.from_preset(preset)).eval()
    ours.to(device=device, dtype=dtype)
    t = ours.temporal_compression
    if (frames - 1) % t:
        raise ValueError(f"--frames must be 1 + {t}k for preset {preset}, got {frames}")
    x = torch.rand(1, 3, frames, resolution, resolution, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        z = ours.encode(x).latent_dist.mode()
    f = z.shape[2]

    # Streaming as a live stream runs it: the first frame alone, then one chunk of `t` frames per latent frame.
    def enc_stream():
        cache = ours.init_cache("encode")
        ours.encode_chunk(x[:, :, :1], cache)
        for s in range(1, frames, t):
            ours.encode_chunk(x[:, :, s : s + t], cache)

    def dec_stream():
        cache = ours.init_cache("decode")
        for j in range(f):
            ours.decode_chunk(z[:, :, j : j + 1], cache)

    cases = {
        "ours/encode_whole": lambda: ours.encode(x),
        "ours/decode_whole": lambda: ours.decode(z),
        "ours/encode_stream": enc_stream,
        "ours/decode_stream": dec_stream,
    }
    facts = {"latent_frames": f, "t": t, "ours_params_m": sum(q.numel() for q in ours.parameters()) / 1e6}
    if with_peer:
        peer = ltx_peer(preset).eval().to(device=device, dtype=dtype)
        with torch.no_grad():
            zp = peer.encode(x).latent_dist.mode()
        if zp.shape[2:] != z.shape[2:]:
            raise RuntimeError(f"LTX peer latent shape {tuple(zp.shape)} differs from ours {tuple(z.shape)}")
        cases["theirs/encode_whole"] = lambda: peer.encode(x)
        cases["theirs/decode_whole"] = lambda: peer.decode(zp)
        facts["theirs_params_m"] = sum(q.numel() for q in peer.parameters()) / 1e6
    facts["decode_chunk"] = (ours, z)
    return cases, facts


def interleaved_times(cases: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, list]:
    """Wall times (s) of every case over `repeats` rounds, each round running all cases once in turn (after one
    untimed round). On a shared machine a change of load then falls on ours and theirs alike, instead of on
    whichever happened to be measured during it."""
    for fn in cases.values():
        fn()
    synchronize(device)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _memory_worker(case: str, build_args: tuple, queue) -> None:
    """In a fresh process: build the cases, run one of them once, report its peak memory (MiB)."""
    torch.set_num_threads(build_args[-1])
    return_freed_memory_to_os()  # before building, so the set-up's freed blocks do not serve the measured call
    cases, _ = build_cases(*build_args[:-1])
    with torch.no_grad():
        queue.put(peak_memory_of(cases[case], torch.device("cpu")))


def cold_peak_memory(case: str, build_args: tuple) -> float:
    """Peak memory of one call of `case` in a new process (CPU): reliable whatever this process allocated before."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(case, (*build_args, torch.get_num_threads()), queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result


@torch.no_grad()
def bench_vae(
    preset: str,
    device: torch.device,
    frames: int = 33,
    resolution: int | None = None,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    with_peer: bool = True,
    weights: str | None = None,
) -> dict:
    """Frames per second of encode and decode (whole clip and streaming), peak memory, ours vs LTX."""
    res = resolution or get_preset(preset).resolution
    build_args = (preset, device, frames, res, dtype, with_peer, weights)
    cases, facts = build_cases(*build_args)
    result = {
        "benchmark": "vae",
        "preset": preset,
        "resolution": res,
        "frames": frames,
        "latent_frames": facts["latent_frames"],
        "dtype": str(dtype).replace("torch.", ""),
        **device_info(device),
        "memory": "peak added by one call; CPU: in a fresh process (VmHWM), CUDA: allocator peak",
    }
    out = {"ours": {"params_m": facts["ours_params_m"]}}
    if with_peer:
        out["theirs"] = {"name": "diffusers.AutoencoderKLLTXVideo", "params_m": facts["theirs_params_m"]}
        out["theirs"]["streaming"] = "not supported (no causal chunk cache)"
    for name, times in interleaved_times(cases, device, repeats).items():
        who, what = name.split("/")
        out[who][f"{what}_fps"] = _fps(frames, statistics.median(times))
    # Per-chunk decode time: what a live stream pays for each chunk of t frames (the first chunk of a stream, one
    # frame, left out), over `repeats` streams so that one burst of load elsewhere does not make the median.
    ours, z = facts["decode_chunk"]
    chunk_times = []
    for _ in range(repeats):
        cache = ours.init_cache("decode")
        for j in range(z.shape[2]):
            t0 = time.perf_counter()
            ours.decode_chunk(z[:, :, j : j + 1], cache)
            synchronize(device)
            if j > 0 or z.shape[2] == 1:
                chunk_times.append(time.perf_counter() - t0)
    out["ours"]["decode_chunk_ms_median"] = 1000 * statistics.median(chunk_times)
    out["ours"]["decode_chunk_frames"] = facts["t"]
    for name, fn in cases.items():
        who, what = name.split("/")
        mem = cold_peak_memory(name, build_args) if device.type == "cpu" else peak_memory_of(fn, device)
        out[who][f"{what}_peak_mem_mb"] = mem
    result.update(out)
    if with_peer:
        ours_r, theirs_r = out["ours"], out["theirs"]
        result["ratio_ours_over_theirs"] = {
            f"{k}": ours_r[k] / theirs_r[k]
            for k in ("encode_whole_fps", "decode_whole_fps", "encode_whole_peak_mem_mb", "decode_whole_peak_mem_mb")
        }
    return result
