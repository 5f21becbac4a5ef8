"""The streaming session: audio samples in, video frames out, chunk by chunk, and `finish()` at the end.

Every stream in REST runs through `StreamingSession`: the pipeline's live session (rest/pipelines, and with it
`rest generate` and `rest serve`), the drift and held-out studies (rest/metrics) and `rest bench stream`.

    session = StreamingSession(denoiser, vae, portrait_latents, sigmas, audio_encoder=encoder, seed=0)
    for samples in pieces:                      # (B, n) float at the encoder's sample rate, any n >= 0
        frames = session.push_audio(samples)    # (B, 3, F', H, W) in [-1, 1]; F' = 0 or whole chunks
    frames = session.finish()                   # the rest of the stream

A push runs the audio encoder's streaming step (one feature per video frame, once its look-ahead has arrived); the
features are buffered until the next chunk's audio window is complete (its frames + the DiT's look-ahead,
`chunk_audio_span`); then the chunk is generated (`rollout_chunk`, against the ID-Context cache) and its frames are
decoded by the VAE's streaming decoder. The session holds all of a stream's state (the cache, the decoder's cache,
the audio encoder's state, the noise generator and the feature buffer); its size is bounded whatever the stream's
length. A seed fixes the frames, however the audio is split into pushes.

End of stream, fixed at construction (`end`):
- "duration" (default): `finish` pads the audio with silence to whole chunks and cuts the frames past its duration,
  so a stream of N samples gets round(N * fps / sample_rate) frames, as `rest generate` and the server give;
- "whole_chunks": `finish` ends with the last chunk whose frames the audio covers (its missing look-ahead masked);
  a trailing partial chunk is dropped, as offline sampling rounds a clip down to whole latent frames (1 + t*c*k
  frames, the count the held-out study compares with the teacher's).

Many streams at once: `buffer_features(encode_audio(samples))` only buffers, `end_input()` ends the audio, and
`rest.streaming.batch.step_sessions(sessions)` runs the next chunk of every session that has one `pending()` in one
batched rollout and decode (what `rest serve` does); each stream's frames equal its frames alone.

What the studies vary is an option here, not another copy of this loop: precomputed features (`push_features`,
e.g. the encoder's whole-clip forward, in a session without `audio_encoder`), the steps and levels (`sigmas`), the
context's re-noise level (`context_timestep`), the starting noise's scale (`noise_scale`), latents the chunks must
take (`known`, inpainting: `rest.streaming.rollout.KnownLatents`), the cache's size (the denoiser's
`context_chunks`) and the sink (`session.cache` is the stream's IDContextCache: `write_sink(..., replace=True)` swaps
the portrait's keys/values, the drift study's no-sink ablation). `rest bench stream` times the pieces of a chunk:
`encode_audio`, `buffer_features`, `next_latents`, `decode`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.vae import CausalVideoVAE
from rest.streaming.cache import IDContextCache
from rest.streaming.rollout import KnownLatents, chunk_audio_span, rollout_chunk, write_sink

ENDS = ("duration", "whole_chunks")


class ChunkDraw(NamedTuple):
    """A stream's inputs to its next chunk's rollout (`StreamingSession.chunk_inputs`)."""

    audio: torch.Tensor  # (B, Fa, audio_dim): the chunk's audio window (shorter at the end of a stream)
    noise: torch.Tensor  # (B, C, c, h, w) the starting point
    context_noise: torch.Tensor | None  # (B, C, c, h, w) for the context re-noise, when context_timestep > 0
    known: KnownLatents | None = None  # what the chunk must take (`StreamingSession.known`)


class StreamingSession:
    """One stream of a portrait: the student denoiser, the VAE decoder and the audio encoder run chunk by chunk.

    Args:
        denoiser: a block_causal `DenoiserDiT` (the distilled student); its `context_chunks` sizes the cache.
        vae: the VAE whose latents the denoiser generates (its decoder streams the frames).
        portrait: (B, C, 1, h, w) portrait latents, normalised as the denoiser sees them; written as the ID-Sink.
        sigmas: (K + 1,) the student's noise levels, `flow_sigmas(K, shift)`.
        audio_encoder: turns pushed samples into features; None for a session fed features (`push_features`).
        context_timestep: level at which chunks are written to the cache (as the student was trained).
        seed: draws each chunk's starting noise (on the CPU, so a seed means the same on any device).
        noise_scale: the starting noise's scale, a number or one per latent channel (C,): the sampling temperature.
            1 is what the student was trained on; below 1 draws closer to its average (the motion model's export
            sets it per rig parameter, rest/pipelines/motion.py).
        emotion: (B,) labels for the whole stream, or None.
        end: "duration" or "whole_chunks", what `finish` returns (module docstring).
    """

    def __init__(
        self,
        denoiser: DenoiserDiT,
        vae: CausalVideoVAE,
        portrait: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        audio_encoder: AudioEncoder | None = None,
        context_timestep: float = 0.0,
        seed: int = 0,
        emotion: torch.Tensor | None = None,
        end: str = "duration",
        noise_scale: float | torch.Tensor = 1.0,
    ):
        if vae.temporal_compression != denoiser.config.temporal_compression:
            raise ValueError(
                f"the VAE compresses time by {vae.temporal_compression}, the denoiser expects "
                f"{denoiser.config.temporal_compression}; use the VAE the denoiser was trained with"
            )
        if end not in ENDS:
            raise ValueError(f"end must be one of {ENDS}, got {end!r}")
        if end == "duration" and audio_encoder is None:
            raise ValueError(
                "end='duration' pads the audio with silence, which needs the audio encoder: pass audio_encoder, or "
                "end='whole_chunks' for a session fed features"
            )
        self.denoiser, self.vae, self.audio_encoder = denoiser, vae, audio_encoder
        self.sigmas = sigmas
        self.context_timestep = context_timestep
        self.seed = seed
        self.emotion = emotion
        self.end = end
        self.noise_scale = torch.as_tensor(noise_scale, dtype=torch.float32).cpu().clone()  # the noise is on the CPU
        if self.noise_scale.ndim > 1 or self.noise_scale.numel() not in (1, portrait.shape[1]):
            raise ValueError(f"noise_scale is a number or one per latent channel ({portrait.shape[1]})")
        if bool((self.noise_scale < 0).any()):
            raise ValueError("noise_scale must be >= 0")
        self.noise_scale = self.noise_scale.view(1, -1, 1, 1, 1)
        # Latents the chunks must take (inpainting): one KnownLatents for every later chunk, or a function of the chunk
        # index giving each chunk's (or None); None: none.
        self.known: KnownLatents | Callable[[int], KnownLatents | None] | None = None

        b, c, _, h, w = portrait.shape
        device = next(denoiser.parameters()).device
        self.cache = IDContextCache.for_model(denoiser, b, h, w)  # the denoiser's ID-Sink + Context-Cache
        write_sink(denoiser, self.cache, portrait.to(device=device, dtype=self.cache.keys.dtype), emotion)
        self.decode_cache = vae.init_cache("decode")  # the VAE decoder's causal state
        self.audio_state = None if audio_encoder is None else audio_encoder.init_state(b)
        self.noise = torch.Generator().manual_seed(seed)  # each chunk's starting noise (and context noise)
        self.latent_shape = (c, denoiser.config.chunk_latent_frames, h, w)  # (C, c, h, w) of a chunk
        self.features = torch.zeros(b, 0, denoiser.config.audio_dim, device=device)  # (B, P, D) buffered
        self.features_start = 0  # video frame of features[:, 0]
        self.samples_in = 0  # audio samples pushed (not the silence `finish` adds)
        self.frames_out = 0  # video frames returned; after `finish`, the stream's length
        self.ending = False  # end_input() was called: no more audio
        self.end_frame = 0  # end="duration": the stream's length in frames, set by end_input()
        self.finished = False

    @property
    def chunks_done(self) -> int:
        return self.cache.chunks_written

    def reset(self) -> None:
        """Start a new stream of the same portrait (the sink is kept; noise restarts from the seed)."""
        self.cache.reset(keep_sink=True)
        self.decode_cache.reset()
        if self.audio_state is not None:
            self.audio_state.reset()
        self.noise.manual_seed(self.seed)
        self.features = self.features[:, :0]
        self.features_start = 0
        self.samples_in = self.frames_out = self.end_frame = 0
        self.ending = self.finished = False

    # ---------------------------------------------------------------- stream
    @torch.no_grad()
    def push_audio(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples (B, n) -> the frames of the chunks they complete, (B, 3, F', H, W) in [-1, 1]."""
        return self.push_features(self.encode_audio(samples))

    @torch.no_grad()
    def push_features(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, k, audio_dim) of the next k video frames -> the frames of the chunks they complete."""
        self.buffer_features(features)
        return self._run(final=False)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """End of the stream: the frames not yet returned, as `end` says (module docstring). Calling it again
        returns no frames."""
        if self.finished:
            return self._no_frames()
        if not self.ending:
            self.end_input()
        frames = self._run(final=True)
        self.finished = True
        return frames

    @torch.no_grad()
    def end_input(self) -> None:
        """No more audio: buffer the silence that pads the stream to whole chunks (end="duration") and the features
        the encoder held back for its look-ahead. The chunks left then run as the end of the stream (`final`): those
        `pending()` reports, one `next_latents` + `decode` each (or `rest.streaming.batch.step_sessions`), then
        `finish()` (or `finish()` at once, which runs them all). Frames past the audio's duration are cut."""
        self._check_open()
        if self.ending:
            raise RuntimeError("end_input() was already called for this stream")
        if self.end == "duration":
            self.end_frame = self._frames_for(self.samples_in)
            t, c = self.vae.temporal_compression, self.denoiser.config.chunk_latent_frames
            # k whole chunks decode to 1 + t*(c*k - 1) frames (chunk_video_frames): the fewest that cover the duration
            chunks = max(1, -(-(self.end_frame - 1 + t) // (t * c)))
            covered = 1 + t * (c * chunks - 1)
            missing = covered * self.audio_encoder.samples_per_frame - self.samples_in
            if missing > 0 and self.end_frame > 0:
                samples_in = self.samples_in
                silence = torch.zeros(self.features.shape[0], missing)  # the float32 zeros the encoder pads with
                self.buffer_features(self.encode_audio(silence))
                self.samples_in = samples_in  # the silence is not part of the stream's audio
        if self.audio_state is not None:  # the features whose look-ahead was waiting for more audio
            features, self.audio_state = self.audio_encoder.flush(self.audio_state)
            self.buffer_features(features)
        self.ending = True

    def pending(self) -> bool:
        """Whether a chunk can run now: its audio window is buffered (at the end of the stream, its frames)."""
        return not self.finished and self.ready(self.ending)

    # ---------------------------------------------------------------- pieces
    @torch.no_grad()
    def encode_audio(self, samples: torch.Tensor) -> torch.Tensor:
        """The audio encoder's streaming step: samples (B, n) -> the features (B, k, audio_dim) they complete."""
        self._check_open()
        if self.audio_encoder is None:
            raise ValueError("this session has no audio encoder: push features (push_features), or pass audio_encoder")
        device = self.features.device  # the denoiser's: an audio path may hold no parameters (rest.data.phonetic)
        features, self.audio_state = self.audio_encoder.step(samples.to(device), self.audio_state)
        self.samples_in += samples.shape[1]
        return features

    def buffer_features(self, features: torch.Tensor) -> None:
        """Buffer features (B, k, audio_dim), the next k video frames' (any k >= 0), without generating."""
        self._check_open()
        if features.ndim != 3 or features.shape[0] != self.features.shape[0]:
            raise ValueError(f"features must be (B={self.features.shape[0]}, k, D), got {tuple(features.shape)}")
        self.features = torch.cat([self.features, features.to(self.features)], dim=1)

    def ready(self, final: bool = False) -> bool:
        """Whether the buffered features cover the next chunk (with its look-ahead, unless `final`)."""
        _, stop = chunk_audio_span(self.denoiser, self.chunks_done)
        if final:  # the end of the stream: the frames the chunk covers suffice, missing look-ahead is masked
            stop -= self.denoiser.config.audio_lookahead
        return self.features_start + self.features.shape[1] >= stop

    def next_latents(self, final: bool = False) -> torch.Tensor:
        """Generate the next chunk from the buffered features: clean latents (B, C, c, h, w), float32.

        final: the stream has ended, so the chunk's missing look-ahead frames are masked instead of awaited."""
        inputs = self.chunk_inputs(final)
        latents, self.cache = rollout_chunk(
            self.denoiser,
            self.cache,
            inputs.noise,
            inputs.audio,
            self.sigmas,
            context_timestep=self.context_timestep,
            context_noise=inputs.context_noise,
            emotion=self.emotion,
            known=inputs.known,
        )
        return latents

    def next_audio(self) -> torch.Tensor:
        """The buffered part of the next chunk's audio window (`chunk_audio_span`), a view (B, Fa', audio_dim):
        shorter than the window while its look-ahead has not arrived (or never will, at the end of a stream)."""
        start, stop = chunk_audio_span(self.denoiser, self.chunks_done)
        return self.features[:, start - self.features_start : stop - self.features_start]

    def chunk_inputs(self, final: bool = False) -> ChunkDraw:
        """What the next chunk's rollout takes from this stream: its audio window and its noise (drawn from the
        stream's generator). Drops the features no later chunk needs; the rollout must follow (`next_latents`, or
        `rest.streaming.batch.step_sessions` for several streams at once)."""
        chunk = self.chunks_done
        if not self.ready(final):
            start, stop = chunk_audio_span(self.denoiser, chunk)
            raise RuntimeError(
                f"the buffered audio features do not cover chunk {chunk}'s window yet (frames {start}..{stop - 1}); "
                "push more features, or finish() at the end of the stream"
            )
        audio = self.next_audio()
        b, device = self.features.shape[0], self.features.device
        noise = (torch.randn(b, *self.latent_shape, generator=self.noise) * self.noise_scale).to(device)
        context_noise = None
        if self.context_timestep > 0:
            context_noise = torch.randn(b, *self.latent_shape, generator=self.noise).to(device)
        # Keep only what the next chunk needs (its window starts after this chunk's last covered frame).
        next_start, _ = chunk_audio_span(self.denoiser, chunk + 1)
        self.features = self.features[:, next_start - self.features_start :]
        self.features_start = next_start
        known = self.known(chunk) if callable(self.known) else self.known
        return ChunkDraw(audio, noise, context_noise, known)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """A chunk's frames: (B, 3, F', H, W) in [-1, 1], F' = 1 + t*(c-1) for the first chunk, t*c after it."""
        dtype = next(self.vae.parameters()).dtype
        z = self.vae.denormalize_latents(latents.to(dtype))
        out, self.decode_cache = self.vae.decode_chunk(z, self.decode_cache)
        return self.take_frames(out.sample)

    def take_frames(self, decoded: torch.Tensor) -> torch.Tensor:
        """Count a chunk's decoded frames (B, 3, F', H, W) as output: float in [-1, 1], without the frames past the
        audio's duration once the stream is ending (end="duration")."""
        frames = decoded.float().clamp(-1, 1)
        self.frames_out += frames.shape[2]
        if self.ending and self.end == "duration" and self.frames_out > self.end_frame:
            cut = min(frames.shape[2], self.frames_out - self.end_frame)
            frames = frames[:, :, : frames.shape[2] - cut]
            self.frames_out -= cut
        return frames

    # ---------------------------------------------------------------- helpers
    def _run(self, final: bool) -> torch.Tensor:
        """Generate and decode every chunk the buffered features cover."""
        frames = []
        while self.ready(final):
            frames.append(self.decode(self.next_latents(final)))
        return torch.cat(frames, dim=2) if frames else self._no_frames()

    def _no_frames(self) -> torch.Tensor:
        (_, _, h, w), s = self.latent_shape, self.vae.spatial_compression
        b, channels = self.features.shape[0], self.vae.decoded_channels
        return torch.zeros(b, channels, 0, h * s, w * s, device=self.features.device)

    def _frames_for(self, num_samples: int) -> int:
        """Video frames of `num_samples` audio samples: their duration in frames, rounded."""
        return round(num_samples * self.audio_encoder.config.fps / self.audio_encoder.config.sample_rate)

    def _check_open(self) -> None:
        if self.finished:
            raise RuntimeError("this stream has finished; call reset() to start a new one")


__all__ = ["ENDS", "ChunkDraw", "StreamingSession"]
