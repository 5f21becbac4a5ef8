"""ID-Context cache: the per-stream key/value memory of the streaming denoiser (docs/design.md, component 5).

Layout. For every DiT layer the cache holds one preallocated buffer of keys and one of values,
`(depth, B, H, T, Dh)` with `T = n * (1 + context_chunks * chunk_latent_frames)` tokens (n = tokens per latent
frame), laid out as

    [ ID-Sink: the portrait's n tokens | ring slot 0 | ring slot 1 | ... | ring slot context_chunks - 1 ]

Each ring slot holds the tokens of one generated chunk (`chunk_latent_frames * n`). The sink is written once per
stream (`write_sink`); chunk `J` goes to slot `J % context_chunks` (`append_chunk`), overwriting the chunk that
fell out of the window. Nothing is ever allocated after construction: memory and per-chunk attention cost are
the same for the 10th and the 10,000th chunk.

Positions. Keys are stored *unrotated* (the output of `SelfAttention.key_value`) and rotated at use with
window-relative RoPE frame positions (`frame_positions`): the sink sits at `PORTRAIT_ROPE_FRAME` (0) forever, and
the visible window is numbered as if it were the start of a stream, its oldest chunk at `video_rope_start` (1):

    chunk J with m = min(J, context_chunks) chunks before it in the window:
        context chunk J - m + i  ->  frames video_rope_start + i * c + (0 .. c - 1)      (i = 0 .. m - 1)
        current chunk J          ->  frames video_rope_start + m * c + (0 .. c - 1)

so every position stays below `video_rope_start + (context_chunks + 1) * c` however long the stream runs, and in
steady state the window looks exactly like chunk `context_chunks` of a clip that starts at the stream start
(the layout the teacher was trained on). For the first `context_chunks + 1` chunks these are the absolute
positions, so streaming equals the full block-causal forward there (tests/test_streaming.py).

Since attention is invariant to the order of keys, the ring is used in storage order (no roll, no copy): the
visible keys of a layer are a view `buffer[:, :, :, :n + m * c * n]` (slots fill 0, 1, ... before the ring wraps),
and `frame_positions` gives each slot the position of the chunk it holds.

All in-place writes happen inside this class's methods; nothing else holds stream state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rest.models.dit import PORTRAIT_ROPE_FRAME, DenoiserDiT
from rest.models.layers import KeyValue


class IDContextCache:
    """Preallocated per-layer keys/values of the ID-Sink plus a ring buffer of the last `context_chunks` chunks.

    Create it with `IDContextCache.for_model(denoiser, batch_size, height, width)`; `reset()` starts a new stream.
    State: `has_sink` (the portrait has been written) and `chunks_written` (= the index J of the next chunk).
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        tokens_per_frame: int,
        chunk_latent_frames: int,
        context_chunks: int,
        video_rope_start: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if chunk_latent_frames < 1 or context_chunks < 0 or num_layers < 1 or tokens_per_frame < 1:
            raise ValueError(
                f"need num_layers, tokens_per_frame, chunk_latent_frames >= 1 and context_chunks >= 0, got "
                f"{num_layers}, {tokens_per_frame}, {chunk_latent_frames}, {context_chunks}"
            )
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.tokens_per_frame = tokens_per_frame  # n
        self.chunk_latent_frames = chunk_latent_frames  # c
        self.context_chunks = context_chunks
        self.video_rope_start = video_rope_start
        self.chunk_tokens = chunk_latent_frames * tokens_per_frame  # tokens of one ring slot
        length = tokens_per_frame + context_chunks * self.chunk_tokens  # T: sink + ring
        shape = (num_layers, batch_size, num_heads, length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # (depth, B, H, T, Dh), unrotated
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_chunk = [-1] * context_chunks  # absolute index of the chunk each ring slot holds; -1 = empty
        self.has_sink = False
        self.chunks_written = 0
        # m: chunks of context the next chunk sees, min(chunks_written, context_chunks). An attribute, not computed
        # from chunks_written, so a compiled chunk step sees the same value every chunk once the window is full.
        self.num_context = 0

    @classmethod
    def for_model(
        cls,
        denoiser: DenoiserDiT,
        batch_size: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> IDContextCache:
        """A cache for `denoiser`'s streaming window on an h x w latent grid (device / dtype default to the
        denoiser's)."""
        cfg = denoiser.config
        param = next(denoiser.parameters())
        return cls(
            num_layers=cfg.depth,
            batch_size=batch_size,
            num_heads=cfg.num_heads,
            head_dim=cfg.width // cfg.num_heads,
            tokens_per_frame=denoiser.tokens_per_frame(height, width),
            chunk_latent_frames=cfg.chunk_latent_frames,
            context_chunks=cfg.context_chunks,
            video_rope_start=cfg.video_rope_start,
            device=param.device if device is None else device,
            dtype=param.dtype if dtype is None else dtype,
        )

    # ---------------------------------------------------------------- state
    def reset(self, keep_sink: bool = False) -> None:
        """Start a new stream: forget every chunk, and the sink unless `keep_sink` (a new stream of the same
        portrait). The buffers are kept and overwritten later."""
        ring = slice(self.tokens_per_frame, None)
        self.keys[:, :, :, ring].zero_()
        self.values[:, :, :, ring].zero_()
        if not keep_sink:
            self.keys.zero_()
            self.values.zero_()
            self.has_sink = False
        self.slot_chunk = [-1] * self.context_chunks
        self.chunks_written = 0
        self.num_context = 0

    @property
    def visible_length(self) -> int:
        """Tokens the next chunk attends to besides its own: the sink plus m chunks."""
        return self.tokens_per_frame + self.num_context * self.chunk_tokens

    @property
    def nbytes(self) -> int:
        """Memory of the preallocated buffers (constant for the life of the cache)."""
        return self.keys.nbytes + self.values.nbytes

    # ---------------------------------------------------------------- writes
    def write_sink(self, per_layer: Sequence[KeyValue], replace: bool = False) -> None:
        """Store the portrait's unrotated keys/values, one (B, H, n, Dh) pair per layer; once per stream, unless
        `replace` (overwrite the sink mid-stream: the "no ID-Sink" ablation of rest/metrics/drift.py)."""
        if self.has_sink and not replace:
            raise RuntimeError("the ID-Sink of this stream is already written; call reset() to start a new stream")
        self._check(per_layer, self.tokens_per_frame, "sink")
        for layer, kv in enumerate(per_layer):
            self.keys[layer, :, :, : self.tokens_per_frame].copy_(kv.k.detach())
            self.values[layer, :, :, : self.tokens_per_frame].copy_(kv.v.detach())
        self.has_sink = True

    def append_chunk(self, per_layer: Sequence[KeyValue]) -> None:
        """Store chunk `chunks_written`'s unrotated keys/values, one (B, H, c*n, Dh) pair per layer, in its ring slot
        (evicting the chunk `context_chunks` before it), and advance to the next chunk."""
        if not self.has_sink:
            raise RuntimeError("write the ID-Sink (the portrait) before the first chunk")
        self._check(per_layer, self.chunk_tokens, "chunk")
        if self.context_chunks > 0:
            slot = self.chunks_written % self.context_chunks
            start = self.tokens_per_frame + slot * self.chunk_tokens
            for layer, kv in enumerate(per_layer):
                self.keys[layer, :, :, start : start + self.chunk_tokens].copy_(kv.k.detach())
                self.values[layer, :, :, start : start + self.chunk_tokens].copy_(kv.v.detach())
            self.slot_chunk[slot] = self.chunks_written
        self.chunks_written += 1
        self.num_context = min(self.chunks_written, self.context_chunks)

    def _check(self, per_layer: Sequence[KeyValue], tokens: int, what: str) -> None:
        if len(per_layer) != self.num_layers:
            raise ValueError(f"{what}: got keys/values of {len(per_layer)} layers, this cache has {self.num_layers}")
        expected = (*self.keys.shape[1:3], tokens, self.keys.shape[4])
        for kv in per_layer:
            if tuple(kv.k.shape) != expected or tuple(kv.v.shape) != expected:
                raise ValueError(f"{what}: keys/values must be (B, H, L, Dh) = {expected}, got {tuple(kv.k.shape)}")

    # ---------------------------------------------------------------- reads
    def layer(self, index: int) -> KeyValue:
        """Layer `index`'s visible keys/values (sink + the m context chunks, in storage order): views, no copy."""
        length = self.visible_length
        return KeyValue(self.keys[index, :, :, :length], self.values[index, :, :, :length])

    def frame_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Window-relative RoPE frame positions (module docstring) for the next chunk.

        Returns:
            visible (1 + m*c,) long: one position per latent frame of `layer()`'s tokens, in storage order (the
                sink first, then the slots);
            current (c,) long: the next chunk's latent frames.
        """
        c, m = self.chunk_latent_frames, self.num_context
        first = self.chunks_written - m  # oldest chunk in the window
        frame = torch.arange(c)
        parts = [torch.tensor([PORTRAIT_ROPE_FRAME])]
        for slot in range(m):
            parts.append(self.video_rope_start + (self.slot_chunk[slot] - first) * c + frame)
        current = self.video_rope_start + m * c + frame
        return torch.cat(parts), current

    def __repr__(self) -> str:
        return (
            f"IDContextCache(layers={self.num_layers}, batch={self.batch_size}, tokens/frame={self.tokens_per_frame}, "
            f"chunk={self.chunk_latent_frames}, context={self.context_chunks}, chunks_written={self.chunks_written}, "
            f"has_sink={self.has_sink}, {self.nbytes / 2**20:.2f} MiB)"
        )


__all__ = ["IDContextCache"]
