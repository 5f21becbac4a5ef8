"""Session-level streaming helper: audio features in, video frames out, chunk by chunk.

`StreamingGenerator` ties the rollout (rest/streaming/rollout.py) to the VAE's streaming decoder: features are
buffered until the next chunk's audio window is complete, then the chunk is generated (`rollout_chunk`) and its
frames decoded (`CausalVideoVAE.decode_chunk`). All per-stream state lives in a `StreamState`:

    gen = StreamingGenerator(student, vae, sigmas=flow_sigmas(K, shift))
    state = gen.init_state(portrait_latents, seed=0)        # writes the ID-Sink
    for features in feature_chunks:                          # e.g. from AudioEncoder.step
        frames, state = gen.step(features, state)            # (B, 3, F', H, W), F' = 0 or whole chunks
    frames, state = gen.flush(state)                         # the chunks the look-ahead was waiting for

The rest/pipelines issue wraps this with the audio encoder and MP4/WebSocket I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rest.models.dit import DenoiserDiT
from rest.models.vae import CausalCache, CausalVideoVAE
from rest.streaming.cache import IDContextCache
from rest.streaming.rollout import chunk_audio_span, rollout_chunk, write_sink


@dataclass
class StreamState:
    """Everything one stream carries between chunks; its size is bounded whatever the stream length."""

    cache: IDContextCache  # the denoiser's ID-Sink + Context-Cache
    decode_cache: CausalCache  # the VAE decoder's causal state
    generator: torch.Generator  # draws each chunk's starting noise (CPU, so a seed means the same on any device)
    seed: int
    features: torch.Tensor  # (B, P, audio_dim) buffered features, P <= chunk frames + look-ahead + one push
    features_start: int  # video frame of features[:, 0]
    latent_shape: tuple[int, int, int, int]  # (C, c, h, w) of a chunk
    emotion: torch.Tensor | None  # (B,) labels for the whole stream, or None
    finished: bool = False  # set by `flush`

    @property
    def chunks_done(self) -> int:
        return self.cache.chunks_written

    def reset(self) -> None:
        """Start a new stream of the same portrait (the sink is kept; noise restarts from the seed)."""
        self.cache.reset(keep_sink=True)
        self.decode_cache.reset()
        self.generator.manual_seed(self.seed)
        self.features = self.features[:, :0]
        self.features_start = 0
        self.finished = False


class StreamingGenerator:
    """The student denoiser and the VAE decoder run chunk by chunk over a stream of audio features.

    Args:
        denoiser: a block_causal `DenoiserDiT` (the distilled student).
        vae: the VAE whose latents the denoiser generates (its decoder streams the frames).
        sigmas: (K + 1,) the student's noise levels, `flow_sigmas(K, shift)`.
        context_timestep: level at which chunks are written to the cache (as the student was trained).
    """

    def __init__(
        self, denoiser: DenoiserDiT, vae: CausalVideoVAE, sigmas: torch.Tensor, context_timestep: float = 0.0
    ):
        if vae.temporal_compression != denoiser.config.temporal_compression:
            raise ValueError(
                f"the VAE compresses time by {vae.temporal_compression}, the denoiser expects "
                f"{denoiser.config.temporal_compression}; use the VAE the denoiser was trained with"
            )
        self.denoiser = denoiser
        self.vae = vae
        self.sigmas = sigmas
        self.context_timestep = context_timestep

    @torch.no_grad()
    def init_state(self, portrait: torch.Tensor, seed: int = 0, emotion: torch.Tensor | None = None) -> StreamState:
        """A new stream for portrait latents (B, C, 1, h, w) (normalised, as the denoiser sees them)."""
        b, c, _, h, w = portrait.shape
        device = next(self.denoiser.parameters()).device
        cache = IDContextCache.for_model(self.denoiser, b, h, w)
        write_sink(self.denoiser, cache, portrait.to(device=device, dtype=cache.keys.dtype), emotion)
        return StreamState(
            cache=cache,
            decode_cache=self.vae.init_cache("decode"),
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
            features=torch.zeros(b, 0, self.denoiser.config.audio_dim, device=device),
            features_start=0,
            latent_shape=(c, self.denoiser.config.chunk_latent_frames, h, w),
            emotion=emotion,
        )

    # ---------------------------------------------------------------- pieces
    def push(self, features: torch.Tensor, state: StreamState) -> StreamState:
        """Buffer features (B, k, audio_dim), the next k video frames' (any k >= 0)."""
        if state.finished:
            raise RuntimeError("this stream was flushed; call state.reset() to start a new one")
        if features.ndim != 3 or features.shape[0] != state.features.shape[0]:
            raise ValueError(f"features must be (B={state.features.shape[0]}, k, D), got {tuple(features.shape)}")
        state.features = torch.cat([state.features, features.to(state.features)], dim=1)
        return state

    def ready(self, state: StreamState, final: bool = False) -> bool:
        """Whether the buffered features cover the next chunk (with its look-ahead, unless `final`)."""
        start, stop = chunk_audio_span(self.denoiser, state.chunks_done)
        if final:  # the end of the stream: the frames the chunk covers suffice, missing look-ahead is masked
            stop -= self.denoiser.config.audio_lookahead
        return state.features_start + state.features.shape[1] >= stop

    def next_latents(self, state: StreamState, final: bool = False) -> tuple[torch.Tensor, StreamState]:
        """Generate the next chunk from the buffered features: clean latents (B, C, c, h, w), float32.

        final: the stream has ended, so the chunk's missing look-ahead frames are masked instead of awaited."""
        chunk = state.chunks_done
        if not self.ready(state, final):
            raise RuntimeError(
                f"the buffered audio features do not cover chunk {chunk}'s window yet (frames "
                f"{chunk_audio_span(self.denoiser, chunk)}); push more features, or flush() at the end of the stream"
            )
        start, stop = chunk_audio_span(self.denoiser, chunk)
        audio = state.features[:, start - state.features_start : stop - state.features_start]
        b = state.features.shape[0]
        device = state.features.device
        noise = torch.randn(b, *state.latent_shape, generator=state.generator).to(device)
        context_noise = None
        if self.context_timestep > 0:
            context_noise = torch.randn(b, *state.latent_shape, generator=state.generator).to(device)
        latents, state.cache = rollout_chunk(
            self.denoiser,
            state.cache,
            noise,
            audio,
            self.sigmas,
            context_timestep=self.context_timestep,
            context_noise=context_noise,
            emotion=state.emotion,
        )
        # Keep only what the next chunk needs (its window starts after this chunk's last covered frame).
        next_start, _ = chunk_audio_span(self.denoiser, chunk + 1)
        state.features = state.features[:, next_start - state.features_start :]
        state.features_start = next_start
        return latents, state

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState]:
        """A chunk's frames: (B, 3, F', H, W) in [-1, 1], F' = 1 + t*(c-1) for the first chunk, t*c after it."""
        dtype = next(self.vae.parameters()).dtype
        z = self.vae.denormalize_latents(latents.to(dtype))
        out, state.decode_cache = self.vae.decode_chunk(z, state.decode_cache)
        return out.sample.float().clamp(-1, 1), state

    # ---------------------------------------------------------------- stream
    @torch.no_grad()
    def step(self, features: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, StreamState]:
        """Push features (B, k, audio_dim); generate and decode the chunks they complete -> (B, 3, F', H, W)."""
        state = self.push(features, state)
        return self._run(state, final=False)

    @torch.no_grad()
    def flush(self, state: StreamState) -> tuple[torch.Tensor, StreamState]:
        """End of the stream: the chunks whose frames are all covered (their missing look-ahead masked). A trailing
        partial chunk is dropped, as offline sampling rounds a clip down to whole latent frames."""
        frames, state = self._run(state, final=True)
        state.finished = True
        return frames, state

    def _run(self, state: StreamState, final: bool) -> tuple[torch.Tensor, StreamState]:
        frames = []
        while self.ready(state, final):
            latents, state = self.next_latents(state, final)
            out, state = self.decode(latents, state)
            frames.append(out)
        if not frames:
            b, (_, _, h, w) = state.features.shape[0], state.latent_shape
            s = self.vae.spatial_compression
            channels = self.vae.config.in_channels
            return torch.zeros(b, channels, 0, h * s, w * s, device=state.features.device), state
        return torch.cat(frames, dim=2), state


__all__ = ["StreamState", "StreamingGenerator"]
