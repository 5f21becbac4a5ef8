"""SynthTalk motion data: per-frame rig parameters and the phonetic channel's features of each clip, no frames.

The motion model (rest/training/motion.py) learns rig frames (rest/models/rig.py) from audio features and an emotion.
Its data are SynthTalk clips made without rendering (`make_clip(..., render=False)`: the labels and the audio are
the same as a rendered clip's), each stored as one `<clip_id>.npz` under the root:

    rig        float32 (F, len(RIG_PARAMS))   the clip's labels as rig frames (`labels_to_rig`)
    features   float32 (F, 3)                 the phonetic channel of its audio (rest/data/phonetic.py)
    emotion    int16 ()                       index into EMOTIONS
    intensity  float32 (F,)                   the emotion's intensity per frame
    speech     bool (F,)                      the frame centre lies inside a phone
    split, clip_id, voice, language           strings

plus `motion_set.json` (what was generated). Clips already present are skipped, so a run resumes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rest.data.phonetic import PhoneticAudioEncoder
from rest.data.synth.generate import ClipPlan, SynthConfig, make_clip, plan_clips
from rest.data.synth.visemes import VISEME_IDS
from rest.errors import RestError
from rest.models.rig import RIG_PARAMS

INFO_FILE = "motion_set.json"


def labels_to_rig(meta: dict[str, np.ndarray]) -> np.ndarray:
    """A SynthTalk clip's per-frame labels (`Clip.meta`) -> rig frames (F, len(RIG_PARAMS)) float32."""
    expression = meta["expression"]  # (F, 6): smile, brow_inner, brow_outer, brow_down, lid, jaw
    pose = np.radians(meta["head_pose"])  # (F, 3) yaw, pitch, roll
    values = {
        "jaw_open": np.clip(meta["mouth_open"] + expression[:, 5], 0.0, 1.0),
        "mouth_close": (meta["viseme"] == VISEME_IDS["PP"]).astype(np.float32),
        "mouth_width": meta["mouth_width"] - 1.0,
        "smile": expression[:, 0],
        "brow_inner": expression[:, 1],
        "brow_outer": expression[:, 2],
        "brow_down": expression[:, 3],
        "lid": expression[:, 4],
        "blink": meta["blink"],
        "gaze_x": meta["gaze"][:, 0],
        "gaze_y": meta["gaze"][:, 1],
        "head_yaw": pose[:, 0],
        "head_pitch": pose[:, 1],
        "head_roll": pose[:, 2],
    }
    return np.stack([values[name] for name in RIG_PARAMS], axis=1).astype(np.float32)


@dataclass
class MotionClip:
    """One clip of a motion set, in memory."""

    clip_id: str
    rig: np.ndarray  # (F, P)
    features: np.ndarray  # (F, 3)
    emotion: int
    intensity: np.ndarray  # (F,)
    speech: np.ndarray  # (F,) bool
    split: str
    voice: str
    language: str


def make_motion_clip(plan: ClipPlan, cfg: SynthConfig, encoder: PhoneticAudioEncoder) -> MotionClip:
    clip = make_clip(plan, cfg, render=False)
    rig = labels_to_rig(clip.meta)
    features = encoder.encode(clip.audio)
    if len(features) != len(rig):
        raise RuntimeError(f"{plan.clip_id}: {len(features)} feature frames for {len(rig)} label frames")
    return MotionClip(
        clip_id=plan.clip_id,
        rig=rig,
        features=features,
        emotion=int(clip.meta["emotion"][0]) if len(rig) else 0,
        intensity=clip.meta["emotion_intensity"],
        speech=clip.meta["speech"],
        split=plan.split,
        voice=plan.voice.name,
        language=plan.voice.language,
    )


def save_motion_clip(root: Path, clip: MotionClip) -> None:
    tmp = root / f".{clip.clip_id}.tmp.npz"
    np.savez(
        tmp,
        rig=clip.rig,
        features=clip.features,
        emotion=np.int16(clip.emotion),
        intensity=clip.intensity,
        speech=clip.speech,
        split=np.str_(clip.split),
        clip_id=np.str_(clip.clip_id),
        voice=np.str_(clip.voice),
        language=np.str_(clip.language),
    )
    tmp.rename(root / f"{clip.clip_id}.npz")  # a clip is there whole or not at all


def load_motion_set(root: str | Path, split: str | None = None) -> list[MotionClip]:
    """The clips of a motion set (of one split, or all), sorted by clip id."""
    root = Path(root)
    if not (root / INFO_FILE).is_file():
        raise RestError(f"{root} is not a motion set (no {INFO_FILE}); make one with `rest synth --motion {root}`")
    clips = []
    for path in sorted(root.glob("*.npz")):
        with np.load(path) as z:
            if split is not None and str(z["split"]) != split:
                continue
            clips.append(
                MotionClip(
                    clip_id=str(z["clip_id"]),
                    rig=z["rig"],
                    features=z["features"],
                    emotion=int(z["emotion"]),
                    intensity=z["intensity"],
                    speech=z["speech"],
                    split=str(z["split"]),
                    voice=str(z["voice"]),
                    language=str(z["language"]),
                )
            )
    return clips


_WORKER: dict = {}


def _init_worker(root: str, cfg: SynthConfig) -> None:
    _WORKER.update(root=Path(root), cfg=cfg, encoder=PhoneticAudioEncoder())


def _make_and_save(plan: ClipPlan) -> float:
    clip = make_motion_clip(plan, _WORKER["cfg"], _WORKER["encoder"])
    save_motion_clip(_WORKER["root"], clip)
    return len(clip.rig) / _WORKER["cfg"].fps


def generate_motion_set(
    root: str | Path, identities: int, cfg: SynthConfig, workers: int = 1, progress: bool = True
) -> tuple[int, float]:
    """Make the motion clips of `identities` identities under `root` (resumed); returns (clips made, seconds)."""
    from tqdm import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / INFO_FILE).write_text(json.dumps({"identities": identities, "synth": asdict(cfg)}, indent=2) + "\n")
    todo = [p for p in plan_clips(identities, cfg) if not (root / f"{p.clip_id}.npz").exists()]
    seconds, start = 0.0, time.perf_counter()
    bar = tqdm(total=len(todo), unit="clip", disable=not progress, desc="motion set")
    if workers <= 1 or len(todo) <= 1:
        _init_worker(str(root), cfg)
        results = map(_make_and_save, todo)
        for s in results:
            seconds += s
            bar.update(1)
    else:
        with mp.get_context("spawn").Pool(min(workers, len(todo)), _init_worker, (str(root), cfg)) as pool:
            for s in pool.imap_unordered(_make_and_save, todo):
                seconds += s
                bar.update(1)
                bar.set_postfix(rt=f"{seconds / (time.perf_counter() - start):.1f}x")
    bar.close()
    return len(todo), seconds


__all__ = [
    "INFO_FILE",
    "MotionClip",
    "generate_motion_set",
    "labels_to_rig",
    "load_motion_set",
    "make_motion_clip",
    "save_motion_clip",
]
