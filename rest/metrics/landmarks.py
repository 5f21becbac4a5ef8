"""Lip sync against a real reference video: dlib's 68 facial landmarks, the inner-lip aperture, M-LMD and F-LMD.

SynthTalk clips carry mouth labels; real footage does not. Here the mouth of any video, real or generated, is read
with dlib's 68-point shape predictor (`shape_predictor_68_face_landmarks.dat`, shipped offline by the
`face-recognition-models` wheel, found by path because that package's `__init__` needs setuptools'
`pkg_resources`):

- **aperture** of a frame: the mean vertical gap of the three inner-lip pairs (points 61-67, 62-66, 63-65),
  divided by the distance of the outer eye corners (36, 45), so it does not depend on the face's size in the frame.
- **lipsync_landmarks**: the Pearson correlation of the generated video's aperture with the reference video's, at
  the best lag within +-2 frames (`MAX_LAG`), with that lag (d > 0: the generated mouth moves d frames after the
  reference). The reference is a real speaker whose audio drove the generation: it scores whether the mouth follows
  the words, whatever face was animated.
- **M-LMD / F-LMD** (Chen et al., "Lip Movements Generation at a Glance", ECCV 2018): the mean Euclidean distance
  between corresponding landmarks of generated and reference frames, over the 20 mouth points (48-67) or all 68,
  for same-identity reconstruction. Normalisation (ours, stated because papers differ): each frame's landmarks are
  centred on their own mean and divided by that frame's outer eye-corner distance, so head translation and scale
  do not count and distances read as fractions of the eye-corner span (multiply by 100 for percent).

Faces are found by `rest.data.face.FaceDetector` (dlib HOG) in every frame; a frame without a face keeps the box
of the last face found (a talking head does not jump), and frames before the first face take the first box. The
boxes are then averaged over `SMOOTH_FRAMES` frames around each frame: HOG boxes jitter by a few pixels, and the
shape predictor's lip points move with them: on a rendered face whose mouth follows a known track, smoothed boxes
read the track clearly better than raw ones, and a fixed box better still (docs/experiments.md, "The judge").
`box=` skips detection and reads every frame inside one box (a generated video whose faces are too blurred for
HOG, read where the portrait's face is). A video in which no face is ever found is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rest.data.face import Box, FaceDetector
from rest.errors import RestError
from rest.metrics.fid import Extractor, file_sha256
from rest.metrics.identity import dlib_models_dir
from rest.metrics.lipsync_gt import lag_correlation

DLIB_68_FILE = "shape_predictor_68_face_landmarks.dat"
INNER_UPPER = (61, 62, 63)  # inner upper lip, left to right
INNER_LOWER = (67, 66, 65)  # the inner lower-lip points facing them
EYE_CORNERS = (36, 45)  # outer corners of the right and left eye
MOUTH = slice(48, 68)  # the 20 mouth points, outer and inner lip
MAX_LAG = 2  # frames searched either side for the best correlation
SMOOTH_FRAMES = 5  # detected boxes are averaged over this many frames around each frame


class FaceLandmarks68:
    """dlib HOG face detection + the 68-point shape predictor, on uint8 RGB frames (module docstring)."""

    def __init__(self, models_dir: str | Path | None = None, detector: FaceDetector | None = None):
        try:
            import dlib
        except ImportError:
            raise RestError("landmark metrics need dlib: pip install dlib-bin") from None
        folder = Path(models_dir) if models_dir is not None else dlib_models_dir()
        path = None if folder is None else folder / DLIB_68_FILE
        if path is None or not path.is_file():
            where = path or f"the face_recognition_models package's models/ folder ({DLIB_68_FILE})"
            raise RestError(
                f"landmark metrics need dlib's 68-point model, not found at {where}: "
                "pip install face-recognition-models (ships it, offline)"
            )
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(path))
        self.detector = detector or FaceDetector(backend="dlib-hog")
        self.extractor = Extractor("dlib shape_predictor_68_face_landmarks", str(path), file_sha256(path))

    def detect(self, image: np.ndarray) -> Box | None:
        """The largest face box in a uint8 RGB frame (upsampled 2x first when the frame is small), or None."""
        scale = 1.0
        if max(image.shape[:2]) < 320:  # HOG finds faces of about 80 px and larger
            scale = 2.0
            image = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
        boxes = self.detector.detect(np.ascontiguousarray(image))
        if not boxes:
            return None
        b = max(boxes, key=lambda b: b.area)
        return Box(b.x0 / scale, b.y0 / scale, b.x1 / scale, b.y1 / scale, b.score)

    def points(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The 68 landmarks (68, 2) as (x, y) pixels of the face inside `box`."""
        rect = self._dlib.rectangle(
            int(round(box.x0)), int(round(box.y0)), int(round(box.x1)) - 1, int(round(box.y1)) - 1
        )
        shape = self._predictor(np.ascontiguousarray(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float64)  # (68, 2)

    def track(self, frames: np.ndarray, box: Box | None = None) -> tuple[np.ndarray, int]:
        """Landmarks of every frame, (F, 68, 2), and how many frames had a face of their own.

        frames: uint8 (F, H, W, 3). With `box`, every frame is read inside it (detection skipped; the count is F).
        """
        if box is not None:
            return np.stack([self.points(f, box) for f in frames]), len(frames)
        boxes = [self.detect(f) for f in frames]
        found = sum(b is not None for b in boxes)
        if found == 0:
            raise RestError("no face found in any frame of the video")
        last = next(b for b in boxes if b is not None)
        filled = []
        for b in boxes:
            last = b or last
            filled.append(last[:4])
        coords = np.asarray(filled, np.float64)  # (F, 4) x0, y0, x1, y1
        half = SMOOTH_FRAMES // 2
        padded = np.pad(coords, ((half, half), (0, 0)), mode="edge")
        kernel = np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES
        smooth = np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(4)], axis=1)  # (F, 4)
        return np.stack([self.points(f, Box(*c, 1.0)) for f, c in zip(frames, smooth, strict=True)]), found


def eye_span(points: np.ndarray) -> np.ndarray:
    """Outer eye-corner distance of each frame: (F, 68, 2) -> (F,)."""
    return np.linalg.norm(points[:, EYE_CORNERS[1]] - points[:, EYE_CORNERS[0]], axis=-1)


def aperture(points: np.ndarray) -> np.ndarray:
    """Inner-lip opening over the eye-corner distance: (F, 68, 2) -> (F,), 0 for closed lips."""
    gap = np.linalg.norm(points[:, list(INNER_LOWER)] - points[:, list(INNER_UPPER)], axis=-1).mean(-1)  # (F,)
    return gap / np.maximum(eye_span(points), 1e-6)


def landmark_distance(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """M-LMD and F-LMD (module docstring) of two landmark tracks (F, 68, 2), over their common length."""
    n = min(len(pred), len(ref))

    def normalised(points: np.ndarray) -> np.ndarray:
        centred = points[:n] - points[:n].mean(axis=1, keepdims=True)
        return centred / np.maximum(eye_span(points[:n]), 1e-6)[:, None, None]

    dist = np.linalg.norm(normalised(pred) - normalised(ref), axis=-1)  # (n, 68)
    return {"m_lmd": float(dist[:, MOUTH].mean()), "f_lmd": float(dist.mean()), "frames": n}


def lipsync_landmarks(pred: np.ndarray, ref: np.ndarray, max_lag: int = MAX_LAG) -> dict:
    """Correlation of two aperture series at the best lag within +-max_lag frames (module docstring)."""
    result = lag_correlation(pred, ref, max_offset=max_lag)
    return {
        "corr": result["best_corr"],
        "lag": result["offset"],
        "corr_lag0": result["corr"],
        "frames": result["frames"],
    }


__all__ = [
    "DLIB_68_FILE",
    "FaceLandmarks68",
    "MAX_LAG",
    "aperture",
    "eye_span",
    "landmark_distance",
    "lipsync_landmarks",
]
