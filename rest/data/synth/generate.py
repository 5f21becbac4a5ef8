"""SynthTalk dataset generation: plan clips, make each one (speech -> visemes -> motion -> frames), write shards.

Everything random is drawn from `numpy.random.SeedSequence([seed, purpose, identity, clip])`, so a clip depends
only on the seed and its own indices: not on the number of identities, the worker that made it, or the order.

Held-out splits (recorded in each clip's `split` and `extra["split"]`):

- `test_id`: identities whose index i satisfies i % 10 == 9 (every tenth identity, so the rule does not change
  when more identities are generated). They speak with training voices only.
- `test_voice`: clips of training identities spoken by a held-out voice: any voice of a held-out language
  (`HELD_OUT_LANGUAGES`) or any language with a held-out variant (`HELD_OUT_VARIANTS`). About
  `TEST_VOICE_SHARE` of the clips of training identities.
- `train`: everything else. No held-out identity and no held-out voice ever appears in `train`.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rest.data.synth.emotion import EMOTIONS, ExpressionTrack, draw_emotion, expression_track
from rest.data.synth.motion import Motion, make_motion
from rest.data.synth.render import FaceParams, FaceRenderer, sample_face
from rest.data.synth.speech import (
    ENGINES,
    INSTALL_HINT,
    EspeakError,
    Phone,
    Prosody,
    Voice,
    check_voices,
    espeak_available,
    get_engine,
    get_espeak,
    resample,
)
from rest.data.synth.text import LEXICONS, make_sentence
from rest.data.synth.visemes import VISEMES, MouthTrack, mouth_track, phones_to_segments
from rest.errors import RestError

GENERATOR = "synthtalk"
LANGUAGES: tuple[str, ...] = ("en-us", "en", "de", "fr", "es", "it", "pt-br", "nl", "pl", "cmn", "ja")
# espeak-ng variants that sound like people (no robots, whispers or effects), in a fixed order: voice indices
# (and so clip ids) are positions in LANGUAGES x VARIANTS.
VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "Alex", "Andy", "Annie", "adam", "antonio", "aunty", "belinda", "benjamin", "caleb", "david", "ed",
    "edward", "gustave", "Hugo", "iven", "john", "linda", "max", "michel", "miguel", "Mike", "norbert",
    "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "travis", "victor", "zac",
)  # fmt: skip
# festival's and flite's voices are built from recordings of real speakers (diphones, HTS, CMU ARCTIC clustergen):
# closer to human speech than espeak-ng's formant synthesis. They follow the espeak voices, so espeak voice indices
# (and clip ids) keep their values.
FESTIVAL_VOICES: tuple[Voice, ...] = (
    Voice("en-us", "kal_diphone", "festival"),
    Voice("en-us", "ked_diphone", "festival"),
    Voice("en-us", "cmu_us_slt_arctic_hts", "festival"),
    Voice("it", "lp_diphone", "festival"),
    Voice("it", "pc_diphone", "festival"),
)
FLITE_VOICES: tuple[Voice, ...] = tuple(Voice("en-us", name, "flite") for name in ("awb", "rms", "slt"))
VOICES: tuple[Voice, ...] = (
    tuple(Voice(lang, var) for lang in LANGUAGES for var in VARIANTS) + FESTIVAL_VOICES + FLITE_VOICES
)
# Share of clips per engine (renormalised over the engines asked for that have a voice in the clip's pool).
ENGINE_SHARE: dict[str, float] = {"espeak": 0.5, "festival": 0.25, "flite": 0.25}
HELD_OUT_LANGUAGES: tuple[str, ...] = ("it",)
HELD_OUT_VARIANTS: tuple[str, ...] = ("m4", "f4", "Annie", "david", "steph", "rms")
TEST_ID_PERIOD = 10  # identity i is held out when i % TEST_ID_PERIOD == TEST_ID_PERIOD - 1
TEST_VOICE_SHARE = 0.1

# Purposes of the random streams (first entry after the seed in every SeedSequence). The emotion has its own
# stream, so a clip's speech, mouth and idle motion draws do not depend on it.
_FACE, _PLAN, _CLIP, _STRIP, _EMOTION = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class SynthConfig:
    """What to generate (the CLI's options)."""

    resolution: int = 128  # frames are resolution x resolution
    fps: int = 25
    sample_rate: int = 16000
    seconds: float = 30.0  # video per identity, split into clips
    clip_seconds: tuple[float, float] = (10.0, 20.0)  # target clip length (uniform); the last of an identity takes
    # the rest, so clips last clip_seconds[0] .. clip_seconds[0] + clip_seconds[1]
    languages: tuple[str, ...] = LANGUAGES
    engines: tuple[str, ...] = ENGINES  # speech synthesizers to draw voices from (ENGINE_SHARE)
    seed: int = 0


@dataclass(frozen=True)
class ClipPlan:
    """One clip to make: who, which voice, how long, which split."""

    clip_id: str
    identity: int
    index: int  # clip number within the identity
    voice_index: int  # into VOICES
    seconds: float  # target length; the clip ends after the utterance that reaches it
    split: str

    @property
    def voice(self) -> Voice:
        return VOICES[self.voice_index]


@dataclass
class Clip:
    """A finished clip in memory: what `ShardWriter.write_clip` takes, plus the speech it contains."""

    plan: ClipPlan
    frames: np.ndarray  # uint8 (F, R, R, 3)
    audio: np.ndarray  # float32 (F * sample_rate / fps,)
    meta: dict[str, np.ndarray]  # per-frame labels, leading dimension F
    extra: dict  # JSON: identity, voice, language, split, prosody, texts
    phones: list[Phone] = field(default_factory=list)  # the whole clip's phone timeline (pauses included)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def is_test_identity(identity: int) -> bool:
    return identity % TEST_ID_PERIOD == TEST_ID_PERIOD - 1


def is_test_voice(voice: Voice) -> bool:
    return voice.language in HELD_OUT_LANGUAGES or voice.variant in HELD_OUT_VARIANTS


def identity_face(seed: int, identity: int) -> FaceParams:
    """The face of identity `identity` under `seed` (the same in every clip and every run)."""
    return sample_face(_rng(seed, _FACE, identity))


def _check_languages(languages: Sequence[str]) -> None:
    unknown = [lang for lang in languages if lang not in LEXICONS or lang not in LANGUAGES]
    if unknown or not languages:
        raise RestError(f"unknown language(s) {unknown or languages}; choose from: {', '.join(LANGUAGES)}")


def _check_engines(engines: Sequence[str]) -> None:
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise RestError(f"unknown speech engine(s) {unknown or engines}; choose from: {', '.join(ENGINES)}")


def _draw_voice(pool: Sequence[int], rng: np.random.Generator) -> int:
    """A voice index from `pool`: first the engine (ENGINE_SHARE over the engines in the pool), then a voice."""
    engines = sorted({VOICES[i].engine for i in pool}, key=ENGINES.index)
    share = np.array([ENGINE_SHARE[e] for e in engines])
    engine = engines[int(rng.choice(len(engines), p=share / share.sum()))]
    voices = [i for i in pool if VOICES[i].engine == engine]
    return int(voices[rng.integers(len(voices))])


def plan_clips(identities: int | Sequence[int], cfg: SynthConfig) -> list[ClipPlan]:
    """The clips of `identities` (a count, or explicit indices), each with its voice and split (module docstring)."""
    _check_languages(cfg.languages)
    ids = range(identities) if isinstance(identities, int) else identities
    _check_engines(cfg.engines)
    usable = [i for i, v in enumerate(VOICES) if v.language in cfg.languages and v.engine in cfg.engines]
    train_voices = [i for i in usable if not is_test_voice(VOICES[i])]
    test_voices = [i for i in usable if is_test_voice(VOICES[i])]
    if not train_voices:
        raise RestError(
            f"languages {', '.join(cfg.languages)} are all held out for the test_voice split "
            f"({', '.join(HELD_OUT_LANGUAGES)}); add a training language"
        )
    lo, hi = cfg.clip_seconds
    plans = []
    for identity in ids:
        rng = _rng(cfg.seed, _PLAN, identity)
        remaining, index = float(cfg.seconds), 0
        while remaining > 1e-6:
            seconds = min(rng.uniform(lo, hi), remaining)
            if remaining - seconds < lo:  # no clip shorter than lo (unless `seconds` is): the last takes the rest
                seconds = remaining
            if is_test_identity(identity):
                split, pool = "test_id", train_voices
            elif test_voices and rng.random() < TEST_VOICE_SHARE:
                split, pool = "test_voice", test_voices
            else:
                split, pool = "train", train_voices
            voice_index = _draw_voice(pool, rng)
            clip_id = f"id{identity:04d}_v{voice_index:03d}_{index:04d}"
            plans.append(ClipPlan(clip_id, int(identity), index, voice_index, float(seconds), split))
            remaining -= seconds
            index += 1
    return plans


#################################################################################
#                                 One clip                                      #
#################################################################################


def _prosody(rng: np.random.Generator) -> Prosody:
    return Prosody(
        rate=int(rng.integers(130, 201)), pitch=int(rng.integers(30, 76)), pitch_range=int(rng.integers(25, 86))
    )


def speak_timeline(
    voice: Voice,
    prosody: Prosody,
    rng: np.random.Generator,
    seconds: float,
    seed: int,
) -> tuple[np.ndarray, int, list[Phone], list[str]]:
    """Sentences separated by pauses until about `seconds`: audio, its sample rate (the voice's), phones, texts.

    Pauses: 0.2-0.8 s before the first sentence, 0.25-0.8 s (70%) or 0.8-2 s (30%) between sentences,
    0.3-1 s after the last. Pauses are phones with an empty symbol.
    """
    engine = get_engine(voice.engine)
    n_guess = math.ceil(seconds / 1.5) + 2  # sentences last 1.5-3 s: enough in one synthesis, almost always
    chunks: list[np.ndarray] = []
    phones: list[Phone] = []
    texts: list[str] = []
    t = 0  # samples so far
    sr = 0  # the voice's sample rate, known from its first utterance

    def pause(duration: float) -> None:
        nonlocal t
        n = round(duration * sr)
        chunks.append(np.zeros(n, np.float32))
        phones.append(Phone("", t / sr, (t + n) / sr))
        t += n

    lead = rng.uniform(0.2, 0.8)
    batch = 0
    while True:
        sentences = [make_sentence(voice.language, rng) for _ in range(n_guess)]
        for utt in engine.speak(voice, prosody, sentences, seed=seed * 1000 + batch):
            if sr == 0:
                sr = utt.sample_rate
                pause(lead)
            chunks.append(utt.audio)
            phones += [Phone(p.symbol, p.start + t / sr, p.end + t / sr) for p in utt.phones]
            texts.append(utt.text)
            t += len(utt.audio)
            if t / sr >= seconds - 1.0:  # the final pause adds about as much as this leaves
                pause(rng.uniform(0.3, 1.0))
                return np.concatenate(chunks), sr, phones, texts
            pause(rng.uniform(0.25, 0.8) if rng.random() < 0.7 else rng.uniform(0.8, 2.0))
        batch += 1


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    return audio[:n] if len(audio) >= n else np.concatenate([audio, np.zeros(n - len(audio), audio.dtype)])


def make_clip(plan: ClipPlan, cfg: SynthConfig, emotion: int | None = None, render: bool = True) -> Clip:
    """Make one clip: speech, mouth track, emotion, motion, frames and labels (deterministic in `cfg.seed` and the
    plan).

    emotion: an index into EMOTIONS, or None to draw one (rest/data/synth/emotion.py, EMOTION_SHARE) from the clip's
    own random stream. render: False skips the frames (`Clip.frames` then has shape (F, 0, 0, 3)): the labels and
    the audio are what a motion model trains on, and they are the same either way.
    """
    face = identity_face(cfg.seed, plan.identity)
    mood = _rng(cfg.seed, _EMOTION, plan.identity, plan.index)
    emotion = draw_emotion(mood) if emotion is None else emotion
    rng = _rng(cfg.seed, _CLIP, plan.identity, plan.index)
    voice, prosody = plan.voice, _prosody(rng)
    clip_seed = int(rng.integers(2**31))
    speech, speech_rate, phones, texts = speak_timeline(voice, prosody, rng, plan.seconds, clip_seed)
    duration = len(speech) / speech_rate
    num_frames = max(1, round(duration * cfg.fps))
    samples_per_frame = cfg.sample_rate // cfg.fps
    audio = _fit(resample(speech, speech_rate, cfg.sample_rate), num_frames * samples_per_frame)
    peak = float(np.abs(audio).max()) or 1.0
    audio = audio * np.float32(rng.uniform(0.3, 0.9) / peak)
    noise_level = 10 ** (rng.uniform(-80, -60) / 20)  # a quiet noise floor, as a microphone has
    audio = (audio + rng.normal(0.0, noise_level, len(audio))).astype(np.float32)
    track = mouth_track(phones_to_segments(phones), num_frames, cfg.fps, articulation=face.articulation)
    expression = expression_track(emotion, num_frames, cfg.fps, mood)
    mean_intensity = float(expression.intensity.mean()) if num_frames else 0.0
    sway = face.sway * (1.0 + (expression.expression.sway - 1.0) * mean_intensity)
    motion = make_motion(
        num_frames, cfg.fps, rng, sway=sway, blink_interval=face.blink_interval, mouth_open=track.open
    )
    pitch = motion.head_pose[:, 1] + expression.intensity * expression.expression.pitch
    motion.head_pose[:, 1] = np.clip(pitch, -10, 10)
    if render:
        frames = render_frames(FaceRenderer(face, cfg.resolution), track, motion, expression)
    else:
        frames = np.zeros((num_frames, 0, 0, 3), np.uint8)
    meta = {
        "mouth_open": track.open,
        "mouth_width": track.width,
        "viseme": track.viseme,
        "speech": track.speech,
        "head_pose": motion.head_pose,
        "head_shift": motion.head_shift,
        "blink": motion.blink,
        "gaze": motion.gaze,
        "emotion": np.full(num_frames, emotion, np.int16),
        "emotion_intensity": expression.intensity,
        "expression": expression.controls,
    }
    extra = {
        "generator": GENERATOR,
        "seed": cfg.seed,
        "identity": plan.identity,
        "clip_index": plan.index,
        "voice": voice.name,
        "engine": voice.engine,
        "language": voice.language,
        "variant": voice.variant,
        "split": plan.split,
        "rate_wpm": prosody.rate,
        "pitch": prosody.pitch,
        "pitch_range": prosody.pitch_range,
        "texts": texts,
        "visemes": [v.name for v in VISEMES],
        "emotion": EMOTIONS[emotion],
    }
    return Clip(plan, frames, audio, meta, extra, phones)


def render_frames(
    renderer: FaceRenderer, track: MouthTrack, motion: Motion, expression: ExpressionTrack | None = None
) -> np.ndarray:
    """Frames of a clip: uint8 (F, R, R, 3); `expression` None draws a neutral face."""
    R = renderer.R
    frames = np.empty((len(track.open), R, R, 3), np.uint8)
    controls = np.zeros((len(frames), 6), np.float32) if expression is None else expression.controls  # (F, 6)
    for i in range(len(frames)):
        yaw, pitch, roll = motion.head_pose[i]
        smile, brow_inner, brow_outer, brow_down, lid, jaw = controls[i].tolist()  # emotion.CONTROLS order
        frames[i] = renderer.render(
            mouth_open=float(track.open[i]),
            mouth_width=float(track.width[i]),
            blink=float(motion.blink[i]),
            yaw=float(yaw),
            pitch=float(pitch),
            roll=float(roll),
            shift=(float(motion.head_shift[i, 0]), float(motion.head_shift[i, 1])),
            gaze=(float(motion.gaze[i, 0]), float(motion.gaze[i, 1])),
            smile=smile,
            brow_inner=brow_inner,
            brow_outer=brow_outer,
            brow_down=brow_down,
            lid=lid,
            jaw=jaw,
        )
    return frames


#################################################################################
#                                 The dataset                                   #
#################################################################################

_WORKER: dict = {}


def _init_worker(output: str, cfg: SynthConfig) -> None:
    from rest.data.shards import ShardWriter

    _WORKER["writer"] = ShardWriter(
        output, resolution=cfg.resolution, fps=cfg.fps, sample_rate=cfg.sample_rate, source=GENERATOR
    )
    _WORKER["cfg"] = cfg
    if "espeak" in cfg.engines:
        get_espeak()  # initialise and warm up once per process


def _make_and_write(plan: ClipPlan) -> tuple[int, float]:
    """Worker task: make one clip and write it; returns (frames, seconds)."""
    clip = make_clip(plan, _WORKER["cfg"])
    _WORKER["writer"].write_clip(
        plan.clip_id,
        clip.frames,
        clip.audio,
        meta=clip.meta,
        split=plan.split,
        source=GENERATOR,
        extra=clip.extra,
    )
    return len(clip.frames), len(clip.audio) / _WORKER["cfg"].sample_rate


@dataclass
class SynthSummary:
    """What a `generate_dataset` run did."""

    clips: int  # made in this run
    skipped: int  # already in the output (resumed)
    frames: int
    seconds: float  # of video made in this run
    wall: float  # seconds

    def line(self) -> str:
        rate = self.frames / self.wall if self.wall > 0 else 0.0
        return (
            f"synth: {self.clips} clips ({self.skipped} already done), {self.frames} frames, "
            f"{self.seconds:.0f} s of video in {self.wall:.1f} s wall ({rate:.0f} frames/s, "
            f"{self.seconds / max(self.wall, 1e-9):.1f}x real time)"
        )


def generate_dataset(
    output: str | Path,
    identities: int,
    cfg: SynthConfig,
    workers: int = 1,
    progress: bool = True,
) -> SynthSummary:
    """Generate `identities` identities into the shard root `output`; clips already there are skipped.

    Args:
        output: shard root (rest/data/shards.py), created or resumed.
        identities: identities 0 .. identities - 1.
        cfg: what to generate.
        workers: processes; 0 or 1 makes the clips in this process.
        progress: show a tqdm bar.
    """
    from tqdm import tqdm

    from rest.data.shards import ShardWriter

    if "espeak" in cfg.engines and not espeak_available():
        raise EspeakError(f"SynthTalk needs espeak-ng for its speech; {INSTALL_HINT} (or leave it out of engines)")
    check_voices(
        {VOICES[p.voice_index] for p in plan_clips(identities, cfg)} - {v for v in VOICES if v.engine == "espeak"}
    )
    start = time.perf_counter()
    writer = ShardWriter(output, resolution=cfg.resolution, fps=cfg.fps, sample_rate=cfg.sample_rate, source=GENERATOR)
    plans = plan_clips(identities, cfg)
    todo = [p for p in plans if not writer.has(p.clip_id)]
    frames, seconds = 0, 0.0
    bar = tqdm(total=len(todo), unit="clip", disable=not progress, desc="synth")
    if workers <= 1 or len(todo) <= 1:
        _init_worker(str(output), cfg)
        results = map(_make_and_write, todo)
        for n, s in results:
            frames, seconds = frames + n, seconds + s
            bar.update(1)
            bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.0f}")
    else:
        ctx = mp.get_context("spawn")  # workers start clean: no inherited threads or espeak state
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(str(output), cfg)) as pool:
            for n, s in pool.imap_unordered(_make_and_write, todo):
                frames, seconds = frames + n, seconds + s
                bar.update(1)
                bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.0f}")
    bar.close()
    return SynthSummary(len(todo), len(plans) - len(todo), frames, seconds, time.perf_counter() - start)


def default_workers() -> int:
    return os.cpu_count() or 1


__all__ = [
    "Clip",
    "ClipPlan",
    "GENERATOR",
    "HELD_OUT_LANGUAGES",
    "HELD_OUT_VARIANTS",
    "LANGUAGES",
    "SynthConfig",
    "SynthSummary",
    "TEST_VOICE_SHARE",
    "VARIANTS",
    "ENGINE_SHARE",
    "FESTIVAL_VOICES",
    "FLITE_VOICES",
    "VOICES",
    "default_workers",
    "generate_dataset",
    "identity_face",
    "is_test_identity",
    "is_test_voice",
    "make_clip",
    "plan_clips",
    "render_frames",
    "speak_timeline",
]
