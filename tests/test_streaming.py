"""Streaming: the ID-Context cache and the chunk rollout agree with the block-causal masked forward (before and
after eviction), the streamed VAE decode equals the whole-clip decode, memory and positions stay bounded, reset,
determinism, and `rest bench stream`."""

import json

import pytest
import torch
from helpers import small_dit

from rest.cli import main
from rest.diffusion.flow import euler_step, flow_sigmas
from rest.models.dit import DenoiserDiT
from rest.models.layers import KeyValue
from rest.models.vae import CausalVideoVAE
from rest.streaming import (
    IDContextCache,
    StreamingSession,
    chunk_audio_span,
    chunk_velocity,
    chunk_video_frames,
    rollout_chunk,
    write_chunk,
    write_sink,
)

TOL = 1e-4  # fp32 max abs error allowed between two paths that compute the same thing
SIZE = 4  # latent grid 4x4 -> 16 tokens per latent frame


def streaming_dit(seed: int = 0, **overrides) -> DenoiserDiT:
    """`helpers.small_dit` as a streaming student: block-causal, with one video frame of audio look-ahead."""
    return small_dit(seed, **{"audio_lookahead": 1, "attention_mode": "block_causal", **overrides})


def stream_inputs(dit: DenoiserDiT, chunks: int, batch: int = 2, seed: int = 1):
    """Noise per chunk, audio features for the whole stream (+ look-ahead) and a portrait."""
    g = torch.Generator().manual_seed(seed)
    c = dit.config.chunk_latent_frames
    noise = torch.randn(batch, 4, chunks * c, SIZE, SIZE, generator=g)
    _, stop = chunk_audio_span(dit, chunks - 1)
    audio = torch.randn(batch, stop, 8, generator=g)
    portrait = torch.randn(batch, 4, 1, SIZE, SIZE, generator=g)
    return noise, audio, portrait


def new_cache(dit: DenoiserDiT, portrait: torch.Tensor) -> IDContextCache:
    cache = IDContextCache.for_model(dit, portrait.shape[0], SIZE, SIZE)
    return write_sink(dit, cache, portrait)


def chunk_audio(dit: DenoiserDiT, audio: torch.Tensor, chunk: int) -> torch.Tensor:
    start, stop = chunk_audio_span(dit, chunk)
    return audio[:, start:stop]


def masked_velocity(dit, past, x, t, audio, portrait) -> torch.Tensor:
    """The full block-causal forward over [portrait, past (clean), x at levels t]: x's velocity."""
    levels = torch.cat([t.new_zeros(t.shape[0], past.shape[2]), t], dim=1)
    return dit(torch.cat([past, x], dim=2), levels, audio, portrait).sample[:, :, past.shape[2] :]


# ----------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("chunk_latent_frames", [1, 2])
def test_streaming_equals_block_causal_masked_forward(chunk_latent_frames):
    """(a) Before eviction (context + 1 chunks), every chunk's velocity from the cache path equals the masked
    block-causal forward over [portrait, the generated chunks so far (clean), the current noisy chunk], and the
    K-step rollout equals the same Euler steps run on the full masked forward."""
    dit = streaming_dit(chunk_latent_frames=chunk_latent_frames)
    c, chunks = chunk_latent_frames, dit.config.context_chunks + 1
    noise, audio, portrait = stream_inputs(dit, chunks)
    sigmas = flow_sigmas(2, shift=2.0)
    cache = new_cache(dit, portrait)
    generated: list[torch.Tensor] = []
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for j in range(chunks):
            own = slice(j * c, (j + 1) * c)
            x, t = torch.randn(2, 4, c, SIZE, SIZE, generator=g), torch.rand(2, c, generator=g)
            _, stop = chunk_audio_span(dit, j)
            past = torch.cat([*generated, x.new_zeros(2, 4, 0, SIZE, SIZE)], dim=2)
            streamed = chunk_velocity(dit, cache, x, t, chunk_audio(dit, audio, j))
            full = masked_velocity(dit, past, x, t, audio[:, :stop], portrait)
            assert torch.allclose(streamed, full, atol=TOL), (streamed - full).abs().max()

            reference = noise[:, :, own]
            for i in range(len(sigmas) - 1):
                v = masked_velocity(dit, past, reference, sigmas[i].expand(2, c), audio[:, :stop], portrait)
                reference = euler_step(reference, v, sigmas[i], sigmas[i + 1])
            latents, cache = rollout_chunk(dit, cache, noise[:, :, own], chunk_audio(dit, audio, j), sigmas)
            assert torch.allclose(latents, reference, atol=TOL), (latents - reference).abs().max()
            generated.append(latents)
    assert cache.chunks_written == chunks


def test_rolling_window_equals_fresh_forward_after_eviction():
    """(b) Past the context (chunks evicted, ring wrapped), a chunk's velocity from the rolling cache equals a
    fresh masked forward over [sink + the last `context` chunks + current] numbered from the window's start.

    Exact for one layer: there a chunk's cached keys/values depend only on the chunk itself. With more layers a
    cached chunk carries what it attended to when it was written (which reaches further back than the window):
    that is what a KV cache is, so the multi-layer check is `test_rolling_window_equals_recompute`."""
    dit = streaming_dit(depth=1)
    context, chunks = dit.config.context_chunks, dit.config.context_chunks + 4
    noise, audio, portrait = stream_inputs(dit, chunks)
    sigmas = flow_sigmas(1, shift=2.0)
    cache = new_cache(dit, portrait)
    generated = []
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for j in range(chunks):
            if j > context:
                x, t = torch.randn(2, 4, 1, SIZE, SIZE, generator=g), torch.rand(2, 1, generator=g)
                streamed = chunk_velocity(dit, cache, x, t, chunk_audio(dit, audio, j))
                first = j - context
                start, _ = chunk_audio_span(dit, first)
                _, stop = chunk_audio_span(dit, j)
                window = torch.cat([*generated[first:], x], dim=2)
                levels = torch.cat([t.new_zeros(2, context), t], dim=1)
                positions = dit.config.video_rope_start + torch.arange(context + 1)
                fresh = dit(
                    window, levels, audio[:, start:stop], portrait, first_latent_frame=first, frame_positions=positions
                ).sample[:, :, -1:]
                assert torch.allclose(streamed, fresh, atol=TOL), (j, (streamed - fresh).abs().max())
                # Absolute positions (the sink ever farther away) give another result: the window is relative.
                absolute = dit(window, levels, audio[:, start:stop], portrait, first_latent_frame=first).sample
                assert not torch.allclose(streamed, absolute[:, :, -1:], atol=1e-3)
            latents, cache = rollout_chunk(dit, cache, noise[:, :, j : j + 1], chunk_audio(dit, audio, j), sigmas)
            generated.append(latents)


def test_rolling_window_equals_recompute():
    """(b, two layers) The ring buffer after eviction equals a recompute that keeps every chunk's keys/values in a
    plain list and attends to [sink, the last `context` chunks in time order, current] at positions 0 / 1, 2, ..."""
    dit = streaming_dit()
    context, chunks = dit.config.context_chunks, dit.config.context_chunks + 4
    noise, audio, portrait = stream_inputs(dit, chunks)
    sigmas = flow_sigmas(1, shift=2.0)
    cache = new_cache(dit, portrait)
    n = cache.tokens_per_frame
    sink = [KeyValue(cache.keys[i, :, :, :n].clone(), cache.values[i, :, :, :n].clone()) for i in range(2)]
    history: list[list[KeyValue]] = []  # per chunk, per layer
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for j in range(chunks):
            x, t = torch.randn(2, 4, 1, SIZE, SIZE, generator=g), torch.rand(2, 1, generator=g)
            streamed = chunk_velocity(dit, cache, x, t, chunk_audio(dit, audio, j))
            recent = history[-context:] if context else []
            m = len(recent)
            tokens = dit.patchify(x)
            temb, modulation = dit.condition(t)
            audio_tokens, valid = dit.audio_context(
                chunk_audio(dit, audio, j), torch.tensor([j]), None, chunk_audio_span(dit, j)[0]
            )
            rope = dit.rotary(torch.tensor([1 + m]), SIZE, SIZE)
            rope_kv = dit.rotary(torch.arange(m + 1), SIZE, SIZE)  # sink at 0, context chunks at 1 .. m
            for layer, block in enumerate(dit.blocks):
                kv = KeyValue.cat([sink[layer], *(chunk[layer] for chunk in recent)])
                tokens = block(tokens, modulation, rope, audio_tokens, valid, kv=kv, rope_kv=rope_kv)
            recomputed = dit.unpatchify(dit.final(tokens, temb), 1, SIZE, SIZE)
            assert torch.allclose(streamed, recomputed, atol=TOL), (j, (streamed - recomputed).abs().max())

            _, cache = rollout_chunk(dit, cache, noise[:, :, j : j + 1], chunk_audio(dit, audio, j), sigmas)
            slot = j % context
            span = slice(n + slot * n, n + (slot + 1) * n)
            history.append(
                [KeyValue(cache.keys[i, :, :, span].clone(), cache.values[i, :, :, span].clone()) for i in range(2)]
            )


def test_streamed_decode_equals_whole_clip_decode():
    """(c) The session's chunk-by-chunk frames equal the whole-clip VAE decode of the same latents."""
    dit = streaming_dit()
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).eval()  # 8x, 4x
    chunks = 5
    _, audio, portrait = stream_inputs(dit, chunks)
    session = StreamingSession(dit, vae, portrait, flow_sigmas(2, shift=2.0), end="whole_chunks")
    latents, frames = [], []
    session.buffer_features(audio)
    with torch.no_grad():
        for j in range(chunks):
            assert session.ready()
            z = session.next_latents()
            out = session.decode(z)
            assert out.shape[2] == chunk_video_frames(dit, j)
            latents.append(z)
            frames.append(out)
        whole = vae.decode(vae.denormalize_latents(torch.cat(latents, dim=2))).sample.clamp(-1, 1)
    streamed = torch.cat(frames, dim=2)
    assert streamed.shape == (2, 3, 1 + 4 * (chunks - 1), 32, 32)
    assert torch.allclose(streamed, whole, atol=TOL), (streamed - whole).abs().max()


# ----------------------------------------------------------------------------- bounded state


def test_cache_memory_and_positions_stay_bounded():
    """The buffers are allocated once (same storage, same size for every chunk), and the window positions stop
    growing once the context is full: chunk j >= context sees its context at 1 .. context*c, itself after them."""
    dit = streaming_dit(chunk_latent_frames=2)
    c, context = 2, dit.config.context_chunks
    chunks = 3 * context + 2
    noise, audio, portrait = stream_inputs(dit, chunks, batch=1)
    cache = new_cache(dit, portrait)
    pointers, nbytes = (cache.keys.data_ptr(), cache.values.data_ptr()), cache.nbytes
    assert cache.keys.shape == (2, 1, 2, 16 * (1 + context * c), 16)
    limit = dit.config.video_rope_start + (context + 1) * c
    for j in range(chunks):
        visible, current = cache.frame_positions()
        m = min(j, context)
        assert cache.layer(0).length == 16 * (1 + m * c) and visible.shape == (1 + m * c,)
        assert visible[0] == 0 and int(torch.cat([visible, current]).max()) < limit
        assert sorted(visible[1:].tolist()) == list(range(1, 1 + m * c))  # the ring holds the last m chunks
        assert current.tolist() == [1 + m * c + i for i in range(c)]
        _, cache = rollout_chunk(
            dit, cache, noise[:, :, j * c : (j + 1) * c], chunk_audio(dit, audio, j), flow_sigmas(1, shift=2.0)
        )
        assert (cache.keys.data_ptr(), cache.values.data_ptr()) == pointers and cache.nbytes == nbytes
    assert cache.chunks_written == chunks and sorted(cache.slot_chunk) == list(range(chunks - context, chunks))


def test_cache_reset_and_errors():
    dit = streaming_dit()
    noise, audio, portrait = stream_inputs(dit, 4)
    sigmas = flow_sigmas(2, shift=2.0)

    def run(cache):
        out = []
        for j in range(4):
            latents, cache = rollout_chunk(dit, cache, noise[:, :, j : j + 1], chunk_audio(dit, audio, j), sigmas)
            out.append(latents)
        return torch.cat(out, dim=2)

    cache = new_cache(dit, portrait)
    first = run(cache)
    with pytest.raises(RuntimeError, match="already written"):
        write_sink(dit, cache, portrait)
    cache.reset(keep_sink=True)  # a new stream of the same portrait
    assert cache.chunks_written == 0 and cache.has_sink
    assert torch.equal(run(cache), first)
    cache.reset()
    assert not cache.has_sink and cache.chunks_written == 0 and cache.keys.abs().sum() == 0
    with pytest.raises(RuntimeError, match="no ID-Sink"):
        rollout_chunk(dit, cache, noise[:, :, :1], chunk_audio(dit, audio, 0), sigmas)
    write_sink(dit, cache, portrait)
    assert torch.equal(run(cache), first)

    # Misuse fails with a message that says what to do.
    with pytest.raises(ValueError, match="set_attention_mode"):
        bidirectional = streaming_dit(attention_mode="bidirectional")
        write_sink(bidirectional, IDContextCache.for_model(bidirectional, 2, SIZE, SIZE), portrait)
    with pytest.raises(ValueError, match="IDContextCache.for_model"):
        chunk_velocity(dit, IDContextCache.for_model(dit, 1, SIZE, SIZE), noise[:, :, :1], torch.ones(2, 1), audio)
    with pytest.raises(ValueError, match="ending at 0"):
        rollout_chunk(dit, new_cache(dit, portrait), noise[:, :, :1], audio, sigmas[:-1])


def test_context_timestep_changes_the_written_context():
    """A context written at t_c > 0 (the chunk re-noised) differs from the clean one, is the same for the same
    noise and changes with other noise; without noise it is an error that says what to pass."""
    dit = streaming_dit()
    noise, audio, portrait = stream_inputs(dit, 2)
    sigmas = flow_sigmas(1, shift=2.0)
    eps = torch.randn(noise[:, :, :1].shape, generator=torch.Generator().manual_seed(5))
    results = []
    for t_c, context_noise in ((0.0, None), (0.1, eps), (0.1, eps), (0.1, -eps)):
        cache = new_cache(dit, portrait)
        rollout_chunk(
            dit,
            cache,
            noise[:, :, :1],
            chunk_audio(dit, audio, 0),
            sigmas,
            context_timestep=t_c,
            context_noise=context_noise,
        )
        results.append(cache.layer(1).k.clone())
    assert not torch.allclose(results[0], results[1]) and torch.equal(results[1], results[2])
    assert not torch.allclose(results[2], results[3])
    with pytest.raises(ValueError, match="context_noise"):
        rollout_chunk(dit, new_cache(dit, portrait), noise[:, :, :1], audio, sigmas, context_timestep=0.1)


def test_write_chunk_is_the_rollouts_write():
    """Writing the rollout's own latents with write_chunk leaves the same cache as the rollout."""
    dit = streaming_dit()
    noise, audio, portrait = stream_inputs(dit, 1)
    a, b = new_cache(dit, portrait), new_cache(dit, portrait)
    latents, a = rollout_chunk(dit, a, noise, chunk_audio(dit, audio, 0), flow_sigmas(2, shift=2.0))
    write_chunk(dit, b, latents, chunk_audio(dit, audio, 0))
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) and b.chunks_written == 1


# ----------------------------------------------------------------------------- the session


def tiny_vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    return CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).eval()


def test_session_streams_whole_chunks_and_is_deterministic():
    """Features pushed in ragged pieces come out as whole chunks of frames once their look-ahead arrived; finish
    emits the rest; a seed fixes the result, another seed changes it; reset() replays the stream."""
    dit, vae = streaming_dit(), tiny_vae()
    _, audio, portrait = stream_inputs(dit, 4)  # 1 + 4*3 frames + 1 look-ahead = 14 features
    audio = audio[:, :13]  # the last chunk's look-ahead frame never arrives: finish masks it

    def new_session(seed):
        return StreamingSession(dit, vae, portrait, flow_sigmas(2, shift=2.0), seed=seed, end="whole_chunks")

    def run(seed):
        session = new_session(seed)
        frames = [session.push_features(piece) for piece in audio.split([3, 5, 1, 4], dim=1)]
        frames.append(session.finish())
        return torch.cat(frames, dim=2), [f.shape[2] for f in frames], session

    session = new_session(0)
    session.buffer_features(audio[:, :1])
    with pytest.raises(RuntimeError, match="push more features"):
        session.next_latents()

    frames, counts, session = run(0)
    # features available after each push: 3, 8, 9, 13 -> chunk 0 needs 2, chunk 1 6, chunk 2 10, chunk 3 14
    assert counts == [1, 4, 0, 4, 4] and frames.shape == (2, 3, 13, 32, 32)
    assert session.finished and session.chunks_done == 4 and session.frames_out == 13
    assert session.finish().shape[2] == 0
    with pytest.raises(RuntimeError, match="finished"):
        session.push_features(audio[:, :1])
    again, _, _ = run(0)
    other, _, _ = run(1)
    assert torch.equal(frames, again) and not torch.allclose(frames, other, atol=1e-4)
    session.reset()
    replay = session.push_features(audio)
    assert torch.equal(torch.cat([replay, session.finish()], dim=2), frames)
    with pytest.raises(ValueError, match="needs the audio encoder"):
        StreamingSession(dit, vae, portrait, flow_sigmas(2, shift=2.0))
    with pytest.raises(ValueError, match="has no audio encoder"):
        new_session(0).push_audio(torch.zeros(2, 640))


def test_session_from_audio_samples_ends_at_the_audio_duration():
    """Samples in: end="duration" gives round(seconds * fps) frames (the audio padded with silence to whole chunks),
    end="whole_chunks" stops at the last whole chunk; both agree on the frames they share, and ragged pushes give the
    frames of one push (up to float rounding of the chunked audio)."""
    from rest.models.audio import AudioEncoder

    dit, vae = streaming_dit(), tiny_vae()
    encoder = AudioEncoder(
        conv_channels=16, num_conv_layers=1, dim=16, num_layers=1, num_heads=2, attn_window=4, out_dim=8
    ).eval()
    _, _, portrait = stream_inputs(dit, 1, batch=1)
    samples = 0.1 * torch.randn(1, 23 * 640 + 100, generator=torch.Generator().manual_seed(3))  # 23.16 frames

    def run(end, pieces):
        session = StreamingSession(dit, vae, portrait, flow_sigmas(1, shift=2.0), audio_encoder=encoder, end=end)
        frames = [session.push_audio(piece) for piece in samples.split(pieces, dim=1)]
        frames.append(session.finish())
        assert session.samples_in == samples.shape[1] and session.frames_out == sum(f.shape[2] for f in frames)
        return torch.cat(frames, dim=2)

    whole = run("duration", [samples.shape[1]])
    chunks = run("whole_chunks", [samples.shape[1]])
    assert whole.shape[2] == 23 and chunks.shape[2] == 21  # 1 + 4 * 5: frames 21, 22 need a chunk of padding
    assert torch.equal(whole[:, :, :21], chunks)
    ragged = run("duration", [5000, 1, 3000, samples.shape[1] - 8001])
    assert torch.allclose(ragged, whole, atol=TOL), (ragged - whole).abs().max()


# ----------------------------------------------------------------------------- benchmark


def test_bench_stream_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "stream", "--preset", "tiny", "--seconds", "0.5", "1", "--depth", "1", "--output", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["benchmark"] == "stream" and result["torch"] == torch.__version__ and result["steps"] == 1
    assert [r["seconds"] for r in result["streams"]] == [0.5, 1.0]
    short, long = result["streams"]
    assert (short["chunks"], long["chunks"]) == (1 + 11 // 4, 1 + 24 // 4)  # 1-frame chunk, then 160 ms chunks
    for r in result["streams"]:
        assert 0 < r["chunk_ms_median"] <= r["chunk_ms_p95"] and r["real_time_factor"] > 0
        assert len(r["chunk_ms_median_per_tenth"]) == min(10, r["chunks"] - 1)
        first = r["first_frame"]
        parts = first["audio_buffering_ms"] + first["compute_ms"] + first["decode_ms"]
        assert first["total_ms"] == pytest.approx(parts)
        assert r["peak_mem_mb"] > 0
    assert short["first_frame"]["audio_buffering_ms"] == pytest.approx(1000 * (1 + 2) / 25)  # 1 frame + look-ahead 2
    assert result["cache_mb"] > 0 and result["chunk_latency_ratio_longest_over_shortest"] > 0
    assert main(["bench", "stream", "--seconds", "0"]) == 2
    assert "--seconds" in capsys.readouterr().err
