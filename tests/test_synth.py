"""SynthTalk (rest/data/synth): speech timings, visemes, renderer, labels vs audio, determinism, splits, shards."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import shutil

import numpy as np
import pytest

from rest.data.synth.generate import (
    HELD_OUT_LANGUAGES,
    VOICES,
    ClipPlan,
    SynthConfig,
    identity_face,
    is_test_identity,
    is_test_voice,
    make_clip,
    plan_clips,
)
from rest.data.synth.render import FaceRenderer
from rest.data.synth.speech import (
    Espeak,
    EspeakError,
    Phone,
    Prosody,
    Voice,
    espeak_available,
    get_engine,
    get_espeak,
    resample,
)
from rest.data.synth.text import LEXICONS
from rest.data.synth.visemes import SIL, VISEME_IDS, VISEMES, mouth_track, phone_visemes, phones_to_segments
from rest.errors import RestError

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="libespeak-ng.so.1 not found: apt-get install espeak-ng"
)
FPS, SR = 25, 16000


def _short_plan(identity: int = 1, voice: str = "en-us+m3", seconds: float = 4.0) -> ClipPlan:
    voice_index = next(i for i, v in enumerate(VOICES) if v.name == voice)
    return ClipPlan(f"id{identity:04d}_test", identity, 0, voice_index, seconds, "train")


def _digest(clip) -> str:
    h = hashlib.sha256()
    h.update(clip.frames.tobytes())
    h.update(clip.audio.tobytes())
    for key in sorted(clip.meta):
        h.update(key.encode())
        h.update(clip.meta[key].tobytes())
    return h.hexdigest()


def _clip_digest_in_child(plan: ClipPlan, cfg: SynthConfig) -> str:
    return _digest(make_clip(plan, cfg))


#################################################################################
#                            No espeak needed                                   #
#################################################################################


def test_resample_keeps_the_band_and_removes_aliases():
    t = np.arange(22050) / 22050
    low = resample(np.sin(2 * np.pi * 1000 * t), 22050, 16000)
    assert low.dtype == np.float32 and len(low) == 16000
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(low - ref)[200:-200].max() < 1e-3
    high = resample(np.sin(2 * np.pi * 10000 * t), 22050, 16000)  # above the new Nyquist frequency (8 kHz)
    assert np.sqrt(np.mean(high[200:-200] ** 2)) < 1e-3


def test_phone_to_viseme_mapping():
    assert phone_visemes("") == [SIL]
    assert phone_visemes("p") == phone_visemes("m") == [VISEME_IDS["PP"]]
    assert phone_visemes("tʃ") == [VISEME_IDS["CH"]]
    assert phone_visemes("ɑː") == [VISEME_IDS["aa"]]
    assert phone_visemes("aɪ") == [VISEME_IDS["aa"], VISEME_IDS["ih"]]  # a diphthong glides
    assert phone_visemes("ɛ̃") == [VISEME_IDS["E"]]  # diacritics ignored


def test_mouth_closes_on_silence_and_bilabials_and_opens_on_vowels():
    phones = [
        Phone("", 0.0, 0.6),
        Phone("ɑ", 0.6, 0.84),
        Phone("p", 0.84, 0.92),
        Phone("ɑ", 0.92, 1.16),
        Phone("", 1.16, 2.0),
    ]
    track = mouth_track(phones_to_segments(phones), num_frames=50, fps=FPS)
    t = (np.arange(50) + 0.5) / FPS
    assert track.open[t < 0.4].max() < 0.02 and track.open[t > 1.4].max() < 0.02
    assert not track.speech[t < 0.6].any() and track.speech[(t > 0.6) & (t < 1.16)].all()
    vowel = ((t > 0.64) & (t < 0.8)) | ((t > 0.96) & (t < 1.12))
    assert track.open[vowel].min() > 0.5
    p_frame = np.argmin(np.abs(t - 0.88))
    assert track.open[p_frame] < 0.1 and VISEMES[track.viseme[p_frame]].name == "PP"


def test_renderer_outputs_frames_that_depend_on_identity_and_controls():
    for resolution in (64, 128):
        a = FaceRenderer(identity_face(0, 0), resolution)
        b = FaceRenderer(identity_face(0, 1), resolution)
        fa, fb = a.render(), b.render()
        assert fa.dtype == np.uint8 and fa.shape == (resolution, resolution, 3)
        assert np.abs(fa.astype(int) - fb.astype(int)).mean() > 10
    r = FaceRenderer(identity_face(0, 2), 128)
    rest, opened = r.render(mouth_open=0.0), r.render(mouth_open=1.0)
    ys, xs = r.mouth_crop.slices
    assert np.abs(opened[ys, xs].astype(int) - rest[ys, xs]).mean() > 8  # lips part, teeth and mouth show
    assert np.array_equal(opened[: ys.start], rest[: ys.start])  # and nothing above the mouth moves
    ys, xs = r.eye_crop.slices
    assert np.abs(r.render(blink=1.0)[ys, xs].astype(int) - rest[ys, xs]).mean() > 3  # lids cover the eyes
    turned = r.render(yaw=10, roll=5, shift=(0.02, 0.0))
    assert np.abs(turned.astype(int) - rest).mean() > 3


def test_split_rule_keeps_held_out_identities_and_voices_out_of_train():
    plans = plan_clips(40, SynthConfig(seconds=60.0))
    splits = {p.split for p in plans}
    assert splits == {"train", "test_id", "test_voice"}
    for p in plans:
        if is_test_identity(p.identity):
            assert p.split == "test_id" and not is_test_voice(p.voice)
        elif is_test_voice(p.voice):
            assert p.split == "test_voice"
        else:
            assert p.split == "train"
    assert {p.identity for p in plans if p.split == "test_id"} == {9, 19, 29, 39}
    assert any(p.voice.language in HELD_OUT_LANGUAGES for p in plans if p.split == "test_voice")
    # Clips tile each identity's seconds, and the plan of an identity does not depend on how many there are.
    for i in range(3):
        assert sum(p.seconds for p in plans if p.identity == i) == pytest.approx(60.0)
    assert plan_clips(5, SynthConfig(seconds=60.0)) == [p for p in plans if p.identity < 5]


def test_missing_espeak_says_how_to_install(monkeypatch, tmp_path, capsys):
    import rest.data.synth.speech as speech
    from rest.cli import main

    monkeypatch.setattr(speech, "_ESPEAK", None)  # as in a process that has not initialised espeak-ng yet
    with pytest.raises(EspeakError, match="apt-get install espeak-ng"):
        Espeak(library="libespeak-ng-does-not-exist.so.1")
    monkeypatch.setattr("rest.data.synth.generate.espeak_available", lambda: False)
    assert main(["synth", "--output", str(tmp_path / "out"), "--identities", "1", "--workers", "1"]) == 2
    assert "apt-get install espeak-ng" in capsys.readouterr().err


#################################################################################
#                                 espeak-ng                                     #
#################################################################################


@needs_espeak
def test_espeak_phone_timings_are_monotonic_and_inside_the_audio():
    espeak = get_espeak()
    texts = ["The quick brown fox jumps over the lazy dog.", "Maybe tomorrow."]
    utts = espeak.speak(Voice("en-us", "f2"), Prosody(rate=160), texts)
    for utt in utts:
        assert utt.audio.dtype == np.float32 and len(utt.audio) > 0.5 * utt.sample_rate
        starts = np.array([p.start for p in utt.phones])
        ends = np.array([p.end for p in utt.phones])
        assert starts[0] == 0 and np.all(ends > starts) and np.allclose(starts[1:], ends[:-1])
        assert ends[-1] == pytest.approx(utt.duration)
        spoken = [p for p in utt.phones if p.symbol]
        assert len(spoken) >= 8
        # Speech phones carry the energy: audio inside them is far louder than before the first one.
        inside = np.concatenate(
            [utt.audio[int(p.start * utt.sample_rate) : int(p.end * utt.sample_rate)] for p in spoken]
        )
        lead = utt.audio[: int(spoken[0].start * utt.sample_rate)]
        assert np.sqrt(np.mean(inside**2)) > 10 * (np.sqrt(np.mean(lead**2)) if len(lead) else 1e-4)


@needs_espeak
def test_espeak_output_does_not_depend_on_what_was_spoken_before():
    espeak = get_espeak()
    voice, prosody, text = Voice("en-us", "m3"), Prosody(), ["Hello world, my name is Bob."]
    first = espeak.speak(voice, prosody, text, seed=5)[0]
    espeak.speak(Voice("de", "f3"), Prosody(rate=200), ["Guten Morgen, wie geht es dir?"], seed=1)
    again = espeak.speak(voice, prosody, text, seed=5)[0]
    assert np.array_equal(first.audio, again.audio) and first.phones == again.phones


@needs_espeak
def test_every_word_is_read_in_its_own_language():
    espeak = get_espeak()
    for language, lexicon in LEXICONS.items():
        words = sorted({w for ws in lexicon.words.values() for w in ws})
        utts = espeak.speak(Voice(language), Prosody(), [" ".join(words)])
        assert utts[0].switches == [], f"{language}: espeak-ng switched language ({utts[0].switches})"


@needs_espeak
def test_clip_is_deterministic_across_processes_and_seeds():
    plan, cfg = _short_plan(seconds=3.0), SynthConfig(seed=3)
    a, b = make_clip(plan, cfg), make_clip(plan, cfg)
    assert _digest(a) == _digest(b)
    with mp.get_context("spawn").Pool(1) as pool:  # a fresh process: its first espeak synthesis is the warm-up
        assert pool.apply(_clip_digest_in_child, (plan, cfg)) == _digest(a)
    c = make_clip(plan, SynthConfig(seed=4))
    assert not np.array_equal(a.audio[: len(c.audio)], c.audio[: len(a.audio)])
    assert not np.array_equal(a.frames[0], c.frames[0])


@needs_espeak
def test_labels_follow_the_audio():
    clip = make_clip(_short_plan(identity=2, voice="en-us+f3", seconds=8.0), SynthConfig(seed=1))
    F = len(clip.frames)
    assert clip.audio.dtype == np.float32 and len(clip.audio) == F * SR // FPS
    for key, value in clip.meta.items():
        assert value.shape[0] == F, key
    rms = np.sqrt(np.mean(clip.audio.reshape(F, -1).astype(np.float64) ** 2, axis=1))  # (F,)
    loud = rms > 0.05 * np.percentile(rms, 95)
    quiet = rms < max(0.01 * np.percentile(rms, 95), 2 * np.percentile(rms, 5))  # at the noise floor
    # A frame that is silent, between silent neighbours, shows (nearly) closed lips and no speech; lips may start
    # to part about 80 ms before the sound (anticipation), hence "nearly". Three frames from any sound: closed.
    still = quiet & np.r_[True, quiet[:-1]] & np.r_[quiet[1:], True]
    far = np.convolve(quiet.astype(int), np.ones(7, int), mode="same") == 7
    assert still.sum() >= 10 and far.sum() >= 5
    assert clip.meta["mouth_open"][still].max() < 0.1 and not clip.meta["speech"][still].any()
    assert clip.meta["mouth_open"][far].max() < 0.01
    # Vowel frames are clearly open.
    vowels = np.isin(clip.meta["viseme"], [VISEME_IDS[v] for v in ("aa", "E", "oh")])
    assert vowels.sum() >= 5 and np.median(clip.meta["mouth_open"][vowels]) > 0.3
    # The speech flag matches the audio energy (stop closures are silent speech, so not exactly).
    assert np.mean(clip.meta["speech"] == loud) > 0.85
    # And the mouth moves with the energy: louder frames are more open on average.
    assert clip.meta["mouth_open"][loud].mean() > 3 * clip.meta["mouth_open"][~loud].mean()


@needs_espeak
def test_synth_command_writes_resumable_shards(tmp_path):
    from rest.cli import main
    from rest.data.shards import ShardReader

    out = tmp_path / "synth"
    sheet = tmp_path / "sheet.png"
    args = ["synth", "--output", str(out), "--identities", "2", "--seconds", "3", "--seed", "0", "--resolution", "64"]
    assert main([*args, "--workers", "1", "--no-progress", "--contact-sheet", str(sheet)]) == 0
    assert sheet.stat().st_size > 0
    reader = ShardReader(out)
    assert len(reader) == 2 and reader.resolution == 64
    for record in reader.records:
        assert record.extra["identity"] in (0, 1) and record.split == record.extra["split"] == "train"
        assert record.num_samples == record.num_frames * SR // FPS
        frames, meta = reader.frames(record.clip_id), reader.meta(record.clip_id)
        assert frames.shape == (record.num_frames, 64, 64, 3)
        assert set(meta) >= {"mouth_open", "mouth_width", "viseme", "head_pose", "head_shift", "blink", "speech"}
        assert meta["head_pose"].shape == (record.num_frames, 3)
    before = (out / "manifest.jsonl").read_text()
    assert main([*args, "--workers", "1", "--no-progress"]) == 0  # resumes: nothing to do
    assert (out / "manifest.jsonl").read_text() == before


#################################################################################
#                        festival and flite (real voices)                       #
#################################################################################

needs_festival = pytest.mark.skipif(shutil.which("festival") is None, reason="festival not installed")
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")


@pytest.mark.parametrize(
    "voice",
    [
        pytest.param(Voice("en-us", "kal_diphone", "festival"), marks=needs_festival),
        pytest.param(Voice("it", "pc_diphone", "festival"), marks=needs_festival),
        pytest.param(Voice("en-us", "awb", "flite"), marks=needs_flite),
    ],
    ids=lambda v: v.name,
)
def test_real_voices_give_ipa_phones_that_tile_the_audio(voice):
    texts = ["Hello there, my friend.", "Buongiorno, come stai?"] if voice.language == "it" else None
    utts = get_engine(voice.engine).speak(voice, Prosody(rate=150), texts or ["Hello there, my friend.", "A map."])
    for utt in utts:
        assert utt.audio.dtype == np.float32 and utt.duration > 0.5
        assert utt.phones[0].start == 0.0 and utt.phones[-1].end == pytest.approx(utt.duration)
        assert all(a.end == pytest.approx(b.start) for a, b in zip(utt.phones[:-1], utt.phones[1:], strict=True))
        symbols = [p.symbol for p in utt.phones]
        assert symbols[0] == "" and symbols[-1] == ""  # leading and trailing pauses
        visemes = {VISEMES[i].name for p in utt.phones for i in phone_visemes(p.symbol)}
        assert {"aa", "E", "oh"} & visemes  # open vowels are recognised
        # Speech inside phones is louder than the pauses around it.
        spoken = np.concatenate(
            [utt.audio[int(p.start * utt.sample_rate) : int(p.end * utt.sample_rate)] for p in utt.phones if p.symbol]
        )
        lead = utt.audio[: int(utt.phones[0].end * utt.sample_rate)]
        assert np.sqrt(np.mean(spoken**2)) > 10 * np.sqrt(np.mean(lead**2) + 1e-12)
    if voice.language != "it":
        assert "m" in [p.symbol for p in utts[1].phones]  # ARPAbet "m" of "map" -> IPA m -> lips closed (PP)


def test_plan_draws_every_engine_and_holds_out_voices():
    from rest.data.synth.generate import ENGINE_SHARE

    plans = plan_clips(60, SynthConfig(seconds=40.0))
    engines = {p.voice.engine for p in plans if p.split == "train"}
    assert engines == set(ENGINE_SHARE)
    assert not any(p.voice.variant == "rms" for p in plans if p.split == "train")  # flite's held-out voice
    only = plan_clips(10, SynthConfig(seconds=40.0, engines=("flite",)))
    assert {p.voice.engine for p in only} == {"flite"}
    with pytest.raises(RestError, match="unknown speech engine"):
        plan_clips(1, SynthConfig(engines=("sapi",)))


@needs_flite
def test_flite_clip_labels_follow_its_audio():
    clip = make_clip(_short_plan(identity=2, voice="flite:slt", seconds=6.0), SynthConfig(seed=1))
    F = len(clip.frames)
    assert len(clip.audio) == F * SR // FPS and clip.extra["engine"] == "flite"
    rms = np.sqrt(np.mean(clip.audio.reshape(F, -1).astype(np.float64) ** 2, axis=1))
    loud = rms > 0.05 * np.percentile(rms, 95)
    assert np.mean(clip.meta["speech"] == loud) > 0.8
    assert clip.meta["mouth_open"][loud].mean() > 3 * clip.meta["mouth_open"][~loud].mean()


def test_missing_voice_fails_before_any_work(tmp_path, monkeypatch):
    from rest.data.synth import speech

    def broken(command, what, hint, stdin=None):
        raise RestError(f"{what} is not installed ({command[0]} not found); {hint}")

    monkeypatch.setattr(speech, "_run", broken)
    with pytest.raises(RestError, match="cannot speak.*apt-get install"):
        speech.check_voices({Voice("en-us", "awb", "flite")})
