"""Batched streams: the next chunk of many live streams in one rollout and one VAE decode.

A server with N live streams would otherwise run N small forward passes side by side, each too small to use the
machine. `step_sessions(sessions)` generates the next chunk of every given `StreamingSession` (each must have one
`pending()`) and returns each stream's frames, as `session.decode(session.next_latents(...))` would alone:

    for session in live:                     # audio arrives: encode and buffer it, no generation yet
        session.buffer_features(session.encode_audio(samples))
    ready = [s for s in live if s.pending()]
    for session, frames in zip(ready, step_sessions(ready)):
        ...                                  # (B, 3, F', H, W) in [-1, 1] per session

Streams stay independent objects: they join and leave between steps, and differ in portrait, seed, emotion and
progress. A step groups the streams whose chunk has the same shape of computation, and runs each group batched:

- rollout groups: same denoiser, noise levels, context timestep and latent shape; the same number of context
  chunks m in the window, and all at their first chunk or all past it (their audio windows and RoPE positions are
  then the same relative to each stream's start, `rest/streaming/cache.py`); the same audio window length (a
  stream's last chunk may lack its look-ahead); emotion labels given by all or none;
- decode groups: same VAE, and decoder caches at the same stage (every slot empty, or every slot filled).

`CacheBatch` reads the group's caches as one: it copies each stream's visible keys/values once per chunk in window
order (the sink, then the context chunks oldest first; ring slots of different streams are at different phases),
and `append_chunk` hands each stream its own rows. Each stream draws its noise from its own generator, so a
stream's frames do not depend on who it was batched with: they equal running it alone up to float rounding of the
larger matrix products (tests/test_batch.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rest.models.dit import PORTRAIT_ROPE_FRAME
from rest.models.layers import KeyValue
from rest.models.vae import CausalCache
from rest.streaming.cache import IDContextCache
from rest.streaming.rollout import KnownLatents, rollout_chunk
from rest.streaming.session import StreamingSession


class CacheBatch:
    """Several streams' ID-Context caches read as one batch for one chunk (module docstring).

    All caches have the same geometry and the same number of context chunks `m`; the visible keys/values are
    copied at construction in window order, so `layer(i)` is (depth, sum B, H, n + m*c*n, Dh) and `frame_positions`
    are those of a window whose oldest chunk is first. `append_chunk` splits the chunk's keys/values by stream.
    """

    def __init__(self, caches: Sequence[IDContextCache]):
        if not caches:
            raise ValueError("CacheBatch needs at least one cache")
        first = caches[0]
        geometry = lambda c: (  # noqa: E731
            c.num_layers,
            c.keys.shape[2],
            c.keys.shape[4],
            c.tokens_per_frame,
            c.chunk_latent_frames,
            c.context_chunks,
            c.video_rope_start,
            c.num_context,
            c.chunks_written == 0,
            c.keys.dtype,
            c.keys.device,
        )
        for cache in caches:
            if geometry(cache) != geometry(first):
                raise ValueError("batched caches must share their geometry, context length and stage (module docs)")
            if not cache.has_sink:
                raise RuntimeError("every batched cache needs its ID-Sink written")
        self.caches = list(caches)
        self.num_layers = first.num_layers
        self.tokens_per_frame = first.tokens_per_frame
        self.chunk_latent_frames = first.chunk_latent_frames
        self.context_chunks = first.context_chunks
        self.video_rope_start = first.video_rope_start
        self.chunk_tokens = first.chunk_tokens
        self.chunks_written = first.chunks_written  # the audio windows are the same relative to each stream's start
        self.num_context = first.num_context
        self.has_sink = True
        self.sizes = [cache.batch_size for cache in caches]
        self.batch_size = sum(self.sizes)
        keys, values = zip(*(self._window(cache) for cache in caches), strict=True)
        self.keys, self.values = torch.cat(keys, dim=1), torch.cat(values, dim=1)  # (depth, B, H, L, Dh)

    def _window(self, cache: IDContextCache) -> tuple[torch.Tensor, torch.Tensor]:
        """A cache's visible keys and values in window order: the sink, then its context chunks oldest first."""
        n, width = cache.tokens_per_frame, cache.chunk_tokens
        slots = sorted((chunk, slot) for slot, chunk in enumerate(cache.slot_chunk) if chunk >= 0)
        pieces = [slice(0, n)] + [slice(n + slot * width, n + (slot + 1) * width) for _, slot in slots]
        if len(pieces) - 1 != cache.num_context:
            raise RuntimeError(f"cache holds {len(pieces) - 1} chunks, expected {cache.num_context}")
        keys = torch.cat([cache.keys[:, :, :, p] for p in pieces], dim=3)
        values = torch.cat([cache.values[:, :, :, p] for p in pieces], dim=3)
        return keys, values

    def layer(self, index: int) -> KeyValue:
        return KeyValue(self.keys[index], self.values[index])

    def frame_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE frame positions of the window (oldest chunk first) and of the next chunk, as
        `IDContextCache.frame_positions` gives them for a cache whose slots are in order."""
        c, m = self.chunk_latent_frames, self.num_context
        frame = torch.arange(c)
        visible = [torch.tensor([PORTRAIT_ROPE_FRAME])]
        visible += [self.video_rope_start + i * c + frame for i in range(m)]
        return torch.cat(visible), self.video_rope_start + m * c + frame

    def append_chunk(self, per_layer: Sequence[KeyValue]) -> None:
        """Each stream's rows of the chunk's keys/values into its own cache."""
        parts = [(kv.k.split(self.sizes), kv.v.split(self.sizes)) for kv in per_layer]
        for i, cache in enumerate(self.caches):
            cache.append_chunk([KeyValue(k[i], v[i]) for k, v in parts])
        self.chunks_written += 1


def _rollout_key(session: StreamingSession) -> tuple:
    cache = session.cache
    return (
        id(session.denoiser),
        tuple(session.sigmas.tolist()),
        session.context_timestep,
        session.latent_shape,
        cache.num_context,
        cache.chunks_written == 0,
        session.next_audio().shape[1],  # the audio window's length
        session.emotion is None,
        session.features.device,
    )


def _decode_key(session: StreamingSession) -> tuple:
    return (id(session.vae), tuple(type(slot).__name__ for slot in session.decode_cache.slots))


def _groups(sessions: Sequence[StreamingSession], key) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for index, session in enumerate(sessions):
        groups.setdefault(key(session), []).append(index)
    return list(groups.values())


@torch.no_grad()
def step_sessions(sessions: Sequence[StreamingSession]) -> list[torch.Tensor]:
    """Generate and decode the next chunk of each stream, batched (module docstring); each session's frames
    (B, 3, F', H, W) in [-1, 1], in the order given. Every session must have a chunk `pending()`."""
    if len({id(s) for s in sessions}) != len(sessions):
        raise ValueError("a stream appears twice: a step generates one chunk per stream")
    for session in sessions:
        if not session.pending():
            raise RuntimeError(
                f"a stream has no chunk ready (chunk {session.chunks_done}): step only the sessions whose "
                "pending() is True"
            )
    latents: list[torch.Tensor | None] = [None] * len(sessions)
    for group in _groups(sessions, _rollout_key):
        members = [sessions[i] for i in group]
        draws = [s.chunk_inputs(final=s.ending) for s in members]
        lead = members[0]
        cache = lead.cache if len(members) == 1 else CacheBatch([s.cache for s in members])
        context_noise = None
        if lead.context_timestep > 0:
            context_noise = torch.cat([d.context_noise for d in draws])
        emotion = None if lead.emotion is None else torch.cat([s.emotion for s in members])
        out, _ = rollout_chunk(
            lead.denoiser,
            cache,
            torch.cat([d.noise for d in draws]),
            torch.cat([d.audio for d in draws]),
            lead.sigmas,
            context_timestep=lead.context_timestep,
            context_noise=context_noise,
            emotion=emotion,
            known=KnownLatents.stack([d.known for d in draws], [tuple(d.noise.shape) for d in draws]),
        )
        for i, part in zip(group, out.split([s.cache.batch_size for s in members]), strict=True):
            latents[i] = part

    frames: list[torch.Tensor | None] = [None] * len(sessions)
    for group in _groups(sessions, _decode_key):
        members = [sessions[i] for i in group]
        vae = members[0].vae
        dtype = next(vae.parameters()).dtype
        z = vae.denormalize_latents(torch.cat([latents[i] for i in group]).to(dtype))
        stacked = _stack_caches([s.decode_cache for s in members])
        out, stacked = vae.decode_chunk(z, stacked)
        sizes = [s.cache.batch_size for s in members]
        _split_cache(stacked, [s.decode_cache for s in members], sizes, z.shape[2], out.sample.shape[2])
        for i, session, part in zip(group, members, out.sample.split(sizes), strict=True):
            frames[i] = session.take_frames(part)
    return frames


def _stack_caches(caches: Sequence[CausalCache]) -> CausalCache:
    """One decoder cache for the batch: each slot's tensors concatenated along the batch."""
    if len(caches) == 1:
        return caches[0]
    slots = []
    for values in zip(*(c.slots for c in caches), strict=True):
        first = values[0]
        slots.append(torch.cat(values) if isinstance(first, torch.Tensor) else first)
    return CausalCache(kind=caches[0].kind, slots=slots)


def _split_cache(
    stacked: CausalCache, caches: Sequence[CausalCache], sizes: list[int], latent_frames: int, frames: int
) -> None:
    """Hand each stream its rows of the batch's decoder cache, and count the chunk in each."""
    if len(caches) == 1:
        return
    for index, slot in enumerate(stacked.slots):
        parts = slot.split(sizes) if isinstance(slot, torch.Tensor) else [slot] * len(caches)
        for cache, part in zip(caches, parts, strict=True):
            cache.slots[index] = part
    for cache in caches:
        cache.frames_in += latent_frames
        cache.frames_out += frames


__all__ = ["CacheBatch", "step_sessions"]
