"""Portraits in any size -> the face crop the models were trained on, and generated crops pasted back.

The crop follows the training convention of `rest preprocess` (rest/data/preprocess.py `face_track`): a square of
`BOX_SCALE` detector boxes, centred `box_shift` box heights above the detected face, resized to the preset's
resolution. Generated crops go back into the full portrait through a feathered mask (a rounded square whose alpha
falls to 0 over `feather` of the crop side), so the seam fades into the untouched background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from rest.errors import RestError

MAX_SIDE = 2048  # larger portraits are downscaled first (detection and pasting at this size)
MIN_SIDE = 64  # smaller images are refused
MIN_FACE = 48  # faces whose detector box is smaller (pixels, after downscaling) are refused


class NoFaceError(RestError):
    """The face detector finds no face in a portrait (drawn and stylised faces are often missed)."""


@dataclass
class Portrait:
    """A prepared portrait: the model's input crop and where it came from."""

    crop: np.ndarray  # uint8 (R, R, 3), what the models see
    image: np.ndarray  # uint8 (H, W, 3), the full portrait (after downscaling); frames are pasted into it
    box: tuple[float, float, float, float]  # crop square (x0, y0, x1, y1) in `image` pixels; may extend past it
    face_box: tuple[float, float, float, float] | None  # the detector's box, None when no detection was run


def prepare_portrait(image: np.ndarray, resolution: int, detector=None, name: str = "portrait") -> Portrait:
    """Detect the face of `image` (uint8 (H, W, 3)) and crop it as training crops are cut.

    detector: a `rest.data.face.FaceDetector`; None uses the first one available (SCRFD, else dlib's HOG).
    """
    from rest.data.face import FaceDetector
    from rest.data.preprocess import BOX_SCALE, CropOptions, crop_frames

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RestError(f"{name}: expected an RGB image, got an array {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise RestError(f"{name}: the image is {w}x{h} pixels; it needs at least {MIN_SIDE} on each side")
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
    detector = detector or FaceDetector("auto")
    faces = detector.detect(image)
    if not faces:
        raise NoFaceError(f"{name}: no face found (detector {detector.name}); use a frontal, well-lit portrait")
    face = max(faces, key=lambda b: b.width * b.height)
    if max(face.width, face.height) < MIN_FACE:
        raise RestError(
            f"{name}: the face is only {max(face.width, face.height):.0f} pixels wide; it needs at least {MIN_FACE} "
            "(use a larger or closer portrait)"
        )
    options = CropOptions()
    side = BOX_SCALE[detector.name] * max(face.width, face.height)
    cx, cy = face.center
    cy -= options.box_shift * face.height
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    crop = crop_frames(image[None], np.array([box]), resolution)[0]
    return Portrait(crop=crop, image=image, box=box, face_box=(face.x0, face.y0, face.x1, face.y1))


def crop_as_is(image: np.ndarray, resolution: int, name: str = "portrait") -> Portrait:
    """A portrait that already is a face crop: centre square, resized (no detection)."""
    from rest.media import center_crop_resize

    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < MIN_SIDE:
        raise RestError(f"{name}: expected an RGB image of at least {MIN_SIDE}x{MIN_SIDE} pixels")
    h, w = image.shape[:2]
    s = min(h, w)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    crop = center_crop_resize(image[None], resolution)[0]
    return Portrait(crop=crop, image=image, box=box, face_box=None)


class Paster:
    """Pastes generated crops (uint8 (F, R, R, 3)) back into the portrait: `paste(frames) -> (F, H', W', 3)`.

    The output is the portrait's size rounded down to even sides (H.264). The mask is computed once.
    """

    def __init__(self, portrait: Portrait, feather: float = 0.12):
        image = portrait.image
        self.H, self.W = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        self.background_u8 = np.ascontiguousarray(image[: self.H, : self.W])
        self.background = self.background_u8.astype(np.float32)
        x0, y0, x1, y1 = portrait.box
        # Integer paste region inside the image, and the crop's resampled size for the whole box.
        self.side = max(2, round(x1 - x0))
        ox, oy = round(x0), round(y0)
        self.region = (max(ox, 0), max(oy, 0), min(ox + self.side, self.W), min(oy + self.side, self.H))
        self.inner = (self.region[0] - ox, self.region[1] - oy, self.region[2] - ox, self.region[3] - oy)
        if self.region[2] <= self.region[0] or self.region[3] <= self.region[1]:
            raise RestError("the face crop lies outside the portrait")
        # Feathered rounded-square alpha; edges of the crop that are outside the image need no fading.
        u = (np.arange(self.side) + 0.5) / self.side
        ramp = lambda d: np.clip(d / feather, 0.0, 1.0)  # noqa: E731
        ax = np.minimum(ramp(u), ramp(1 - u))
        alpha = np.minimum(ax[None, :], ax[:, None])
        alpha = alpha * alpha * (3 - 2 * alpha)  # smoothstep
        ix0, iy0, ix1, iy1 = self.inner
        self.alpha = alpha[iy0:iy1, ix0:ix1, None].astype(np.float32)

    def paste(self, frames: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.region
        ix0, iy0, ix1, iy1 = self.inner
        out = np.repeat(self.background_u8[None], len(frames), axis=0)  # only the face region is blended
        region = self.background[y0:y1, x0:x1]
        for i, frame in enumerate(frames):
            big = np.asarray(Image.fromarray(frame).resize((self.side, self.side), Image.BICUBIC), np.float32)
            blended = region + self.alpha * (big[iy0:iy1, ix0:ix1] - region)
            out[i, y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        return out


__all__ = ["MAX_SIDE", "MIN_FACE", "MIN_SIDE", "NoFaceError", "Paster", "Portrait", "crop_as_is", "prepare_portrait"]
