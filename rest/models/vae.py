"""Causal spatiotemporal video VAE with exact chunk-by-chunk (streaming) encode and decode.

The time axis is causal everywhere: convolutions pad only on the past side, normalisation is per frame, and
temporal resampling pairs frames as `[x0, x0], [x1, x2], [x3, x4], ...`, so the first frame is coded alone and a
clip of `F = 1 + t*k` frames maps to `f = 1 + k` latent frames (a portrait is a 1-frame clip). Because every
layer only looks back, a stream can be encoded or decoded in chunks of any size: each causal layer keeps the few
past frames it needs in an explicit `CausalCache`, and the chunked result equals the whole-clip result.

Down/upsampling follows DC-AE (Chen et al. 2024, "Deep Compression Autoencoder"): space/time-to-channel with a
non-parametric residual shortcut, which keeps a high-compression autoencoder easy to train.

Memory layout: tensors have the shape (B, C, T, H, W) everywhere, but inside the encoder and decoder they are
stored channels-last, (B, T, H, W, C) in memory (`torch.channels_last_3d`). Then a clip is a batch of B*T
channels-last frames without a copy, the stacked time taps of a causal convolution are one concatenation along
the innermost dimension, oneDNN convolves without reordering its input and output, and the norm is one fused
`rms_norm` over the innermost dimension. Any input layout gives the same result; the public outputs are contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange

from rest.config import VAEArch, get_preset, to_dict

#################################################################################
#                                 Stream state                                  #
#################################################################################


@dataclass
class CausalCache:
    """Temporal state of one chunked encode or decode stream: one slot per causal layer.

    A slot holds what its layer must remember between chunks: the last `k - 1` input frames of a causal
    convolution, or the unpaired frame of a time-to-channel step. `None` means the stream has not reached
    that layer yet. Create it with `CausalVideoVAE.init_cache`, pass it to `encode_chunk` / `decode_chunk`.
    """

    kind: Literal["encode", "decode"]
    slots: list[torch.Tensor | bool | None] = field(default_factory=list)
    frames_in: int = 0  # frames (encode) or latent frames (decode) consumed so far
    frames_out: int = 0  # latent frames (encode) or frames (decode) produced so far

    def reset(self) -> None:
        """Start a new stream (keeps the number of slots)."""
        self.slots = [None] * len(self.slots)
        self.frames_in = 0
        self.frames_out = 0

    def read(self, index: int) -> torch.Tensor | bool | None:
        return self.slots[index]

    def write(self, index: int, value: torch.Tensor | bool | None) -> None:
        self.slots[index] = value


class _Streaming(nn.Module):
    """A layer with temporal state; `cache_index` is assigned by the VAE once the network is built."""

    cache_index: int = -1


def _last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, T, H, W, C), a view (contiguous when `x` is stored channels-last)."""
    return x.permute(0, 2, 3, 4, 1)


def _first(x: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, C) -> (B, C, T, H, W), a view: the inverse of `_last`."""
    return x.permute(0, 4, 1, 2, 3)


#################################################################################
#                                 Causal layers                                 #
#################################################################################


class CausalConv3d(_Streaming):
    """3D convolution padded only on the past side in time (zero padding in space).

    At the start of a stream the missing past is the first frame repeated, so a still image and the first
    frame of a video are coded the same way. The weight is an ordinary `nn.Conv3d` weight; the forward pass
    stacks the `k` time taps into channels and runs one 2D convolution over the B*T frames, which is faster than
    PyTorch's CPU conv3d for these shapes (most of all on the one-latent-frame chunks of a live stream) and gives
    the same result.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.kernel_t = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=(1, stride, stride))
        self._packed: tuple[tuple, torch.Tensor] | None = None  # (key of the weight it was packed from, weight)

    def packed_weight(self) -> torch.Tensor:
        """The Conv3d weight (O, C, k, kh, kw) as the weight of the stacked-taps 2D convolution: (O, k*C, kh, kw),
        input channels tap-major, stored channels-last like the activations (no reorder inside oneDNN).

        Without autograd the packed copy is kept until the parameter changes: an optimiser step and
        `load_state_dict` bump its version counter, `.to()` gives it new storage. Inference-mode tensors have no
        version counter, so they are packed on every call.
        """
        w = self.conv.weight
        if (torch.is_grad_enabled() and w.requires_grad) or w.is_inference():
            return self._pack(w)
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, self._pack(w.detach()))
        return self._packed[1]

    @staticmethod
    def _pack(w: torch.Tensor) -> torch.Tensor:
        o, c, k, kh, kw = w.shape
        packed = w.permute(0, 3, 4, 2, 1).reshape(o, kh, kw, k * c)  # (O, kh, kw, k*C) in memory
        return packed.permute(0, 3, 1, 2)  # (O, k*C, kh, kw), channels-last

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """x: (B, C, T, H, W), any T >= 0 -> (B, C_out, T, H', W'), stored channels-last."""
        b, c, t, h, w = x.shape
        if t == 0:  # nothing new reached this layer in this chunk
            h, w = (
                (h + 2 * self.padding - self.conv.kernel_size[1]) // self.stride + 1,
                (w + 2 * self.padding - self.conv.kernel_size[2]) // self.stride + 1,
            )
            return x.new_empty(b, self.conv.out_channels, 0, h, w)
        k = self.kernel_t
        x = _last(x)  # (B, T, H, W, C)
        if k == 1:
            taps = x.reshape(b * t, h, w, c)
        else:
            past = cache.read(self.cache_index)
            past = x[:, :1].expand(-1, k - 1, -1, -1, -1) if past is None else _last(past)  # (B, k - 1, H, W, C)
            seq = torch.cat([past, x], dim=1)  # (B, k - 1 + T, H, W, C)
            tail = seq[:, t:].detach().clone(memory_format=torch.contiguous_format)  # the last k - 1 frames
            cache.write(self.cache_index, _first(tail))  # (B, C, k - 1, H, W)
            # Output frame j reads tap i from sequence frame j + i; the taps go side by side along channels.
            taps = torch.cat([seq[:, i : i + t] for i in range(k)], dim=-1).view(b * t, h, w, k * c)
        y = F.conv2d(
            taps.permute(0, 3, 1, 2), self.packed_weight(), self.conv.bias, stride=self.stride, padding=self.padding
        )  # (B*T, O, H', W'), channels-last
        return _first(y.permute(0, 2, 3, 1).reshape(b, t, *y.shape[2:], -1))  # (B, O, T, H', W')


class TimeToChannel(_Streaming):
    """Pairs consecutive frames into channels: (B, C, 1 + 2k, H, W) -> (B, 2C, 1 + k, H, W).

    The first frame of the stream is paired with itself, so latent frame 0 depends on frame 0 alone.
    Frames that have no partner yet wait in the cache for the next chunk.
    """

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        pending = cache.read(self.cache_index)
        x = _last(x)  # (B, T, H, W, C)
        if pending is None:  # stream start
            if x.shape[1] == 0:
                return x.new_empty(x.shape[0], 2 * x.shape[4], 0, *x.shape[2:4])
            x = torch.cat([x[:, :1], x], dim=1)
        else:
            x = torch.cat([_last(pending), x], dim=1)
        n = x.shape[1] // 2
        cache.write(self.cache_index, _first(x[:, 2 * n :].detach().clone(memory_format=torch.contiguous_format)))
        return _first(rearrange(x[:, : 2 * n], "b (t two) h w c -> b t h w (c two)", two=2))


class ChannelToTime(_Streaming):
    """Inverse of `TimeToChannel`: (B, 2C, 1 + k, H, W) -> (B, C, 1 + 2k, H, W), dropping the duplicated 1st frame."""

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = _first(rearrange(_last(x), "b t h w (c two) -> b (t two) h w c", two=2))
        return self.drop_stream_start(x, cache)

    def drop_stream_start(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """x: (B, C, 2T, H, W), already unpaired: drops its first frame if this is the start of the stream."""
        if x.shape[2] > 0 and cache.read(self.cache_index) is None:  # stream start
            cache.write(self.cache_index, True)
            x = x[:, :, 1:]
        return x


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (frame, pixel): frame-local, so it keeps the time axis causal.

    `kind="none"` keeps only the learned per-channel gain (same parameters, so the two share a weights layout).
    """

    def __init__(self, channels: int, kind: Literal["rms", "none"] = "rms", eps: float = 1e-6):
        super().__init__()
        if kind not in ("rms", "none"):
            raise ValueError(f"VAE norm must be 'rms' or 'none', got {kind!r}")
        self.kind = kind
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _last(x)  # channels innermost: one fused kernel, and the result stays channels-last
        if self.kind == "rms":
            return _first(F.rms_norm(x, (x.shape[-1],), self.weight, self.eps))
        return _first(x * self.weight)


class ResBlock3d(nn.Module):
    """Pre-norm residual block of two causal 3x3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, norm: Literal["rms", "none"] = "rms"):
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_channels, norm)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = ChannelRMSNorm(out_channels, norm)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class Downsample(nn.Module):
    """2x spatial (and optionally 2x temporal) downsampling: conv -> space/time-to-channel, plus a shortcut
    that averages channel groups of the rearranged input (DC-AE)."""

    def __init__(self, in_channels: int, out_channels: int, temporal: bool):
        super().__init__()
        self.factor = 4 * (2 if temporal else 1)
        if out_channels % self.factor or (in_channels * self.factor) % out_channels:
            raise ValueError(
                f"Downsample {in_channels}->{out_channels}: out_channels must be a multiple of {self.factor} and "
                f"divide in_channels * {self.factor}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = CausalConv3d(in_channels, out_channels // self.factor)
        self.time_to_channel = TimeToChannel() if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # The main path and the shortcut share one temporal pairing.
        h = _first(torch.cat([_last(self.conv(x, cache)), _last(x)], dim=-1))  # (B, C_main + C_in, T, H, W)
        if self.time_to_channel is not None:
            h = self.time_to_channel(h, cache)  # (B, 2C, T/2, H, W)
        h = rearrange(_last(h), "b t (h p) (w q) c -> b t h w (c p q)", p=2, q=2)  # (B, T', H/2, W/2, factor * C)
        # Both rearranges keep the source channel as the major index, so the first `out_channels` channels
        # come from `conv(x)` and the rest from `x`.
        main, shortcut = h[..., : self.out_channels], h[..., self.out_channels :]
        shortcut = shortcut.unflatten(-1, (self.out_channels, -1)).mean(dim=-1)  # average groups of channels
        return _first(main + shortcut)


class Upsample(nn.Module):
    """2x spatial (and optionally 2x temporal) upsampling: conv -> channel-to-space/time, plus a shortcut
    that repeats channels (DC-AE)."""

    def __init__(self, in_channels: int, out_channels: int, temporal: bool):
        super().__init__()
        self.factor = 4 * (2 if temporal else 1)
        if (out_channels * self.factor) % in_channels:
            raise ValueError(
                f"Upsample {in_channels}->{out_channels}: in_channels must divide out_channels * {self.factor}"
            )
        self.repeats = out_channels * self.factor // in_channels
        self.conv = CausalConv3d(in_channels, out_channels * self.factor)
        self.channel_to_time = ChannelToTime() if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        h = _last(self.conv(x, cache))  # (B, T, H, W, factor * C_out), a fresh contiguous tensor
        # Shortcut: each input channel repeated `repeats` times, added in place by broadcasting (no repeated copy).
        h.unflatten(-1, (-1, self.repeats)).add_(_last(x).unsqueeze(-1))
        if self.channel_to_time is None:
            return _first(rearrange(h, "b t h w (c p q) -> b t (h p) (w q) c", p=2, q=2))  # (B, C_out, T, 2H, 2W)
        # Channel-to-space and channel-to-time in one copy; output channels are ordered (c, two, p, q).
        h = _first(rearrange(h, "b t h w (c two p q) -> b (t two) (h p) (w q) c", two=2, p=2, q=2))
        return self.channel_to_time.drop_stream_start(h, cache)  # (B, C_out, 2T (- 1 at stream start), 2H, 2W)


#################################################################################
#                               Encoder / Decoder                               #
#################################################################################


class Encoder(nn.Module):
    """Pixels (B, 3, F, H, W) -> posterior moments (B, 2 * latent, f, H / s, W / s)."""

    def __init__(self, arch: VAEArch):
        super().__init__()
        ch = arch.block_out_channels
        p = arch.patch_size
        self.patch_size = p
        self.conv_in = CausalConv3d(arch.in_channels * p * p, ch[0])
        self.blocks = nn.ModuleList()
        for i, c in enumerate(ch):
            for _ in range(arch.layers_per_block):
                self.blocks.append(ResBlock3d(c, c, arch.norm))
            if i < len(ch) - 1:
                self.blocks.append(Downsample(c, ch[i + 1], arch.temporal_downsample[i]))
        self.mid = nn.ModuleList(ResBlock3d(ch[-1], ch[-1], arch.norm) for _ in range(arch.mid_layers))
        self.norm_out = ChannelRMSNorm(ch[-1], arch.norm)
        self.conv_out = CausalConv3d(ch[-1], 2 * arch.latent_channels)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        p = self.patch_size
        x = _first(rearrange(x, "b c t (h p) (w q) -> b t h w (c p q)", p=p, q=p))  # (B, 3p^2, F, H/p, W/p)
        x = self.conv_in(x, cache)
        for block in self.blocks:
            x = block(x, cache)
        for block in self.mid:
            x = block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache).contiguous()  # (B, 2 * latent, f, h, w)


class Decoder(nn.Module):
    """Latents (B, latent, f, h, w) -> pixels (B, 3, 1 + t * (f - 1), h * s, w * s)."""

    def __init__(self, arch: VAEArch):
        super().__init__()
        ch = arch.block_out_channels
        p = arch.patch_size
        self.patch_size = p
        self.conv_in = CausalConv3d(arch.latent_channels, ch[-1])
        self.mid = nn.ModuleList(ResBlock3d(ch[-1], ch[-1], arch.norm) for _ in range(arch.mid_layers))
        self.blocks = nn.ModuleList()
        for i in reversed(range(len(ch))):
            for _ in range(arch.layers_per_block + 1):
                self.blocks.append(ResBlock3d(ch[i], ch[i], arch.norm))
            if i > 0:
                self.blocks.append(Upsample(ch[i], ch[i - 1], arch.temporal_downsample[i - 1]))
        self.norm_out = ChannelRMSNorm(ch[0], arch.norm)
        self.conv_out = CausalConv3d(ch[0], arch.in_channels * p * p)

    def forward(self, z: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv_in(z, cache)
        for block in self.mid:
            x = block(x, cache)
        for block in self.blocks:
            x = block(x, cache)
        x = self.conv_out(F.silu(self.norm_out(x)), cache)  # (B, 3p^2, F, H/p, W/p)
        p = self.patch_size
        return rearrange(_last(x), "b t h w (c p q) -> b c t (h p) (w q)", p=p, q=p).contiguous()


#################################################################################
#                                   The VAE                                     #
#################################################################################


class CausalVideoVAE(ModelMixin, ConfigMixin):
    """KL video autoencoder with causal 3D convolutions and exact streaming encode/decode.

    Whole clips: `vae.encode(x).latent_dist`, `vae.decode(z).sample`. Streams: `cache = vae.init_cache("encode")`,
    then `out, cache = vae.encode_chunk(x_chunk, cache)` (and the same for decoding), with chunks of any size.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 32,
        patch_size: int = 4,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        temporal_downsample: tuple[bool, ...] = (True, True),
        layers_per_block: int = 1,
        mid_layers: int = 1,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        norm: Literal["rms", "none"] = "rms",
    ):
        super().__init__()
        arch = VAEArch(
            in_channels=in_channels,
            latent_channels=latent_channels,
            patch_size=patch_size,
            block_out_channels=tuple(block_out_channels),
            temporal_downsample=tuple(temporal_downsample),
            layers_per_block=layers_per_block,
            mid_layers=mid_layers,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            norm=norm,
        )
        if len(arch.temporal_downsample) != len(arch.block_out_channels) - 1:
            raise ValueError(
                f"temporal_downsample needs one entry per level transition ({len(arch.block_out_channels) - 1}), "
                f"got {len(arch.temporal_downsample)}"
            )
        self.arch = arch
        self.spatial_compression = arch.spatial_compression
        self.temporal_compression = arch.temporal_compression
        self.decoded_channels = in_channels  # what decode_chunk returns per pixel (StreamingSession reads it)
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)
        # Number the stateful layers; each stream's cache has one slot per layer.
        for part in (self.encoder, self.decoder):
            for i, m in enumerate(m for m in part.modules() if isinstance(m, _Streaming)):
                m.cache_index = i
        self._num_slots = {
            "encode": sum(isinstance(m, _Streaming) for m in self.encoder.modules()),
            "decode": sum(isinstance(m, _Streaming) for m in self.decoder.modules()),
        }

    @classmethod
    def from_preset(cls, name: str, **overrides) -> CausalVideoVAE:
        """A randomly initialised VAE of preset `name` (see `rest.config.PRESETS`), with optional overrides."""
        return cls(**{**to_dict(get_preset(name).vae), **overrides})

    # ---------------------------------------------------------------- helpers
    def num_latent_frames(self, num_frames: int) -> int:
        """f for a clip of F frames; F must be 1 + t*k."""
        t = self.temporal_compression
        if num_frames < 1 or (num_frames - 1) % t:
            raise ValueError(
                f"the causal VAE codes clips of 1 + {t}*k frames (1, {1 + t}, {1 + 2 * t}, ...), got {num_frames}"
            )
        return 1 + (num_frames - 1) // t

    def num_frames(self, num_latent_frames: int) -> int:
        """F decoded from f latent frames."""
        return 1 + self.temporal_compression * (num_latent_frames - 1)

    def init_cache(self, kind: Literal["encode", "decode"]) -> CausalCache:
        """A fresh stream state for chunked encoding or decoding."""
        return CausalCache(kind=kind, slots=[None] * self._num_slots[kind])

    def _check_pixels(self, x: torch.Tensor) -> None:
        s = self.spatial_compression
        if x.ndim != 5 or x.shape[1] != self.arch.in_channels:
            raise ValueError(f"expected pixels of shape (B, {self.arch.in_channels}, F, H, W), got {tuple(x.shape)}")
        if x.shape[3] % s or x.shape[4] % s:
            raise ValueError(f"height and width must be multiples of {s}, got {x.shape[3]}x{x.shape[4]}")

    def _check_cache(self, cache: CausalCache, kind: str) -> None:
        if cache.kind != kind or len(cache.slots) != self._num_slots[kind]:
            raise ValueError(f"this cache is not a {kind} cache of this model; create one with init_cache({kind!r})")

    # ----------------------------------------------------------------- encode
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput:
        """Whole clip. x: (B, 3, F, H, W) in [-1, 1], F = 1 + t*k -> posterior over (B, C, 1 + k, H/s, W/s)."""
        self._check_pixels(x)
        self.num_latent_frames(x.shape[2])
        moments = self.encoder(x, self.init_cache("encode"))
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def encode_chunk(self, x: torch.Tensor, cache: CausalCache) -> tuple[AutoencoderKLOutput, CausalCache]:
        """Next chunk of a stream. x: (B, 3, n, H, W), any n >= 0; returns the latent frames completed by it."""
        self._check_pixels(x)
        self._check_cache(cache, "encode")
        moments = self.encoder(x, cache)
        cache.frames_in += x.shape[2]
        cache.frames_out += moments.shape[2]
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(moments)), cache

    # ----------------------------------------------------------------- decode
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput:
        """Whole clip. z: (B, C, f, h, w) -> pixels (B, 3, 1 + t*(f-1), h*s, w*s), roughly in [-1, 1]."""
        self._check_latents(z)
        x = self.decoder(z, self.init_cache("decode"))
        return DecoderOutput(sample=x) if return_dict else (x,)

    def decode_chunk(self, z: torch.Tensor, cache: CausalCache) -> tuple[DecoderOutput, CausalCache]:
        """Next chunk of a stream. z: (B, C, n, h, w), any n >= 0; the first latent frame gives 1 frame, others t."""
        self._check_latents(z, allow_empty=True)
        self._check_cache(cache, "decode")
        x = self.decoder(z, cache)
        cache.frames_in += z.shape[2]
        cache.frames_out += x.shape[2]
        return DecoderOutput(sample=x), cache

    def _check_latents(self, z: torch.Tensor, allow_empty: bool = False) -> None:
        c = self.arch.latent_channels
        if z.ndim != 5 or z.shape[1] != c or (z.shape[2] == 0 and not allow_empty):
            raise ValueError(f"expected latents of shape (B, {c}, f >= 1, h, w), got {tuple(z.shape)}")

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        context_frames: int = 0,
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Reconstruct a clip; returns (reconstruction, posterior) of the frames after the first `context_frames`.

        With `context_frames > 0` (1 + t*j frames) those frames first stream through the encoder and the decoder
        without gradients (posterior mode), only to fill the causal caches; the rest of the clip (t*k frames) is
        then reconstructed as the continuation of that stream. Training this way shows the model the warm caches
        of a long stream, whose temporal receptive field is longer than any clip one could backpropagate through.
        """
        if context_frames == 0:
            posterior = self.encode(x).latent_dist
            z = posterior.sample(generator) if sample_posterior else posterior.mode()
            return self.decode(z).sample, posterior
        t = self.temporal_compression
        if (context_frames - 1) % t or (x.shape[2] - context_frames) % t or x.shape[2] <= context_frames:
            raise ValueError(
                f"context_frames must be 1 + {t}*j and leave a multiple of {t} frames, got {context_frames} "
                f"of {x.shape[2]}"
            )
        enc, dec = self.init_cache("encode"), self.init_cache("decode")
        with torch.no_grad():
            out, enc = self.encode_chunk(x[:, :, :context_frames], enc)
            _, dec = self.decode_chunk(out.latent_dist.mode(), dec)
        out, enc = self.encode_chunk(x[:, :, context_frames:], enc)
        posterior = out.latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode_chunk(z, dec)[0].sample, posterior

    @torch.no_grad()
    def copy_last_frame_weights_(self) -> None:
        """Start the first frame of every temporal upsampling pair as a copy of the second (in place).

        A stream's first latent frame decodes to one frame: each `ChannelToTime` drops the first frame of its
        pair. A VAE trained on single frames (the demo's stage 1a) has therefore trained only the second-frame
        half of each temporal `Upsample` convolution; the other half is still random. Copying the trained half
        over makes every frame of a latent decode through trained weights when video training starts, instead
        of through noise. The single-frame path is unchanged.
        """
        for block in self.decoder.blocks:
            if isinstance(block, Upsample) and block.channel_to_time is not None:
                # Output channels are (c, two, p, q) with `two` the frame of the pair (see Upsample.forward).
                for param in (block.conv.conv.weight, block.conv.conv.bias):
                    pairs = param.view(-1, 2, 4, *param.shape[1:])
                    pairs[:, 0] = pairs[:, 1]

    # ----------------------------------------------------- latent normalisation
    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the unit-scale latents the denoiser works in."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.config.scaling_factor + self.config.shift_factor

    @torch.no_grad()
    def encode_portrait(self, image) -> torch.Tensor:
        """uint8 RGB image (R, R, 3) (numpy or tensor) -> the normalised latents (1, C, 1, h, w) the denoiser sees
        as a portrait: the posterior mode of a one-frame clip."""
        param = next(self.parameters())
        pixels = torch.as_tensor(image).permute(2, 0, 1).to(param.device, param.dtype).div(127.5).sub(1.0)
        return self.normalize_latents(self.encode(pixels[None, :, None]).latent_dist.mode())


@torch.no_grad()
def reconstruct(vae: CausalVideoVAE, frames: np.ndarray, chunk_frames: int | None = None) -> np.ndarray:
    """Encode and decode uint8 frames (F, R, R, 3) with the posterior mode; returns the first 1 + t*k frames.

    `chunk_frames=None` codes the whole clip at once; otherwise the clip streams through the VAE in chunks of
    that many frames (the way a live stream would), which gives the same result up to float rounding.
    """
    from rest.media import frames_to_tensor, tensor_to_frames  # media I/O only here: the model imports no PyAV

    t = vae.temporal_compression
    n = 1 + t * ((len(frames) - 1) // t)
    device = next(vae.parameters()).device
    x = frames_to_tensor(frames[:n]).unsqueeze(0).to(device)  # (1, 3, F, R, R)
    if chunk_frames is None:
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    else:
        enc, dec, outs = vae.init_cache("encode"), vae.init_cache("decode"), []
        for s in range(0, n, chunk_frames):
            out, enc = vae.encode_chunk(x[:, :, s : s + chunk_frames], enc)
            z = out.latent_dist.mode()
            if z.shape[2]:
                frames_out, dec = vae.decode_chunk(z, dec)
                outs.append(frames_out.sample)
        y = torch.cat(outs, dim=2)
    return tensor_to_frames(y[0])
