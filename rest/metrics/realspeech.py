"""Real-speech study: does the generated mouth follow real human speech? Measured against real footage.

The clips are real talking-face videos (measurement only: they never train shipped weights). Each clip's audio drives
a generation from given portraits (SynthTalk faces: the model animates procedural faces only); the real speaker's
mouth, read by landmarks from the clip's own video, is the reference. Per clip and portrait:

- `own`: `lipsync_landmarks` (rest/metrics/landmarks.py) of the generated inner-lip aperture against the real
  speaker's, best lag within +-2 frames;
- `shuffled`: the generation driven by the next clip's audio (that clip's own generation: same portrait and seed),
  scored against this clip's real mouth (the control: what any moving mouth scores);
- `rest_ratio`: the generated mouth at rest, mean aperture over the clip's silent frames / over its speech frames
  (`rest.metrics.vad`, on the clip's audio); the real speaker's own ratio is in `real_rest_ratio`.

Per clip, without a generator: `loudness`, the correlation of the audio's loudness envelope (RMS per video frame)
with the real aperture (the baseline a model must beat: a mouth that opens with the volume), and, for every audio
expert given (an `AudioExpert`: the streaming audio encoder with its mouth-openness head; or the `PhoneticExpert`:
pocketsphinx's phones through SynthTalk's visemes), `expert/<name>`, the same correlation of the expert's predicted
openness: what the audio path hears, before any pixels; and `expert/<name>/rest_ratio`, its openness in the clip's
silent frames over that in its speech frames (for the audio files too, and `expert/<name>/silent_ratio` for a
silent file).

Audio files without video (other languages, a silent file) give only `rest_ratio` per portrait; for a silent file
(no speech frames), `silent_ratio` compares its mean generated aperture with the same portrait's mean aperture in
the speech frames of the real clips.

Generated frames are read inside the portrait crop's face box (found once on the portrait): the generated head
stays where the portrait put it, and HOG misses some blurred generated faces.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rest.errors import RestError
from rest.metrics.landmarks import FaceLandmarks68, aperture, lipsync_landmarks
from rest.metrics.vad import mouth_rest_ratio, speech_frames, vad_name

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps


@dataclass
class RealClip:
    """A real talking-face clip, read once: its audio and the speaker's mouth."""

    name: str
    audio: np.ndarray  # float32 (N,) 16 kHz mono
    aperture: np.ndarray  # (F,) the real speaker's inner-lip aperture
    speech: np.ndarray  # (F,) bool, voice activity of the audio
    frames_with_face: int


def read_real_clips(
    paths: list[Path], landmarks: FaceLandmarks68, vad: str = "auto", progress: bool = True
) -> list[RealClip]:
    """Decode each video at 25 fps with 16 kHz audio; the speaker's aperture from every frame's landmarks, and the
    speech frames from the `vad` backend (rest.metrics.vad)."""
    from rest.media import read_video

    clips = []
    for path in tqdm(paths, desc="real clips", unit="clip", disable=not progress):
        video = read_video(path, fps=25)
        if video.audio is None:
            raise RestError(f"{path} has no audio track: the study drives the model with each clip's speech")
        points, found = landmarks.track(video.frames)
        n = min(len(points), len(video.audio.samples) // SAMPLES_PER_FRAME)
        audio = video.audio.samples[: n * SAMPLES_PER_FRAME]
        clips.append(RealClip(path.stem, audio, aperture(points[:n]), speech_frames(audio, backend=vad), found))
    return clips


def loudness_envelope(audio: np.ndarray) -> np.ndarray:
    """RMS of each video frame's 640 samples: (N,) -> (N // 640,)."""
    n = len(audio) // SAMPLES_PER_FRAME
    frames = np.asarray(audio[: n * SAMPLES_PER_FRAME], np.float64).reshape(n, SAMPLES_PER_FRAME)
    return np.sqrt(np.mean(frames**2, axis=1))


def _sync(pred: np.ndarray, ref: np.ndarray) -> dict:
    n = min(len(pred), len(ref))
    return lipsync_landmarks(pred[:n], ref[:n])


def generated_aperture(
    pipe, portrait, audio: np.ndarray, landmarks: FaceLandmarks68, box, seed: int, timing: dict | None = None
) -> np.ndarray:
    """Generate from `audio` and read the mouth of every frame inside `box`: (F,). With `timing`, the generation's
    wall time and the audio's duration are added to its "generate_s" and "media_s"."""
    start = time.perf_counter()
    frames = pipe(portrait, audio, seed=seed)
    if timing is not None:
        timing["generate_s"] += time.perf_counter() - start
        timing["media_s"] += len(audio) / SAMPLES_PER_FRAME / 25
    return aperture(landmarks.track(frames, box=box)[0])


def real_speech_study(
    pipe,
    portraits: dict,
    clips: list[RealClip],
    landmarks: FaceLandmarks68,
    audio_files: dict[str, np.ndarray] | None = None,
    experts: dict | None = None,
    seed: int = 0,
    vad: str = "auto",
    progress: bool = True,
) -> dict:
    """Run the study (module docstring). portraits: name -> `Portrait` (pipe.prepare_portrait); audio_files: name ->
    16 kHz samples; experts: name -> AudioExpert; vad: the voice-activity backend for the audio files (the clips
    carry their own speech frames). Returns the JSON-able result with per-clip rows and means."""
    if len(clips) < 2:
        raise RestError(
            "the study needs at least 2 real clips (the shuffled control drives each with another's audio)"
        )
    boxes = {}
    for name, portrait in portraits.items():
        boxes[name] = landmarks.detect(portrait.crop)
        if boxes[name] is None:
            raise RestError(f"portrait {name}: dlib finds no face in its crop, so its generated mouth cannot be read")
    rows, generated, timing = [], {}, {"generate_s": 0.0, "media_s": 0.0}
    heard = {}  # (expert, clip) -> predicted openness
    bar = tqdm(total=len(portraits) * (len(clips) + len(audio_files or {})), desc="study", disable=not progress)
    for name in portraits:
        for clip in clips:
            generated[name, clip.name] = generated_aperture(
                pipe, portraits[name], clip.audio, landmarks, boxes[name], seed, timing
            )
            bar.update(1)
    for i, clip in enumerate(clips):
        other = clips[(i + 1) % len(clips)]
        row = {
            "clip": clip.name,
            "frames": len(clip.aperture),
            "frames_with_face": clip.frames_with_face,
            "speech_share": float(clip.speech.mean()),
            "real_rest_ratio": mouth_rest_ratio(clip.aperture, clip.speech),
            "loudness": _sync(loudness_envelope(clip.audio), clip.aperture)["corr"],
            "shuffled_from": other.name,
        }
        for expert_name, expert in (experts or {}).items():
            heard[expert_name, clip.name] = expert.predict(clip.audio)
            row[f"expert/{expert_name}"] = _sync(heard[expert_name, clip.name], clip.aperture)["corr"]
            row[f"expert/{expert_name}/rest_ratio"] = mouth_rest_ratio(heard[expert_name, clip.name], clip.speech)
        for name in portraits:
            own = _sync(generated[name, clip.name], clip.aperture)
            row[f"{name}/own"] = own["corr"]
            row[f"{name}/lag"] = own["lag"]
            row[f"{name}/shuffled"] = _sync(generated[name, other.name], clip.aperture)["corr"]
            row[f"{name}/rest_ratio"] = mouth_rest_ratio(generated[name, clip.name], clip.speech)
        rows.append(row)
    files = []
    for file_name, samples in (audio_files or {}).items():
        speech = speech_frames(samples, backend=vad)
        entry = {"file": file_name, "seconds": len(samples) / 16000, "speech_share": float(speech.mean())}
        for expert_name, expert in (experts or {}).items():
            pred = expert.predict(samples)
            if speech.any():
                entry[f"expert/{expert_name}/rest_ratio"] = mouth_rest_ratio(pred, speech)
            else:
                talking = np.concatenate([_speaking(heard[expert_name, c.name], c.speech) for c in clips])
                entry[f"expert/{expert_name}/silent_ratio"] = float(pred.mean() / talking.mean())
        for name in portraits:
            ap = generated_aperture(pipe, portraits[name], samples, landmarks, boxes[name], seed)
            bar.update(1)
            if speech.any():
                entry[f"{name}/rest_ratio"] = mouth_rest_ratio(ap, speech)
            else:  # a silent file: its whole mouth against this portrait's mouth in real speech
                talking = np.concatenate([_speaking(generated[name, c.name], c.speech) for c in clips])
                entry[f"{name}/silent_ratio"] = float(ap.mean() / talking.mean())
        files.append(entry)
    bar.close()
    result = {
        "portraits": list(portraits),
        "vad": vad_name(vad),
        "landmarks": landmarks.extractor.describe(),
        "seed": seed,
        "clips": rows,
        "files": files,
        "mean": _means(rows),
        "timing": {**timing, "rtf": timing["generate_s"] / max(timing["media_s"], 1e-9)},  # generation only
        "curves": {
            f"{name}/{clip.name}": {"generated": generated[name, clip.name].tolist(), "real": clip.aperture.tolist()}
            for name in portraits
            for clip in clips[:1]
        },
    }
    result["mean"]["own"] = float(np.mean([result["mean"][f"{p}/own"] for p in portraits]))
    result["mean"]["shuffled"] = float(np.mean([result["mean"][f"{p}/shuffled"] for p in portraits]))
    result["above_loudness_every_clip"] = {p: all(r[f"{p}/own"] > r["loudness"] for r in rows) for p in portraits}
    return result


def _speaking(values: np.ndarray, speech: np.ndarray) -> np.ndarray:
    """The values of a clip's speech frames."""
    n = min(len(values), len(speech))
    return values[:n][speech[:n]]


def _means(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items() if isinstance(v, float) and not k.endswith("/lag")]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def format_table(result: dict) -> str:
    """One row per clip and the mean: loudness, experts, then own / shuffled / rest ratio per portrait."""
    rows = result["clips"]
    keys = ["loudness", *[k for k in rows[0] if k.startswith("expert/")]]
    for p in result["portraits"]:
        keys += [f"{p}/own", f"{p}/shuffled", f"{p}/rest_ratio"]
    header = ["clip", *keys]
    body = [[r["clip"], *(f"{r[k]:.3f}" for k in keys)] for r in rows]
    body.append(["mean", *(f"{result['mean'][k]:.3f}" for k in keys)])
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"all portraits: own {result['mean']['own']:.3f}, shuffled {result['mean']['shuffled']:.3f}")
    for f in result["files"]:
        values = ", ".join(f"{k} {v:.3f}" for k, v in f.items() if "/" in k)
        lines.append(f"{f['file']} ({f['seconds']:.1f} s, speech {f['speech_share']:.0%}): {values}")
    return "\n".join(lines)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def plot_curves(result: dict, path: str | Path) -> Path:
    """The real and generated mouth of the first clip, for each portrait, each as z-scores over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    fig, axes = plt.subplots(len(curves), 1, figsize=(11, 2.4 * len(curves)), squeeze=False)
    for ax, (key, c) in zip(axes[:, 0], curves.items(), strict=True):
        n = min(len(c["real"]), len(c["generated"]))
        real, gen = _zscore(np.asarray(c["real"][:n])), _zscore(np.asarray(c["generated"][:n]))
        t = np.arange(n) / 25
        ax.plot(t, real, color="black", lw=1.2, label="real speaker (landmarks)")
        ax.plot(t, gen, color="tab:red", lw=1.2, label="generated, driven by the speaker's audio")
        portrait, clip = key.split("/", 1)
        corr = next(r[f"{portrait}/own"] for r in result["clips"] if r["clip"] == clip)
        ax.set_title(f"{clip}: portrait {portrait}, correlation {corr:.2f} (best lag within +-2 frames)", fontsize=9)
        ax.set_ylabel("aperture (z)")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "RealClip",
    "format_table",
    "generated_aperture",
    "loudness_envelope",
    "plot_curves",
    "read_real_clips",
    "real_speech_study",
]
