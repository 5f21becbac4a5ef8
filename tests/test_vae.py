"""Causal video VAE: shapes, causality, chunked == whole, save/load, presets."""

import json

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from rest.config import PRESETS
from rest.errors import RestError
from rest.models.loading import load_local
from rest.models.vae import CausalCache, CausalConv3d, CausalVideoVAE, ChannelRMSNorm, Downsample, Upsample

TOL = 1e-4  # fp32 max abs error allowed between chunked and whole-clip passes
SMALL = dict(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32), temporal_downsample=(True, True))


def small_vae(seed: int = 0, **overrides) -> CausalVideoVAE:
    torch.manual_seed(seed)
    return CausalVideoVAE(**{**SMALL, **overrides}).eval()


def clip(frames: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def encode_in_chunks(vae, x, chunks):
    assert sum(chunks) == x.shape[2]
    cache, outs, start = vae.init_cache("encode"), [], 0
    for n in chunks:
        out, cache = vae.encode_chunk(x[:, :, start : start + n], cache)
        outs.append(out.latent_dist.mean)
        start += n
    return torch.cat(outs, dim=2), cache


def decode_in_chunks(vae, z, chunks):
    assert sum(chunks) == z.shape[2]
    cache, outs, start = vae.init_cache("decode"), [], 0
    for n in chunks:
        out, cache = vae.decode_chunk(z[:, :, start : start + n], cache)
        outs.append(out.sample)
        start += n
    return torch.cat(outs, dim=2), cache


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("frames", [1, 5, 17])
def test_tiny_preset_shapes(frames):
    vae = CausalVideoVAE.from_preset("tiny").eval()
    assert (vae.spatial_compression, vae.temporal_compression) == (16, 4)
    with torch.no_grad():
        post = vae.encode(clip(frames, 128)).latent_dist
        assert post.mean.shape == (1, 32, 1 + (frames - 1) // 4, 8, 8)
        assert vae.decode(post.mean).sample.shape == (1, 3, frames, 128, 128)


def test_base_preset_shapes_narrow():
    vae = CausalVideoVAE.from_preset("base", block_out_channels=(16, 32, 64, 64), layers_per_block=1, mid_layers=1)
    vae.eval()
    assert (vae.spatial_compression, vae.temporal_compression) == (32, 8)
    with torch.no_grad():
        post = vae.encode(clip(17, 64)).latent_dist
        assert post.mean.shape == (1, 128, 3, 2, 2)
        assert vae.decode(post.mean).sample.shape == (1, 3, 17, 64, 64)


def test_preset_registry_matches_design():
    tiny, base = PRESETS["tiny"], PRESETS["base"]
    assert (tiny.resolution, tiny.vae.spatial_compression, tiny.vae.temporal_compression) == (128, 16, 4)
    assert (base.resolution, base.vae.spatial_compression, base.vae.temporal_compression) == (512, 32, 8)
    assert (tiny.vae.latent_channels, base.vae.latent_channels) == (32, 128)
    assert (tiny.tokens_per_latent_frame, base.tokens_per_latent_frame) == (64, 256)
    assert (tiny.chunk_frames, base.chunk_frames) == (4, 8)


def test_bad_frame_count_and_size_are_refused():
    vae = small_vae()
    with pytest.raises(ValueError, match=r"1 \+ 4\*k frames"):
        vae.encode(clip(6))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(clip(5, size=36))
    with pytest.raises(ValueError, match="not a encode cache|not a decode cache"):
        vae.decode_chunk(torch.zeros(1, 4, 1, 4, 4), vae.init_cache("encode"))


# -------------------------------------------------------------------------- causality


def test_portrait_codes_as_first_frame_of_a_video():
    """The first frame is coded alone: a 1-frame clip gives the first latent frame of any video starting with it."""
    vae = small_vae()
    x = clip(9)
    with torch.no_grad():
        video = vae.encode(x).latent_dist.mean
        portrait = vae.encode(x[:, :, :1]).latent_dist.mean
    assert portrait.shape[2] == 1
    torch.testing.assert_close(portrait, video[:, :, :1], atol=TOL, rtol=0)


def test_encoder_and_decoder_are_causal():
    vae = small_vae()
    x = clip(13)
    x2 = x.clone()
    x2[:, :, 9:] = -x2[:, :, 9:]  # change frames 9..12 = latent frame 3 (covers frames 9-12)
    with torch.no_grad():
        z, z2 = vae.encode(x).latent_dist.mean, vae.encode(x2).latent_dist.mean
        assert torch.allclose(z[:, :, :3], z2[:, :, :3], atol=TOL)
        assert not torch.allclose(z[:, :, 3:], z2[:, :, 3:], atol=1e-3)
        z3 = z.clone()
        z3[:, :, 2] += 1.0  # latent frame 2 decodes to frames 5..8
        y, y3 = vae.decode(z).sample, vae.decode(z3).sample
    assert torch.allclose(y[:, :, :5], y3[:, :, :5], atol=TOL)
    assert not torch.allclose(y[:, :, 5:9], y3[:, :, 5:9], atol=1e-3)


# ------------------------------------------------------------------ chunked == whole


@pytest.mark.parametrize(
    "chunks",
    [[1] * 17, [1, 4, 4, 4, 4], [5, 12], [3, 7, 7], [2, 2, 13], [16, 1], [17]],
    ids=lambda c: "-".join(map(str, c)),
)
def test_chunked_encode_equals_whole(chunks):
    vae = small_vae()
    x = clip(17)
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean
        chunked, cache = encode_in_chunks(vae, x, chunks)
    assert chunked.shape == whole.shape
    assert (chunked - whole).abs().max().item() <= TOL
    assert (cache.frames_in, cache.frames_out) == (17, 5)


def test_chunked_encode_random_chunkings():
    vae = small_vae()
    x = clip(33)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean
        for _ in range(3):
            chunks, left = [], 33
            while left:
                n = min(left, int(torch.randint(1, 9, (), generator=g)))
                chunks.append(n)
                left -= n
            chunked, _ = encode_in_chunks(vae, x, chunks)
            assert (chunked - whole).abs().max().item() <= TOL, chunks


@pytest.mark.parametrize("chunks", [[1] * 9, [1, 8], [4, 5], [2, 3, 4], [9]], ids=lambda c: "-".join(map(str, c)))
def test_chunked_decode_equals_whole(chunks):
    vae = small_vae()
    z = torch.randn(1, 4, 9, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = vae.decode(z).sample
        chunked, cache = decode_in_chunks(vae, z, chunks)
    assert whole.shape == (1, 3, 33, 32, 32)
    assert (chunked - whole).abs().max().item() <= TOL
    assert (cache.frames_in, cache.frames_out) == (9, 33)


def test_norm_none_streams_exactly_and_shares_the_weights_layout():
    rms, plain = small_vae(), small_vae(norm="none")
    assert {k: v.shape for k, v in rms.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    x = clip(9)
    with torch.no_grad():
        whole = plain.encode(x).latent_dist.mean
        chunked, _ = encode_in_chunks(plain, x, [1, 4, 4])
        assert (chunked - whole).abs().max().item() <= TOL
        assert (whole - rms.encode(x).latent_dist.mean).abs().max().item() > 1e-2  # the norm does act
    with pytest.raises(ValueError, match="norm must be 'rms' or 'none'"):
        small_vae(norm="group")


def test_copy_last_frame_weights_keeps_the_first_frame_path():
    """The first frame of a stream decodes through the second half of each temporal pair only; the copy fills
    the first halves from the second, so that frame is unchanged and the other frames change."""
    vae = small_vae()
    z = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = vae.decode(z).sample
        vae.copy_last_frame_weights_()
        after = vae.decode(z).sample
    assert torch.equal(after[:, :, :1], before[:, :, :1])
    assert (after[:, :, 1:] - before[:, :, 1:]).abs().max().item() > 1e-2
    upsamplers = [b for b in vae.decoder.blocks if type(b).__name__ == "Upsample" and b.channel_to_time is not None]
    assert len(upsamplers) == 2
    for block in upsamplers:
        pairs = block.conv.conv.weight.view(-1, 2, 4, *block.conv.conv.weight.shape[1:])
        assert torch.equal(pairs[:, 0], pairs[:, 1])


def test_base_like_chunked_equals_whole():
    """8x temporal compression (three temporal levels) streams exactly too."""
    vae = small_vae(block_out_channels=(8, 16, 32, 32), temporal_downsample=(True, True, True), latent_channels=8)
    x = clip(17, size=32)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        assert z.shape == (1, 8, 3, 2, 2)
        zc, _ = encode_in_chunks(vae, x, [1, 3, 5, 8])
        assert (zc - z).abs().max().item() <= TOL
        y = vae.decode(z).sample
        yc, _ = decode_in_chunks(vae, z, [1, 1, 1])
        assert (yc - y).abs().max().item() <= TOL


def test_cache_reset_starts_a_new_stream():
    vae = small_vae()
    x = clip(9)
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean
        _, cache = encode_in_chunks(vae, clip(9, seed=7), [9])  # some other stream first
        cache.reset()
        out, cache = vae.encode_chunk(x, cache)
    assert (out.latent_dist.mean - whole).abs().max().item() <= TOL


# ---------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    vae = small_vae(scaling_factor=0.5, shift_factor=0.1)
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "config.json").is_file()
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["_class_name"] == "CausalVideoVAE" and config["block_out_channels"] == [8, 16, 32]
    loaded = CausalVideoVAE.from_pretrained(tmp_path / "vae").eval()
    x = clip(5)
    with torch.no_grad():
        a, b = vae(x, sample_posterior=False)[0], loaded(x, sample_posterior=False)[0]
    assert torch.equal(a, b)
    z = torch.ones(1, 4, 1, 4, 4)
    assert torch.allclose(loaded.denormalize_latents(loaded.normalize_latents(z)), z)
    assert torch.allclose(loaded.normalize_latents(z), (z - 0.1) * 0.5)


def test_local_loader_errors_say_what_to_put_where(tmp_path):
    with pytest.raises(RestError, match="weights folder not found"):
        load_local(CausalVideoVAE, tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RestError, match="no config.json"):
        load_local(CausalVideoVAE, tmp_path / "empty")
    small_vae().save_pretrained(tmp_path / "vae")
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RestError, match="cannot load"):
        load_local(CausalVideoVAE, tmp_path / "vae")
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(RestError, match="no \\*.safetensors"):
        load_local(CausalVideoVAE, tmp_path / "vae")


def test_local_loader_loads(tmp_path):
    vae = small_vae()
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_local(CausalVideoVAE, tmp_path / "vae")
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), loaded.state_dict().values(), strict=True))


def test_forward_with_streamed_context_equals_the_whole_clip_continuation():
    """Training on a window after a no-grad warm-up gives exactly the whole clip's reconstruction of that window."""
    vae = small_vae()
    x = clip(21)
    recon_whole, _ = vae(x, sample_posterior=False)
    recon, posterior = vae(x, sample_posterior=False, context_frames=9)
    assert recon.shape[2] == 12 and posterior.mean.shape[2] == 3
    assert (recon - recon_whole[:, :, 9:]).abs().max().item() <= TOL
    recon.mean().backward()  # gradients flow through the window only
    assert vae.encoder.conv_in.conv.weight.grad is not None
    with pytest.raises(ValueError, match="context_frames must be 1 \\+ 4\\*j"):
        vae(x, context_frames=8)


# ------------------------------------------------- fast paths == reference formulations
# The layers keep activations channels-last and stack time taps along the innermost dimension; these tests hold
# them to the plain definitions, written in the (B, C, T, H, W) layout the way the layers first were.


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d)


def reference_causal_conv(conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
    """The definition: conv3d over the clip with the first frame repeated k - 1 times in front (zero pad in space)."""
    k = conv.kernel_t
    x = torch.cat([x[:, :, :1].expand(-1, -1, k - 1, -1, -1), x], dim=2)
    return F.conv3d(
        x, conv.conv.weight, conv.conv.bias, stride=conv.conv.stride, padding=(0, conv.padding, conv.padding)
    )


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_causal_conv_equals_conv3d_whole_and_chunked(stride, layout):
    torch.manual_seed(0)
    conv = CausalConv3d(6, 10, stride=stride)
    conv.cache_index = 0
    x = torch.randn(2, 6, 7, 8, 8)
    expected = reference_causal_conv(conv, x)
    if layout == "channels_last":
        x = channels_last(x)
    with torch.no_grad():
        whole = conv(x, CausalCache(kind="encode", slots=[None]))
        cache, parts = CausalCache(kind="encode", slots=[None]), []
        for s, n in ((0, 1), (1, 1), (2, 4), (6, 1)):
            parts.append(conv(x[:, :, s : s + n], cache))
    torch.testing.assert_close(whole, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(torch.cat(parts, dim=2), expected, atol=TOL, rtol=0)
    assert cache.slots[0].shape == (2, 6, 2, 8, 8)  # the last k - 1 input frames, batch first


def test_packed_weight_follows_the_parameter():
    """The packed weight kept for inference is rebuilt after an optimiser step and after a load_state_dict."""
    torch.manual_seed(0)
    conv = CausalConv3d(4, 4)
    conv.cache_index = 0
    x = torch.randn(1, 4, 3, 6, 6)

    def run() -> torch.Tensor:
        return conv(x, CausalCache(kind="encode", slots=[None]))

    with torch.no_grad():
        first = run()
    run().square().mean().backward()
    torch.optim.SGD(conv.parameters(), lr=1.0).step()
    with torch.no_grad():
        stepped = run()
        torch.testing.assert_close(stepped, reference_causal_conv(conv, x), atol=TOL, rtol=0)
        assert (stepped - first).abs().max() > 1e-3
        conv.load_state_dict({k: torch.zeros_like(v) for k, v in conv.state_dict().items()})
        assert run().abs().max() == 0


@pytest.mark.parametrize("kind", ["rms", "none"])
def test_channel_norm_equals_its_formula(kind):
    norm = ChannelRMSNorm(8, kind)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(2, 8, 3, 4, 4)
    expected = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + norm.eps) if kind == "rms" else x
    expected = expected * norm.weight.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(norm(channels_last(x)), expected, atol=TOL, rtol=0)


def test_resampling_equals_the_reference_rearranges():
    """Down/Upsample (channels-last, channel-to-space and channel-to-time in one copy) equal the NCDHW recipe."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 8, 8)
    down = Downsample(8, 16, temporal=True)
    down.conv.cache_index, down.time_to_channel.cache_index = 0, 1
    with torch.no_grad():
        conv = reference_causal_conv(down.conv, x)
        h = torch.cat([torch.cat([conv, x], dim=1)[:, :, :1], torch.cat([conv, x], dim=1)], dim=2)  # pair 1st frame
        h = rearrange(h, "b c (t two) h w -> b (c two) t h w", two=2)
        h = rearrange(h, "b c t (h p) (w q) -> b (c p q) t h w", p=2, q=2)
        expected = h[:, :16] + h[:, 16:].unflatten(1, (16, -1)).mean(dim=2)
        got = down(channels_last(x), CausalCache(kind="encode", slots=[None, None]))
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)

    up = Upsample(16, 8, temporal=True)
    up.conv.cache_index, up.channel_to_time.cache_index = 0, 1
    z = torch.randn(2, 16, 3, 4, 4)
    with torch.no_grad():
        h = reference_causal_conv(up.conv, z) + z.repeat_interleave(up.repeats, dim=1)
        h = rearrange(h, "b (c p q) t h w -> b c t (h p) (w q)", p=2, q=2)
        expected = rearrange(h, "b (c two) t h w -> b c (t two) h w", two=2)[:, :, 1:]  # drop the duplicate
        got = up(channels_last(z), CausalCache(kind="decode", slots=[None, None]))
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_outputs_are_contiguous_whatever_the_input_layout():
    vae = small_vae()
    x = clip(5)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        y = vae.decode(z).sample
        assert z.is_contiguous() and y.is_contiguous()
        torch.testing.assert_close(vae.decode(channels_last(z)).sample, y, atol=TOL, rtol=0)
        torch.testing.assert_close(vae.encode(channels_last(x)).latent_dist.mean, z, atol=TOL, rtol=0)


def test_decode_caches_stack_along_the_batch():
    """Two streams' decode caches concatenated slot by slot along dim 0 decode on as one batch of two streams."""
    vae = small_vae()
    g = torch.Generator().manual_seed(4)
    za, zb = torch.randn(1, 4, 3, 4, 4, generator=g), torch.randn(1, 4, 3, 4, 4, generator=g)
    with torch.no_grad():
        ya, ca = decode_in_chunks(vae, za[:, :, :2], [1, 1])
        yb, cb = decode_in_chunks(vae, zb[:, :, :2], [2])
        slots = [torch.cat([a, b]) if torch.is_tensor(a) else a for a, b in zip(ca.slots, cb.slots, strict=True)]
        assert all(a is b for a, b in zip(ca.slots, cb.slots, strict=True) if not torch.is_tensor(a))
        both = CausalCache(kind="decode", slots=slots)
        out, both = vae.decode_chunk(torch.cat([za[:, :, 2:], zb[:, :, 2:]]), both)
        torch.testing.assert_close(out.sample[:1], vae.decode(za).sample[:, :, 5:], atol=TOL, rtol=0)
        torch.testing.assert_close(out.sample[1:], vae.decode(zb).sample[:, :, 5:], atol=TOL, rtol=0)
