"""Chunk rollout: the one function that generates a streaming chunk (docs/design.md, component 6).

`rollout_chunk(denoiser, cache, noise, audio, sigmas)` denoises the next chunk of a stream in K Euler steps against
the ID-Context cache (rest/streaming/cache.py), then writes the chunk's keys/values into the cache from one more
pass at the *context timestep*, and returns the clean latents. Inference (`StreamingSession`) and training (the
student's self-rollout in Asynchronous Streaming Distillation, rest/training/student.py) both call it; the
trainer's gradient pass uses `chunk_velocity`, the very denoiser evaluation the rollout's Euler steps use.

Context timestep (`context_timestep`, a config value). The keys/values a chunk leaves in the cache come from a
forward of its final latents at level t_c, every frame at t_c:
- t_c = 0 (default): the clean latents, exactly what the block-causal forward of a clip with clean leading frames
  computes (the teacher's continuation training and the equivalence tests use this);
- t_c > 0 (e.g. 0.05): the latents re-noised to x = (1 - t_c) x0 + t_c eps first. A little noise on the context
  makes the next chunks less sensitive to the small errors of the generated past (Self-Forcing / CausVid use
  the same trick); it costs nothing at inference. Use the value the student was distilled with (student.json).

No classifier-free guidance here: the student is distilled from the guided teacher, so one forward per step.

Audio. Chunk J covers latent frames `J*c .. J*c + c - 1` (c = chunk_latent_frames). Its audio features start at
the first video frame those latent frames cover and run through the last one plus the DiT's `audio_lookahead`
(`chunk_audio_span`); the denoiser masks look-ahead frames that are missing (the end of a stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rest.diffusion.flow import euler_step
from rest.models.dit import PORTRAIT_ROPE_FRAME, DenoiserDiT
from rest.models.layers import KeyValue, Rotary
from rest.streaming.cache import IDContextCache

#################################################################################
#                                Chunk geometry                                 #
#################################################################################


def chunk_latent_index(denoiser: DenoiserDiT, chunk_index: int) -> torch.Tensor:
    """(c,) absolute latent frame indices of chunk `chunk_index` (on the CPU)."""
    c = denoiser.config.chunk_latent_frames
    return chunk_index * c + torch.arange(c)


def chunk_audio_span(denoiser: DenoiserDiT, chunk_index: int) -> tuple[int, int]:
    """Video frames [start, stop) whose audio features chunk `chunk_index` uses: the frames its latent frames cover
    (latent frame 0 covers frame 0 alone, latent frame j >= 1 frames t*(j-1)+1 .. t*j) plus the look-ahead."""
    t, c = denoiser.config.temporal_compression, denoiser.config.chunk_latent_frames
    first, last = chunk_index * c, chunk_index * c + c - 1
    start = 0 if first == 0 else t * (first - 1) + 1
    return start, t * last + 1 + denoiser.config.audio_lookahead


def chunk_video_frames(denoiser: DenoiserDiT, chunk_index: int) -> int:
    """Video frames chunk `chunk_index` decodes to: 1 + t*(c-1) for the first chunk, t*c after it."""
    t, c = denoiser.config.temporal_compression, denoiser.config.chunk_latent_frames
    return 1 + t * (c - 1) if chunk_index == 0 else t * c


#################################################################################
#                           Denoising against the cache                         #
#################################################################################


@dataclass
class ChunkInputs:
    """What every denoiser pass over one chunk shares: its audio tokens and the rotary angles of the window."""

    audio_tokens: torch.Tensor  # (B, c, W, D)
    audio_valid: torch.Tensor  # (c, W) bool
    rope: Rotary  # the chunk's own c*n tokens
    rope_kv: Rotary  # the cache's visible tokens (sink + context, storage order)
    emotion: torch.Tensor | None  # (B,) labels or None


def prepare_chunk(
    denoiser: DenoiserDiT,
    cache: IDContextCache,
    audio: torch.Tensor,
    height: int,
    width: int,
    emotion: torch.Tensor | None = None,
) -> ChunkInputs:
    """Audio tokens and window positions for the cache's next chunk. audio: (B, Fa, audio_dim) features starting
    at `chunk_audio_span(denoiser, cache.chunks_written)[0]`."""
    _check_mode(denoiser)
    if not cache.has_sink:
        raise RuntimeError("the cache has no ID-Sink yet: call write_sink(denoiser, cache, portrait) first")
    chunk = cache.chunks_written
    start, _ = chunk_audio_span(denoiser, chunk)
    tokens, valid = denoiser.audio_context(audio, chunk_latent_index(denoiser, chunk), None, start)
    visible, current = cache.frame_positions()
    device = tokens.device
    return ChunkInputs(
        audio_tokens=tokens,
        audio_valid=valid,
        rope=denoiser.rotary(current.to(device), height, width),
        rope_kv=denoiser.rotary(visible.to(device), height, width),
        emotion=emotion,
    )


def _blocks(
    denoiser: DenoiserDiT,
    cache: IDContextCache,
    tokens: torch.Tensor,
    modulation: torch.Tensor,
    inputs: ChunkInputs,
    keep_kv: bool = False,
) -> tuple[torch.Tensor, list[KeyValue]]:
    """Run the chunk's tokens (B, c*n, D) through every block against the cache's keys/values of that layer.

    keep_kv: also return each layer's unrotated keys/values of the chunk (what the cache stores); the last block
    is then not run past them (its output is not needed).
    """
    own: list[KeyValue] = []
    last = len(denoiser.blocks) - 1
    for index, block in enumerate(denoiser.blocks):
        if keep_kv:
            own.append(block.self_attention_kv(tokens, modulation))
            if index == last:
                break
        args = (tokens, modulation, inputs.rope, inputs.audio_tokens, inputs.audio_valid)
        kv = cache.layer(index)
        if torch.is_grad_enabled() and denoiser.gradient_checkpointing:
            # The backward pass recomputes the block from its inputs: give it a copy of the cache's keys/values,
            # which later chunks overwrite in place (the ASD trainer writes chunks after each gradient pass).
            kv = KeyValue(kv.k.clone(), kv.v.clone())
            tokens = denoiser._gradient_checkpointing_func(block, *args, kv, inputs.rope_kv, None)
        else:
            tokens = block(*args, kv=kv, rope_kv=inputs.rope_kv)
    return tokens, own


def velocity(
    denoiser: DenoiserDiT, cache: IDContextCache, x: torch.Tensor, t: torch.Tensor, inputs: ChunkInputs
) -> torch.Tensor:
    """The velocity of the next chunk's latents x (B, C, c, h, w) at levels t (B, c), given the cache."""
    _, _, c, h, w = x.shape
    tokens = denoiser.patchify(x)  # (B, c*n, D)
    temb, modulation = denoiser.condition(t, inputs.emotion)  # (B, c, D), (B, c, 6, D)
    tokens, _ = _blocks(denoiser, cache, tokens, modulation, inputs)
    return denoiser.unpatchify(denoiser.final(tokens, temb), c, h, w)  # (B, C, c, h, w)


def chunk_velocity(
    denoiser: DenoiserDiT,
    cache: IDContextCache,
    x: torch.Tensor,
    t: torch.Tensor,
    audio: torch.Tensor,
    emotion: torch.Tensor | None = None,
) -> torch.Tensor:
    """One denoiser evaluation of the cache's next chunk (differentiable; the cache is only read).

    Args:
        x: (B, C, c, h, w) noisy latents of chunk `cache.chunks_written`.
        t: (B, c) their noise levels.
        audio: (B, Fa, audio_dim) features from `chunk_audio_span(denoiser, cache.chunks_written)[0]` on.
        emotion: (B,) labels or None.

    Returns:
        velocity (B, C, c, h, w).
    """
    _check_chunk(denoiser, cache, x)
    inputs = prepare_chunk(denoiser, cache, audio, x.shape[3], x.shape[4], emotion)
    return velocity(denoiser, cache, x, t, inputs)


@torch.no_grad()
def write_sink(
    denoiser: DenoiserDiT,
    cache: IDContextCache,
    portrait: torch.Tensor,
    emotion: torch.Tensor | None = None,
    null_portrait: bool = False,
    replace: bool = False,
) -> IDContextCache:
    """Write the ID-Sink: the portrait's keys/values at every layer, computed as the block-causal forward does
    (clean, t = 0, null audio, RoPE frame 0, attending only to itself). portrait: (B, C, 1, h, w) clean latents.

    null_portrait: write the learned null portrait instead; replace: overwrite a sink already written (together:
    the "no ID-Sink" ablation of rest/metrics/drift.py, where the portrait leaves the window like any chunk)."""
    _check_mode(denoiser)
    b, _, f, h, w = portrait.shape
    if f != 1:
        raise ValueError(f"the portrait is one latent frame (B, C, 1, h, w), got {tuple(portrait.shape)}")
    drop = torch.full((b,), null_portrait, dtype=torch.bool, device=portrait.device)
    tokens = denoiser.portrait_tokens(portrait, drop_portrait=drop)  # (B, n, D)
    _, modulation = denoiser.condition(portrait.new_zeros(b, 1, dtype=torch.float32), emotion)  # (B, 1, 6, D)
    audio_tokens, audio_valid = denoiser.null_audio_context(b)
    rope = denoiser.rotary(torch.tensor([PORTRAIT_ROPE_FRAME], device=portrait.device), h, w)
    per_layer = []
    for index, block in enumerate(denoiser.blocks):
        per_layer.append(block.self_attention_kv(tokens, modulation))
        if index < len(denoiser.blocks) - 1:
            tokens = block(tokens, modulation, rope, audio_tokens.to(tokens.dtype), audio_valid)
    cache.write_sink(per_layer, replace=replace)
    return cache


def _write_context(
    denoiser: DenoiserDiT,
    cache: IDContextCache,
    latents: torch.Tensor,
    inputs: ChunkInputs,
    context_timestep: float,
    context_noise: torch.Tensor | None,
) -> None:
    """The chunk's keys/values at the context timestep into the cache (module docstring)."""
    b, _, c = latents.shape[:3]
    x = latents
    if context_timestep > 0:
        if context_noise is None or context_noise.shape != latents.shape:
            raise ValueError(
                f"context_timestep {context_timestep} > 0 re-noises the chunk: pass context_noise of shape "
                f"{tuple(latents.shape)} (standard normal)"
            )
        x = ((1 - context_timestep) * latents.float() + context_timestep * context_noise.float()).to(latents.dtype)
    t = torch.full((b, c), float(context_timestep), device=latents.device)
    _, modulation = denoiser.condition(t, inputs.emotion)
    _, own = _blocks(denoiser, cache, denoiser.patchify(x), modulation, inputs, keep_kv=True)
    cache.append_chunk(own)


@torch.no_grad()
def write_chunk(
    denoiser: DenoiserDiT,
    cache: IDContextCache,
    latents: torch.Tensor,
    audio: torch.Tensor,
    *,
    context_timestep: float = 0.0,
    context_noise: torch.Tensor | None = None,
    emotion: torch.Tensor | None = None,
) -> IDContextCache:
    """Write known clean latents (B, C, c, h, w) as the cache's next chunk, without generating it (a given past:
    teacher forcing, video continuation). `rollout_chunk` ends with the same write."""
    _check_chunk(denoiser, cache, latents)
    dtype = next(denoiser.parameters()).dtype
    inputs = prepare_chunk(denoiser, cache, audio.to(dtype), latents.shape[3], latents.shape[4], emotion)
    _write_context(denoiser, cache, latents.to(dtype), inputs, context_timestep, context_noise)
    return cache


#################################################################################
#                                  The rollout                                  #
#################################################################################


@dataclass
class KnownLatents:
    """Latent values a generated chunk must take where `mask` is True, the rest generated around them (inpainting).

    After each Euler step to level s the masked entries are replaced by the known values at that level, on the
    chunk's own starting noise: (1 - s) * values + s * noise, so the last step (s = 0) leaves the values exactly and
    the denoiser's later passes see them at the level it expects (the replacement sampler of inpainting, as in
    RePaint, Lugmayr et al. 2022, without its resampling). The motion stream's gaze target is one
    (rest/pipelines/motion.py).
    """

    values: torch.Tensor  # clean latents, broadcastable to the chunk's (B, C, c, h, w)
    mask: torch.Tensor  # bool, broadcastable to the chunk's shape

    def impose(self, x: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The state x (B, C, c, h, w) at `level` with the known entries replaced."""
        values = self.values.to(x).expand_as(x)
        return torch.where(self.mask.to(x.device).expand_as(x), (1 - level) * values + level * noise, x)

    @staticmethod
    def stack(parts: list[KnownLatents | None], shapes: list[tuple[int, ...]]) -> KnownLatents | None:
        """Several streams' known latents (None: a stream without) for their chunks of `shapes`, as one batch."""
        if all(p is None for p in parts):
            return None
        values, masks = [], []
        for part, shape in zip(parts, shapes, strict=True):
            if part is None:
                values.append(torch.zeros(shape))
                masks.append(torch.zeros(shape, dtype=torch.bool))
            else:
                values.append(part.values.float().cpu().expand(shape))
                masks.append(part.mask.cpu().expand(shape))
        return KnownLatents(torch.cat(values), torch.cat(masks))


@torch.no_grad()
def rollout_chunk(
    denoiser: DenoiserDiT,
    cache: IDContextCache,
    noise: torch.Tensor,
    audio: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    context_timestep: float = 0.0,
    context_noise: torch.Tensor | None = None,
    emotion: torch.Tensor | None = None,
    states: list[torch.Tensor] | None = None,
    known: KnownLatents | None = None,
) -> tuple[torch.Tensor, IDContextCache]:
    """Generate the cache's next chunk and write it into the cache.

    Args:
        denoiser: a block_causal `DenoiserDiT` (the student).
        cache: the stream's cache, its sink written (`write_sink`); chunk `cache.chunks_written` is generated.
        noise: (B, C, c, h, w) standard normal, the chunk's starting point at t = sigmas[0].
        audio: (B, Fa, audio_dim) features from `chunk_audio_span(denoiser, cache.chunks_written)[0]` on.
        sigmas: (K + 1,) decreasing noise levels ending at 0 (`rest.diffusion.flow.flow_sigmas(K, shift)`).
        context_timestep: level of the pass that writes the chunk's keys/values (module docstring).
        context_noise: (B, C, c, h, w) standard normal that re-noises the context; needed when context_timestep > 0.
        emotion: (B,) labels or None.
        states: if a list is given, the Euler states x at sigmas[0], ..., sigmas[K] (float32, each (B, C, c, h, w))
            are appended to it (the ASD trainer trains the student on its own intermediate states).
        known: latents the chunk must take where `known.mask` is True (inpainting: `KnownLatents`); the chunk is
            generated around them and written to the cache with them, so later chunks continue from them.

    Returns:
        the chunk's clean latents (B, C, c, h, w) float32, and the cache (advanced by one chunk).
    """
    _check_chunk(denoiser, cache, noise)
    if sigmas.ndim != 1 or sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must be (K + 1,) levels ending at 0, e.g. flow_sigmas(K, shift); got {sigmas}")
    b, _, c, h, w = noise.shape
    dtype = next(denoiser.parameters()).dtype  # the state stays float32; the forward runs in the model's dtype
    inputs = prepare_chunk(denoiser, cache, audio.to(dtype), h, w, emotion)
    sigmas = sigmas.float().to(noise.device)
    x = noise.float()
    if states is not None:
        states.append(x)
    for i in range(sigmas.numel() - 1):
        v = velocity(denoiser, cache, x.to(dtype), sigmas[i].expand(b, c), inputs)
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])
        if known is not None:
            x = known.impose(x, noise.float(), sigmas[i + 1])
        if states is not None:
            states.append(x)
    _write_context(denoiser, cache, x.to(dtype), inputs, context_timestep, context_noise)
    return x, cache


def _check_mode(denoiser: DenoiserDiT) -> None:
    if denoiser.attention_mode != "block_causal":
        raise ValueError(
            f"streaming runs the denoiser chunk by chunk against a KV cache, which is its block_causal mode; this "
            f"denoiser is {denoiser.attention_mode!r}: call denoiser.set_attention_mode('block_causal')"
        )


def _check_chunk(denoiser: DenoiserDiT, cache: IDContextCache, x: torch.Tensor) -> None:
    c = denoiser.config.chunk_latent_frames
    if x.ndim != 5 or x.shape[1] != denoiser.config.in_channels or x.shape[2] != c:
        raise ValueError(
            f"a chunk is (B, {denoiser.config.in_channels}, chunk_latent_frames={c}, h, w), got {tuple(x.shape)}"
        )
    if x.shape[0] != cache.batch_size or denoiser.tokens_per_frame(x.shape[3], x.shape[4]) != cache.tokens_per_frame:
        raise ValueError(
            f"this cache is for batch {cache.batch_size} and {cache.tokens_per_frame} tokens per latent frame; got "
            f"latents {tuple(x.shape)}; create it with IDContextCache.for_model(denoiser, B, h, w)"
        )
    if (cache.chunk_latent_frames, cache.context_chunks, cache.num_layers) != (
        c,
        denoiser.config.context_chunks,
        denoiser.config.depth,
    ):
        raise ValueError("this cache was made for another denoiser (chunk, context or depth differ)")


__all__ = [
    "ChunkInputs",
    "KnownLatents",
    "chunk_audio_span",
    "chunk_latent_index",
    "chunk_velocity",
    "chunk_video_frames",
    "prepare_chunk",
    "rollout_chunk",
    "velocity",
    "write_chunk",
    "write_sink",
]
