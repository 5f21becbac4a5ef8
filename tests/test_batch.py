"""Batched streams (rest/streaming/batch.py): many streams stepped together give each stream the frames it gets alone,
while streams join, leave, end and differ in portrait, seed and progress."""

import pytest
import torch

from rest.diffusion.flow import flow_sigmas
from rest.streaming import StreamingSession
from rest.streaming.batch import CacheBatch, step_sessions
from rest.streaming.rollout import KnownLatents


def _session(tiny_models, portrait, seed, context_timestep=0.0, steps=2, noise_scale=1.0, known=None):
    vae, audio_encoder, _, student = tiny_models
    session = StreamingSession(
        student,
        vae,
        portrait,
        flow_sigmas(steps, 2.0),
        audio_encoder=audio_encoder,
        context_timestep=context_timestep,
        seed=seed,
        noise_scale=noise_scale,
    )
    session.known = known
    return session


def _alone(tiny_models, portrait, seed, audio, **kwargs):
    session = _session(tiny_models, portrait, seed, **kwargs)
    return torch.cat([session.push_audio(audio), session.finish()], dim=2)


@pytest.mark.parametrize("context_timestep", [0.0, 0.1])
def test_batched_streams_equal_each_stream_alone(tiny_models, context_timestep):
    """Four streams with their own portraits, seeds and lengths; one joins late (its ring at another phase, fewer
    context chunks at first), one ends early; audio arrives in uneven pieces. Stepping every stream with a chunk ready
    in one batched call gives each the frames it gets alone; so do a stream with known latents (inpainting) and one
    with a smaller starting noise beside the others."""
    g = torch.Generator().manual_seed(0)
    portraits = [torch.randn(1, 4, 1, 4, 4, generator=g) for _ in range(2)]
    spf = tiny_models[1].samples_per_frame
    mask = torch.tensor([True, False, False, True]).view(1, 4, 1, 1, 1)
    known = KnownLatents(torch.full((1, 4, 1, 1, 1), 0.7), mask)
    plans = [  # (portrait, seed, frames of audio, round it joins, session options)
        (portraits[0], 0, 61, 0, {}),
        (portraits[1], 1, 45, 0, {"known": known}),
        (portraits[0], 2, 50, 3, {"noise_scale": torch.tensor([0.5, 1.0, 0.0, 2.0])}),
        (portraits[1], 3, 23, 1, {}),
    ]
    audio = [0.1 * torch.randn(1, frames * spf + 37, generator=g) for _, _, frames, _, _ in plans]
    piece = 5 * spf + 11  # not a whole number of frames or chunks

    streams = [None] * len(plans)
    sent = [0] * len(plans)
    out = [[] for _ in plans]
    batch_sizes = []
    for round_index in range(200):
        for i, (portrait, seed, _, joins, options) in enumerate(plans):
            if round_index == joins:
                streams[i] = _session(tiny_models, portrait, seed, context_timestep, **options)
            s = streams[i]
            if s is None or s.finished:
                continue
            if sent[i] < audio[i].shape[1]:
                s.buffer_features(s.encode_audio(audio[i][:, sent[i] : sent[i] + piece]))
                sent[i] += piece
            elif not s.ending:
                s.end_input()
        ready = [s for s in streams if s is not None and s.pending()]
        if ready:
            batch_sizes.append(len(ready))
            for s, frames in zip(ready, step_sessions(ready), strict=True):
                out[streams.index(s)].append(frames)
        for s in streams:
            if s is not None and s.ending and not s.pending() and not s.finished:
                assert s.finish().shape[2] == 0  # every chunk already ran
        if all(s is not None and s.finished for s in streams):
            break
    assert max(batch_sizes) == 4 and min(batch_sizes) == 1  # batches of all four, and a stream alone at the end

    for i, (portrait, seed, _, _, options) in enumerate(plans):
        expected = _alone(tiny_models, portrait, seed, audio[i], context_timestep=context_timestep, **options)
        got = torch.cat(out[i], dim=2)
        assert got.shape == expected.shape
        assert streams[i].frames_out == expected.shape[2] == round(audio[i].shape[1] / spf)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_streams_with_different_steps_run_in_separate_groups(tiny_models):
    g = torch.Generator().manual_seed(1)
    portrait = torch.randn(1, 4, 1, 4, 4, generator=g)
    audio = 0.1 * torch.randn(1, 30 * tiny_models[1].samples_per_frame, generator=g)
    streams = [_session(tiny_models, portrait, 0, steps=1), _session(tiny_models, portrait, 0, steps=3)]
    out = [[], []]
    for s in streams:
        s.buffer_features(s.encode_audio(audio))
        s.end_input()
    while any(s.pending() for s in streams):
        ready = [s for s in streams if s.pending()]
        for s, frames in zip(ready, step_sessions(ready), strict=True):
            out[streams.index(s)].append(frames)
    for frames, steps in zip(out, (1, 3), strict=True):
        torch.testing.assert_close(
            torch.cat(frames, dim=2), _alone(tiny_models, portrait, 0, audio, steps=steps), atol=2e-5, rtol=0
        )


def test_step_refuses_streams_without_a_chunk_ready(tiny_models):
    portrait = torch.zeros(1, 4, 1, 4, 4)
    idle = _session(tiny_models, portrait, 0)
    with pytest.raises(RuntimeError, match="no chunk ready"):
        step_sessions([idle])
    busy = _session(tiny_models, portrait, 0)
    busy.buffer_features(busy.encode_audio(torch.zeros(1, 20 * tiny_models[1].samples_per_frame)))
    with pytest.raises(ValueError, match="appears twice"):
        step_sessions([busy, busy])


def test_cache_batch_refuses_caches_at_different_stages(tiny_models):
    portrait = torch.zeros(1, 4, 1, 4, 4)
    fresh, ahead = _session(tiny_models, portrait, 0), _session(tiny_models, portrait, 1)
    ahead.push_audio(torch.zeros(1, 20 * tiny_models[1].samples_per_frame))
    assert ahead.chunks_done > 0 == fresh.chunks_done
    with pytest.raises(ValueError, match="geometry, context length and stage"):
        CacheBatch([fresh.cache, ahead.cache])


def test_pipeline_step_runs_many_streams_as_each_alone(test_pipeline, face_image):
    """The Python API: feed / end_audio / has_chunk and pipe.step give each stream the frames of pipe(...)."""
    import numpy as np

    from rest.pipelines import TalkingHeadPipeline

    pipe = TalkingHeadPipeline.from_pretrained(test_pipeline)
    portrait = pipe.prepare_portrait(face_image)
    rng = np.random.default_rng(0)
    audio = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 25000, 7000)]
    streams = [pipe.stream(portrait, seed=i) for i in range(3)]
    out = [[] for _ in streams]
    for s, a in zip(streams, audio, strict=True):
        s.feed(a)
        s.end_audio()
    with pytest.raises(Exception, match="audio has ended"):
        streams[0].feed(audio[0])
    while any(s.has_chunk for s in streams):
        for i, frames in enumerate(pipe.step(streams)):  # streams without a chunk get no frames
            out[i].append(frames)
    for i, s in enumerate(streams):
        assert s.finish().shape[0] == 0 and s.finished
        got, expected = np.concatenate(out[i]), pipe(portrait, audio[i], seed=i)
        assert got.shape == expected.shape == (round(len(audio[i]) * 25 / 16000), 64, 64, 3)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # uint8 rounding of 2e-5 differences
        assert s.stats()["rtf"] > 0


def test_noise_scale_is_one_number_or_one_per_channel(tiny_models):
    portrait = torch.zeros(1, 4, 1, 4, 4)
    for bad, message in [([1.0, 2.0], "one per latent channel"), (-0.5, ">= 0"), ([[1.0] * 4], "one per latent")]:
        with pytest.raises(ValueError, match=message):
            _session(tiny_models, portrait, 0, noise_scale=torch.tensor(bad))
    audio = 0.1 * torch.randn(1, 12 * tiny_models[1].samples_per_frame, generator=torch.Generator().manual_seed(0))
    zero = [_alone(tiny_models, portrait, seed, audio, noise_scale=0.0) for seed in (0, 1)]
    torch.testing.assert_close(zero[0], zero[1], atol=1e-6, rtol=0)  # no noise: nothing for the seed to draw
    assert not torch.allclose(_alone(tiny_models, portrait, 0, audio), _alone(tiny_models, portrait, 1, audio))
