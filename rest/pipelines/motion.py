"""Face motion from speech: the streaming motion student, its rig and the phonetic channel, as one object.

    pipe = MotionPipeline.from_pretrained("weights/rest-motion")
    frames = pipe.animate(samples, emotion="happy")          # (F, 14) rig frames, RIG_PARAMS order
    stream = pipe.stream(emotion="happy", seed=0)            # live: audio in, frames out
    for piece in pieces:
        frames = stream.push(piece)                          # (k, 14), k = 0 or whole chunks
        stream.set_gaze((0.4, -0.2))                         # optional: where the eyes look, None = idle gaze
    frames = stream.finish()

A motion stream is a `StreamingSession` (rest/streaming/session.py), the one streaming loop of the project: the
student denoiser over a cache whose ID-Sink is the rig at rest, `MotionRig` in the VAE's place, and
`PhoneticAudioEncoder` as the audio path. Each chunk starts from noise scaled per rig parameter by motion.json's
`noise_scale` (the sampling temperature, chosen on training clips: the one-step student's samples jitter at full
scale). `MotionControls` imposes on their channels, as known latents (`KnownLatents`, inpainting), a gaze target (or,
when asked, a gaze process's fixations and saccades) and the blinks of a blink process (SynthTalk's own laws): the
chunk is generated around them and cached with them, so the face that follows continues from those eyes. The model
is not conditioned on gaze, and at the calibrated scale it neither blinks nor shifts its gaze by itself.
`arkit_blendshapes` (rest/models/rig.py) turns frames into ARKit's names; `write_motion_json` and
`write_livelink_csv` write them for 3D tools.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from rest.data.phonetic import PhoneticAudioEncoder
from rest.data.synth.motion import BlinkSchedule, GazeSchedule
from rest.errors import RestError
from rest.exports import MotionInfo
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.rig import ARKIT_BLENDSHAPES, ARKIT_ROTATIONS, RIG_INDEX, RIG_PARAMS, MotionRig, arkit_blendshapes
from rest.streaming.rollout import KnownLatents
from rest.streaming.session import StreamingSession

MOTION_HINT = (
    "point at a motion model folder (motion.json, rig/, denoiser/): the bundled weights/rest-motion, or the export/ "
    "of `python train/motion.py --config configs/motion/student.yaml`"
)


class MotionStream:
    """One live motion stream: push audio samples (16 kHz mono float), get rig frames (k, 14) as chunks complete."""

    def __init__(
        self, pipe: MotionPipeline, emotion: int | None, seed: int, gaze=None, blinks: bool = True, saccades=False
    ):
        self.session = pipe.session(emotion, seed, audio=True)
        self.controls = MotionControls(pipe, seed, gaze, blinks, saccades)
        self.session.known = self.controls

    def set_gaze(self, gaze: tuple[float, float] | None) -> None:
        """Where the eyes look from the next chunk on: (x, y) in the rig's units (-1 .. 1, x to the image's right,
        y down), or None: the model's own (or the gaze process's, when the stream has one)."""
        self.controls.gaze = self.controls.pipe.check_gaze(gaze)

    @property
    def frames_out(self) -> int:
        return self.session.frames_out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Samples (n,) -> the rig frames of the chunks they complete, (k, 14) float32."""
        x = torch.as_tensor(np.asarray(samples, np.float32)).reshape(1, -1)
        return _frames(self.session.push_audio(x))

    def finish(self) -> np.ndarray:
        """The end of the stream: the frames left, up to the audio's duration."""
        return _frames(self.session.finish())


class MotionControls:
    """What a motion stream imposes on its chunks (`StreamingSession.known`, called with each chunk's index): the gaze
    target, or else when `saccades` a gaze process's fixations and saccades (`GazeSchedule`, SynthTalk's gaze model:
    fixations of 0.4-3 s, 60 % of them off the camera; off by default: gaze the model does not expect costs the
    mouth some accuracy, docs/experiments.md); and when `blinks` a blink process's blinks (`BlinkSchedule`: one
    every 2-6 s, 150-250 ms long). At the noise scale that keeps it smooth the one-step student neither blinks nor
    shifts its gaze by itself: it drifts around the average gaze."""

    def __init__(self, pipe: MotionPipeline, seed: int, gaze=None, blinks: bool = True, saccades: bool = False):
        self.pipe = pipe
        self.gaze = pipe.check_gaze(gaze)
        self.blinks = BlinkSchedule(seed, pipe.fps) if blinks else None
        self.saccades = GazeSchedule([seed, 1], pipe.fps) if saccades else None  # a stream apart from the blinks'

    def __call__(self, chunk: int) -> KnownLatents | None:
        count = self.pipe.denoiser.config.chunk_latent_frames
        first = chunk * count
        blink = None if self.blinks is None else self.blinks.closure(first, count)
        idle = None if self.saccades is None else self.saccades.gaze(first, count)  # drawn even under a target
        return self.pipe.known_latents(count, self.gaze if self.gaze is not None else idle, blink)


def _frames(out: torch.Tensor) -> np.ndarray:
    return out[0, :, :, 0, 0].T.cpu().numpy().astype(np.float32)  # (B, P, k, 1, 1) -> (k, P)


class MotionPipeline:
    """The streaming motion student, its rig and its audio path (module docstring)."""

    def __init__(self, denoiser: DenoiserDiT, rig: MotionRig, info: MotionInfo, device: str | torch.device = "cpu"):
        if info.stage != "student" or denoiser.attention_mode != "block_causal":
            raise RestError(f"a motion pipeline streams a student; this is a {info.stage} ({MOTION_HINT})")
        if info.audio != "phonetic":
            raise RestError(f"unknown audio path {info.audio!r} in motion.json (this version reads 'phonetic')")
        self.device = torch.device(device)
        self.denoiser = denoiser.to(self.device).eval()
        self.rig = rig.to(self.device).eval()
        self.info = info
        self.audio = PhoneticAudioEncoder()
        scale = info.noise_scale
        if scale is not None and len(scale) != rig.num_params:
            raise RestError(f"motion.json's noise_scale has {len(scale)} values for {rig.num_params} rig parameters")
        self.noise_scale = torch.ones(rig.num_params) if scale is None else torch.tensor(scale, dtype=torch.float32)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> MotionPipeline:
        folder = Path(folder)
        info = MotionInfo.read(folder, MOTION_HINT)
        denoiser = load_local(DenoiserDiT, folder / "denoiser", "motion denoiser")
        rig = load_local(MotionRig, folder / "rig", "motion rig")
        return cls(denoiser, rig, info, device)

    @property
    def fps(self) -> int:
        return self.rig.config.fps

    @property
    def sample_rate(self) -> int:
        return self.audio.config.sample_rate

    def emotion_label(self, emotion: str | None) -> int | None:
        """An emotion name -> its label (None: no emotion asked for, the null label)."""
        if emotion is None:
            return None
        if emotion not in self.info.emotions:
            raise RestError(f"unknown emotion {emotion!r}; this model knows: {', '.join(self.info.emotions)}")
        return self.info.emotions.index(emotion)

    def check_gaze(self, gaze) -> tuple[float, float] | None:
        """A gaze target: None, or (x, y) in the rig's units, -1 .. 1 (x to the image's right, y down)."""
        if gaze is None:
            return None
        values = np.asarray(gaze, dtype=np.float64).reshape(-1)
        if values.shape != (2,) or not np.isfinite(values).all() or np.abs(values).max() > 1:
            raise RestError(
                f"a gaze target is two numbers x, y in -1 .. 1 (x to the image's right, y down); got {gaze}"
            )
        return float(values[0]), float(values[1])

    def known_latents(self, frames: int, gaze=None, blink: np.ndarray | None = None) -> KnownLatents | None:
        """Rig values a chunk of `frames` frames must take -> its known latents: the gaze, (x, y) for every frame or
        (frames, 2); the blink closure per frame (frames,); None when neither is given."""
        if gaze is None and blink is None:
            return None
        values = torch.zeros(1, self.rig.num_params, frames, 1, 1, device=self.device)
        mask = torch.zeros(1, self.rig.num_params, 1, 1, 1, dtype=torch.bool, device=self.device)
        if gaze is not None:
            gaze = torch.as_tensor(np.broadcast_to(np.asarray(gaze, np.float32), (frames, 2)).copy())
            for i, name in enumerate(("gaze_x", "gaze_y")):
                values[0, RIG_INDEX[name], :, 0, 0] = gaze[:, i]
                mask[0, RIG_INDEX[name]] = True
        if blink is not None:
            values[0, RIG_INDEX["blink"], :, 0, 0] = torch.as_tensor(blink, dtype=torch.float32)
            mask[0, RIG_INDEX["blink"]] = True
        return KnownLatents(self.rig.normalize_latents(values), mask)

    def session(self, emotion: int | None, seed: int, audio: bool) -> StreamingSession:
        """The stream's StreamingSession: fed audio (`audio`) or precomputed features (then it ends with whole
        chunks, as the studies compare them)."""
        return StreamingSession(
            self.denoiser,
            self.rig,
            self.rig.rest_latent(1),
            torch.tensor(self.info.sigmas),
            audio_encoder=self.audio if audio else None,
            context_timestep=self.info.context_timestep,
            seed=seed,
            emotion=None if emotion is None else torch.tensor([emotion], device=self.device),
            end="duration" if audio else "whole_chunks",
            noise_scale=self.noise_scale,
        )

    def stream(
        self,
        emotion: str | None = None,
        seed: int = 0,
        gaze: tuple[float, float] | None = None,
        blinks: bool = True,
        saccades: bool = False,
    ) -> MotionStream:
        """A live stream; gaze: a target for the eyes (`MotionStream.set_gaze`); blinks / saccades: the blink and gaze
        processes (`MotionControls`), off: the lids / eyes as the model moves them."""
        return MotionStream(self, self.emotion_label(emotion), seed, gaze, blinks, saccades)

    @torch.no_grad()
    def animate_features(
        self,
        features: np.ndarray,
        emotion: str | None = None,
        seed: int = 0,
        gaze: tuple[float, float] | None = None,
        blinks: bool = True,
        saccades: bool = False,
    ) -> np.ndarray:
        """Precomputed phonetic features (F, 3) (`PhoneticAudioEncoder.encode`, a motion set's) -> rig frames of
        the whole chunks they cover, as a stream of the same audio gives them (studies: no decode per run)."""
        session = self.session(self.emotion_label(emotion), seed, audio=False)
        session.known = MotionControls(self, seed, gaze, blinks, saccades)
        x = torch.as_tensor(np.asarray(features, np.float32))[None].to(self.device)
        return np.concatenate([_frames(session.push_features(x)), _frames(session.finish())])

    @torch.no_grad()
    def animate(
        self,
        samples: np.ndarray,
        emotion: str | None = None,
        seed: int = 0,
        gaze: tuple[float, float] | None = None,
        blinks: bool = True,
        saccades: bool = False,
    ) -> np.ndarray:
        """A whole file's samples (n,) at `sample_rate` -> rig frames (round(n * fps / sample_rate), 14): the
        stream's own frames, pushed at once (`stream` for gaze, blinks and saccades)."""
        stream = self.stream(emotion, seed, gaze, blinks, saccades)
        return np.concatenate([stream.push(samples), stream.finish()])


#################################################################################
#                                  Motion files                                 #
#################################################################################


def motion_document(frames: np.ndarray, fps: int, emotion: str | None = None) -> dict:
    """The JSON motion file: rig frames and their ARKit blendshapes and rotations, per frame."""
    shapes = arkit_blendshapes(frames)
    names = ARKIT_BLENDSHAPES + ARKIT_ROTATIONS
    return {
        "format": "rest-motion",
        "version": 1,
        "fps": fps,
        "emotion": emotion,
        "rig_params": list(RIG_PARAMS),
        "arkit_names": list(names),
        "frames": [
            {
                "time": round(i / fps, 4),
                "rig": [round(float(v), 5) for v in frames[i]],
                "arkit": [round(float(shapes[n][i]), 5) for n in names],
            }
            for i in range(len(frames))
        ],
    }


def write_motion_json(path: str | Path, frames: np.ndarray, fps: int, emotion: str | None = None) -> None:
    Path(path).write_text(json.dumps(motion_document(frames, fps, emotion)) + "\n")


def livelink_timecode(frame: int, fps: int) -> str:
    """LiveLink Face's timecode, HH:MM:SS:FF.mmm (FF the frame within the second, mmm its fraction)."""
    seconds, ff = divmod(frame, fps)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}:{ff:02d}.000"


def write_livelink_csv(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """Rig frames as LiveLink Face's CSV: Timecode, BlendShapeCount (61), the 52 blendshapes in ARKit's order, then
    head and eye rotations (radians)."""
    shapes = arkit_blendshapes(frames)
    names = ARKIT_BLENDSHAPES + ARKIT_ROTATIONS
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Timecode", "BlendShapeCount", *names])
        for i in range(len(frames)):
            writer.writerow([livelink_timecode(i, fps), len(names), *(f"{shapes[n][i]:.6f}" for n in names)])


__all__ = [
    "MOTION_HINT",
    "MotionControls",
    "MotionPipeline",
    "MotionStream",
    "livelink_timecode",
    "motion_document",
    "write_livelink_csv",
    "write_motion_json",
]
