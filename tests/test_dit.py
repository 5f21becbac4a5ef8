"""Denoiser DiT: shapes, the attention mask, block-causal visibility, the external-KV path, frame-aligned audio,
conditioning drops, save/load, determinism, `rest bench teacher`."""

import json

import pytest
import torch
from helpers import SMALL_DIT, small_dit

from rest.cli import main
from rest.models.dit import (
    DenoiserDiT,
    audio_window_index,
    build_attention_mask,
    gather_audio_windows,
)
from rest.models.layers import KeyValue, RotaryEmbedding3D, apply_rotary
from rest.models.loading import load_local

TOL = 1e-5  # fp32 max abs error allowed between two paths that compute the same thing


def inputs(batch: int = 2, frames: int = 3, size: int = 4, seed: int = 1, audio_dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, frames, size, size, generator=g)
    t = torch.rand(batch, frames, generator=g)
    audio = torch.randn(batch, 1 + 4 * (frames - 1), audio_dim, generator=g)
    portrait = torch.randn(batch, 4, 1, size, size, generator=g)
    return latents, t, audio, portrait


def record_self_attention_kv(dit: DenoiserDiT) -> tuple[list[KeyValue], list]:
    """Hook every block: the keys/values its self-attention computes from its input, one per block call."""
    records: list[KeyValue] = []

    def keep(block, args):
        x, modulation = args[0], args[1]
        records.append(block.self_attention_kv(x, modulation))

    return records, [block.register_forward_pre_hook(keep) for block in dit.blocks]


# ----------------------------------------------------------------------------- shapes and presets


@pytest.mark.parametrize("mode", ["bidirectional", "block_causal"])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_output_shapes(mode, patch_size):
    dit = small_dit(patch_size=patch_size, attention_mode=mode)
    latents, t, audio, portrait = inputs()
    with torch.no_grad():
        v = dit(latents, t, audio, portrait).sample
    assert v.shape == latents.shape and torch.isfinite(v).all()
    assert v.abs().mean() > 1e-3


def test_zero_initialised_output():
    """adaLN-zero: a fresh model predicts exactly zero velocity."""
    torch.manual_seed(0)
    dit = DenoiserDiT(**SMALL_DIT).eval()
    with torch.no_grad():
        assert dit(*inputs()).sample.abs().max() == 0


def test_from_preset_uses_the_registry():
    dit = DenoiserDiT.from_preset("tiny", depth=1)
    c = dit.config
    assert (c.in_channels, c.width, c.num_heads, c.depth, c.temporal_compression) == (32, 256, 4, 1, 4)
    assert (c.chunk_latent_frames, c.context_chunks, c.patch_size) == (1, 3, 1)
    assert dit.tokens_per_frame(8, 8) == 64


def test_input_errors_say_what_to_do():
    dit = small_dit()
    latents, t, audio, portrait = inputs()
    with pytest.raises(ValueError, match=r"t\[:, None\].expand"):
        dit(latents, t[:, 0], audio, portrait)
    with pytest.raises(ValueError, match="one feature per video frame"):
        dit(latents, t, audio[:, :8], portrait)
    with pytest.raises(ValueError, match="no emotion embedding"):
        dit(latents, t, audio, portrait, emotion=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown attention mode"):
        dit.set_attention_mode("causal")


# ----------------------------------------------------------------------------- attention mask


def test_block_causal_mask_exact():
    """2x2 tokens per frame, 5 latent frames, chunks of 1, context 2; slot 0 is the portrait."""
    frames = torch.tensor(
        [
            # P  0  1  2  3  4   <- key slots
            [1, 0, 0, 0, 0, 0],  # portrait: only itself
            [1, 1, 0, 0, 0, 0],  # frame 0
            [1, 1, 1, 0, 0, 0],  # frame 1
            [1, 1, 1, 1, 0, 0],  # frame 2
            [1, 0, 1, 1, 1, 0],  # frame 3: portrait + frames 1, 2 + itself
            [1, 0, 0, 1, 1, 1],  # frame 4: portrait + frames 2, 3 + itself
        ],
        dtype=torch.bool,
    )
    expected = torch.kron(frames.int(), torch.ones(4, 4, dtype=torch.int)).bool()
    mask = build_attention_mask("block_causal", 5, 4, chunk_latent_frames=1, context_chunks=2)
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    assert build_attention_mask("bidirectional", 5, 4, 1, 2).all()


def test_block_causal_mask_chunks_are_absolute():
    """Chunks of 2 counted from the stream start: latent frames 1..4 fall in chunks 0, 1, 1, 2."""
    mask = build_attention_mask("block_causal", 4, 1, chunk_latent_frames=2, context_chunks=1, first_latent_frame=1)
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 0, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


def test_block_causal_forward_equals_visible_window():
    """One block: the last chunk's output from the full masked forward equals a forward over only what it sees
    (portrait + the 2 context chunks + itself) at the same positions. Bidirectional attention does not."""
    latents, t, audio, portrait = inputs(frames=5)
    a = 1 + 4 * (2 - 1)  # first video frame covered by latent frame 2
    for mode, should_match in (("block_causal", True), ("bidirectional", False)):
        dit = small_dit(depth=1, attention_mode=mode)
        with torch.no_grad():
            full = dit(latents, t, audio, portrait).sample[:, :, -1]
            window = dit(latents[:, :, 2:], t[:, 2:], audio[:, a:], portrait, first_latent_frame=2).sample[:, :, -1]
        assert torch.allclose(full, window, atol=TOL) == should_match, (full - window).abs().max()


def test_external_kv_equals_masked_forward():
    """Two blocks: running the last chunk alone against per-layer keys/values of the portrait and its context
    chunks (taken from the full pass, as a KV cache would hold them) reproduces the full block-causal forward."""
    dit = small_dit(attention_mode="block_causal")
    latents, t, audio, portrait = inputs(frames=5)
    b, _, f, h, w = latents.shape
    n = dit.tokens_per_frame(h, w)
    per_layer, hooks = record_self_attention_kv(dit)
    with torch.no_grad():
        full = dit(latents, t, audio, portrait).sample
    for hook in hooks:
        hook.remove()

    visible = torch.cat([torch.arange(0, n), torch.arange(3 * n, 5 * n)])  # portrait slot + frames 2, 3
    with torch.no_grad():
        x = dit.patchify(latents[:, :, 4:])  # (B, n, D)
        temb, modulation = dit.condition(t[:, 4:])
        audio_tokens, valid = dit.audio_context(audio, torch.tensor([4]))
        rope = dit.rotary(torch.tensor([1 + 4]), h, w)
        rope_kv = dit.rotary(torch.tensor([0, 1 + 2, 1 + 3]), h, w)
        for block, kv in zip(dit.blocks, per_layer, strict=True):
            x = block(x, modulation, rope, audio_tokens, valid, kv=kv.select(visible), rope_kv=rope_kv)
        last = dit.unpatchify(dit.final(x, temb), 1, h, w)
    assert torch.allclose(last, full[:, :, 4:], atol=TOL), (last - full[:, :, 4:]).abs().max()


def test_block_causal_portrait_kv_ignore_the_video():
    """In block_causal mode the ID-Sink's keys/values at every layer depend on the portrait alone, so a stream
    can compute them once; in bidirectional mode they mix in the video."""
    latents, t, audio, portrait = inputs(frames=3)
    other_latents, other_t, other_audio, _ = inputs(frames=3, seed=5)
    for mode, fixed in (("block_causal", True), ("bidirectional", False)):
        dit = small_dit(attention_mode=mode)
        n = dit.tokens_per_frame(4, 4)
        records, hooks = record_self_attention_kv(dit)
        with torch.no_grad():
            dit(latents, t, audio, portrait)
            dit(other_latents, other_t, other_audio, portrait)
        for hook in hooks:
            hook.remove()
        depth = len(dit.blocks)
        sink = [kv.k[:, :, :n] for kv in records]  # the portrait slot comes first
        same = all(torch.allclose(sink[i], sink[depth + i], atol=TOL) for i in range(depth))
        assert same == fixed, mode


def test_rope_depends_only_on_position_differences():
    rope = RotaryEmbedding3D(head_dim=12)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 5, 12, generator=g).unbind(0)
    pos = torch.randint(-3, 10, (5, 3), generator=g).float()
    scores = apply_rotary(q, rope(pos)) @ apply_rotary(k, rope(pos)).transpose(-1, -2)
    moved = apply_rotary(q, rope(pos + torch.tensor([7.0, -2.0, 5.0]))) @ apply_rotary(
        k, rope(pos + torch.tensor([7.0, -2.0, 5.0]))
    ).transpose(-1, -2)
    assert torch.allclose(scores, moved, atol=1e-4)
    assert rope.axes_dim == (4, 4, 4)
    assert not torch.allclose(apply_rotary(q, rope(pos)), q, atol=1e-3)


# ----------------------------------------------------------------------------- audio


def test_audio_window_index():
    """t = 4, look-ahead 1, 13 features: windows are right-aligned, the first is short, the end is masked."""
    index, valid = audio_window_index(torch.arange(4), temporal_compression=4, lookahead=1, num_audio_frames=13)
    frames = torch.tensor([[-3, -2, -1, 0, 1], [1, 2, 3, 4, 5], [5, 6, 7, 8, 9], [9, 10, 11, 12, 13]])
    assert torch.equal(valid, (frames >= 0) & (frames < 13))
    assert torch.equal(index[valid], frames[valid])
    # Features that start later (a chunk of a stream): local indices.
    index, valid = audio_window_index(torch.tensor([2]), 4, 0, num_audio_frames=4, first_audio_frame=5)
    assert torch.equal(index, torch.tensor([[0, 1, 2, 3]])) and valid.all()


def test_gather_audio_windows_values_and_errors():
    features = torch.arange(9.0).view(1, 9, 1).expand(2, 9, 3)  # feature value = video frame index
    windows, valid = gather_audio_windows(features, torch.arange(3), temporal_compression=4, lookahead=0)
    assert windows.shape == (2, 3, 4, 3) and valid.shape == (3, 4)
    assert windows[0, :, :, 0][valid].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert valid[0].tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="need frames 0..8"):
        gather_audio_windows(features[:, :8], torch.arange(3), 4, 0)


def test_cross_attention_is_frame_aligned():
    """Changing the audio of video frame 5 changes the cross-attention output of latent frame 2 (which covers
    frames 5..8) and, with a look-ahead of 1, of latent frame 1 (frames 1..4 + 5), and of no other frame."""
    dit = small_dit(audio_lookahead=1)
    g = torch.Generator().manual_seed(3)
    audio = torch.randn(1, 13, 8, generator=g)
    x = torch.randn(1, 4 * 16, 32, generator=g)  # 4 latent frames of 16 tokens
    frames = torch.arange(4)
    changed = audio.clone()
    changed[:, 5] += 1.0
    with torch.no_grad():
        out = [dit.blocks[0].cross_attn(x, *dit.audio_context(a, frames)).view(4, 16, 32) for a in (audio, changed)]
    moved = (out[0] - out[1]).abs().amax(dim=(1, 2))
    assert moved[1] > 1e-4 and moved[2] > 1e-4
    assert moved[0] == 0 and moved[3] == 0


def test_cross_attention_knows_the_order_inside_a_window():
    """Swapping the audio of frames 5 and 6 (both in latent frame 2's window) changes latent frame 2's output:
    window slots carry a position embedding, so the model can tell which frame's audio is which."""
    dit = small_dit()
    g = torch.Generator().manual_seed(4)
    audio = torch.randn(1, 9, 8, generator=g)
    x = torch.randn(1, 3 * 16, 32, generator=g)
    swapped = audio[:, [0, 1, 2, 3, 4, 6, 5, 7, 8]]
    with torch.no_grad():
        out = [
            dit.blocks[0].cross_attn(x, *dit.audio_context(a, torch.arange(3))).view(3, 16, 32)
            for a in (audio, swapped)
        ]
    moved = (out[0] - out[1]).abs().amax(dim=(1, 2))
    assert moved[2] > 1e-4 and moved[0] == 0 and moved[1] == 0


# ----------------------------------------------------------------------------- conditioning


def test_dropped_conditions_ignore_their_input():
    """A dropped portrait (audio) is replaced by the learned null: its content no longer matters, and the output
    differs from the conditioned one."""
    dit = small_dit(num_emotions=3)
    latents, t, audio, portrait = inputs()
    other_latents, _, other_audio, other_portrait = inputs(seed=9)
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        base = dit(latents, t, audio, portrait).sample
        a = dit(latents, t, audio, portrait, drop_portrait=yes).sample
        b = dit(latents, t, audio, other_portrait, drop_portrait=yes).sample
        assert torch.equal(a, b) and not torch.allclose(a, base, atol=1e-3)
        assert torch.equal(dit(latents, t, audio, portrait, drop_portrait=no).sample, base)
        a = dit(latents, t, audio, portrait, drop_audio=yes).sample
        b = dit(latents, t, other_audio, portrait, drop_audio=yes).sample
        assert torch.equal(a, b) and not torch.allclose(a, base, atol=1e-3)
        null_label = dit(latents, t, audio, portrait, emotion=torch.full((2,), 3)).sample
        assert torch.equal(null_label, base)  # emotion=None is the null label
        happy = dit(latents, t, audio, portrait, emotion=torch.zeros(2, dtype=torch.long)).sample
        assert not torch.allclose(happy, base, atol=1e-4)


def test_per_frame_timesteps_are_used():
    dit = small_dit()
    latents, t, audio, portrait = inputs()
    t2 = t.clone()
    t2[:, 1] = 0.0
    with torch.no_grad():
        assert not torch.allclose(dit(latents, t, audio, portrait).sample, dit(latents, t2, audio, portrait).sample)


# ----------------------------------------------------------------------------- persistence and training


def test_save_load_round_trip(tmp_path):
    dit = small_dit(num_emotions=2, audio_lookahead=1)
    dit.set_attention_mode("block_causal")
    dit.save_pretrained(tmp_path / "denoiser")
    loaded = load_local(DenoiserDiT, tmp_path / "denoiser").eval()
    assert loaded.attention_mode == "block_causal" and loaded.config.audio_lookahead == 1
    args = inputs()
    with torch.no_grad():
        assert torch.equal(dit(*args).sample, loaded(*args).sample)


def test_determinism_with_a_seed():
    args = inputs()
    with torch.no_grad():
        a, b, c = (small_dit(seed=s)(*args).sample for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_gradient_checkpointing_gives_the_same_gradients():
    latents, t, audio, portrait = inputs()
    grads = []
    for checkpointing in (False, True):
        dit = small_dit().train()
        if checkpointing:
            dit.enable_gradient_checkpointing()
        dit(latents, t, audio, portrait).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in dit.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


# ----------------------------------------------------------------------------- benchmark


def test_bench_teacher_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "teacher", "--preset", "tiny", "--latent-frames", "2", "--steps", "10", "--repeats", "1"]
    assert main([*argv, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["preset"] == "tiny" and result["torch"] == torch.__version__ and result["dtype"] == "float32"
    assert (result["video_frames"], result["tokens"], result["cfg_branches"]) == (5, 3 * 64, 3)
    assert result["step_s"] > 0 and result["step_cfg_s"] > 0
    assert result["compute_s_per_video_s"] == pytest.approx(10 * result["step_s"] / (5 / 25))
    assert main(["bench", "teacher", "--latent-frames", "0"]) == 2
    assert "--latent-frames and --steps must be >= 1" in capsys.readouterr().err
