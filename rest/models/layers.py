"""Generic transformer pieces shared by the denoisers: 3D rotary embedding, timestep embedding, adaLN modulation,
RMS norm, and the one attention call everything goes through.

Conventions: attention tensors are `(B, H, L, Dh)`; boolean attention masks are True where a query may attend to a
key (the `torch.nn.functional.scaled_dot_product_attention` convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

#################################################################################
#                                 Attention                                     #
#################################################################################


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention. q: (B, H, Lq, Dh), k/v: (B, H, Lk, Dh) -> (B, H, Lq, Dh).

    mask: bool, broadcastable to (B, H, Lq, Lk), True = attend; None = every query sees every key, which lets
    PyTorch pick its fastest kernel (flash attention on GPU). Every query row must see at least one key.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention masks are boolean (True = attend), got {mask.dtype}")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclass
class KeyValue:
    """Keys and values of one attention layer for a set of tokens, before rotary embedding: (B, H, L, Dh) each.

    Keys are kept unrotated so that a cache can store them once and rotate them at use with whatever positions the
    attending window assigns (see `SelfAttention` in rest/models/dit.py).
    """

    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return self.k.shape[2]

    @staticmethod
    def cat(parts: Sequence[KeyValue]) -> KeyValue:
        """Concatenate along the token axis, in order."""
        return KeyValue(torch.cat([p.k for p in parts], dim=2), torch.cat([p.v for p in parts], dim=2))

    def select(self, index: torch.Tensor | slice) -> KeyValue:
        """The tokens at `index` (a slice or a 1-D index tensor over L)."""
        return KeyValue(self.k[:, :, index], self.v[:, :, index])


#################################################################################
#                                   3D RoPE                                     #
#################################################################################


@dataclass
class Rotary:
    """Rotation angles of a set of tokens: cos and sin of shape (L, Dh / 2), float32."""

    cos: torch.Tensor
    sin: torch.Tensor

    @property
    def length(self) -> int:
        return self.cos.shape[0]

    @staticmethod
    def cat(parts: Sequence[Rotary]) -> Rotary:
        return Rotary(torch.cat([p.cos for p in parts]), torch.cat([p.sin for p in parts]))

    def select(self, index: torch.Tensor | slice) -> Rotary:
        return Rotary(self.cos[index], self.sin[index])


def rope_axes_split(head_dim: int) -> tuple[int, int, int]:
    """Default split of a head's channels over (frame, row, column), Wan 2.1's rule: rows and columns get
    2 * (Dh // 6) channels each, frames the rest (64 -> (24, 20, 20); 72 -> (24, 24, 24))."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


class RotaryEmbedding3D(nn.Module):
    """Rotary position embedding over (frame, row, column) (Su et al. 2021, RoFormer; 3D split as in Wan 2.1).

    A head's Dh channels are split into three groups, one per axis; within a group, channel pair i rotates by
    `position * theta^(-2i / d_axis)`. Positions are arbitrary (even negative or fractional) numbers, so callers
    choose them explicitly (`forward(positions)`); attention then depends only on position differences.
    """

    def __init__(self, head_dim: int, axes_dim: Sequence[int] | None = None, theta: float = 10000.0):
        super().__init__()
        axes_dim = tuple(axes_dim) if axes_dim is not None else rope_axes_split(head_dim)
        if len(axes_dim) != 3 or sum(axes_dim) != head_dim or any(d <= 0 or d % 2 for d in axes_dim):
            raise ValueError(
                f"rope axes_dim must be three positive even numbers summing to the head dim {head_dim}, got {axes_dim}"
            )
        self.axes_dim = axes_dim
        self.theta = theta
        inv_freq = [theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d) for d in axes_dim]
        self.register_buffer("inv_freq", torch.cat(inv_freq).float(), persistent=False)  # (Dh / 2,)
        pairs = torch.tensor(axes_dim) // 2
        self.register_buffer(
            "axis_of_pair",
            torch.repeat_interleave(torch.arange(3), pairs, output_size=head_dim // 2),
            persistent=False,
        )  # (Dh / 2,): which axis each channel pair encodes; output_size also lets it run on the meta device

    def forward(self, positions: torch.Tensor) -> Rotary:
        """positions: (L, 3) (frame, row, column) -> rotation angles for L tokens."""
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(
                f"positions must be (L, 3) = (frame, row, column) per token, got {tuple(positions.shape)}"
            )
        angles = positions.float()[:, self.axis_of_pair] * self.inv_freq  # (L, Dh / 2)
        return Rotary(angles.cos(), angles.sin())


def apply_rotary(x: torch.Tensor, rot: Rotary) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i + 1) of x: (B, H, L, Dh) by the angles of `rot` (L, Dh / 2); in float32."""
    if x.shape[2] != rot.length:
        raise ValueError(f"{x.shape[2]} tokens but rotary angles for {rot.length}")
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, L, Dh / 2) each
    out = torch.stack([x1 * rot.cos - x2 * rot.sin, x1 * rot.sin + x2 * rot.cos], dim=-1)
    return out.flatten(-2).type_as(x)


#################################################################################
#                       Timestep embedding and modulation                       #
#################################################################################


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) timesteps, as in DiT / ADM: t (...,) -> (..., dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs  # (..., half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Timesteps -> vectors: sinusoidal features followed by a two-layer MLP (DiT)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (...,) -> (..., hidden_size)."""
        emb = timestep_embedding(t, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation `x * (1 + scale) + shift`; shift/scale broadcast against x (e.g. (B, S, 1, D) on
    frame-grouped tokens (B, S, n, D))."""
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis with a learned gain, computed in float32 (bf16-safe)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)


__all__ = [
    "KeyValue",
    "RMSNorm",
    "Rotary",
    "RotaryEmbedding3D",
    "TimestepEmbedder",
    "apply_rotary",
    "attention",
    "modulate",
    "rope_axes_split",
    "timestep_embedding",
]
