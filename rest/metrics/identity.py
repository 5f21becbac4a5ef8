"""CSIM: cosine similarity between the face embedding of the reference portrait and of each generated frame.

Two embedders, never mixed (each writes its own metric name):

- `csim_arcface`: insightface's ArcFace (`w600k_r50.onnx` of the `buffalo_l` pack, run by onnxruntime) on faces
  detected and aligned by the pack's SCRFD (`det_10g.onnx`), through `insightface.app.FaceAnalysis`. Used when
  insightface imports and `weights/insightface/models/buffalo_l/` exists (the folder `rest preprocess` uses).
  This is the embedder of the talking-head literature.
- `csim_dlib`: dlib's 128-d face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) on faces found by
  dlib's HOG detector and aligned with its 5-point landmarks (`shape_predictor_5_face_landmarks.dat`), both from
  the `face-recognition-models` wheel (offline). Numbers are not comparable with ArcFace CSIM.

Per video: the mean over the scored frames (every `stride`-th) of cos(e_ref, e_frame); frames where no face is
found are counted and left out, and a reference without a face is an error for that video.

With `at_reference` (dlib only), no face is detected in the frames: every frame is embedded through the
reference's alignment (its detected face box and 5 landmarks), so that no frame is left out. For a fixed camera
(a talking head that stays where the portrait put it) this scores the region where the portrait's face is, in
frames too blurred for the detector; a frame whose face has moved or dissolved scores low instead of being
dropped. It reads against the same alignment applied to other identities' frames (a floor) and to the
portrait's own video (a ceiling), which evaluation/drift_study.py reports with it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from rest.errors import RestError
from rest.metrics.fid import Extractor, file_sha256

INSIGHTFACE_ROOT = Path("weights/insightface")
ARCFACE_PACK = "buffalo_l"
ARCFACE_FILE = "w600k_r50.onnx"
DLIB_EMBEDDER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"


def dlib_models_dir() -> Path | None:
    """The `models/` folder of the installed face-recognition-models wheel (found without importing it: its
    `__init__` needs setuptools' pkg_resources), or None."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return folder if (folder / DLIB_EMBEDDER_FILE).is_file() else None


class DlibFaceEmbedder:
    """dlib HOG detection + 5-point alignment + 128-d ResNet embedding (module docstring)."""

    metric = "csim_dlib"

    def __init__(self, models_dir: str | Path | None = None):
        try:
            import dlib
        except ImportError:
            raise RestError("csim_dlib needs dlib: pip install dlib-bin") from None
        folder = Path(models_dir) if models_dir is not None else dlib_models_dir()
        if folder is None or not (folder / DLIB_EMBEDDER_FILE).is_file():
            where = folder or "the face_recognition_models package"
            raise RestError(
                f"csim_dlib needs {DLIB_EMBEDDER_FILE} and {DLIB_LANDMARKS_FILE} in {where}: "
                "pip install face-recognition-models (ships both, offline)"
            )
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(folder / DLIB_LANDMARKS_FILE))
        self._net = dlib.face_recognition_model_v1(str(folder / DLIB_EMBEDDER_FILE))
        weights = folder / DLIB_EMBEDDER_FILE
        self.extractor = Extractor("dlib_face_recognition_resnet_model_v1 (128-d)", str(weights), file_sha256(weights))

    def align(self, image: np.ndarray):
        """The 5-point landmarks (a dlib full_object_detection) of the largest face in a uint8 RGB image, or None."""
        image = np.ascontiguousarray(image)
        upsample = 1 if max(image.shape[:2]) < 320 else 0  # HOG finds faces of ~80 px and larger
        rects = self._detector(image, upsample)
        if len(rects) == 0:
            return None
        return self._landmarks(image, max(rects, key=lambda r: r.area()))

    def embed(self, image: np.ndarray, alignment) -> np.ndarray:
        """Embedding (128,) of the face chip that `alignment` (from `align`, of this image or another) cuts out."""
        return np.asarray(self._net.compute_face_descriptor(np.ascontiguousarray(image), alignment), np.float64)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """Embedding (128,) of the largest face in a uint8 RGB image, or None when no face is found."""
        alignment = self.align(image)
        return None if alignment is None else self.embed(image, alignment)


class ArcFaceEmbedder:
    """insightface SCRFD + ArcFace (`w600k_r50.onnx`) from a local `buffalo_l` folder (module docstring)."""

    metric = "csim_arcface"

    def __init__(self, root: str | Path = INSIGHTFACE_ROOT):
        folder = Path(root) / "models" / ARCFACE_PACK
        if not (folder / ARCFACE_FILE).is_file():
            raise RestError(
                f"csim_arcface needs insightface's {ARCFACE_PACK} pack: put {ARCFACE_FILE} and det_10g.onnx in "
                f"{folder}/ (unzip buffalo_l.zip there), or use the offline dlib embedder (--csim-backend dlib)"
            )
        try:
            from insightface.app import FaceAnalysis
        except ImportError:
            raise RestError(
                "csim_arcface needs insightface and onnxruntime: pip install insightface onnxruntime"
            ) from None
        self._app = FaceAnalysis(
            name=ARCFACE_PACK,
            root=str(root),
            allowed_modules=["detection", "recognition"],
            providers=["CPUExecutionProvider"],
        )
        self._app.prepare(ctx_id=-1, det_size=(640, 640))
        weights = folder / ARCFACE_FILE
        self.extractor = Extractor("arcface w600k_r50 (insightface buffalo_l)", str(weights), file_sha256(weights))

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        faces = self._app.get(np.ascontiguousarray(image[:, :, ::-1]))  # insightface works in BGR
        if not faces:
            return None
        face = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        return np.asarray(face.embedding, dtype=np.float64)


def arcface_available(root: str | Path = INSIGHTFACE_ROOT) -> bool:
    if not (Path(root) / "models" / ARCFACE_PACK / ARCFACE_FILE).is_file():
        return False
    return importlib.util.find_spec("insightface") is not None


def load_face_embedder(backend: str = "auto", insightface_root: str | Path = INSIGHTFACE_ROOT):
    """ "arcface", "dlib", or "auto" (ArcFace when its weights and insightface are present, else dlib)."""
    if backend == "auto":
        backend = "arcface" if arcface_available(insightface_root) else "dlib"
    if backend == "arcface":
        return ArcFaceEmbedder(insightface_root)
    if backend == "dlib":
        return DlibFaceEmbedder()
    raise RestError(f"unknown CSIM backend {backend!r}; choose auto, arcface or dlib")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def can_align(embedder) -> bool:
    """Whether `embedder` can embed a frame through another image's face alignment (`align` / `embed`: dlib)."""
    return hasattr(embedder, "align")


def identity_similarity(
    embedder, reference: np.ndarray, frames: np.ndarray, stride: int = 1, at_reference: bool = False
) -> dict:
    """Mean cosine similarity of the reference's face to the faces of frames[::stride] (module docstring).

    at_reference: embed every frame through the reference's face alignment instead of detecting its face (an
    embedder with `align` and `embed`: dlib); no frame is left out.
    Returns {"value", "frames_scored", "frames_without_face"}; raises RestError when the reference has no face.
    """
    if at_reference and not can_align(embedder):
        raise RestError(f"identity similarity at the reference's alignment needs the dlib embedder, not {embedder}")
    embed = embedder
    if at_reference:
        alignment = embedder.align(reference)
        embed = lambda image: None if alignment is None else embedder.embed(image, alignment)  # noqa: E731
    ref = embed(reference)
    if ref is None:
        raise RestError("no face found in the reference portrait")
    sims, missing = [], 0
    for frame in frames[::stride]:
        emb = embed(frame)
        if emb is None:
            missing += 1
        else:
            sims.append(cosine(ref, emb))
    return {
        "value": float(np.mean(sims)) if sims else None,
        "frames_scored": len(sims),
        "frames_without_face": missing,
    }


__all__ = [
    "ArcFaceEmbedder",
    "DlibFaceEmbedder",
    "arcface_available",
    "can_align",
    "cosine",
    "dlib_models_dir",
    "identity_similarity",
    "load_face_embedder",
]
