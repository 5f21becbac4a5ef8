"""The evaluation harness behind `rest evaluate`: pair generated and ground-truth videos by name, run the metrics.

Metrics (names for `--metrics`):

| name | per video | aggregate | needs |
|---|---|---|---|
| psnr, ssim | vs the GT frames (torchmetrics) | mean | nothing |
| lpips | vs the GT frames (`rest.models.perceptual.LPIPS`) | mean | VGG16 weights (+ optional LPIPS `vgg.pth`) |
| fid | - | Frechet distance of all frames' Inception features | Inception weights |
| fvd | - | Frechet distance of all 16-frame clips' I3D features | I3D TorchScript |
| lse | LSE-C, LSE-D, offset (+ LSE-D at offset 0) of the video's own audio | mean | a SyncNet |
| csim | cosine of face embeddings, reference vs frames | mean | ArcFace weights, or the offline dlib embedder |
| lipsync_gt | mouth openness vs the GT clip's `mouth_open` labels | mean | a mouth regressor + `<gt>/<name>.npz` |
| lipsync_landmarks | lip aperture (dlib 68 points) vs GT's, lag +-2; M-/F-LMD; at rest | mean | dlib 68 points |

Pairing: files `<name>.<mp4|mov|mkv|webm|avi>` in `pred` and `gt` with the same stem; names present on one side
only are listed in the output and not evaluated. Videos are decoded at 25 fps with 16 kHz mono audio
(`rest.media.read_video`). Paired frame metrics compare the first min(F_pred, F_gt) frames and need equal frame
sizes (a video whose size differs is skipped for them with that reason). The CSIM reference is `<ref>/<name>.<png|
jpg|jpeg|webp>` when `ref` is given, else the first frame of the GT video (the output says which).

Weights: every metric's extractor is named in the output with its weights file and sha256 prefix. Default
locations are under `weights/metrics/` (`DEFAULT_WEIGHTS`); a metric asked for whose weights are missing is a
RestError that says which file to put where. With no metric list, the metrics whose weights are present run and
the others are listed under `not_run` with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rest.errors import RestError
from rest.metrics.fid import Extractor, frechet_distance_features

METRICS = ("psnr", "ssim", "lpips", "fid", "fvd", "lse", "csim", "lipsync_gt", "lipsync_landmarks")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
WEIGHTS_DIR = Path("weights/metrics")

# Where each metric looks for its weights when no path is given (first existing file wins).
DEFAULT_WEIGHTS: dict[str, tuple[Path, ...]] = {
    "fid": (
        WEIGHTS_DIR / "inception-2015-12-05.pt",
        WEIGHTS_DIR / "pt_inception-2015-12-05-6726825d.pth",
        WEIGHTS_DIR / "pt_inception-2015-12-05.pth",
    ),
    "fvd": (WEIGHTS_DIR / "i3d_torchscript.pt",),
    "lse": (WEIGHTS_DIR / "syncnet_v2.model",),
    "lpips": (WEIGHTS_DIR / "vgg16.pth", WEIGHTS_DIR / "vgg16.safetensors"),
    "lipsync_gt": (WEIGHTS_DIR / "mouth_regressor",),
}
LPIPS_LIN_DEFAULT = WEIGHTS_DIR / "vgg.pth"

WHAT_TO_PUT = {
    "fid": "inception-2015-12-05.pt (StyleGAN2-ADA / clean-fid TorchScript) or pt_inception-2015-12-05-6726825d.pth "
    "(pytorch-fid state dict)",
    "fvd": "i3d_torchscript.pt (StyleGAN-V's I3D TorchScript)",
    "lse": "syncnet_v2.model (syncnet_python's SyncNet state dict), or a folder exported by train/syncnet.py",
    "lpips": "vgg16.pth (torchvision VGG16 state dict; optional: the lpips package's weights/v0.1/vgg.pth as vgg.pth)",
    "lipsync_gt": "a mouth_regressor/ folder written by train/mouth_regressor.py",
}
FLAGS = {
    "fid": "--fid-weights",
    "fvd": "--fvd-weights",
    "lse": "--syncnet-weights",
    "lpips": "--lpips-vgg",
    "lipsync_gt": "--mouth-regressor",
}


@dataclass
class EvalOptions:
    """What `rest evaluate` runs on and with."""

    pred: Path  # folder of generated videos
    gt: Path  # folder of ground-truth videos (same names)
    ref: Path | None = None  # folder of reference portraits (same names), for CSIM
    metrics: list[str] | None = None  # None: every metric whose weights are present
    weights: dict[str, str] = field(default_factory=dict)  # metric -> weights path, overriding DEFAULT_WEIGHTS
    lpips_lin: str | None = None  # LPIPS linear layers (default weights/metrics/vgg.pth when it exists)
    csim_backend: str = "auto"  # auto | arcface | dlib
    insightface_root: str = "weights/insightface"
    sync_crop: str | None = None  # "face" | "center"; None: the SyncNet's own (config)
    csim_stride: int = 1  # CSIM on every n-th frame
    fid_stride: int = 1  # FID on every n-th frame
    device: str = "cpu"
    progress: bool = True


#################################################################################
#                                   Pairing                                     #
#################################################################################


def _videos(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise RestError(f"{what} folder not found: {folder}")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}


def pair_videos(pred: Path, gt: Path) -> tuple[dict[str, tuple[Path, Path]], dict[str, list[str]]]:
    """{name: (generated, ground truth)} for the names in both folders (sorted), and those on one side only."""
    p, g = _videos(pred, "--pred"), _videos(gt, "--gt")
    names = sorted(p.keys() & g.keys())
    if not names:
        raise RestError(
            f"no video name is in both {pred} ({len(p)} videos) and {gt} ({len(g)} videos); "
            "generated and ground-truth videos are paired by file name (stem)"
        )
    unpaired = {"pred_only": sorted(p.keys() - g.keys()), "gt_only": sorted(g.keys() - p.keys())}
    return {n: (p[n], g[n]) for n in names}, unpaired


def _reference(opts: EvalOptions, name: str, gt_frames: np.ndarray) -> tuple[np.ndarray, str]:
    from rest.media import read_image

    if opts.ref is None:
        return gt_frames[0], "gt_first_frame"
    for suffix in IMAGE_SUFFIXES:
        path = opts.ref / f"{name}{suffix}"
        if path.is_file():
            return read_image(path), str(path)
    raise RestError(f"no reference portrait {opts.ref}/{name}.<{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}>")


#################################################################################
#                           Choosing metrics and weights                        #
#################################################################################


def _weights_path(opts: EvalOptions, metric: str) -> Path | None:
    if metric in opts.weights and opts.weights[metric]:
        return Path(opts.weights[metric])
    return next((p for p in DEFAULT_WEIGHTS[metric] if p.exists()), None)


def _missing_weights(metric: str, given: str | None) -> RestError:
    defaults = ", ".join(str(p) for p in DEFAULT_WEIGHTS[metric])
    if given:
        return RestError(f"{metric}: weights not found at {given}; put {WHAT_TO_PUT[metric]} there")
    return RestError(
        f"{metric} needs weights that are not here: put {WHAT_TO_PUT[metric]} at one of {defaults}, "
        f"or pass {FLAGS[metric]} PATH (nothing is downloaded)"
    )


def resolve_metrics(opts: EvalOptions) -> tuple[list[str], dict[str, str]]:
    """The metrics to run and, when none were asked for, those left out with the reason."""
    from rest.metrics.identity import arcface_available, dlib_models_dir

    if opts.metrics is not None:
        unknown = [m for m in opts.metrics if m not in METRICS]
        if unknown:
            raise RestError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
        for m in opts.metrics:
            if m in DEFAULT_WEIGHTS:
                path = _weights_path(opts, m)
                if path is None or not path.exists():
                    raise _missing_weights(m, opts.weights.get(m))
        return list(dict.fromkeys(opts.metrics)), {}
    chosen, not_run = ["psnr", "ssim"], {}
    for m in ("lpips", "fid", "fvd", "lse", "lipsync_gt"):
        if _weights_path(opts, m) is not None:
            chosen.append(m)
        else:
            not_run[m] = f"no weights: put {WHAT_TO_PUT[m]} in {WEIGHTS_DIR}/ or pass {FLAGS[m]}"
    if arcface_available(opts.insightface_root) or dlib_models_dir() is not None:
        chosen.append("csim")
    else:
        not_run["csim"] = (
            "no face embedder: pip install face-recognition-models dlib-bin, or add insightface buffalo_l"
        )
    if dlib_models_dir() is not None:
        chosen.append("lipsync_landmarks")
    else:
        not_run["lipsync_landmarks"] = "no 68-point landmark model: pip install face-recognition-models dlib-bin"
    return [m for m in METRICS if m in chosen], not_run


#################################################################################
#                                  Extractors                                   #
#################################################################################


class _Models:
    """The loaded extractors of the metrics being run."""

    def __init__(self, opts: EvalOptions, metrics: list[str]):
        device = torch.device(opts.device)
        self.extractors: dict[str, dict] = {}
        for m in ("psnr", "ssim"):
            if m in metrics:
                self.extractors[m] = Extractor("torchmetrics (data_range 1.0)", "", "").describe()
        if "lpips" in metrics:
            from rest.metrics.fid import file_sha256
            from rest.models.perceptual import LPIPS

            vgg = _weights_path(opts, "lpips")
            lin = opts.lpips_lin or (str(LPIPS_LIN_DEFAULT) if LPIPS_LIN_DEFAULT.is_file() else None)
            self.lpips = LPIPS.from_files(vgg, lin).to(device)
            variant = "lpips-vgg (learned linear layers)" if lin else "lpips-vgg baseline (linear layers = 1)"
            self.extractors["lpips"] = {
                **Extractor(variant, str(vgg), file_sha256(vgg)).describe(),
                "lin_weights": lin or "",
                "lin_sha256": file_sha256(lin)[:12] if lin else "",
            }
        if "fid" in metrics:
            from rest.metrics.fid import InceptionFeatures

            self.inception = InceptionFeatures(_weights_path(opts, "fid"), device)
            self.extractors["fid"] = self.inception.extractor.describe()
        if "fvd" in metrics:
            from rest.metrics.fvd import I3DFeatures

            self.i3d = I3DFeatures(_weights_path(opts, "fvd"), device)
            self.extractors["fvd"] = self.i3d.extractor.describe()
        if "lse" in metrics:
            from rest.metrics.syncnet import SyncNetScorer, load_syncnet

            model, extractor = load_syncnet(_weights_path(opts, "lse"))
            self.sync = SyncNetScorer(model, extractor, device=device, crop=opts.sync_crop)
            self.extractors["lse"] = {**extractor.describe(), "crop": self.sync.crop, "vshift": self.sync.vshift}
        if "csim" in metrics:
            from rest.metrics.identity import load_face_embedder

            self.embedder = load_face_embedder(opts.csim_backend, opts.insightface_root)
            self.extractors["csim"] = {**self.embedder.extractor.describe(), "metric": self.embedder.metric}
        if "lipsync_gt" in metrics:
            from rest.metrics.lipsync_gt import load_mouth_regressor

            self.mouth, extractor = load_mouth_regressor(_weights_path(opts, "lipsync_gt"))
            self.mouth.to(device)
            self.extractors["lipsync_gt"] = extractor.describe()
        if "lipsync_landmarks" in metrics:
            from rest.metrics.landmarks import FaceLandmarks68
            from rest.metrics.vad import vad_name

            self.landmarks = FaceLandmarks68()
            self.extractors["lipsync_landmarks"] = {**self.landmarks.extractor.describe(), "vad": vad_name()}


#################################################################################
#                                 Per video                                     #
#################################################################################


def _paired_frames(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    if pred.shape[1:] != gt.shape[1:]:
        return (
            f"frame size differs: generated {pred.shape[2]}x{pred.shape[1]}, ground truth {gt.shape[2]}x{gt.shape[1]}"
        )
    n = min(len(pred), len(gt))
    return pred[:n], gt[:n]


def _reconstruction(gt: np.ndarray, pred: np.ndarray, chunk: int = 16) -> dict[str, float]:
    """PSNR and SSIM of a whole video as `reconstruction_metrics` defines them (PSNR from the MSE over all frames,
    SSIM the mean over frames), computed `chunk` frames at a time to bound memory: the chunks' MSEs and SSIMs are
    averaged with their frame counts as weights."""
    from rest.metrics.reconstruction import reconstruction_metrics

    mse, ssim = 0.0, 0.0
    for i in range(0, len(gt), chunk):
        r = reconstruction_metrics(gt[i : i + chunk], pred[i : i + chunk])
        mse += 10.0 ** (-r["psnr"] / 10.0) * r["frames"]  # PSNR = 10 log10(1 / MSE) at data range 1
        ssim += r["ssim"] * r["frames"]
    mse /= len(gt)
    return {"psnr": float(10.0 * np.log10(1.0 / mse)) if mse > 0 else float("inf"), "ssim": ssim / len(gt)}


@torch.no_grad()
def _lpips(model, pred: np.ndarray, gt: np.ndarray, device: torch.device, batch: int = 8) -> float:
    from rest.media import frames_to_tensor

    total = 0.0
    for i in range(0, len(pred), batch):
        x = frames_to_tensor(pred[i : i + batch]).transpose(0, 1).to(device)  # (B, 3, H, W) in [-1, 1]
        y = frames_to_tensor(gt[i : i + batch]).transpose(0, 1).to(device)
        total += model(x, y).sum().item()
    return total / len(pred)


def _timed(timing: dict[str, float], key: str, fn: Callable):
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0


def evaluate_pair(
    name: str,
    pred_path: Path,
    gt_path: Path,
    opts: EvalOptions,
    metrics: list[str],
    models: _Models,
    features: dict,
    timing: dict,
) -> dict:
    """Per-video values of one pair (flat scalars, plus `skipped`: metric -> reason)."""
    from rest.media import read_video

    pred = _timed(timing, "decode", lambda: read_video(pred_path, fps=25))
    gt = _timed(timing, "decode", lambda: read_video(gt_path, fps=25))
    row: dict = {"frames_pred": pred.num_frames, "frames_gt": gt.num_frames}
    skipped: dict[str, str] = {}
    device = torch.device(opts.device)

    paired = _paired_frames(pred.frames, gt.frames)
    for m in ("psnr", "ssim", "lpips"):
        if m in metrics and isinstance(paired, str):
            skipped[m] = paired
    if not isinstance(paired, str):
        p, g = paired
        if "psnr" in metrics or "ssim" in metrics:
            rec = _timed(timing, "psnr_ssim", lambda: _reconstruction(g, p))
            row.update({k: rec[k] for k in ("psnr", "ssim") if k in metrics}, frames_compared=len(p))
        if "lpips" in metrics:
            row["lpips"] = _timed(timing, "lpips", lambda: _lpips(models.lpips, p, g, device))

    if "fid" in metrics:
        s = opts.fid_stride
        features["fid_pred"].append(_timed(timing, "fid", lambda: models.inception(pred.frames[::s])))
        features["fid_gt"].append(_timed(timing, "fid", lambda: models.inception(gt.frames[::s])))
    if "fvd" in metrics:
        from rest.metrics.fvd import CLIP_FRAMES, video_clips

        for side, video in (("pred", pred), ("gt", gt)):
            clips = video_clips(video.frames)
            if len(clips):
                features[f"fvd_{side}"].append(_timed(timing, "fvd", lambda c=clips: models.i3d(c)))
            else:
                skipped[f"fvd_{side}"] = f"{video.num_frames} frames: shorter than one {CLIP_FRAMES}-frame clip"

    if "lse" in metrics:
        audio = pred.audio.samples if pred.audio is not None else None
        result = _timed(timing, "lse", lambda: models.sync.score(pred.frames, audio))
        if isinstance(result, str):
            skipped["lse"] = result
        else:
            row.update(
                lse_c=result.lse_c,
                lse_d=result.lse_d,
                lse_offset=result.offset,
                lse_d_offset0=result.mean_dists[models.sync.vshift],
                lse_windows=result.windows,
            )

    if "csim" in metrics:
        reference, source = _reference(opts, name, gt.frames)
        try:
            sim = _timed(
                timing,
                "csim",
                lambda: _identity(models.embedder, reference, pred.frames, opts.csim_stride),
            )
        except RestError as err:
            skipped["csim"] = f"{err} ({source})"
        else:
            metric = models.embedder.metric
            if sim["value"] is None:
                skipped["csim"] = f"no face found in any scored frame ({sim['frames_without_face']} frames)"
            else:
                row[metric] = sim["value"]
                row[f"{metric}_frames_without_face"] = sim["frames_without_face"]
            row["csim_reference"] = source

    if "lipsync_gt" in metrics:
        from rest.metrics.lipsync_gt import MAX_OFFSET, lag_correlation, read_labels

        try:
            labels = read_labels(gt_path.with_suffix(".npz"))
        except RestError as err:
            labels, skipped["lipsync_gt"] = None, str(err)
        pred_open = None if labels is None else _timed(timing, "lipsync_gt", lambda: models.mouth.predict(pred.frames))
        n = 0 if labels is None else min(len(pred_open), len(labels))
        if labels is None:
            pass
        elif n < 3 * MAX_OFFSET:
            skipped["lipsync_gt"] = f"too short: {n} labelled frames, needs {3 * MAX_OFFSET}"
        else:
            r = lag_correlation(pred_open, labels)
            row.update(lipsync_gt_corr=r["corr"], lipsync_gt_offset=r["offset"], lipsync_gt_best_corr=r["best_corr"])
    if "lipsync_landmarks" in metrics:
        result = _timed(timing, "lipsync_landmarks", lambda: _landmark_scores(models.landmarks, pred, gt))
        if isinstance(result, str):
            skipped["lipsync_landmarks"] = result
        else:
            row.update(result)
    if skipped:
        row["skipped"] = skipped
    return row


def _landmark_scores(landmarks, pred, gt) -> dict | str:
    """lipsync_landmarks of one pair (module docstring), or the reason it cannot be scored."""
    from rest.metrics.landmarks import MAX_LAG, aperture, landmark_distance, lipsync_landmarks
    from rest.metrics.vad import mouth_rest_ratio, speech_frames

    tracks = {}
    for side, video in (("generated", pred), ("ground truth", gt)):
        try:
            tracks[side] = landmarks.track(video.frames)
        except RestError as err:
            return f"{side} video: {err}"
    (p, p_found), (g, g_found) = tracks["generated"], tracks["ground truth"]
    n = min(len(p), len(g))
    if n < 3 * MAX_LAG:
        return f"too short: {n} frames, needs {3 * MAX_LAG}"
    sync = lipsync_landmarks(aperture(p[:n]), aperture(g[:n]))
    row = {
        "lipsync_landmarks_corr": sync["corr"],
        "lipsync_landmarks_lag": sync["lag"],
        "frames_with_face_pred": p_found,
        "frames_with_face_gt": g_found,
        **{k: v for k, v in landmark_distance(p[:n], g[:n]).items() if k != "frames"},
    }
    audio = pred.audio.samples if pred.audio is not None else (gt.audio.samples if gt.audio is not None else None)
    if audio is not None:
        row["mouth_rest_ratio"] = mouth_rest_ratio(aperture(p), speech_frames(audio))
    return row


def _identity(embedder, reference: np.ndarray, frames: np.ndarray, stride: int) -> dict:
    from rest.metrics.identity import identity_similarity

    return identity_similarity(embedder, reference, frames, stride)


#################################################################################
#                                   Harness                                     #
#################################################################################

# Per-video keys averaged into the aggregate (when present), in table order.
SCALAR_KEYS = (
    "psnr",
    "ssim",
    "lpips",
    "csim_arcface",
    "csim_dlib",
    "lse_c",
    "lse_d",
    "lse_offset",
    "lse_d_offset0",
    "lipsync_gt_corr",
    "lipsync_gt_offset",
    "lipsync_gt_best_corr",
    "lipsync_landmarks_corr",
    "lipsync_landmarks_lag",
    "m_lmd",
    "f_lmd",
    "mouth_rest_ratio",
)

CONVENTIONS = {
    "fps": 25,
    "sample_rate": 16000,
    "psnr_ssim": "torchmetrics on [0, 1] RGB, all frames of a video at once; first min(F_pred, F_gt) frames",
    "fid": "Inception-v3 2048-d pool features; bilinear resize to 299; unbiased covariance; float64 Frechet distance",
    "fvd": "I3D 400-d features of non-overlapping 16-frame clips, bilinear 224x224 in [-1, 1], "
    "rescale=False resize=False",
    "lse": "syncnet_python: 25 fps, 16 kHz int16-scale MFCC (python_speech_features), 5-frame windows, "
    "vshift 15; LSE-D = min mean distance, LSE-C = median - min (both at the best offset); "
    "lse_d_offset0 = mean distance at offset 0 (ours)",
    "csim": "cosine similarity of face embeddings, reference portrait vs each scored frame, mean per video",
    "lipsync_gt": "Pearson correlation of estimated mouth openness vs SynthTalk mouth_open labels; best lag in +-15",
    "lipsync_landmarks": "dlib 68-point landmarks on HOG-detected faces (last box carried over frames without one); "
    "aperture = mean gap of inner-lip pairs 61-67, 62-66, 63-65 / outer eye-corner distance 36-45; Pearson "
    "correlation with the GT video's aperture at the best lag in +-2 frames; M-LMD / F-LMD (Chen et al. 2018) = mean "
    "distance of the 20 mouth / all 68 landmarks, each frame centred on its landmarks' mean and divided by its "
    "eye-corner distance; mouth_rest_ratio = mean generated aperture in silent / in speech frames (VAD on the "
    "generated video's audio, else the GT's)",
}


def evaluate(opts: EvalOptions) -> dict:
    """Run the metrics on every pair and return the result mapping (see `rest evaluate --help`)."""
    from tqdm import tqdm

    t_start = time.perf_counter()
    pairs, unpaired = pair_videos(opts.pred, opts.gt)
    if opts.csim_stride < 1 or opts.fid_stride < 1:
        raise RestError("--csim-stride and --fid-stride must be >= 1")
    metrics, not_run = resolve_metrics(opts)
    timing: dict[str, float] = {}
    models = _timed(timing, "load", lambda: _Models(opts, metrics))
    features: dict[str, list[np.ndarray]] = {k: [] for k in ("fid_pred", "fid_gt", "fvd_pred", "fvd_gt")}
    videos = {}
    for name, (pred, gt) in tqdm(pairs.items(), desc="evaluate", unit="video", disable=not opts.progress):
        videos[name] = evaluate_pair(name, pred, gt, opts, metrics, models, features, timing)

    aggregate: dict = {}
    for key in SCALAR_KEYS:
        values = [v[key] for v in videos.values() if v.get(key) is not None and not np.isnan(v[key])]
        if values:
            aggregate[key] = {"mean": float(np.mean(values)), "videos": len(values)}
    for metric, unit in (("fid", "frames"), ("fvd", "clips")):
        if metric in metrics:
            aggregate[metric] = _frechet(features[f"{metric}_pred"], features[f"{metric}_gt"], unit)
    timing["total"] = time.perf_counter() - t_start
    return {
        "pred": str(opts.pred),
        "gt": str(opts.gt),
        "ref": str(opts.ref) if opts.ref else None,
        "pairs": len(pairs),
        "unpaired": unpaired,
        "metrics": models.extractors,
        "not_run": not_run,
        "conventions": {k: v for k, v in CONVENTIONS.items() if k in ("fps", "sample_rate") or _runs(k, metrics)},
        "aggregate": aggregate,
        "videos": videos,
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
    }


def _runs(convention: str, metrics: list[str]) -> bool:
    return convention in metrics or (convention == "psnr_ssim" and ("psnr" in metrics or "ssim" in metrics))


def _frechet(pred: list[np.ndarray], gt: list[np.ndarray], unit: str) -> dict:
    a = np.concatenate(pred) if pred else np.zeros((0, 0))
    b = np.concatenate(gt) if gt else np.zeros((0, 0))
    out = {"value": None, f"{unit}_pred": len(a), f"{unit}_gt": len(b)}
    if min(len(a), len(b)) < 2:
        out["reason"] = f"needs at least 2 {unit} on each side"
    else:
        out["value"] = frechet_distance_features(a, b)
    return out


def format_table(result: dict) -> str:
    """A plain-text table: one row per video and a mean row, one column per per-video metric; then FID / FVD."""
    keys = [k for k in SCALAR_KEYS if any(k in v for v in result["videos"].values())]
    header = ["video", *keys]
    rows = []
    for name, v in result["videos"].items():
        rows.append([name, *(_fmt(v.get(k)) for k in keys)])
    rows.append(["mean", *(_fmt(result["aggregate"].get(k, {}).get("mean")) for k in keys)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for metric in ("fid", "fvd"):
        if metric in result["aggregate"]:
            a = result["aggregate"][metric]
            counts = ", ".join(f"{k} {v}" for k, v in a.items() if k not in ("value", "reason"))
            lines.append(f"{metric}: {_fmt(a['value'])} ({counts}){' - ' + a['reason'] if 'reason' in a else ''}")
    skipped = {n: v["skipped"] for n, v in result["videos"].items() if "skipped" in v}
    for name, reasons in skipped.items():
        for metric, reason in reasons.items():
            lines.append(f"skipped {metric} for {name}: {reason}")
    for metric, reason in result["not_run"].items():
        lines.append(f"not run: {metric} ({reason})")
    return "\n".join(lines)


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.4g}"


__all__ = [
    "DEFAULT_WEIGHTS",
    "EvalOptions",
    "METRICS",
    "evaluate",
    "evaluate_pair",
    "format_table",
    "pair_videos",
    "resolve_metrics",
]
