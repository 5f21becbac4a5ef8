"""Procedural emotions for SynthTalk: an expression per clip, its intensity per frame.

An expression is a small set of facial controls, each in units the renderer draws (rest/data/synth/render.py) and
the motion rig exports (rest/models/rig.py):

- `smile`: the mouth corners, up (> 0, a smile) or down (< 0, a frown), as a fraction of the lips' reach;
- `brow_inner`, `brow_outer`: the inner and outer ends of the brows raised (> 0) or lowered (< 0);
- `brow_down`: the brows lowered and drawn together (anger's frown);
- `lid`: the eye aperture at rest, wide (> 0, upper lids raised) or narrowed (< 0, lower lids raised: a squint);
- `jaw`: a jaw drop at rest (surprise), added to the speech opening.

Head motion follows the emotion too: a pitch offset (sad heads hang, surprised ones lift) and a sway factor (a sad
speaker moves less, a happy one more). The values are set by eye from FACS descriptions of the prototypical
expressions (Ekman & Friesen's action units: happy AU6+12, sad AU1+4+15, angry AU4+5+7+23, surprised AU1+2+5+26), not
measured from anyone's face.

A clip holds one emotion. Its intensity starts from a draw in [0.4, 1], drifts slowly (a smooth random signal of
+-0.15), and ramps in over the first 0.3-1 s, so the onset and the strength vary; a neutral clip has intensity 0.
The per-frame controls are the intensity times the expression's vector.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import numpy as np

from rest.data.synth.motion import smooth_noise


@dataclass(frozen=True)
class Expression:
    """An emotion's controls at full intensity (module docstring) and how it moves the head."""

    name: str
    smile: float
    brow_inner: float
    brow_outer: float
    brow_down: float
    lid: float
    jaw: float
    pitch: float  # degrees added to the head's pitch (> 0 raises the face)
    sway: float  # factor on the head-motion amplitude

    def controls(self) -> np.ndarray:
        """(6,) float32: smile, brow_inner, brow_outer, brow_down, lid, jaw."""
        return np.array(astuple(self)[1:7], np.float32)


EXPRESSIONS: tuple[Expression, ...] = (
    Expression("neutral", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    Expression("happy", 0.9, 0.15, 0.25, 0.0, -0.35, 0.0, 2.0, 1.25),
    Expression("sad", -0.6, 0.9, -0.3, 0.15, -0.2, 0.0, -5.0, 0.6),
    Expression("angry", -0.35, -0.2, 0.1, 0.9, -0.45, 0.0, -2.0, 0.9),
    Expression("surprised", 0.0, 0.9, 0.9, 0.0, 0.8, 0.25, 3.0, 1.0),
)
EMOTIONS: tuple[str, ...] = tuple(e.name for e in EXPRESSIONS)
CONTROLS: tuple[str, ...] = tuple(f.name for f in fields(Expression))[1:7]
EMOTION_SHARE: tuple[float, ...] = (0.4, 0.15, 0.15, 0.15, 0.15)  # of clips, in EMOTIONS order


def emotion_id(name: str) -> int:
    """The index of an emotion name; a clear error for an unknown one."""
    if name not in EMOTIONS:
        raise ValueError(f"unknown emotion {name!r}; choose one of {', '.join(EMOTIONS)}")
    return EMOTIONS.index(name)


@dataclass
class ExpressionTrack:
    """Per-frame emotion labels of a clip."""

    emotion: int  # index into EMOTIONS
    intensity: np.ndarray  # float32 (F,), 0 (neutral) .. 1
    controls: np.ndarray  # float32 (F, 6): CONTROLS per frame, intensity times the expression's

    @property
    def expression(self) -> Expression:
        return EXPRESSIONS[self.emotion]


def draw_emotion(rng: np.random.Generator) -> int:
    """An emotion for a clip, by EMOTION_SHARE."""
    share = np.asarray(EMOTION_SHARE)
    return int(rng.choice(len(EMOTIONS), p=share / share.sum()))


def expression_track(emotion: int, num_frames: int, fps: int, rng: np.random.Generator) -> ExpressionTrack:
    """The intensity and controls of `emotion` over a clip of `num_frames` (module docstring)."""
    times = (np.arange(num_frames) + 0.5) / fps
    if EMOTIONS[emotion] == "neutral":
        intensity = np.zeros(num_frames)
    else:
        base, onset = rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0)
        ramp = np.clip(times / onset, 0.0, 1.0)
        intensity = np.clip(base + 0.15 * smooth_noise(times, rng, band=(0.05, 0.3)), 0.2, 1.0) * ramp
    intensity = intensity.astype(np.float32)
    controls = intensity[:, None] * EXPRESSIONS[emotion].controls()[None, :]
    return ExpressionTrack(emotion, intensity, controls.astype(np.float32))


__all__ = [
    "CONTROLS",
    "EMOTIONS",
    "EMOTION_SHARE",
    "EXPRESSIONS",
    "Expression",
    "ExpressionTrack",
    "draw_emotion",
    "emotion_id",
    "expression_track",
]
