"""The real-speech study (rest/metrics/realspeech.py) on known inputs: an oracle generator whose rendered mouth opens
with the audio's loudness must beat the shuffled control, close its mouth in pauses and on a silent file; a generator
whose mouth ignores the audio must not; the clips are read from MP4s as real videos are."""

import json

import numpy as np
import pytest

from rest.metrics.identity import dlib_models_dir

pytestmark = pytest.mark.skipif(dlib_models_dir() is None, reason="needs face-recognition-models (dlib 68 points)")
SR, SPF = 16000, 640


def _speech(seconds: float, bursts: list[tuple[float, float]], seed: int) -> np.ndarray:
    """Voiced bursts (a buzz whose loudness swings at 3-6 Hz, like syllables) in a quiet noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = rng.normal(0, 1e-3, len(t))
    for a, b in bursts:
        inside = (t >= a) & (t < b)
        syllables = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t[inside] + rng.uniform(0, 6))
        x[inside] += 0.3 * syllables * np.sign(np.sin(2 * np.pi * 140 * t[inside]))
    return x.astype(np.float32)


def _render(openness: np.ndarray, identity: int = 5) -> np.ndarray:
    from rest.data.synth.generate import identity_face
    from rest.data.synth.render import FaceRenderer

    renderer = FaceRenderer(identity_face(0, identity), 128)
    return np.stack([renderer.render(mouth_open=float(y)) for y in openness])


def _loudness_mouth(audio: np.ndarray) -> np.ndarray:
    from rest.metrics.realspeech import loudness_envelope

    env = loudness_envelope(audio)
    return np.clip(env / (env.max() + 1e-9), 0, 1)


class _Portrait:
    def __init__(self, crop):
        self.crop = crop


class OraclePipe:
    """A stand-in generator: the rendered mouth opens with the audio's loudness (or, `deaf`, with a fixed pattern)."""

    def __init__(self, deaf: bool = False):
        self.deaf = deaf

    def __call__(self, portrait, audio, seed=0):
        n = len(audio) // SPF
        if self.deaf:
            return _render(0.5 + 0.5 * np.sin(np.arange(n) / 3.0))
        return _render(_loudness_mouth(audio))


class LoudExpert:
    """A stand-in audio expert: the openness it hears is the loudness."""

    def predict(self, audio):
        return _loudness_mouth(audio)


@pytest.fixture(scope="module")
def landmarks():
    from rest.metrics.landmarks import FaceLandmarks68

    return FaceLandmarks68()


@pytest.fixture(scope="module")
def clips(tmp_path_factory, landmarks):
    """Three 'real' clips written as MP4s: a face (another identity) whose mouth follows its own audio's loudness."""
    from rest.media import write_video
    from rest.metrics.realspeech import read_real_clips

    folder = tmp_path_factory.mktemp("real")
    paths = []
    for k, bursts in enumerate([[(0.3, 1.6), (2.4, 3.6)], [(0.2, 1.2), (1.8, 3.7)], [(0.8, 2.2), (2.9, 3.5)]]):
        audio = _speech(4.0, bursts, k)
        path = folder / f"clip{k}.mp4"
        write_video(path, _render(_loudness_mouth(audio), identity=4), 25, audio, SR)
        paths.append(path)
    return read_real_clips(paths, landmarks, vad="energy", progress=False)  # a buzz is no speech to silero


def test_real_clips_are_read_from_video(clips):
    assert [c.name for c in clips] == ["clip0", "clip1", "clip2"]
    for c in clips:
        assert len(c.aperture) == len(c.speech) == len(c.audio) // SPF == 100 and c.frames_with_face == 100
        assert 0.2 < c.speech.mean() < 0.9  # the bursts are speech, the gaps are not


def test_an_oracle_follows_the_words_and_rests_in_silence(clips, landmarks, tmp_path):
    from rest.metrics.heldout import write_study
    from rest.metrics.realspeech import format_table, plot_curves, real_speech_study

    portraits = {"p": _Portrait(_render(np.zeros(1))[0])}
    files = {"silence": np.zeros(2 * SR, np.float32), "speech": _speech(3.0, [(0.5, 2.0)], 7)}
    experts = {"loud": LoudExpert()}
    result = real_speech_study(OraclePipe(), portraits, clips, landmarks, files, experts, vad="energy", progress=False)
    mean = result["mean"]
    assert mean["expert/loud"] > 0.8 and mean["expert/loud/rest_ratio"] < 0.5
    assert mean["p/own"] > 0.8 and mean["p/own"] > mean["p/shuffled"] + 0.4
    assert mean["loudness"] > 0.8  # the 'real' mouths follow the loudness too: the baseline knows it
    assert mean["p/rest_ratio"] < 0.5 and mean["real_rest_ratio"] < 0.5
    files_by_name = {f["file"]: f for f in result["files"]}
    assert files_by_name["silence"]["p/silent_ratio"] < 0.5 and files_by_name["speech"]["p/rest_ratio"] < 0.5
    assert files_by_name["silence"]["expert/loud/silent_ratio"] < 0.1
    assert files_by_name["speech"]["expert/loud/rest_ratio"] < 0.5
    assert [r["shuffled_from"] for r in result["clips"]] == ["clip1", "clip2", "clip0"]
    table = format_table(result)
    assert "mean" in table and "p/own" in table and "silence" in table
    assert plot_curves(result, tmp_path / "curves.png").stat().st_size > 0
    assert json.loads(write_study(result, tmp_path / "study.json").read_text())["portraits"] == ["p"]


def test_a_deaf_generator_does_not(clips, landmarks):
    from rest.metrics.realspeech import real_speech_study

    portraits = {"p": _Portrait(_render(np.zeros(1))[0])}
    result = real_speech_study(OraclePipe(deaf=True), portraits, clips, landmarks, vad="energy", progress=False)
    assert result["mean"]["p/own"] < 0.5 and result["above_loudness_every_clip"] == {"p": False}
