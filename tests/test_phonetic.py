"""The phonetic channel (rest/data/phonetic.py): pocketsphinx's phones, decoded live, through SynthTalk's visemes.

On speech whose phone timings are known (espeak-ng), the predicted mouth must follow the labelled one and rest in the
pauses; silence must keep the lips together; the result must not depend on how the audio was split into pushes; a
long stream must keep the decoder's utterance and the kept segments bounded."""

import numpy as np
import pytest

pytest.importorskip("pocketsphinx", reason="the phonetic channel needs pocketsphinx (the metrics extra)")

from rest.data.phonetic import (  # noqa: E402
    ARPABET_IPA,
    DECODER_DELAY_S,
    READ_AHEAD_S,
    PhoneDecoder,
    PhoneticExpert,
    phone_segments,
)
from rest.data.synth.speech import Phone, Prosody, Voice, espeak_available, get_espeak, resample  # noqa: E402
from rest.data.synth.visemes import SIL, VISEME_IDS, mouth_track, phones_to_segments  # noqa: E402

SR, SPF = 16000, 640
needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="libespeak-ng.so.1 not found: apt-get install espeak-ng"
)


@pytest.fixture(scope="module")
def speech():
    """About 9 s of espeak-ng English: three sentences with pauses between, 16 kHz; its per-frame mouth labels."""
    texts = ["The yellow bottle is over there.", "Nobody remembers the morning.", "Open the window, please."]
    utts = get_espeak().speak(Voice("en-us", "m3"), Prosody(rate=150), texts, seed=0)
    audio, phones, t = [], [], 0.0
    for u in utts:
        pause = np.zeros(int(0.6 * SR), np.float32)
        samples = np.concatenate([pause, resample(u.audio, u.sample_rate, SR)])
        phones += [Phone("", t, t + 0.6)] + [Phone(p.symbol, t + 0.6 + p.start, t + 0.6 + p.end) for p in u.phones]
        audio.append(samples)
        t += len(samples) / SR
    audio = np.concatenate(audio + [np.zeros(int(0.6 * SR), np.float32)])
    track = mouth_track(phones_to_segments(phones), len(audio) // SPF, 25)
    return audio, track


def test_every_phone_of_the_model_has_a_viseme():
    import os

    from rest.data.phonetic import model_dir

    mdef = open(os.path.join(model_dir(), "en-us", "mdef"), "rb").read()
    assert all(p.encode() in mdef for p in ARPABET_IPA)  # the table is the model's phone set
    assert phone_segments("SIL", 0.0, 0.1)[0].viseme == SIL
    assert phone_segments("M", 0.0, 0.1)[0].viseme == VISEME_IDS["PP"]
    glide = phone_segments("AY", 1.0, 2.0)  # a diphthong glides from its first vowel to its second, 60 / 40
    assert [s.viseme for s in glide] == [VISEME_IDS["aa"], VISEME_IDS["ih"]] and glide[0].end == pytest.approx(1.6)
    with pytest.raises(Exception, match="phone set"):
        phone_segments("QQ", 0.0, 0.1)


@needs_espeak
def test_the_mouth_follows_known_phones_and_rests_in_pauses(speech):
    audio, track = speech
    pred = PhoneticExpert().predict(audio)
    assert pred.shape == (len(audio) // SPF,)
    assert np.corrcoef(pred, track.open)[0, 1] > 0.5
    assert pred[~track.speech].mean() < 0.5 * pred[track.speech].mean()  # lips rest in the pauses


def test_silence_keeps_the_lips_together():
    pred = PhoneticExpert().predict(np.zeros(3 * SR, np.float32))
    assert pred.shape == (75,) and np.abs(pred).max() < 1e-3


@needs_espeak
def test_pushes_of_any_size_give_the_same_mouth(speech):
    audio = speech[0]
    whole = PhoneticExpert().predict(audio)
    for size in (640, 1000, 7777):
        expert = PhoneticExpert()
        pieces = [expert.step(audio[i : i + size]) for i in range(0, len(audio), size)]
        streamed = np.concatenate(pieces + [expert.flush()])
        np.testing.assert_array_equal(streamed, whole)
    # Frames come out as their audio arrives, each once the audio its look-ahead needs is in (80 ms past its centre).
    expert = PhoneticExpert()
    assert expert.lookahead_s == pytest.approx(DECODER_DELAY_S + READ_AHEAD_S) == pytest.approx(0.08)
    out = len(expert.step(audio[: 2 * SR]))
    assert out == int(np.floor((2.0 - expert.lookahead_s) * 25 - 0.5 + 1e-9)) + 1


def test_the_audio_paths_lookahead_in_frames_is_what_a_stream_must_push(speech):
    """`PhoneticAudioEncoder.lookahead_frames`: frame f's features exist once the audio through frame
    f + lookahead_frames has been pushed, not before (what the stream bench and training windows count on)."""
    import torch

    from rest.data.phonetic import PhoneticAudioEncoder

    encoder = PhoneticAudioEncoder()
    assert encoder.lookahead_frames == 2 and PhoneticAudioEncoder(settle_s=0.1).lookahead_frames == 3
    samples = torch.from_numpy(speech[0][None, : 60 * SPF])
    for frames in (10, 37):
        state = encoder.init_state(1)
        enough, _ = encoder.step(samples[:, : (frames + encoder.lookahead_frames) * SPF], state)
        state = encoder.init_state(1)
        short, _ = encoder.step(samples[:, : (frames + encoder.lookahead_frames) * SPF - 1], state)
        assert enough.shape == (1, frames, 3) and short.shape[1] == frames - 1
    whole = encoder(samples)  # the module's forward on samples: the whole file, as the stream gives it
    np.testing.assert_array_equal(whole[0].numpy(), encoder.encode(speech[0][: 60 * SPF]))
    assert encoder(whole) is whole  # features already decoded (training windows) pass through


@needs_espeak
def test_a_long_stream_stays_bounded(speech):
    """60 s of speech in 40 ms pieces: the decoder restarts its utterance, and keeps few segments."""
    audio = np.resize(speech[0], 60 * SR)
    expert = PhoneticExpert(max_utterance_s=4.0)
    longest, held, frames = 0.0, 0, 0
    for i in range(0, len(audio), SPF):
        frames += len(expert.step(audio[i : i + SPF]))
        longest = max(longest, expert.decoder.utterance_s)
        held = max(held, len(expert.decoder.segments))
    frames += len(expert.flush())
    assert frames == 60 * 25
    assert 4.0 <= longest <= 8.0 + 0.04 and held < 40


def test_bad_input_and_settings_are_refused():
    with pytest.raises(ValueError, match="1-D"):
        PhoneDecoder().push(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        PhoneticExpert().step(np.full(700, np.nan, np.float32))
    with pytest.raises(ValueError, match="settle_s"):
        PhoneDecoder(settle_s=-0.1)


def test_missing_pocketsphinx_says_what_to_install(monkeypatch):
    import builtins

    from rest.data.phonetic import model_dir
    from rest.errors import RestError

    real_import = builtins.__import__

    def no_pocketsphinx(name, *args, **kwargs):
        if name == "pocketsphinx":
            raise ImportError("No module named 'pocketsphinx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pocketsphinx)
    with pytest.raises(RestError, match="pip install"):
        model_dir()


def test_bench_phonetic_writes_json(tmp_path, capsys):
    """`rest bench phonetic` on the bundled speech: the phonetic channel's cost beside the mel encoder's."""
    import json

    from rest.cli import main

    out = tmp_path / "phonetic.json"
    assert main(["bench", "phonetic", "--seconds", "12", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["pieces"] == result["frames"] == 300 and result["lookahead_ms"] == pytest.approx(80.0)
    assert len(result["piece_ms_by_tenth"]["mean"]) == 10 and result["piece_ms"]["p99"] >= result["piece_ms"]["p50"]
    assert result["vs_mel_encoder"] == pytest.approx(result["rtf"] / result["mel_encoder"]["rtf"])
    assert result["longest_utterance_s"] <= 2 * result["max_utterance_s"] + 0.04
