"""Denoiser DiT: audio-to-video diffusion transformer over causal-VAE latents, with the portrait as an ID-Sink.

One architecture, two attention modes (docs/design.md, component 3): `bidirectional` for the teacher, `block_causal`
for the streaming student. It predicts the rectified-flow velocity of the video latents (rest/diffusion/flow.py).

Token layout. A clip of f latent frames (B, C, f, h, w) plus the portrait's latent frame (B, C, 1, h, w) become
S = 1 + f *frame slots* of n = (h / p) * (w / p) tokens each, portrait first:
`[portrait | video frame 0 | video frame 1 | ...]`, row-major inside a frame. Everything per frame (timestep,
modulation, audio window, position) is indexed by slot.

ID-Sink. The portrait's tokens enter clean (timestep 0) at RoPE frame position 0; video latent frame j sits at
RoPE frame `video_rope_start + j` (default 1 + j), rows and columns at their grid indices. Rotary attention depends
only on position differences, so a streaming window that renumbers its frames 1, 2, ... (window-relative
positions) keeps the sink at the same distance pattern as in training, however long the stream runs. In
`block_causal` mode the portrait's tokens attend only to themselves, so their keys and values do not depend on
the video and can be computed once per stream.

Audio (frame-aligned cross-attention). Latent frame j covers video frames `t*(j-1)+1 .. t*j` (j = 0: frame 0
alone; t = VAE temporal compression). Its tokens attend only to the audio features of those frames plus
`audio_lookahead` following frames: a window of W = t + audio_lookahead slots, right-aligned so that slot i holds
video frame `t*(j-1) + 1 + i` (slot t-1 is always the frame that ends the latent frame; slots >= t are look-ahead;
the first window's slots before frame 0 are masked). Each slot has a learned embedding, so the model knows the
order of the frames inside a window. The default extra look-ahead is 0: the audio encoder already shifts its
features by its own look-ahead (2 frames by default), and every DiT look-ahead frame would add one more frame of
streaming latency (a chunk would wait for audio of the next chunk). The portrait slot and audio-dropped samples
(classifier-free guidance) attend to a learned null audio feature instead.

Streaming-ready self-attention. `SelfAttention` keeps keys unrotated until attention time: `key_value(x)` returns
a chunk's unrotated keys/values (what a KV cache stores), and `forward(x, rope, kv=..., rope_kv=...)` attends to
externally supplied keys/values (rotated with the positions the caller gives) followed by the chunk's own.
`DiTBlock.self_attention_kv` gives the same for a whole block (its norm and modulation included). The cache itself
lives in rest/streaming.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange

from rest.config import get_preset
from rest.models.layers import (
    KeyValue,
    RMSNorm,
    Rotary,
    RotaryEmbedding3D,
    TimestepEmbedder,
    apply_rotary,
    attention,
    modulate,
)

AttentionMode = Literal["bidirectional", "block_causal"]
ATTENTION_MODES: tuple[str, ...] = get_args(AttentionMode)
PORTRAIT_ROPE_FRAME = 0  # RoPE frame position of the ID-Sink (the portrait's latent frame)

#################################################################################
#                    Audio windows and attention masks                          #
#################################################################################


def audio_window_index(
    latent_frames: torch.Tensor,
    temporal_compression: int,
    lookahead: int,
    num_audio_frames: int,
    first_audio_frame: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which audio features each latent frame attends to (module docstring, "Audio").

    Args:
        latent_frames: (f,) absolute latent frame indices j in their stream.
        temporal_compression: t, video frames per latent frame (after the first).
        lookahead: extra video frames after the last covered one.
        num_audio_frames: Fa, features available.
        first_audio_frame: absolute video frame of feature 0.

    Returns:
        index (f, W) long into the features (clamped into range where invalid) and valid (f, W) bool,
        W = t + lookahead.
    """
    t = temporal_compression
    slots = torch.arange(t + lookahead, device=latent_frames.device)
    frames = t * (latent_frames[:, None] - 1) + 1 + slots  # (f, W) absolute video frame of each slot
    local = frames - first_audio_frame
    valid = (frames >= 0) & (local >= 0) & (local < num_audio_frames)
    return local.clamp(0, max(num_audio_frames - 1, 0)), valid


def gather_audio_windows(
    features: torch.Tensor,
    latent_frames: torch.Tensor,
    temporal_compression: int,
    lookahead: int,
    first_audio_frame: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent-frame audio windows. features: (B, Fa, D) per video frame -> windows (B, f, W, D), valid (f, W).

    Every video frame a latent frame covers must be among the features; look-ahead frames past their end are
    masked (the end of a clip). Keep `latent_frames` on the CPU: the check then costs no device synchronisation.
    """
    b, fa, _ = features.shape
    t = temporal_compression
    index, valid = audio_window_index(latent_frames, t, lookahead, fa, first_audio_frame)
    covered = t * (latent_frames - 1) + 1 + torch.arange(t, device=latent_frames.device)[:, None]  # (t, f)
    covered = covered[covered >= 0]
    if covered.numel() and (covered.min() < first_audio_frame or covered.max() >= first_audio_frame + fa):
        raise ValueError(
            f"audio features cover video frames {first_audio_frame}..{first_audio_frame + fa - 1}, but latent frames "
            f"{latent_frames.min().item()}..{latent_frames.max().item()} need frames {covered.min().item()}.."
            f"{covered.max().item()}; pass one feature per video frame (1 + {t}*(f - 1) for a clip of f latent frames)"
        )
    index, valid = index.to(features.device), valid.to(features.device)
    return features[:, index], valid  # (B, f, W, D), (f, W)


def build_attention_mask(
    mode: AttentionMode,
    num_latent_frames: int,
    tokens_per_frame: int,
    chunk_latent_frames: int,
    context_chunks: int,
    first_latent_frame: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Self-attention mask over `[portrait | f video latent frames]`, (L, L) bool with L = (1 + f) * n, True = attend.

    - `bidirectional`: every token sees every token, the portrait's included.
    - `block_causal`: latent frame j belongs to chunk `j // chunk_latent_frames` (j absolute, counted from the
      stream start); a video token sees the portrait, every token of its own chunk, and those of the previous
      `context_chunks` chunks. Portrait tokens see only the portrait (their keys/values are then fixed per stream).
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
    s = 1 + num_latent_frames
    if mode == "bidirectional":
        frames = torch.ones(s, s, dtype=torch.bool, device=device)
    else:
        if chunk_latent_frames < 1 or context_chunks < 0:
            raise ValueError(
                f"need chunk_latent_frames >= 1, context_chunks >= 0, got {chunk_latent_frames}, {context_chunks}"
            )
        j = first_latent_frame + torch.arange(num_latent_frames, device=device)
        chunk = j // chunk_latent_frames  # (f,)
        offset = chunk[:, None] - chunk[None, :]  # (f, f) query chunk - key chunk
        frames = torch.zeros(s, s, dtype=torch.bool, device=device)
        frames[0, 0] = True  # portrait -> portrait
        frames[1:, 0] = True  # video -> portrait (the ID-Sink)
        frames[1:, 1:] = (offset >= 0) & (offset <= context_chunks)
    return frames.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)  # (L, L)


#################################################################################
#                                  Attention                                    #
#################################################################################


class SelfAttention(nn.Module):
    """Multi-head self-attention with per-head QK RMS-norm and 3D RoPE applied at attention time.

    `forward(x, rope, kv=None, rope_kv=None, mask=None)`: queries, keys and values of x (B, L, D), rotated with
    `rope` (L positions); when `kv` is given (unrotated keys/values of other tokens, e.g. from a KV cache) its keys
    are rotated with `rope_kv` and placed *before* x's own, so `mask` is (L, kv.length + L).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, L, Dh)

    def key_value(self, x: torch.Tensor) -> KeyValue:
        """Unrotated (normed) keys and values of x: (B, L, D) -> (B, H, L, Dh) each."""
        d = x.shape[-1]
        k, v = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:]).chunk(2, dim=-1)
        return KeyValue(self.norm_k(self._heads(k)), self._heads(v))

    def forward(
        self,
        x: torch.Tensor,
        rope: Rotary,
        kv: KeyValue | None = None,
        rope_kv: Rotary | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = apply_rotary(self.norm_q(self._heads(q)), rope)  # (B, H, L, Dh)
        k = apply_rotary(self.norm_k(self._heads(k)), rope)
        v = self._heads(v)
        if kv is not None:
            if rope_kv is None or rope_kv.length != kv.length:
                raise ValueError("external keys/values need rope_kv with one position per external token")
            k = torch.cat([apply_rotary(kv.k, rope_kv), k], dim=2)  # (B, H, Lkv + L, Dh)
            v = torch.cat([kv.v, v], dim=2)
        out = attention(q, k, v, mask)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class AudioCrossAttention(nn.Module):
    """Frame-aligned cross-attention: the tokens of frame slot s attend only to slot s's audio window.

    Runs as one attention call over a (B * S) batch: queries (B*S, H, n, Dh), keys (B*S, H, W, Dh), with the
    invalid window slots masked. Exact, and cheaper than a (L, S*W) masked attention.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm_q = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x: (B, S*n, D), audio: (B, S, W, D) tokens, valid: (S, W) bool -> (B, S*n, D)."""
        b, length, d = x.shape
        s, w = audio.shape[1], audio.shape[2]
        n = length // s
        q = self.q(x).view(b * s, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B*S, H, n, Dh)
        k, v = (
            self.kv(audio).view(b * s, w, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # (B*S, H, W, Dh)
        mask = valid.expand(b, s, w).reshape(b * s, 1, 1, w)
        out = attention(self.norm_q(q), self.norm_k(k), v, mask)  # (B*S, H, n, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, length, d))


#################################################################################
#                                  DiT block                                    #
#################################################################################


class DiTBlock(nn.Module):
    """Self-attention -> frame-aligned audio cross-attention -> MLP, with per-frame adaLN-zero modulation.

    Modulation follows Wan 2.1: the model projects each frame's conditioning vector once to 6 * D (shared by all
    blocks) and each block adds its own learned table; the self-attention and MLP branches are gated (zero at
    initialisation, so every block starts as the identity).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.attn = SelfAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.cross_attn = AudioCrossAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Parameter(torch.zeros(6, dim))  # added to the shared per-frame projection

    def _modulation(self, modulation: torch.Tensor) -> list[torch.Tensor]:
        """(B, S, 6, D) -> six (B, S, 1, D) tensors: shift/scale/gate of attention, then of the MLP."""
        return [m.unsqueeze(2) for m in (modulation + self.modulation).unbind(dim=2)]

    def self_attention_kv(self, x: torch.Tensor, modulation: torch.Tensor) -> KeyValue:
        """Unrotated keys/values this block's self-attention computes from x: (B, S*n, D), modulation (B, S, 6, D).

        This is what a KV cache stores for these tokens at this layer.
        """
        shift, scale = self._modulation(modulation)[:2]
        h = modulate(self._frames(self.norm1(x), modulation), shift, scale).flatten(1, 2)
        return self.attn.key_value(h)

    @staticmethod
    def _frames(x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """(B, S*n, D) -> (B, S, n, D), S = modulation.shape[1]."""
        return x.unflatten(1, (modulation.shape[1], -1))

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        rope: Rotary,
        audio: torch.Tensor,
        audio_valid: torch.Tensor,
        kv: KeyValue | None = None,
        rope_kv: Rotary | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, S*n, D) tokens of S frame slots; modulation: (B, S, 6, D); audio: (B, S, W, D), audio_valid (S, W).

        kv / rope_kv / mask: see `SelfAttention.forward`.
        """
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._modulation(modulation)

        # 1. Self-attention
        h = modulate(self._frames(self.norm1(x), modulation), shift_msa, scale_msa).flatten(1, 2)
        h = self.attn(h, rope, kv=kv, rope_kv=rope_kv, mask=mask)
        x = x + (self._frames(h, modulation) * gate_msa).flatten(1, 2)

        # 2. Audio cross-attention (each frame slot attends to its own window)
        x = x + self.cross_attn(self.norm2(x), audio, audio_valid)

        # 3. Feed-forward
        h = modulate(self._frames(self.norm3(x), modulation), shift_mlp, scale_mlp).flatten(1, 2)
        h = self.mlp(h)
        return x + (self._frames(h, modulation) * gate_mlp).flatten(1, 2)


class FinalLayer(nn.Module):
    """adaLN-modulated norm and linear projection back to patches (DiT)."""

    def __init__(self, dim: int, out_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: (B, S*n, D), temb: (B, S, D) -> (B, S*n, out_dim)."""
        shift, scale = self.modulation(F.silu(temb)).unsqueeze(2).chunk(2, dim=-1)  # (B, S, 1, D) each
        h = modulate(self.norm(x).unflatten(1, (temb.shape[1], -1)), shift, scale).flatten(1, 2)
        return self.linear(h)


#################################################################################
#                                 The denoiser                                  #
#################################################################################


class DenoiserDiT(ModelMixin, ConfigMixin):
    """Audio- and portrait-conditioned video-latent denoiser (module docstring for layout, positions and audio).

    `forward(latents, timesteps, audio, portrait, ...)` returns the predicted velocity of `latents`. The attention
    mode is the config attribute `attention_mode`; change it with `set_attention_mode`, never implicitly.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiTBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 32,  # VAE latent channels; the velocity has the same
        patch_size: int = 1,  # spatial patch (p x p latent pixels per token); time is never patched
        width: int = 256,  # hidden size D
        depth: int = 8,  # number of blocks
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,  # RMS-norm queries and keys per head (stabilises attention logits)
        norm_eps: float = 1e-6,
        frequency_dim: int = 256,  # sinusoidal features of the timestep
        timestep_scale: float = 1000.0,  # t in [0, 1] is embedded as t * timestep_scale (diffusers' timestep range)
        rope_theta: float = 10000.0,
        rope_axes_dim: tuple[int, int, int] | None = None,  # head channels per (frame, row, column); None: Wan's split
        video_rope_start: int = 1,  # RoPE frame position of video latent frame 0 (the portrait is at 0)
        audio_dim: int = 256,  # features per video frame from the audio encoder
        temporal_compression: int = 4,  # t: video frames per latent frame (after the first), from the VAE
        audio_lookahead: int = 0,  # extra video frames of audio after each latent frame's own (module docstring)
        num_emotions: int = 0,  # emotion/style classes; 0 = no emotion embedding. Label num_emotions = "none"
        attention_mode: AttentionMode = "bidirectional",
        chunk_latent_frames: int = 1,  # block_causal: latent frames per chunk
        context_chunks: int = 3,  # block_causal: previous chunks each chunk sees
    ):
        super().__init__()
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, got {attention_mode!r}")
        if width % num_heads:
            raise ValueError(f"width {width} must be a multiple of num_heads {num_heads}")
        if patch_size < 1 or temporal_compression < 1 or audio_lookahead < 0 or num_emotions < 0:
            raise ValueError(
                "need patch_size >= 1, temporal_compression >= 1, audio_lookahead >= 0, num_emotions >= 0"
            )
        patch_dim = in_channels * patch_size**2
        self.audio_window = temporal_compression + audio_lookahead  # W, slots per latent frame's audio window

        # Inputs: patches, portrait, audio, conditioning.
        self.patch_embed = nn.Linear(patch_dim, width)
        self.null_portrait = nn.Parameter(torch.zeros(width))  # replaces the portrait's tokens when it is dropped
        self.null_audio = nn.Parameter(torch.zeros(audio_dim))  # the audio feature of "no audio"
        self.audio_proj = nn.Linear(audio_dim, width)
        self.audio_slot_embed = nn.Parameter(torch.zeros(self.audio_window, width))  # position inside a window
        self.time_embed = TimestepEmbedder(width, frequency_dim)
        self.emotion_embed = nn.Embedding(num_emotions + 1, width) if num_emotions > 0 else None
        self.time_proj = nn.Linear(width, 6 * width)  # shared adaLN projection (Wan 2.1); blocks add their table
        self.rope = RotaryEmbedding3D(width // num_heads, rope_axes_dim, rope_theta)

        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, mlp_ratio, qk_norm, norm_eps) for _ in range(depth))
        self.final = FinalLayer(width, patch_dim, norm_eps)
        self.gradient_checkpointing = False
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linears with zero bias; N(0, 0.02) embeddings; adaLN-zero: the modulation projections
        and the output layer start at zero, so the network starts by predicting 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.null_portrait, self.null_audio, self.audio_slot_embed):
            nn.init.normal_(p, std=0.02)
        if self.emotion_embed is not None:
            nn.init.normal_(self.emotion_embed.weight, std=0.02)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in (self.time_proj, self.final.modulation, self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DenoiserDiT:
        """A randomly initialised denoiser of preset `name` (see `rest.config.PRESETS`), with optional overrides."""
        p = get_preset(name)
        args = dict(
            in_channels=p.vae.latent_channels,
            width=p.dit.width,
            depth=p.dit.depth,
            num_heads=p.dit.heads,
            temporal_compression=p.vae.temporal_compression,
            chunk_latent_frames=p.chunk_latent_frames,
            context_chunks=p.context_chunks,
        )
        return cls(**{**args, **overrides})

    # ---------------------------------------------------------------- mode
    @property
    def attention_mode(self) -> AttentionMode:
        return self.config.attention_mode

    def set_attention_mode(self, mode: AttentionMode) -> None:
        """Switch between `bidirectional` and `block_causal`; saved with the config."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
        self.register_to_config(attention_mode=mode)

    # ---------------------------------------------------------------- pieces (also used by streaming)
    def tokens_per_frame(self, height: int, width: int) -> int:
        """n for a latent grid of height x width."""
        p = self.config.patch_size
        return (height // p) * (width // p)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, f, h, w) -> tokens (B, f*n, D), frame-major, rows then columns inside a frame."""
        p = self.config.patch_size
        x = rearrange(latents, "b c f (h p) (w q) -> b (f h w) (c p q)", p=p, q=p)
        return self.patch_embed(x)

    def unpatchify(self, x: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """(B, f*n, C*p*p) -> (B, C, f, h, w)."""
        p = self.config.patch_size
        return rearrange(x, "b (f h w) (c p q) -> b c f (h p) (w q)", f=frames, h=height // p, w=width // p, p=p, q=p)

    def portrait_tokens(self, portrait: torch.Tensor, drop_portrait: torch.Tensor | None = None) -> torch.Tensor:
        """Clean portrait latents (B, C, 1, h, w) -> (B, n, D); samples with drop_portrait[b] get the null portrait."""
        x = self.patchify(portrait)
        if drop_portrait is not None:
            x = torch.where(drop_portrait.view(-1, 1, 1), self.null_portrait.to(x.dtype), x)
        return x

    def condition(
        self, timesteps: torch.Tensor, emotion: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slot conditioning. timesteps: (B, S) in [0, 1]; emotion: (B,) labels or None (the null label).

        Returns temb (B, S, D) (final layer) and the shared adaLN projection (B, S, 6, D) (blocks).
        """
        temb = self.time_embed(timesteps * self.config.timestep_scale)  # (B, S, D)
        if self.emotion_embed is not None:
            if emotion is None:
                emotion = torch.full((timesteps.shape[0],), self.config.num_emotions, device=timesteps.device)
            temb = temb + self.emotion_embed(emotion)[:, None]
        elif emotion is not None:
            raise ValueError("this denoiser has no emotion embedding (num_emotions = 0); pass emotion=None")
        modulation = self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))  # (B, S, 6, D)
        return temb, modulation

    def audio_context(
        self,
        features: torch.Tensor,
        latent_frames: torch.Tensor,
        drop_audio: torch.Tensor | None = None,
        first_audio_frame: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio tokens of each latent frame's window. features: (B, Fa, audio_dim) per video frame, latent_frames:
        (f,) absolute indices -> tokens (B, f, W, D), valid (f, W). Samples with drop_audio[b] get null audio."""
        if drop_audio is not None:
            features = torch.where(drop_audio.view(-1, 1, 1), self.null_audio.to(features.dtype), features)
        windows, valid = gather_audio_windows(
            features, latent_frames, self.config.temporal_compression, self.config.audio_lookahead, first_audio_frame
        )
        return self.audio_proj(windows) + self.audio_slot_embed, valid

    def null_audio_context(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The portrait slot's audio window: null audio in every slot -> (B, 1, W, D), valid (1, W)."""
        tokens = self.audio_proj(self.null_audio) + self.audio_slot_embed  # (W, D)
        valid = torch.ones(1, self.audio_window, dtype=torch.bool, device=tokens.device)
        return tokens.expand(batch_size, 1, -1, -1), valid

    def rotary(self, frame_positions: torch.Tensor, height: int, width: int) -> Rotary:
        """Rotation angles of the tokens of frame slots at RoPE frame positions (S,) on an h x w latent grid."""
        p = self.config.patch_size
        rows = torch.arange(height // p, device=frame_positions.device, dtype=torch.float32)
        cols = torch.arange(width // p, device=frame_positions.device, dtype=torch.float32)
        grid = torch.meshgrid(frame_positions.float(), rows, cols, indexing="ij")
        grid = torch.stack(grid, dim=-1)  # (S, h/p, w/p, 3)
        return self.rope(grid.reshape(-1, 3))

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        audio: torch.Tensor,
        portrait: torch.Tensor,
        drop_audio: torch.Tensor | None = None,
        drop_portrait: torch.Tensor | None = None,
        emotion: torch.Tensor | None = None,
        first_latent_frame: int = 0,
        frame_positions: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow velocity of a clip of latent frames.

        Args:
            latents: (B, C, f, h, w) noisy video latents.
            timesteps: (B, f) noise level t in [0, 1] of each latent frame (0 = clean).
            audio: (B, Fa, audio_dim) audio features, one per video frame, starting at the first video frame that
                `latents[:, :, 0]` covers; Fa >= the frames covered (1 + t*(f-1) for a clip from the stream start);
                features beyond them serve as look-ahead.
            portrait: (B, C, 1, h, w) clean latents of the portrait (the ID-Sink).
            drop_audio, drop_portrait: (B,) bool, replace that sample's audio / portrait by the learned null
                (classifier-free guidance); None = keep all.
            emotion: (B,) long labels in [0, num_emotions]; None = the null label.
            first_latent_frame: index of `latents[:, :, 0]` in its stream (0 for a whole clip). Fixes which video
                frames each latent frame covers and, in block_causal mode, the chunk boundaries.
            frame_positions: (f,) RoPE frame positions of the video latent frames; None = video_rope_start +
                first_latent_frame + arange(f). The portrait is always at position 0.

        Returns:
            velocity (B, C, f, h, w) in `.sample` (or a 1-tuple).
        """
        b, c, f, h, w = latents.shape
        self._check_inputs(latents, timesteps, audio, portrait, frame_positions)
        device = latents.device
        n = self.tokens_per_frame(h, w)
        latent_frames = first_latent_frame + torch.arange(f)  # on the CPU: window checks need no device sync
        if frame_positions is None:
            frame_positions = self.config.video_rope_start + latent_frames
        frame_positions = frame_positions.to(device)
        t = self.config.temporal_compression
        first_audio_frame = 0 if first_latent_frame == 0 else t * (first_latent_frame - 1) + 1

        # 1. Tokens: portrait slot, then the video frames
        x = torch.cat([self.portrait_tokens(portrait, drop_portrait), self.patchify(latents)], dim=1)  # (B, S*n, D)

        # 2. Per-slot conditioning: the portrait is clean (t = 0)
        slot_t = torch.cat([timesteps.new_zeros(b, 1), timesteps], dim=1)  # (B, S)
        temb, modulation = self.condition(slot_t, emotion)

        # 3. Audio windows: null audio for the portrait slot
        video_audio, video_valid = self.audio_context(audio, latent_frames, drop_audio, first_audio_frame)
        portrait_audio, portrait_valid = self.null_audio_context(b)
        audio_tokens = torch.cat([portrait_audio.to(video_audio.dtype), video_audio], dim=1)  # (B, S, W, D)
        audio_valid = torch.cat([portrait_valid, video_valid], dim=0)  # (S, W)

        # 4. Positions and the attention mask
        slot_positions = torch.cat([frame_positions.new_full((1,), PORTRAIT_ROPE_FRAME), frame_positions])
        rope = self.rotary(slot_positions, h, w)
        mask = None  # bidirectional: no mask, the fastest attention kernel
        if self.attention_mode == "block_causal":
            mask = build_attention_mask(
                "block_causal",
                f,
                n,
                self.config.chunk_latent_frames,
                self.config.context_chunks,
                first_latent_frame,
                device,
            )

        # 5. Blocks
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(
                    block, x, modulation, rope, audio_tokens, audio_valid, None, None, mask
                )
            else:
                x = block(x, modulation, rope, audio_tokens, audio_valid, mask=mask)

        # 6. Output: drop the portrait slot, project, unpatchify
        out = self.final(x[:, n:], temb[:, 1:])  # (B, f*n, C*p*p)
        velocity = self.unpatchify(out, f, h, w)  # (B, C, f, h, w)
        return Transformer2DModelOutput(sample=velocity) if return_dict else (velocity,)

    def _check_inputs(self, latents, timesteps, audio, portrait, frame_positions) -> None:
        c, p = self.config.in_channels, self.config.patch_size
        if latents.ndim != 5 or latents.shape[1] != c:
            raise ValueError(f"expected latents (B, {c}, f, h, w), got {tuple(latents.shape)}")
        b, _, f, h, w = latents.shape
        if h % p or w % p:
            raise ValueError(f"latent height and width must be multiples of patch_size {p}, got {h}x{w}")
        if timesteps.shape != (b, f):
            raise ValueError(
                f"timesteps must be (B, f) = ({b}, {f}), one per latent frame, got {tuple(timesteps.shape)}; "
                f"for one level per clip pass t[:, None].expand(-1, {f})"
            )
        if portrait.shape != (b, c, 1, h, w):
            raise ValueError(
                f"portrait latents must be (B, C, 1, h, w) = {(b, c, 1, h, w)}, got {tuple(portrait.shape)}"
            )
        if audio.ndim != 3 or audio.shape[0] != b or audio.shape[2] != self.config.audio_dim:
            raise ValueError(f"audio features must be (B, Fa, {self.config.audio_dim}), got {tuple(audio.shape)}")
        if frame_positions is not None and frame_positions.shape != (f,):
            raise ValueError(f"frame_positions must be (f,) = ({f},), got {tuple(frame_positions.shape)}")


__all__ = [
    "ATTENTION_MODES",
    "AttentionMode",
    "AudioCrossAttention",
    "DenoiserDiT",
    "DiTBlock",
    "FinalLayer",
    "PORTRAIT_ROPE_FRAME",
    "SelfAttention",
    "audio_window_index",
    "build_attention_mask",
    "gather_audio_windows",
]
