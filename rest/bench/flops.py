"""FLOPs of one steady-state streaming chunk, and the machine's measured peak: how far from the hardware a stream runs.

One chunk of a live stream runs three components (docs/design.md, "Streaming latency"):
- `audio`: the audio encoder's streaming step on the chunk's new samples (t * c video frames of audio);
- `denoiser`: the rollout, K Euler steps against a full ID-Context cache plus the pass that writes the chunk's
  keys/values into it (rest/streaming/rollout.py), of which `denoiser_step` is one Euler step (one `velocity`),
  `chunk_inputs` the chunk's audio tokens and rotary angles (`prepare_chunk`, once per chunk), and `cache_write`
  the rest (the context-timestep pass);
- `decode`: the VAE's streaming decode of the chunk's latents.

The chunk counted is a steady-state one: the cache holds `context_chunks` chunks, the audio encoder's attention
window is full and the VAE's causal caches are warm, so every later chunk costs the same (tested).

Counting is PyTorch's `torch.utils.flop_counter.FlopCounterMode`, not a hand count: it counts the matrix products
(mm, addmm, bmm, linear), convolutions and scaled-dot-product attention (the two products QK^T and PV) at 2 FLOPs
per multiply-add, from the shapes of the calls actually made. It does **not** count elementwise ops (activations,
residual adds, adaLN modulation, rotary embedding), norms (LayerNorm, RMSNorm), softmax, reductions, copies, the
FFT of the log-mel front end, or any Python overhead: the figures are the matmul work, the part an accelerator's
peak refers to. PyTorch's CPU attention kernel (`_scaled_dot_product_flash_attention_for_cpu`) is missing from its
table, so it is counted here with the library's own attention formula (`sdpa_flop_count`), as on CUDA.

The count runs on the `meta` device by default: models are built there from their configs (no weights, no
arithmetic), so `base` at 512^2 is counted in seconds of Python without computing it; on `tiny` the meta count
equals the count of a real CPU run (tested).

`peak_flops(device, dtype)` times a large matmul in the same process: the yardstick of "achieved / peak".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from rest.bench.common import synchronize, time_call
from rest.config import get_preset
from rest.diffusion.flow import FlowMatchingConfig, flow_sigmas
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.vae import CausalVideoVAE
from rest.streaming import StreamingSession, chunk_audio_span
from rest.streaming.rollout import ChunkInputs, prepare_chunk, velocity

H100_SXM_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's datasheet peak for dense bf16 on the H100 SXM (no sparsity)

#################################################################################
#                                   Counting                                    #
#################################################################################


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's formula for the CPU attention kernel, which its FLOP table leaves out."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """(FLOPs counted by FlopCounterMode while `fn()` runs, its result); see the module docstring for what counts."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        out = fn()
    return counter.get_total_flops(), out


def on_meta(model: torch.nn.Module) -> torch.nn.Module:
    """A weightless copy of `model` built from its config on the meta device (shapes only, for counting)."""
    # Only the public keys: diffusers' bookkeeping (`_use_default_values`) would reset values changed since
    # construction, such as a denoiser's attention mode, to their defaults.
    config = {key: value for key, value in model.config.items() if not key.startswith("_")}
    with torch.device("meta"):
        copy = type(model).from_config(config)
    return copy.eval()


@dataclass
class ChunkFlops:
    """FLOPs of one steady-state streaming chunk by component (module docstring); `frames` of video it yields."""

    audio: int  # audio encoder step on the chunk's new samples
    denoiser: int  # the whole rollout: steps * denoiser_step + chunk_inputs + cache_write
    denoiser_step: int  # one Euler step (one velocity evaluation against the full cache)
    chunk_inputs: int  # the chunk's audio tokens and rotary angles (prepare_chunk)
    cache_write: int  # the context-timestep pass that writes the chunk's keys/values
    decode: int  # the VAE's streaming decode of the chunk
    steps: int  # K
    frames: int  # video frames of a steady-state chunk (t * c)
    fps: int

    @property
    def total(self) -> int:
        return self.audio + self.denoiser + self.decode

    @property
    def seconds(self) -> float:
        """Media time of the chunk."""
        return self.frames / self.fps

    def with_steps(self, steps: int) -> ChunkFlops:
        """The same chunk at another step count K (the Euler steps are identical passes; the rest does not
        depend on K)."""
        denoiser = steps * self.denoiser_step + self.chunk_inputs + self.cache_write
        return ChunkFlops(**{**asdict(self), "steps": steps, "denoiser": denoiser})

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "total_per_video_s": self.total / self.seconds}


def chunk_samples(session: StreamingSession, chunk: int) -> int:
    """Audio samples a live stream pushes for `chunk`: through its window plus the encoder's look-ahead."""
    encoder = session.audio_encoder
    return (chunk_audio_span(session.denoiser, chunk)[1] + encoder.lookahead_frames) * encoder.samples_per_frame


def warm_session(
    denoiser: DenoiserDiT,
    vae: CausalVideoVAE,
    audio_encoder: AudioEncoder,
    latent_size: int,
    sigmas: torch.Tensor,
    context_timestep: float = 0.0,
) -> StreamingSession:
    """A stream in steady state: a session whose next chunk sees a full cache, a full audio attention window and
    warm VAE caches. Its audio is zeros (the FLOPs do not depend on it) and already covers the next chunk's
    window; `push_chunk_audio` feeds one more chunk's worth, as a live stream would."""
    param = next(denoiser.parameters())
    portrait = torch.zeros(1, vae.config.latent_channels, 1, latent_size, latent_size, device=param.device)
    session = StreamingSession(
        denoiser, vae, portrait.to(param.dtype), sigmas, audio_encoder=audio_encoder, context_timestep=context_timestep
    )
    warm_chunks = denoiser.config.context_chunks + 1  # the next chunk sees `context_chunks` chunks and is not chunk 0
    frames_per_chunk = denoiser.config.temporal_compression * denoiser.config.chunk_latent_frames
    # The encoder keeps `attn_window - 1` frames of keys: full once that many frames have gone through it.
    window_frames = audio_encoder.config.attn_window + frames_per_chunk
    samples = max(chunk_samples(session, warm_chunks), window_frames * audio_encoder.samples_per_frame)
    session.buffer_features(session.encode_audio(torch.zeros(1, samples, device=param.device)))
    for _ in range(warm_chunks):
        session.decode(session.next_latents())
    return session


def push_chunk_audio(session: StreamingSession) -> torch.Tensor:
    """Run the audio encoder's step on one steady-state chunk of new samples (t * c frames of zeros) and buffer
    the features; returns them (B, k, audio_dim)."""
    cfg = session.denoiser.config
    n = cfg.temporal_compression * cfg.chunk_latent_frames * session.audio_encoder.samples_per_frame
    device = session.features.device
    features = session.encode_audio(torch.zeros(session.features.shape[0], n, device=device))
    session.buffer_features(features)
    return features


def step_arguments(session: StreamingSession) -> tuple[torch.Tensor, torch.Tensor, ChunkInputs]:
    """(x, t, inputs) of the first Euler step of the session's next chunk: `velocity(denoiser, session.cache, x, t,
    inputs)` is the denoiser pass the rollout repeats K times (the chunk step that torch.compile captures)."""
    denoiser = session.denoiser
    audio = session.next_audio()
    c, h, w = session.latent_shape[1:]
    dtype = next(denoiser.parameters()).dtype
    inputs = prepare_chunk(denoiser, session.cache, audio.to(dtype), h, w, session.emotion)
    b, device = audio.shape[0], audio.device
    x = torch.zeros(b, *session.latent_shape, device=device, dtype=dtype)
    t = session.sigmas[0].to(device).expand(b, c)
    return x, t, inputs


@torch.no_grad()
def chunk_flops(
    denoiser: DenoiserDiT,
    vae: CausalVideoVAE,
    audio_encoder: AudioEncoder,
    latent_size: int,
    steps: int,
    shift: float,
    context_timestep: float = 0.0,
    meta: bool = True,
    check_steady: bool = False,
) -> ChunkFlops:
    """FLOPs of one steady-state chunk of these models' stream on an s x s latent grid (`latent_size`), at K =
    `steps` Euler steps.

    meta: count weightless copies built from the models' configs on the meta device (no arithmetic); False runs
    the given models where they are. check_steady: also count the chunk after it and raise if it costs differently.
    """
    if meta:
        denoiser, vae, audio_encoder = on_meta(denoiser), on_meta(vae), on_meta(audio_encoder)
    sigmas = flow_sigmas(steps, shift)
    session = warm_session(denoiser, vae, audio_encoder, latent_size, sigmas, context_timestep)
    counts = []
    for _ in range(2 if check_steady else 1):
        audio, _ = count_flops(lambda: push_chunk_audio(session))
        inputs_flops, (x, t, inputs) = count_flops(lambda: step_arguments(session))
        step, _ = count_flops(lambda: velocity(denoiser, session.cache, x, t, inputs))  # noqa: B023
        rollout, latents = count_flops(session.next_latents)
        decode, _ = count_flops(lambda: session.decode(latents))  # noqa: B023
        counts.append((audio, rollout, step, inputs_flops, decode))
    if check_steady and counts[0] != counts[1]:
        raise RuntimeError(f"two steady-state chunks cost different FLOPs: {counts[0]} vs {counts[1]}")
    audio, rollout, step, inputs_flops, decode = counts[0]
    cfg = denoiser.config
    return ChunkFlops(
        audio=audio,
        denoiser=rollout,
        denoiser_step=step,
        chunk_inputs=inputs_flops,
        cache_write=rollout - steps * step - inputs_flops,
        decode=decode,
        steps=steps,
        frames=cfg.temporal_compression * cfg.chunk_latent_frames,
        fps=audio_encoder.config.fps,
    )


def preset_chunk_flops(preset: str, steps: int = 1, depth: int | None = None, device: str = "meta") -> ChunkFlops:
    """`chunk_flops` of a preset's random models (the default audio encoder, a block_causal denoiser of the preset,
    its VAE), built on `device` ("meta": counted without arithmetic; "cpu": a real run), at the preset's resolution
    and the shift its token grid implies."""
    p = get_preset(preset)
    overrides = {"attention_mode": "block_causal"} | ({} if depth is None else {"depth": depth})
    with torch.device(device):
        audio_encoder = AudioEncoder().eval()
        denoiser = DenoiserDiT.from_preset(preset, audio_dim=audio_encoder.config.out_dim, **overrides).eval()
        vae = CausalVideoVAE.from_preset(preset).eval()
    shift = FlowMatchingConfig().shift_for(denoiser.tokens_per_frame(p.latent_size, p.latent_size))
    return chunk_flops(denoiser, vae, audio_encoder, p.latent_size, steps, shift, meta=False)


#################################################################################
#                               The machine's peak                              #
#################################################################################


def peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> dict:
    """Measured peak: FLOP/s of a large square matmul (n x n @ n x n, 2 n^3 FLOPs), median of `repeats` timed calls
    after one warm-up. n defaults to 8192 on CUDA and 2048 elsewhere (about a tenth of a second on a few cores)."""
    n = size or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    with torch.no_grad():
        median = time_call(lambda: a @ b, device, repeats=repeats, warmup=1)["median_s"]
    return {"matmul_n": n, "dtype": str(dtype).replace("torch.", ""), "median_s": median, "flop_s": 2 * n**3 / median}


#################################################################################
#                              Where the time goes                              #
#################################################################################

OP_KINDS = ("matmul", "conv", "attention", "other_ops", "outside_ops")


def _op_kind(name: str) -> str:
    """The kind of an aten op by name: the counted ones (matmul, conv, attention) and every other op."""
    if "attention" in name:
        return "attention"
    if "conv" in name:
        return "conv"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"):
        return "matmul"
    return "other_ops"


def time_by_op_kind(fn: Callable[[], object], device: torch.device) -> dict:
    """Where one call of `fn` spends its wall time, in ms by kind (OP_KINDS), from torch.profiler.

    CPU: each op's self time. CUDA: each op's kernel time on the device. `outside_ops` is the wall time no op
    accounts for: Python, dispatch and, on CUDA, the device waiting for the host (launch overhead).
    The first three kinds are what FlopCounterMode counts; `other_ops` (elementwise, norms, copies) is not.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        wall = time.perf_counter() - t0
    ms = dict.fromkeys(OP_KINDS, 0.0)
    for event in prof.key_averages():
        own = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        ms[_op_kind(event.key)] += own / 1000  # profiler times are in microseconds
    ms["outside_ops"] = max(0.0, 1000 * wall - sum(ms.values()))
    return {"wall_ms": 1000 * wall, "ms": ms, "share": {k: v / (1000 * wall) for k, v in ms.items()}}


def achieved(flops: dict[str, float], seconds: dict[str, float], peak_flop_s: float) -> dict:
    """Achieved FLOP/s and the fraction of the measured peak, per component: flops[name] / seconds[name]."""
    out = {}
    for name, s in seconds.items():
        rate = flops[name] / s if s > 0 else math.nan
        out[name] = {"flop_s": rate, "over_peak": rate / peak_flop_s}
    return out


__all__ = [
    "H100_SXM_BF16_DENSE",
    "OP_KINDS",
    "ChunkFlops",
    "achieved",
    "chunk_flops",
    "chunk_samples",
    "count_flops",
    "on_meta",
    "peak_flops",
    "preset_chunk_flops",
    "push_chunk_audio",
    "step_arguments",
    "time_by_op_kind",
    "warm_session",
]
