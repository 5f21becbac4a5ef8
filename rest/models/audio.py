"""Audio front-end: causal log-mel features and a streaming audio encoder with one feature per video frame.

Time alignment (defaults: 16 kHz, 25 ms window, 10 ms hop, 25 fps). Mel frame i covers samples
`[160 i - 240, 160 i + 160)`: it ends at a hop boundary and only looks back (the stream is left-padded with 240
zeros), so mel frame i uses audio up to time `(i + 1) * 10 ms`. Mel frames `4n .. 4n + 3` belong to video frame
n and end together with it.

The encoder is causal everywhere (convolutions padded on the past side only, attention limited to the last
`attn_window` frames). Its fixed look-ahead is an output shift: the feature of video frame n is the causal feature
of frame `n + lookahead_frames`. Streaming therefore equals the whole-signal pass (up to float rounding) for chunks
of any size, at a cost per chunk that does not grow with the length of the stream.

An optional adapter (`load_speech_encoder`) loads a pretrained speech model (wav2vec2 / HuBERT / WavLM) from a
local folder through `transformers`, when that package is installed; the project works without it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from rest.config import ConfigError
from rest.errors import RestError

#################################################################################
#                               Mel filterbank                                  #
#################################################################################

# Slaney's mel scale (Auditory Toolbox; librosa's default with htk=False): linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL  # 15 mel
_SLANEY_LOG_STEP = math.log(6.4) / 27.0  # mel steps per e-fold above the break


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Frequency in Hz -> Slaney mel."""
    linear = hz / _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_MEL + torch.log(hz.clamp_min(_SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return torch.where(hz >= _SLANEY_BREAK_HZ, log, linear)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Slaney mel -> frequency in Hz (inverse of `hz_to_mel`)."""
    linear = mel * _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_HZ * torch.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_BREAK_MEL))
    return torch.where(mel >= _SLANEY_BREAK_MEL, log, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular Slaney mel filters with Slaney area normalisation (librosa `norm="slaney"`, as in Whisper).

    Returns (n_mels, n_fft // 2 + 1) weights in float64. The filters' edges are equally spaced in Slaney mel
    between `f_min` and `f_max`; each filter is scaled by `2 / bandwidth` so that all have the same area in Hz.
    """
    fft_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (K,)
    mel_lo, mel_hi = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64))
    edges_hz = mel_to_hz(torch.linspace(mel_lo, mel_hi, n_mels + 2, dtype=torch.float64))  # (M + 2,)
    widths = edges_hz[1:] - edges_hz[:-1]  # (M + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (M + 2, K)
    rising = -ramps[:-2] / widths[:-1, None]  # (M, K), 0 at the lower edge, 1 at the centre
    falling = ramps[2:] / widths[1:, None]  # (M, K), 1 at the centre, 0 at the upper edge
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]


#################################################################################
#                                   Log-mel                                     #
#################################################################################


@dataclass
class LogMelState:
    """Stream state of `LogMel.step`: the samples that the next frames still need."""

    batch_size: int
    pending: torch.Tensor | None = None  # (B, P) float32 samples not yet consumed, P < window; None = stream start
    samples_in: int = 0  # samples received so far
    frames_out: int = 0  # mel frames produced so far

    def reset(self) -> None:
        """Start a new stream."""
        self.pending = None
        self.samples_in = 0
        self.frames_out = 0


class LogMel(nn.Module):
    """Causal log-mel spectrogram in plain torch: Hann window, power spectrum, Slaney mel filters, log with a floor.

    Mel frame i covers samples `[i * hop - (window - hop), i * hop + hop)`, i.e. the window ends at the end of hop
    i; the signal is left-padded with `window - hop` zeros, so a signal of N samples gives `N // hop` frames and
    frame i uses no audio after `(i + 1) * hop`. The FFT size equals the window length. Computed in float32
    whatever the module's dtype.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        window_length: int = 400,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: float | None = None,
        floor: float = 1e-5,
    ):
        super().__init__()
        f_max = sample_rate / 2 if f_max is None else f_max
        if hop_length <= 0 or window_length < hop_length:
            raise ConfigError(f"need 0 < hop_length <= window_length, got hop {hop_length}, window {window_length}")
        if n_mels <= 0:
            raise ConfigError(f"n_mels must be positive, got {n_mels}")
        if not 0.0 <= f_min < f_max <= sample_rate / 2:
            raise ConfigError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min {f_min}, f_max {f_max}")
        if floor <= 0.0:
            raise ConfigError(f"the log floor must be positive, got {floor}")
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.window_length = window_length
        self.hop_length = hop_length
        self.floor = floor
        # Derived from the arguments, so not saved with the weights.
        window = torch.hann_window(window_length, periodic=True, dtype=torch.float64)
        self.register_buffer("window", window.float(), persistent=False)  # (W,)
        fbank = mel_filterbank(sample_rate, window_length, n_mels, f_min, f_max)
        self.register_buffer("filterbank", fbank.float(), persistent=False)  # (M, W // 2 + 1)

    @property
    def left_pad(self) -> int:
        """Zeros before the stream start, so that the first frame ends after one hop."""
        return self.window_length - self.hop_length

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        """Whole signal. samples: (B, N) -> log-mel (B, n_mels, N // hop)."""
        self._check_samples(samples)
        return self._frames(F.pad(samples.float(), (self.left_pad, 0)))  # (B, M, N // hop)

    def init_state(self, batch_size: int) -> LogMelState:
        """A fresh stream state for `step`."""
        return LogMelState(batch_size=batch_size)

    def step(self, samples: torch.Tensor, state: LogMelState) -> tuple[torch.Tensor, LogMelState]:
        """Next chunk of a stream. samples: (B, n), any n >= 0 -> the frames it completes, (B, n_mels, k)."""
        self._check_samples(samples)
        if samples.shape[0] != state.batch_size:
            raise ValueError(f"this stream has batch size {state.batch_size}, got a chunk of {samples.shape[0]}")
        pending = state.pending
        if pending is None:
            pending = samples.new_zeros(samples.shape[0], self.left_pad, dtype=torch.float32)
        buffer = torch.cat([pending, samples.float()], dim=1)  # (B, P + n)
        mel = self._frames(buffer)  # (B, M, k)
        k = mel.shape[-1]
        state.pending = buffer[:, k * self.hop_length :].clone()  # (B, < window): bounded whatever the stream length
        state.samples_in += samples.shape[1]
        state.frames_out += k
        return mel, state

    def _frames(self, padded: torch.Tensor) -> torch.Tensor:
        """padded: (B, P), frame j = padded[:, j * hop : j * hop + window] -> (B, n_mels, complete frames)."""
        b, length = padded.shape
        if length < self.window_length:
            return padded.new_zeros(b, self.n_mels, 0)
        frames = padded.unfold(1, self.window_length, self.hop_length)  # (B, T, W)
        spectrum = torch.fft.rfft(frames * self.window.float(), dim=-1)  # (B, T, W // 2 + 1)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = power @ self.filterbank.float().T  # (B, T, M)
        return torch.log(mel.clamp_min(self.floor)).transpose(1, 2)  # (B, M, T)

    @staticmethod
    def _check_samples(samples: torch.Tensor) -> None:
        if samples.ndim != 2 or not samples.is_floating_point():
            raise ValueError(f"expected float samples of shape (B, N), got {samples.dtype} {tuple(samples.shape)}")


#################################################################################
#                               Encoder layers                                  #
#################################################################################


class CausalConv1d(nn.Conv1d):
    """1D convolution over time padded on the past side only: output t sees inputs t - k + 1 .. t.

    At the stream start the missing past is zeros (the same as zero padding in the whole-signal pass); later the
    last `k - 1` input frames come from the previous chunk.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, C, T), context: (B, C, k - 1) or None -> (B, C_out, T) and the context for the next chunk."""
        b, _, t = x.shape
        if t == 0:  # nothing new reached this layer
            return x.new_zeros(b, self.out_channels, 0), context
        k = self.kernel_size[0]
        if k > 1:
            if context is None:
                context = x.new_zeros(b, self.in_channels, k - 1)
            x = torch.cat([context, x], dim=2)  # (B, C, k - 1 + T)
            context = x[:, :, -(k - 1) :].detach().clone()
        return super().forward(x), context  # (B, C_out, T)


class WindowedSelfAttention(nn.Module):
    """Causal self-attention over the last `window` frames (the query's own frame included).

    Positions enter as a learned bias per head and per offset `0 .. window - 1` (query frame minus key frame), so
    scores depend only on relative positions, which stay bounded however long the stream runs. Keys and values
    of the last `window - 1` frames are returned for the next chunk.
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, window))  # (H, window)
        # Queries per attention call: bounds the (H, q, k) bias tensor of a long whole-signal pass; any value
        # gives the same result (the keys of a query block are exactly its window).
        self.query_block = 512

    def forward(
        self, x: torch.Tensor, past_k: torch.Tensor | None, past_v: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, D), past keys/values: (B, H, P, Dh) with P <= window - 1, or None.

        Returns the output (B, T, D) and the keys/values of the last `window - 1` frames, (B, H, <= window - 1, Dh).
        """
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, Dh)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)  # (B, H, P + T, Dh)
            v = torch.cat([past_v, v], dim=2)
        past = k.shape[2] - t
        outputs = []
        for start in range(0, t, self.query_block):
            end = min(start + self.query_block, t)
            first_key = max(0, past + start - self.window + 1)  # oldest key any of these queries may see
            bias = self._bias(q_pos=past + start, num_q=end - start, k_pos=first_key, num_k=past + end - first_key)
            outputs.append(
                F.scaled_dot_product_attention(
                    q[:, :, start:end], k[:, :, first_key : past + end], v[:, :, first_key : past + end], bias.to(q)
                )
            )  # (B, H, q, Dh)
        y = torch.cat(outputs, dim=2).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        keep = max(k.shape[2] - (self.window - 1), 0)
        return self.proj(y), k[:, :, keep:].detach().clone(), v[:, :, keep:].detach().clone()

    def _bias(self, q_pos: int, num_q: int, k_pos: int, num_k: int) -> torch.Tensor:
        """Additive attention bias (H, num_q, num_k): the learned offset bias inside the window, -inf outside."""
        device = self.rel_bias.device
        offset = (
            torch.arange(q_pos, q_pos + num_q, device=device)[:, None]
            - torch.arange(k_pos, k_pos + num_k, device=device)[None, :]
        )  # (q, k): query frame - key frame
        inside = (offset >= 0) & (offset < self.window)
        bias = self.rel_bias[:, offset.clamp(0, self.window - 1)]  # (H, q, k)
        return bias.masked_fill(~inside, float("-inf"))


class AudioTransformerBlock(nn.Module):
    """Pre-norm transformer block: windowed causal self-attention -> MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowedSelfAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, past_k: torch.Tensor | None, past_v: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, D) -> (B, T, D) and this layer's keys/values for the next chunk."""
        # 1. Self-attention over the window
        h, k, v = self.attn(self.norm1(x), past_k, past_v)
        x = x + h
        # 2. Feed-forward
        x = x + self.mlp(self.norm2(x))
        return x, k, v


#################################################################################
#                                Stream state                                   #
#################################################################################


@dataclass
class AudioEncoderState:
    """Everything one audio stream needs between chunks; its size is bounded whatever the stream length.

    Create it with `AudioEncoder.init_state(batch_size)`, pass it to `step` / `flush`, and `reset()` it to start a
    new stream. `None` entries mean the stream has not reached that layer yet.
    """

    batch_size: int
    mel: LogMelState  # leftover samples of the log-mel framing
    conv_context: list[torch.Tensor | None]  # per causal conv: its last k - 1 input frames, (B, C, k - 1)
    frame_pending: torch.Tensor | None  # conv outputs of the incomplete video frame, (B, C, < mel frames per frame)
    keys: list[torch.Tensor | None]  # per transformer layer: keys of the last attn_window - 1 frames, (B, H, P, Dh)
    values: list[torch.Tensor | None]  # per transformer layer: values, same shape
    frames_causal: int = 0  # causal features computed (video frames whose audio is complete)
    frames_out: int = 0  # features returned, = frames_causal - lookahead once the stream has started
    finished: bool = False  # set by `flush`; a finished stream takes no more audio until `reset()`

    def reset(self) -> None:
        """Start a new stream (keeps the batch size and the number of layers)."""
        self.mel.reset()
        self.conv_context = [None] * len(self.conv_context)
        self.frame_pending = None
        self.keys = [None] * len(self.keys)
        self.values = [None] * len(self.values)
        self.frames_causal = 0
        self.frames_out = 0
        self.finished = False

    @property
    def samples_in(self) -> int:
        """Audio samples received so far (excluding the silence added by `flush`)."""
        return self.mel.samples_in


#################################################################################
#                                The encoder                                    #
#################################################################################


class AudioEncoder(ModelMixin, ConfigMixin):
    """Streaming audio encoder: 16 kHz samples -> one `out_dim` feature per video frame, with a fixed look-ahead.

    Layout: causal log-mel (`LogMel`) -> `num_conv_layers` causal convolutions at the mel rate -> each video
    frame's `mel_frames_per_frame` conv outputs projected to one token (a convolution with kernel = stride) ->
    `num_layers` transformer blocks with causal attention over the last `attn_window` frames -> LayerNorm ->
    linear to `out_dim`.

    Look-ahead: the causal network gives feature c[n] from audio up to the end of video frame n. The output for
    frame n is c[n + lookahead_frames], so it may use audio up to the end of frame n + lookahead (an exact output
    shift; the first `lookahead_frames` causal features only serve as attention context).

    Whole signal: `forward(samples)` gives features for frames 0 .. N // samples_per_frame - 1; the audio beyond
    the signal end that the last `lookahead_frames` frames need is silence (zero samples). Streams:
    `state = encoder.init_state(B)`, then `feats, state = encoder.step(chunk, state)` for chunks of any size
    (feature n is returned once audio through frame n + lookahead has arrived; possibly (B, 0, D)), and at the
    end `feats, state = encoder.flush(state)`, which pads with silence exactly like `forward`. The concatenated
    stream output equals `forward` of the concatenated audio.

    Latency contributed: feature n is complete when the audio through the end of video frame n + lookahead has
    arrived, i.e. `(1 + lookahead_frames) / fps` after frame n starts (one frame of buffering + the look-ahead;
    120 ms with the defaults), plus compute; `lookahead_frames / fps` of it (80 ms) is the look-ahead itself.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_rate: int = 16000,  # Hz, input audio
        fps: int = 25,  # video frames per second: one output feature per frame
        n_mels: int = 80,
        window_length: int = 400,  # samples (25 ms); also the FFT size
        hop_length: int = 160,  # samples (10 ms) between mel frames
        f_min: float = 0.0,  # Hz, lowest mel filter edge
        f_max: float | None = None,  # Hz, highest mel filter edge; None = sample_rate / 2
        mel_floor: float = 1e-5,  # log(max(mel, floor))
        mel_mean: float = -7.0,  # log-mel normalisation (log_mel - mean) / std; measured on full-scale speech
        mel_std: float = 3.5,
        conv_channels: int = 256,
        conv_kernel_size: int = 3,  # mel frames seen by each causal convolution
        num_conv_layers: int = 2,
        dim: int = 256,  # transformer width
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        attn_window: int = 50,  # video frames each frame attends to, itself included (2 s at 25 fps)
        lookahead_frames: int = 2,  # video frames of future audio each feature may use (80 ms at 25 fps)
        out_dim: int = 256,
    ):
        super().__init__()
        if fps <= 0 or hop_length <= 0 or sample_rate % hop_length or (sample_rate // hop_length) % fps:
            raise ConfigError(
                f"the mel rate sample_rate / hop_length ({sample_rate} / {hop_length}) must be a whole multiple of "
                f"fps ({fps}), so that every video frame holds the same number of mel frames (e.g. 16000 / 160 = "
                f"100 Hz = 4 x 25 fps)"
            )
        if num_conv_layers < 0 or conv_kernel_size < 1 or conv_channels < 1:
            raise ConfigError(
                f"need num_conv_layers >= 0, conv_kernel_size >= 1, conv_channels >= 1, got {num_conv_layers}, "
                f"{conv_kernel_size}, {conv_channels}"
            )
        if num_layers < 0 or num_heads < 1 or dim % num_heads:
            raise ConfigError(f"dim ({dim}) must be a multiple of num_heads ({num_heads}); num_layers >= 0")
        if attn_window < 1:
            raise ConfigError(f"attn_window must be at least 1 frame (the frame itself), got {attn_window}")
        if lookahead_frames < 0:
            raise ConfigError(f"lookahead_frames must be >= 0, got {lookahead_frames}")
        if mel_std <= 0:
            raise ConfigError(f"mel_std must be positive, got {mel_std}")
        self.samples_per_frame = sample_rate // fps  # 640
        self.mel_frames_per_frame = sample_rate // hop_length // fps  # 4
        self.lookahead_frames = lookahead_frames

        self.mel = LogMel(sample_rate, n_mels, window_length, hop_length, f_min, f_max, mel_floor)
        channels = [n_mels] + [conv_channels] * num_conv_layers
        self.convs = nn.ModuleList(
            CausalConv1d(c_in, c_out, conv_kernel_size)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        # Kernel = stride = mel frames per video frame: video frame n <- mel frames 4n .. 4n + 3, nothing later.
        self.frame_proj = nn.Conv1d(channels[-1], dim, self.mel_frames_per_frame, stride=self.mel_frames_per_frame)
        self.blocks = nn.ModuleList(
            AudioTransformerBlock(dim, num_heads, mlp_ratio, attn_window) for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, out_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linear layers with zero biases; the attention position bias starts at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowedSelfAttention):
                nn.init.zeros_(m.rel_bias)

    # ---------------------------------------------------------------- helpers
    @property
    def lookahead_s(self) -> float:
        """Latency added by the look-ahead, in seconds."""
        return self.lookahead_frames / self.config.fps

    @property
    def latency_s(self) -> float:
        """Audio latency of a feature, from the start of its video frame to the arrival of all audio it needs."""
        return (1 + self.lookahead_frames) / self.config.fps

    def num_frames(self, num_samples: int) -> int:
        """Video frames (= features) for a signal of `num_samples` samples."""
        return num_samples // self.samples_per_frame

    def init_state(self, batch_size: int) -> AudioEncoderState:
        """A fresh stream state for `step` / `flush`."""
        return AudioEncoderState(
            batch_size=batch_size,
            mel=self.mel.init_state(batch_size),
            conv_context=[None] * len(self.convs),
            frame_pending=None,
            keys=[None] * len(self.blocks),
            values=[None] * len(self.blocks),
        )

    # ---------------------------------------------------------------- whole signal
    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        """samples: (B, N) float at `sample_rate` -> features (B, N // samples_per_frame, out_dim).

        The look-ahead of the last frames reads silence beyond the signal end; a trailing partial frame is used
        only as look-ahead audio (and ignored when lookahead_frames = 0).
        """
        LogMel._check_samples(samples)
        num_frames = self.num_frames(samples.shape[1])
        length = (num_frames + self.lookahead_frames) * self.samples_per_frame  # audio the features depend on
        samples = F.pad(samples, (0, length - samples.shape[1])) if length > samples.shape[1] else samples[:, :length]
        causal = self._causal_step(samples, self.init_state(samples.shape[0]))  # (B, F + L, D)
        return causal[:, self.lookahead_frames :]  # (B, F, D)

    # ---------------------------------------------------------------- streaming
    def step(self, samples: torch.Tensor, state: AudioEncoderState) -> tuple[torch.Tensor, AudioEncoderState]:
        """Next chunk of a stream. samples: (B, n), any n >= 0 -> the newly available features (B, k, out_dim).

        Feature n is returned once audio through video frame n + lookahead_frames has arrived.
        """
        LogMel._check_samples(samples)
        self._check_state(state)
        if samples.shape[0] != state.batch_size:
            raise ValueError(f"this stream has batch size {state.batch_size}, got a chunk of {samples.shape[0]}")
        done_before = state.frames_causal
        causal = self._causal_step(samples, state)  # (B, k', D) causal features done_before .. done_before + k' - 1
        skip = min(max(self.lookahead_frames - done_before, 0), causal.shape[1])  # the first L are context only
        out = causal[:, skip:]  # (B, k, D)
        state.frames_out += out.shape[1]
        return out, state

    def flush(self, state: AudioEncoderState) -> tuple[torch.Tensor, AudioEncoderState]:
        """End the stream: the remaining features (B, k, out_dim), their look-ahead padded with silence.

        Afterwards the stream has returned `num_frames(state.samples_in)` features, as `forward` would; the state
        is finished and takes no more audio until `reset()`.
        """
        self._check_state(state)
        num_frames = self.num_frames(state.samples_in)
        missing = (num_frames + self.lookahead_frames) * self.samples_per_frame - state.samples_in
        if missing > 0:
            # Silence: the float32 zeros that forward pads with.
            silence = torch.zeros(state.batch_size, missing, device=self.proj_out.weight.device)
            samples_in = state.samples_in
            out, state = self.step(silence, state)
            state.mel.samples_in = samples_in  # the silence is not part of the stream's audio
        else:
            out = self.proj_out.weight.new_zeros(state.batch_size, 0, self.config.out_dim)
        if state.frames_out != num_frames:
            raise RuntimeError(f"stream ended with {state.frames_out} features, expected {num_frames}")
        state.finished = True
        return out, state

    def _check_state(self, state: AudioEncoderState) -> None:
        if len(state.conv_context) != len(self.convs) or len(state.keys) != len(self.blocks):
            raise ValueError("this state belongs to a different audio encoder; create one with init_state()")
        if state.finished:
            raise ValueError("this stream was flushed; call state.reset() to start a new one")

    def _causal_step(self, samples: torch.Tensor, state: AudioEncoderState) -> torch.Tensor:
        """Advance the causal network by a chunk: (B, n) -> causal features of the completed frames (B, k, D)."""
        b = samples.shape[0]
        dtype = self.proj_out.weight.dtype
        # 1. Log-mel frames completed by this chunk
        mel, state.mel = self.mel.step(samples, state.mel)  # (B, M, m)
        x = ((mel - self.config.mel_mean) / self.config.mel_std).to(dtype)
        # 2. Causal convolutions at the mel rate
        for i, conv in enumerate(self.convs):
            y, state.conv_context[i] = conv(x, state.conv_context[i])
            x = F.gelu(y, approximate="tanh")  # (B, C, m)
        # 3. One token per complete video frame
        if state.frame_pending is not None:
            x = torch.cat([state.frame_pending, x], dim=2)  # (B, C, r' + m)
        r = self.mel_frames_per_frame
        k = x.shape[2] // r
        state.frame_pending = x[:, :, k * r :].detach().clone()  # (B, C, < r)
        if k == 0:
            return x.new_zeros(b, 0, self.config.out_dim)
        h = self.frame_proj(x[:, :, : k * r]).transpose(1, 2)  # (B, k, dim)
        # 4. Transformer over the window of recent frames
        for i, block in enumerate(self.blocks):
            h, state.keys[i], state.values[i] = block(h, state.keys[i], state.values[i])
        state.frames_causal += k
        return self.proj_out(self.norm_out(h))  # (B, k, out_dim)


#################################################################################
#                        The audio expert's mouth head                          #
#################################################################################


class MouthHead(ModelMixin, ConfigMixin):
    """Linear read-out of per-frame mouth parameters (`outputs`, e.g. SynthTalk's "mouth_open") from audio
    features: the head the audio expert (rest/training/audio_expert.py) trains the encoder through."""

    @register_to_config
    def __init__(self, in_dim: int = 256, outputs: tuple[str, ...] = ("mouth_open",)):
        super().__init__()
        if not outputs:
            raise ConfigError("MouthHead needs at least one output")
        self.proj = nn.Linear(in_dim, len(outputs))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, F, in_dim) -> (B, F, len(outputs))."""
        return self.proj(features)


class AudioExpert:
    """An audio expert folder: the AudioEncoder (save_pretrained, at the folder's top, so that the teacher's
    `audio_encoder_init` takes it as it is) and its `MouthHead` in `head/`."""

    def __init__(self, encoder: AudioEncoder, head: MouthHead):
        if head.config.in_dim != encoder.config.out_dim:
            raise ConfigError(
                f"the head reads {head.config.in_dim}-d features, the encoder gives {encoder.config.out_dim}"
            )
        self.encoder, self.head = encoder.eval(), head.eval()

    @classmethod
    def load(cls, folder: str | Path) -> AudioExpert:
        from rest.models.loading import load_local

        folder = Path(folder)
        if not (folder / "head").is_dir():
            raise RestError(
                f"{folder}/head/ is missing: an audio expert folder holds the encoder and its MouthHead in head/ "
                f"(written by train/audio_expert.py)"
            )
        return cls(load_local(AudioEncoder, folder, "audio expert encoder"), load_local(MouthHead, folder / "head"))

    def save(self, folder: str | Path) -> None:
        self.encoder.save_pretrained(str(folder))
        self.head.save_pretrained(str(Path(folder) / "head"))

    @torch.no_grad()
    def predict(self, samples: np.ndarray, output: str = "mouth_open") -> np.ndarray:
        """16 kHz samples (N,) -> the predicted `output` per video frame, (N // samples_per_frame,)."""
        x = torch.as_tensor(np.asarray(samples, np.float32))[None].to(self.head.proj.weight.device)
        index = list(self.head.config.outputs).index(output)
        return self.head(self.encoder(x))[0, :, index].float().cpu().numpy()


#################################################################################
#                         Pretrained speech encoders                            #
#################################################################################


@runtime_checkable
class PretrainedSpeechEncoder(Protocol):
    """A speech model mapping audio to one feature per video frame (whole signals; not causal, not streaming)."""

    sample_rate: int  # Hz the model expects
    fps: int  # output features per second
    feature_dim: int

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """samples: (B, N) float at `sample_rate` -> (B, N // (sample_rate // fps), feature_dim)."""
        ...


# transformers model types with a wav2vec2-style convolutional front-end (config.conv_stride) at 16 kHz.
SPEECH_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def pool_to_frame_rate(hidden: torch.Tensor, num_frames: int, group: int) -> torch.Tensor:
    """Average groups of `group` model frames into video frames: (B, T, D) -> (B, num_frames, D).

    wav2vec2-style models give `(N - 400) // 320 + 1` frames for N samples, one short of `2 * num_frames` at 25 fps;
    a missing tail (at most `group` frames) repeats the last frame.
    """
    b, t, d = hidden.shape
    need = num_frames * group
    if t < need - group or (t == 0 and need > 0):
        raise ValueError(f"{t} model frames cannot cover {num_frames} video frames of {group} frames each")
    if t < need:
        hidden = torch.cat([hidden, hidden[:, -1:].expand(b, need - t, d)], dim=1)  # (B, need, D)
    return hidden[:, :need].reshape(b, num_frames, group, d).mean(dim=2)  # (B, num_frames, D)


class HFSpeechEncoder(nn.Module):
    """A `transformers` wav2vec2 / HuBERT / WavLM model as a `PretrainedSpeechEncoder` (50 Hz -> fps by averaging)."""

    def __init__(
        self,
        model: nn.Module,
        feature_dim: int,
        model_rate: int,
        sample_rate: int = 16000,
        fps: int = 25,
        layer: int | None = None,
        normalize: bool = True,
    ):
        super().__init__()
        if model_rate % fps or sample_rate % fps:
            raise RestError(f"the speech model's frame rate ({model_rate} Hz) is not a whole multiple of {fps} fps")
        self.model = model
        self.feature_dim = feature_dim
        self.model_rate = model_rate
        self.sample_rate = sample_rate
        self.fps = fps
        self.layer = layer  # None: last hidden state; i: hidden_states[i] (0 = the input embeddings)
        self.normalize = normalize  # zero mean, unit variance per utterance, as the model's feature extractor does

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """samples: (B, N) at `sample_rate` -> (B, N // (sample_rate // fps), feature_dim)."""
        LogMel._check_samples(samples)
        num_frames = samples.shape[1] // (self.sample_rate // self.fps)
        x = samples.float()
        if self.normalize:
            x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-7)
        out = self.model(x, output_hidden_states=self.layer is not None)
        hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]  # (B, T, D)
        return pool_to_frame_rate(hidden, num_frames, self.model_rate // self.fps)  # (B, F, D)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.encode(samples)


def load_speech_encoder(folder: str | Path, layer: int | None = None, fps: int = 25) -> HFSpeechEncoder:
    """Load a HuggingFace-format wav2vec2 / HuBERT / WavLM model from a local folder; never downloads.

    The folder holds `config.json` and `model.safetensors` (or `pytorch_model.bin`, or a sharded index), and
    optionally `preprocessor_config.json` (its `do_normalize`, default True, is honoured). Needs the `transformers`
    package, which REST does not install.
    """
    folder = Path(folder)
    layout = "config.json + model.safetensors (or pytorch_model.bin) of a wav2vec2 / HuBERT / WavLM model"
    if not folder.is_dir():
        raise RestError(
            f"speech encoder folder not found: {folder}; put {layout} there (e.g. `huggingface-cli download "
            f"facebook/hubert-base-ls960 --local-dir {folder}` on a machine with network access)"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise RestError(f"{config_path} is missing; the speech encoder folder needs {layout}")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise RestError(f"no weights in {folder}: put model.safetensors (or pytorch_model.bin) next to config.json")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RestError(f"{config_path} is not valid JSON ({err})") from None
    model_type = config.get("model_type")
    if model_type not in SPEECH_MODEL_TYPES or "conv_stride" not in config:
        raise RestError(
            f"{config_path}: model_type {model_type!r} is not a supported speech encoder "
            f"(supported: {', '.join(SPEECH_MODEL_TYPES)})"
        )
    sample_rate = 16000  # all of these models are trained on 16 kHz audio
    stride = math.prod(config["conv_stride"])  # 320 samples = 20 ms for wav2vec2 and its descendants
    if sample_rate % stride:
        raise RestError(f"{config_path}: conv_stride {config['conv_stride']} gives no whole frame rate at 16 kHz")
    normalize = True
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", True))
    try:
        import transformers
    except ImportError:
        raise RestError(
            f"loading the speech encoder in {folder} needs the `transformers` package, which REST does not "
            f"install: pip install transformers"
        ) from None
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    return HFSpeechEncoder(
        model,
        feature_dim=int(config["hidden_size"]),
        model_rate=sample_rate // stride,
        sample_rate=sample_rate,
        fps=fps,
        layer=layer,
        normalize=normalize,
    )


__all__ = [
    "AudioEncoder",
    "AudioExpert",
    "MouthHead",
    "AudioEncoderState",
    "HFSpeechEncoder",
    "LogMel",
    "LogMelState",
    "PretrainedSpeechEncoder",
    "SPEECH_MODEL_TYPES",
    "load_speech_encoder",
    "mel_filterbank",
    "pool_to_frame_rate",
]
