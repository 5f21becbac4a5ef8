"""`rest bench vae`: encode/decode speed and memory of our causal VAE, whole-clip and streaming, beside
diffusers' `AutoencoderKLLTXVideo` configured to the same compression and measured in the same run."""

from __future__ import annotations

import statistics
import time

import torch

from rest.bench.common import device_info, peak_memory_of, synchronize, time_call
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
    p = get_preset(preset)
    res = resolution or p.resolution
    torch.manual_seed(0)
    ours = (load_local(CausalVideoVAE, weights) if weights else CausalVideoVAE.from_preset(preset)).eval()
    ours.to(device=device, dtype=dtype)
    t = ours.temporal_compression
    if (frames - 1) % t:
        raise ValueError(f"--frames must be 1 + {t}k for preset {preset}, got {frames}")
    x = torch.rand(1, 3, frames, res, res, device=device, dtype=dtype) * 2 - 1
    z = ours.encode(x).latent_dist.mode()
    f = z.shape[2]

    def enc_whole():
        ours.encode(x)

    def dec_whole():
        ours.decode(z)

    # Streaming as a live stream runs it: the first frame alone, then one chunk of `t` frames per latent frame.
    chunk_times: list[float] = []

    def enc_stream():
        cache = ours.init_cache("encode")
        ours.encode_chunk(x[:, :, :1], cache)
        for s in range(1, frames, t):
            ours.encode_chunk(x[:, :, s : s + t], cache)

    def dec_stream(record: bool = False):
        cache = ours.init_cache("decode")
        for j in range(f):
            t0 = time.perf_counter()
            ours.decode_chunk(z[:, :, j : j + 1], cache)
            if record:
                synchronize(device)
                chunk_times.append(time.perf_counter() - t0)

    result = {
        "benchmark": "vae",
        "preset": preset,
        "resolution": res,
        "frames": frames,
        "latent_frames": f,
        "dtype": str(dtype).replace("torch.", ""),
        **device_info(device),
    }
    timed = {
        "encode_whole": (enc_whole, frames),
        "decode_whole": (dec_whole, frames),
        "encode_stream": (enc_stream, frames),
        "decode_stream": (dec_stream, frames),
    }
    ours_res = {"params_m": sum(q.numel() for q in ours.parameters()) / 1e6}
    for name, (fn, n) in timed.items():
        ours_res[f"{name}_fps"] = _fps(n, time_call(fn, device, repeats=repeats)["median_s"])
    dec_stream(record=True)
    ours_res["decode_chunk_ms_median"] = 1000 * statistics.median(chunk_times[1:] or chunk_times)
    ours_res["decode_chunk_frames"] = t
    result["ours"] = ours_res

    if with_peer:
        peer = ltx_peer(preset).eval().to(device=device, dtype=dtype)
        zp = peer.encode(x).latent_dist.mode()
        if zp.shape[2:] != z.shape[2:]:
            raise RuntimeError(f"LTX peer latent shape {tuple(zp.shape)} differs from ours {tuple(z.shape)}")
        peer_res = {
            "name": "diffusers.AutoencoderKLLTXVideo",
            "params_m": sum(q.numel() for q in peer.parameters()) / 1e6,
        }
        peer_timed = {"encode_whole": lambda: peer.encode(x), "decode_whole": lambda: peer.decode(zp)}
        for name, fn in peer_timed.items():
            peer_res[f"{name}_fps"] = _fps(frames, time_call(fn, device, repeats=repeats)["median_s"])
        peer_res["streaming"] = "not supported (no causal chunk cache)"
        result["theirs"] = peer_res
    # Memory after all timings: the CPU measurement changes malloc's behaviour (see peak_memory_of).
    for name, (fn, _) in timed.items():
        ours_res[f"{name}_peak_mem_mb"] = peak_memory_of(fn, device)
    if with_peer:
        for name, fn in peer_timed.items():
            peer_res[f"{name}_peak_mem_mb"] = peak_memory_of(fn, device)
        result["ratio_ours_over_theirs"] = {
            "encode_whole_fps": ours_res["encode_whole_fps"] / peer_res["encode_whole_fps"],
            "decode_whole_fps": ours_res["decode_whole_fps"] / peer_res["decode_whole_fps"],
            "encode_whole_peak_mem": ours_res["encode_whole_peak_mem_mb"]
            / max(peer_res["encode_whole_peak_mem_mb"], 1e-6),
            "decode_whole_peak_mem": ours_res["decode_whole_peak_mem_mb"]
            / max(peer_res["decode_whole_peak_mem_mb"], 1e-6),
        }
    return result
