"""Face detection for preprocessing: insightface SCRFD when its weights are present, dlib's HOG detector otherwise.

Backends, in the order `FaceDetector(backend="auto")` tries them:

1. ``scrfd``: insightface's SCRFD detector from the `buffalo_l` pack (`det_10g.onnx`). Needs `pip install
   insightface onnxruntime` and the model folder at ``weights/insightface/models/buffalo_l/`` (the unzipped
   `buffalo_l.zip` of insightface's model zoo; only `det_10g.onnx` is used). insightface cannot download it here,
   so it is used only when that folder already exists. Robust to profile views and small faces.
2. ``dlib-hog``: dlib's HOG + linear SVM frontal face detector, shipped inside the `dlib-bin` wheel (no weights
   to fetch). Finds frontal and near-frontal faces of about 80 px and larger; preprocessing interpolates over the
   frames where it misses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from rest.errors import RestError

SCRFD_ROOT = Path("weights/insightface")  # FaceAnalysis(root=...); the models live in <root>/models/<pack>/
SCRFD_PACK = "buffalo_l"

Backend = Literal["auto", "scrfd", "dlib-hog"]


class Box(NamedTuple):
    """A detected face in pixel coordinates of the image: [x0, x1) x [y0, y1), with the detector's score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


def scrfd_available(root: str | Path = SCRFD_ROOT) -> bool:
    """Whether the SCRFD backend can run: insightface importable and the buffalo_l folder in place."""
    if not (Path(root) / "models" / SCRFD_PACK).is_dir():
        return False
    try:
        import insightface  # noqa: F401
    except ImportError:
        return False
    return True


def dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


class FaceDetector:
    """Finds faces in RGB images; `name` tells which backend runs ("scrfd" or "dlib-hog").

    Args:
        backend: "auto" (SCRFD when available, else dlib), or force one; a forced backend that cannot run is an error.
        scrfd_root: the insightface root folder holding `models/buffalo_l/`.
        det_size: SCRFD input size (square).
        upsample: dlib upsampling steps (each doubles the image; finds smaller faces, 4x slower).
        max_side: dlib runs on images scaled down to at most this side (speed); boxes come back in full-size pixels.

    Not picklable: create one per worker process.
    """

    def __init__(
        self,
        backend: Backend = "auto",
        *,
        scrfd_root: str | Path = SCRFD_ROOT,
        det_size: int = 640,
        upsample: int = 0,
        max_side: int = 640,
    ):
        self.upsample = upsample
        self.max_side = max_side
        if backend == "auto":
            backend = "scrfd" if scrfd_available(scrfd_root) else "dlib-hog"
        if backend == "scrfd":
            self._init_scrfd(Path(scrfd_root), det_size)
        elif backend == "dlib-hog":
            self._init_dlib()
        else:
            raise RestError(f"unknown face detector backend {backend!r}; choose auto, scrfd or dlib-hog")
        self.name: str = backend

    def _init_scrfd(self, root: Path, det_size: int) -> None:
        folder = root / "models" / SCRFD_PACK
        if not folder.is_dir():
            raise RestError(
                f"the SCRFD face detector needs insightface's {SCRFD_PACK} models in {folder}/ (det_10g.onnx); "
                "unzip buffalo_l.zip there, or use the dlib-hog backend (pip install dlib-bin)"
            )
        try:
            from insightface.app import FaceAnalysis
        except ImportError:
            raise RestError("the SCRFD face detector needs insightface: pip install insightface onnxruntime") from None
        self._app = FaceAnalysis(
            name=SCRFD_PACK, root=str(root), allowed_modules=["detection"], providers=["CPUExecutionProvider"]
        )
        self._app.prepare(ctx_id=-1, det_size=(det_size, det_size))

    def _init_dlib(self) -> None:
        try:
            import dlib
        except ImportError:
            raise RestError(
                "no face detector available: pip install dlib-bin (HOG detector, no weights needed), or "
                f"pip install insightface onnxruntime and put the {SCRFD_PACK} models in "
                f"{SCRFD_ROOT / 'models' / SCRFD_PACK}/"
            ) from None
        self._dlib = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[Box]:
        """Faces in `image` (uint8 (H, W, 3) RGB), largest first (ties: most confident first)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
        boxes = self._detect_scrfd(image) if self.name == "scrfd" else self._detect_dlib(image)
        return sorted(boxes, key=lambda b: (-b.area, -b.score))

    def _detect_scrfd(self, image: np.ndarray) -> list[Box]:
        faces = self._app.get(np.ascontiguousarray(image[:, :, ::-1]))  # insightface works in BGR
        return [Box(*map(float, f.bbox[:4]), float(f.det_score)) for f in faces]

    def _detect_dlib(self, image: np.ndarray) -> list[Box]:
        scale = 1.0
        h, w = image.shape[:2]
        if max(h, w) > self.max_side:
            from PIL import Image

            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        rects, scores, _ = self._dlib.run(np.ascontiguousarray(image), self.upsample, 0.0)
        # dlib rectangles are inclusive: right/bottom are the last pixel inside the face.
        return [
            Box(r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale, float(s))
            for r, s in zip(rects, scores, strict=True)
        ]

    def __repr__(self) -> str:
        return f"FaceDetector(name={self.name!r})"


__all__ = ["Box", "FaceDetector", "SCRFD_PACK", "SCRFD_ROOT", "dlib_available", "scrfd_available"]
