"""The face-motion rig: the per-frame parameters the motion model generates, and their ARKit blendshapes.

A motion frame is `RIG_PARAMS`, 14 values in the units SynthTalk draws and labels them (rest/data/synth):

| parameter | meaning | range |
|---|---|---|
| jaw_open | mouth opening, speech plus an expression's jaw drop | 0 (lips together) .. 1 (widest) |
| mouth_close | lips pressed together for a bilabial (p, b, m) | 0 .. 1 |
| mouth_width | lip width relative to rest, minus 1: rounded < 0 < spread | about -0.32 .. 0.16 |
| smile | mouth corners up (> 0) or down (< 0) | -1 .. 1 |
| brow_inner, brow_outer | inner / outer brow ends raised (> 0) or lowered | -1 .. 1 |
| brow_down | brows lowered and drawn together | 0 .. 1 |
| lid | eye aperture at rest: wide (> 0) or narrowed (< 0) | -1 .. 1 |
| blink | eyelid closure | 0 (open) .. 1 (closed) |
| gaze_x, gaze_y | iris offset, x to the image's right, y down | -1 .. 1 |
| head_yaw, head_pitch, head_roll | head rotation, radians (below) | about -0.3 .. 0.3 |

Head yaw > 0 turns the face towards the image's right, pitch > 0 raises it, roll > 0 tilts it counter-clockwise in
the image.

`arkit_blendshapes` maps frames to the subset of ARKit's 52 blendshapes SynthTalk can express (`ARKIT_SUBSET`); the
other ARKit names are 0. Left and right are the subject's, as ARKit's: the subject faces the camera, so the image's
right is the subject's left. Head and eye rotations are exported beside them in radians (`ARKIT_ROTATIONS`).

`MotionRig` is to the motion model what the VAE is to the video model: it maps rig frames to the normalised space
the denoiser works in (per-parameter mean and standard deviation of the training data) and back. It exposes the
VAE's streaming-decoder interface (`decode_chunk`, `init_cache`, temporal and spatial compression 1), so the one
`StreamingSession` streams motion as it streams video: a motion frame is a latent frame of 1 x 1 "pixels".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

RIG_PARAMS: tuple[str, ...] = (
    "jaw_open",
    "mouth_close",
    "mouth_width",
    "smile",
    "brow_inner",
    "brow_outer",
    "brow_down",
    "lid",
    "blink",
    "gaze_x",
    "gaze_y",
    "head_yaw",
    "head_pitch",
    "head_roll",
)
RIG_INDEX: dict[str, int] = {name: i for i, name in enumerate(RIG_PARAMS)}

# ARKit's 52 blendshape names, in the column order of LiveLink Face's CSV export: note JawRight before JawLeft and
# MouthRight before MouthLeft, as the app writes them (importers that read the columns by position expect that).
ARKIT_BLENDSHAPES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose", "MouthFunnel",
    "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft",
    "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight",
    "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)  # fmt: skip
# Rotations LiveLink Face writes after the blendshapes (radians).
ARKIT_ROTATIONS: tuple[str, ...] = (
    "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch",
    "RightEyeRoll",
)  # fmt: skip
# The blendshapes SynthTalk expresses (the others stay 0).
ARKIT_SUBSET: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeBlinkRight", "EyeLookDownLeft", "EyeLookDownRight", "EyeLookUpLeft", "EyeLookUpRight",
    "EyeLookInLeft", "EyeLookInRight", "EyeLookOutLeft", "EyeLookOutRight", "EyeSquintLeft", "EyeSquintRight",
    "EyeWideLeft", "EyeWideRight", "JawOpen", "MouthClose", "MouthFunnel", "MouthPucker", "MouthStretchLeft",
    "MouthStretchRight", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight",
)  # fmt: skip
ROUNDED_WIDTH = 0.32  # mouth_width at which the lips are fully rounded (SynthTalk's "ou": width 0.68)
SPREAD_WIDTH = 0.16  # mouth_width at which they are fully spread ("ih": 1.16)
EYE_YAW_PER_GAZE = 0.35  # radians of eye rotation at gaze 1 (about 20 degrees)
EYE_PITCH_PER_GAZE = 0.25


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def arkit_blendshapes(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Rig frames (F, len(RIG_PARAMS)) -> every ARKit blendshape and rotation name -> (F,) float32.

    Blendshapes are in [0, 1]; the subset SynthTalk cannot express is 0. Rounded lips are a funnel when the mouth
    is open and a pucker when it is nearly closed; spread lips stretch both corners.
    """
    frames = np.asarray(frames, np.float32)
    if frames.ndim != 2 or frames.shape[1] != len(RIG_PARAMS):
        raise ValueError(f"rig frames must be (F, {len(RIG_PARAMS)}) in RIG_PARAMS order, got {frames.shape}")
    p = {name: frames[:, i] for i, name in enumerate(RIG_PARAMS)}
    zero = np.zeros(len(frames), np.float32)
    out = dict.fromkeys(ARKIT_BLENDSHAPES + ARKIT_ROTATIONS, zero)
    pos = lambda x: np.clip(x, 0.0, 1.0)  # noqa: E731
    rounded = pos(-p["mouth_width"] / ROUNDED_WIDTH)
    opened = _ramp(p["jaw_open"], 0.2, 0.5)
    gx, gy = p["gaze_x"], p["gaze_y"]
    both = {
        "EyeBlink": pos(p["blink"]),
        "EyeLookDown": pos(gy),
        "EyeLookUp": pos(-gy),
        "EyeSquint": pos(-p["lid"]),
        "EyeWide": pos(p["lid"]),
        "MouthStretch": pos(p["mouth_width"] / SPREAD_WIDTH),
        "MouthSmile": pos(p["smile"]),
        "MouthFrown": pos(-p["smile"]),
        "BrowDown": pos(p["brow_down"]),
        "BrowOuterUp": pos(p["brow_outer"]),
    }
    for stem, value in both.items():
        out[f"{stem}Left"] = out[f"{stem}Right"] = value
    # Gaze to the image's right is towards the subject's left: the left eye looks out, the right eye in.
    out["EyeLookOutLeft"] = out["EyeLookInRight"] = pos(gx)
    out["EyeLookInLeft"] = out["EyeLookOutRight"] = pos(-gx)
    out["JawOpen"] = pos(p["jaw_open"])
    out["MouthClose"] = pos(p["mouth_close"])
    out["MouthFunnel"] = rounded * opened
    out["MouthPucker"] = rounded * (1.0 - opened)
    out["BrowInnerUp"] = pos(p["brow_inner"])
    out["HeadYaw"], out["HeadPitch"], out["HeadRoll"] = p["head_yaw"], p["head_pitch"], p["head_roll"]
    out["LeftEyeYaw"] = out["RightEyeYaw"] = gx * EYE_YAW_PER_GAZE
    out["LeftEyePitch"] = out["RightEyePitch"] = -gy * EYE_PITCH_PER_GAZE
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


#################################################################################
#                      The rig as the motion model's "VAE"                      #
#################################################################################


@dataclass
class RigDecodeOutput:
    """`MotionRig.decode_chunk`'s output, shaped as a VAE decoder's."""

    sample: torch.Tensor  # (B, P, F, 1, 1) rig frames


class _NoCache:
    """The rig's decoder is per-frame: there is no causal state to keep."""

    def reset(self) -> None:
        pass


class MotionRig(ModelMixin, ConfigMixin):
    """Rig frames <-> the normalised motion latents the denoiser generates (module docstring).

    Latents are (B, P, F, 1, 1): P = len(params) channels, one latent frame per video frame.
    """

    @register_to_config
    def __init__(
        self,
        params: tuple[str, ...] = RIG_PARAMS,  # parameter names, in channel order
        fps: int = 25,  # motion frames per second
        mean: tuple[float, ...] | None = None,  # per parameter, of the training data; None = 0
        std: tuple[float, ...] | None = None,  # per parameter; None = 1
    ):
        super().__init__()
        n = len(params)
        mean = torch.zeros(n) if mean is None else torch.tensor(mean, dtype=torch.float32)
        std = torch.ones(n) if std is None else torch.tensor(std, dtype=torch.float32)
        if mean.shape != (n,) or std.shape != (n,) or bool((std <= 0).any()):
            raise ValueError(f"mean and std need {n} values (one per parameter), std > 0")
        # Parameters (frozen) rather than buffers: they travel with .to() and the session reads their dtype.
        self.offset = nn.Parameter(mean, requires_grad=False)
        self.scale = nn.Parameter(std, requires_grad=False)

    temporal_compression = 1
    spatial_compression = 1

    @property
    def num_params(self) -> int:
        return len(self.config.params)

    def normalize_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """Rig frames (B, P, F, 1, 1) -> latents, per parameter (x - mean) / std."""
        return (frames - self.offset.view(1, -1, 1, 1, 1)) / self.scale.view(1, -1, 1, 1, 1)

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.scale.view(1, -1, 1, 1, 1) + self.offset.view(1, -1, 1, 1, 1)

    def rest_latent(self, batch_size: int = 1) -> torch.Tensor:
        """The rig at rest (every parameter 0: face relaxed, eyes open and ahead, head straight) as one latent frame
        (B, P, 1, 1, 1): the motion model's ID-Sink."""
        rest = torch.zeros(batch_size, self.num_params, 1, 1, 1, device=self.offset.device)
        return self.normalize_latents(rest)

    def init_cache(self, mode: str = "decode") -> _NoCache:
        return _NoCache()

    def decode_chunk(self, z: torch.Tensor, cache: _NoCache) -> tuple[RigDecodeOutput, _NoCache]:
        """Denormalised latents (B, P, c, 1, 1) -> rig frames, as the VAE's streaming decoder returns pixels (the
        session already applied `denormalize_latents`)."""
        return RigDecodeOutput(sample=z), cache

    @property
    def decoded_channels(self) -> int:
        return self.num_params


__all__ = [
    "ARKIT_BLENDSHAPES",
    "ARKIT_ROTATIONS",
    "ARKIT_SUBSET",
    "MotionRig",
    "RIG_INDEX",
    "RIG_PARAMS",
    "arkit_blendshapes",
]
