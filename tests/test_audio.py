"""Audio front-end: causal log-mel, the streaming audio encoder, and the pretrained speech encoder loader."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from rest.config import ConfigError
from rest.errors import RestError
from rest.models.audio import (
    AudioEncoder,
    LogMel,
    hz_to_mel,
    load_speech_encoder,
    mel_filterbank,
    mel_to_hz,
    pool_to_frame_rate,
)

SR = 16000
HOP = 160
SPF = 640  # samples per video frame at 25 fps
FLOOR = math.log(1e-5)

# A tiny encoder: 1 conv layer of 32 channels, 2 transformer layers of width 32, a 4-frame attention window.
TINY = dict(
    conv_channels=32,
    num_conv_layers=1,
    dim=32,
    num_layers=2,
    num_heads=4,
    mlp_ratio=2.0,
    attn_window=4,
    lookahead_frames=2,
    out_dim=16,
)


def tiny_encoder(**overrides) -> AudioEncoder:
    torch.manual_seed(0)
    enc = AudioEncoder(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # the position bias starts at zero; make it matter so offset bugs show
        for block in enc.blocks:
            block.attn.rel_bias.normal_(0.0, 1.0)
    return enc


def speechlike(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """Noise with a slow random envelope: (B, n) float32 in about [-0.5, 0.5]."""
    g = torch.Generator().manual_seed(seed)
    envelope = torch.rand(batch, n // 400 + 2, generator=g).repeat_interleave(400, dim=1)[:, :n]
    return 0.3 * envelope * torch.randn(batch, n, generator=g)


def run_stream(step, flush, state, samples: torch.Tensor, sizes: list[int], dim: int) -> torch.Tensor:
    """Feed `samples` in chunks of `sizes` (cycled), flush if given, and concatenate the outputs along `dim`."""
    outs, pos, i = [], 0, 0
    while pos < samples.shape[1]:
        size = sizes[i % len(sizes)]
        out, state = step(samples[:, pos : pos + size], state)
        outs.append(out)
        pos, i = pos + size, i + 1
    if flush is not None:
        out, state = flush(state)
        outs.append(out)
    return torch.cat(outs, dim=dim), state


def random_sizes(seed: int, low: int, high: int, count: int = 64) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (count,), generator=g).tolist()


#################################################################################
#                                   Log-mel                                     #
#################################################################################


def test_slaney_mel_scale_known_values():
    hz = torch.tensor([0.0, 500.0, 1000.0, 2000.0, 6400.0], dtype=torch.float64)
    mel = hz_to_mel(hz)
    # Linear below 1 kHz (3 mel per 200 Hz), then 27 mel per factor 6.4.
    torch.testing.assert_close(
        mel, torch.tensor([0.0, 7.5, 15.0, 15.0 + 27 * math.log(2) / math.log(6.4), 42.0]).double()
    )
    torch.testing.assert_close(mel_to_hz(mel), hz)
    fb = mel_filterbank(SR, 400, 80, 0.0, 8000.0)
    assert fb.shape == (80, 201)
    assert (fb >= 0).all() and (fb.sum(dim=1) > 0).all()  # every filter covers at least one FFT bin
    # Slaney area normalisation: the triangle of filter m has peak 2 / (upper edge - lower edge) in Hz.
    edges = mel_to_hz(torch.linspace(0.0, float(hz_to_mel(torch.tensor(8000.0))), 82, dtype=torch.float64))
    m = 40
    centre_bin = int(torch.round(edges[m + 1] / 40.0))  # FFT bins are 40 Hz apart
    peak = 2.0 / (edges[m + 2] - edges[m])
    assert fb[m].max() <= peak + 1e-12 and fb[m, centre_bin] > 0.5 * peak


@pytest.mark.parametrize("n", [0, 159, 160, 161, 16037])
def test_logmel_shape(n):
    mel = LogMel()(torch.zeros(2, n))
    assert mel.shape == (2, 80, n // HOP)
    assert mel.dtype == torch.float32


def test_logmel_silence_is_the_floor():
    mel = LogMel()(torch.zeros(1, 1600))
    torch.testing.assert_close(mel, torch.full_like(mel, FLOOR), atol=1e-6, rtol=0)


def test_logmel_sine_peaks_in_the_1khz_bin():
    t = torch.arange(SR) / SR
    mel = LogMel()(0.5 * torch.sin(2 * math.pi * 1000.0 * t)[None])[0]  # (80, 100)
    mel = mel[:, 3:]  # frames 0-2 overlap the zero padding before the stream start
    # The filter whose centre is nearest 1 kHz, from the Slaney scale alone (not from the filterbank).
    centres = mel_to_hz(torch.linspace(0.0, float(hz_to_mel(torch.tensor(8000.0))), 82))[1:-1]
    expected = int((centres - 1000.0).abs().argmin())
    assert expected == 26  # 1 kHz = 15 mel, filters every 45.25 / 81 mel
    assert (mel.argmax(dim=0) == expected).all()
    assert (mel[expected] > FLOOR + 15).all()


def test_logmel_known_power_of_a_bin_centred_sine():
    """A sine on FFT bin 25 (1 kHz) under a periodic Hann window: |X| = A*W/4 on bin 25 and A*W/8 on 24 and 26."""
    amplitude, window = 0.5, 400
    t = torch.arange(SR) / SR
    mel = LogMel()(amplitude * torch.sin(2 * math.pi * 1000.0 * t)[None])[0, :, 3:]  # (80, 97)
    power = torch.zeros(201, dtype=torch.float64)
    power[25] = (amplitude * window / 4) ** 2
    power[24] = power[26] = (amplitude * window / 8) ** 2
    expected = torch.log((mel_filterbank(SR, 400, 80, 0.0, 8000.0) @ power).clamp_min(1e-5)).float()  # (80,)
    torch.testing.assert_close(mel, expected[:, None].expand_as(mel), atol=1e-3, rtol=0)


def test_logmel_framing_is_causal():
    """An impulse at sample s reaches exactly the frames i with i*160 - 240 <= s < i*160 + 160."""
    x = torch.zeros(1, 3200)
    x[0, 1000] = 1.0
    touched = (LogMel()(x)[0] > FLOOR + 1e-3).any(dim=0).nonzero().flatten().tolist()
    assert touched == [6, 7]


@pytest.mark.parametrize(
    "sizes",
    [[1], [100], [1234], [160], [7, 0, 333], random_sizes(1, 0, 900)],
    ids=["1", "100", "1234", "160", "mix", "random"],
)
def test_logmel_streaming_equals_whole(sizes):
    mel = LogMel()
    x = speechlike(2, 2500 if sizes == [1] else 12345)
    whole = mel(x)
    streamed, state = run_stream(mel.step, None, mel.init_state(2), x, sizes, dim=2)
    assert streamed.shape == whole.shape
    assert (streamed - whole).abs().max() <= 1e-5
    assert state.pending.shape[1] < mel.window_length  # the leftover stays bounded
    state.reset()
    again, _ = mel.step(x, state)
    assert torch.equal(again, whole)


#################################################################################
#                                 The encoder                                   #
#################################################################################


@pytest.mark.parametrize("n", [0, 639, 640, 5 * SPF + 300])
def test_encoder_output_shape(n):
    enc = tiny_encoder()
    with torch.no_grad():
        out = enc(speechlike(2, n))
    assert out.shape == (2, n // SPF, 16)


def test_encoder_default_config_shape():
    enc = AudioEncoder().eval()
    assert enc.config.n_mels == 80 and enc.config.dim == 256 and len(enc.blocks) == 2
    with torch.no_grad():
        assert enc(torch.zeros(1, 3 * SPF)).shape == (1, 3, 256)
    assert enc.lookahead_s == pytest.approx(0.08) and enc.latency_s == pytest.approx(0.12)


@pytest.mark.parametrize("lookahead", [0, 2])
def test_encoder_is_causal_up_to_the_lookahead(lookahead):
    enc = tiny_encoder(lookahead_frames=lookahead)
    x = speechlike(1, 12 * SPF)
    n = 5
    end = (n + lookahead + 1) * SPF  # end of video frame n + lookahead
    with torch.no_grad():
        base = enc(x)
        after = x.clone()
        after[:, end:] = speechlike(1, x.shape[1] - end, seed=1)
        inside = x.clone()
        inside[:, end - SPF : end] += 0.3  # inside frame n + lookahead
        last_hop = x.clone()
        last_hop[:, end - HOP : end] += 0.3  # only the last 10 ms: the last mel frame of frame n + lookahead
        out_after, out_inside, out_last = enc(after), enc(inside), enc(last_hop)
    assert torch.equal(out_after[:, : n + 1], base[:, : n + 1])
    assert (out_after[:, n + 1 :] - base[:, n + 1 :]).abs().max() > 1e-3
    assert torch.equal(out_inside[:, :n], base[:, :n])
    assert (out_inside[:, n] - base[:, n]).abs().max() > 1e-3
    assert (out_last[:, n] - base[:, n]).abs().max() > 1e-4


def test_encoder_attention_is_windowed():
    """Feature n must not depend on audio older than the receptive field (2 layers x 4 frames + conv + mel)."""
    enc = tiny_encoder(lookahead_frames=0)
    x = speechlike(1, 16 * SPF)
    changed = x.clone()
    changed[:, : 2 * SPF] = speechlike(1, 2 * SPF, seed=5)
    with torch.no_grad():
        base, out = enc(x), enc(changed)
    # Frames 0-1 changed; each layer sees 3 frames back, the conv + mel window reach < 1 frame back: 2 + 6 + 1.
    assert torch.equal(out[:, 9:], base[:, 9:])
    assert (out[:, 7] - base[:, 7]).abs().max() > 1e-4  # still inside the window: it does change


def test_encoder_query_blocks_do_not_change_output():
    """The whole-signal pass splits long inputs into query blocks; any block size gives the same features."""
    enc = tiny_encoder()
    x = speechlike(1, 15 * SPF)
    with torch.no_grad():
        whole = enc(x)
        for block in enc.blocks:
            block.attn.query_block = 3
        blocked = enc(x)
    assert (blocked - whole).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "sizes",
    [[320], [640], [1000], [3333], random_sizes(2, 0, 2500), [1, 639, 0, 641, 5000]],
    ids=["320", "640", "1000", "3333", "random", "odd"],
)
def test_encoder_streaming_equals_whole(sizes):
    enc = tiny_encoder()
    x = speechlike(2, 20 * SPF + 123)  # 20 frames: 5 times the attention window, so the K/V window rolls
    with torch.no_grad():
        whole = enc(x)
        streamed, state = run_stream(enc.step, enc.flush, enc.init_state(2), x, sizes, dim=1)
    assert streamed.shape == whole.shape == (2, 20, 16)
    assert (streamed - whole).abs().max() <= 1e-4
    # Bounded state: the K/V cache holds attn_window - 1 frames, the mel leftover less than a window.
    assert all(k.shape[2] == TINY["attn_window"] - 1 for k in state.keys)
    assert state.mel.pending.shape[1] < enc.mel.window_length
    assert state.samples_in == x.shape[1] and state.frames_out == 20


@pytest.mark.parametrize("lookahead", [0, 3])
def test_encoder_streaming_lookahead_values(lookahead):
    enc = tiny_encoder(lookahead_frames=lookahead)
    x = speechlike(1, 9 * SPF + 17)
    with torch.no_grad():
        whole = enc(x)
        streamed, _ = run_stream(enc.step, enc.flush, enc.init_state(1), x, [700], dim=1)
    assert streamed.shape == whole.shape and (streamed - whole).abs().max() <= 1e-4


def test_encoder_emits_a_frame_once_its_lookahead_audio_arrived():
    enc = tiny_encoder()  # lookahead 2
    x = speechlike(1, 10 * SPF)
    with torch.no_grad():
        state = enc.init_state(1)
        out, state = enc.step(x[:, : 3 * SPF - 1], state)  # frame 0 needs audio through the end of frame 2
        assert out.shape == (1, 0, 16)
        out, state = enc.step(x[:, 3 * SPF - 1 : 3 * SPF], state)
        assert out.shape == (1, 1, 16)
        out, state = enc.step(x[:, 3 * SPF : 6 * SPF], state)
        assert out.shape == (1, 3, 16) and state.frames_out == 4
        out, state = enc.flush(state)  # 6 frames of audio: frames 4 and 5 remain
        assert out.shape == (1, 2, 16)
        with pytest.raises(ValueError, match="reset"):
            enc.step(x[:, :SPF], state)
        state.reset()
        again, state = enc.step(x[:, : 6 * SPF], state)
        assert again.shape == (1, 4, 16)


def test_encoder_save_load_round_trip(tmp_path):
    enc = tiny_encoder()
    x = speechlike(1, 7 * SPF)
    enc.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert list(tmp_path.glob("*.safetensors"))
    loaded = AudioEncoder.from_pretrained(tmp_path).eval()
    assert loaded.config.attn_window == TINY["attn_window"] and loaded.config.out_dim == TINY["out_dim"]
    with torch.no_grad():
        assert torch.equal(loaded(x), enc(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fps=30), "multiple of fps"),
        (dict(hop_length=150), "multiple of fps"),
        (dict(dim=30, num_heads=4), "num_heads"),
        (dict(attn_window=0), "attn_window"),
        (dict(lookahead_frames=-1), "lookahead"),
        (dict(window_length=100), "hop_length <= window_length"),
        (dict(f_max=9000.0), "f_max"),
    ],
)
def test_encoder_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AudioEncoder(**{**TINY, **kwargs})


#################################################################################
#                          Pretrained speech encoders                           #
#################################################################################


def test_pool_to_frame_rate():
    hidden = torch.arange(7, dtype=torch.float32).view(1, 7, 1).expand(2, 7, 3)  # 50 Hz frames 0..6
    out = pool_to_frame_rate(hidden, num_frames=4, group=2)  # the 8th frame repeats the 7th
    assert out.shape == (2, 4, 3)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.0]))
    with pytest.raises(ValueError):
        pool_to_frame_rate(hidden, num_frames=6, group=2)


def _fake_model_folder(path, model_type="hubert", weights=True):
    path.mkdir(exist_ok=True)
    config = {"model_type": model_type, "hidden_size": 768, "conv_stride": [5, 2, 2, 2, 2, 2, 2]}
    (path / "config.json").write_text(json.dumps(config))
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path


def test_load_speech_encoder_missing_folder(tmp_path):
    with pytest.raises(RestError, match="not found.*config.json"):
        load_speech_encoder(tmp_path / "absent")


def test_load_speech_encoder_missing_files(tmp_path):
    with pytest.raises(RestError, match="config.json is missing"):
        load_speech_encoder(tmp_path)
    folder = _fake_model_folder(tmp_path / "hubert", weights=False)
    with pytest.raises(RestError, match="model.safetensors"):
        load_speech_encoder(folder)
    folder = _fake_model_folder(tmp_path / "bert", model_type="bert")
    with pytest.raises(RestError, match="not a supported speech encoder"):
        load_speech_encoder(folder)


def test_load_speech_encoder_without_transformers(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(RestError, match="pip install transformers"):
        load_speech_encoder(_fake_model_folder(tmp_path / "hubert"))
