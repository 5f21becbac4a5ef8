"""Raw talking-face videos -> shard root: 25 fps face crops at the preset resolution + 16 kHz mono audio.

Per video (`preprocess_video`):

1. decode at 25 fps (`rest.media.read_video`) and the audio at 16 kHz mono; cut the longer of the two so that
   frame n covers samples [n * 640, (n + 1) * 640);
2. detect the face on every `detect_every`-th frame (`FaceDetector`), following the same person from keyframe to
   keyframe (best overlap with the previous box, else the largest face);
3. turn each detection into a square crop box: side = `box_scale` x the detector box, centre moved up by
   `box_shift` x the box height so that chin, forehead and hair fit (detector boxes sit low: HOG stops at the
   brows);
4. remove outlier detections with a running median over keyframes, interpolate linearly between keyframes, then
   smooth centre and side with a Gaussian over time (symmetric, so the crop does not lag the head);
5. keep the box inside the frame (shift it, and shrink it when it is larger than the frame: padded borders
   would be artefacts the generator learns), crop with sub-pixel boxes and resize to R x R.

Bad inputs raise `SkipClip` with a one-line reason, which `preprocess_folder` writes to report.jsonl and moves
on. The folder run (`preprocess_folder`, behind `rest preprocess`) writes through `ShardWriter`, so finished clips
are atomic and a rerun resumes: clips already in the manifest and inputs already reported are not redone.
Workers are processes (spawned, not forked: a forked torch/decoder state is unsafe), each with its own detector
and `ShardWriter`; manifest appends are serialised by the writer's file lock.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rest.data.face import Box, FaceDetector
from rest.data.shards import ClipRecord, ShardWriter
from rest.errors import RestError
from rest.media import MediaError, center_crop_resize, probe, read_audio, read_video

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


class SkipClip(RestError):
    """This input cannot become a clip; the message is the reason written to report.jsonl."""


@dataclass(frozen=True)
class CropOptions:
    """How the face crop is found and smoothed (units: frames at the output frame rate, unless stated)."""

    detect_every: int = 5  # run the detector on every n-th frame, interpolate in between
    box_scale: float | None = None  # crop side / detector box side; None: the detector's default (BOX_SCALE)
    box_shift: float = 0.2  # crop centre above the detector box centre, in detector box heights
    median_keyframes: int = 5  # running median over this many keyframes removes single bad detections
    center_sigma: float = 3.0  # Gaussian smoothing of the crop centre over time
    size_sigma: float = 8.0  # stronger smoothing of the crop side: zoom jitter is the most visible
    min_face_fraction: float = 0.5  # skip the video when fewer keyframes than this have a face
    keep_inside: bool = True  # shift (and if needed shrink) the box into the frame instead of padding
    pad_mode: str = "edge"  # numpy.pad mode where the box leaves the frame (only with keep_inside=False)


# Detector box -> crop side. HOG boxes span brows to chin; SCRFD boxes include the forehead, so they need less.
BOX_SCALE = {"dlib-hog": 1.8, "scrfd": 1.5}


@dataclass(frozen=True)
class PreprocessOptions:
    """Everything `preprocess_video` / `preprocess_folder` need besides the paths."""

    resolution: int  # output frames are R x R
    fps: int = 25
    sample_rate: int = 16000
    min_seconds: float = 1.0  # shorter inputs are skipped
    max_seconds: float | None = None  # keep only the first seconds of each input (None: all)
    max_decode_gb: float = 16.0  # inputs whose decoded frames would exceed this are skipped (whole-video decode)
    crop: CropOptions = field(default_factory=CropOptions)
    crf: int = 12  # H.264 quality of the stored frames
    split: str = "train"
    detector: str = "auto"  # FaceDetector backend
    face_crop: bool = True  # False: the video already is a face crop (centre square resized, no detection)


#################################################################################
#                                  Face track                                   #
#################################################################################


@dataclass
class FaceTrack:
    """Smoothed square crop boxes of one video."""

    boxes: np.ndarray  # float32 (F, 4): x0, y0, x1, y1 in source pixels (square; inside the frame if keep_inside)
    keyframes: np.ndarray  # int64 (K,): frames the detector ran on
    detected: np.ndarray  # bool (K,): whether it found a face there
    detector: str

    @property
    def face_fraction(self) -> float:
        return float(self.detected.mean()) if len(self.detected) else 0.0


def face_track(frames: np.ndarray, detector: FaceDetector, options: CropOptions = CropOptions()) -> FaceTrack:
    """Detect, follow and smooth the face of `frames` (uint8 (F, H, W, 3)); `SkipClip` when there is too little face.

    Returns the crop box of every frame (see the module docstring for the steps).
    """
    F = len(frames)
    keyframes = np.unique(np.r_[np.arange(0, F, options.detect_every), F - 1]).astype(np.int64)
    scale = options.box_scale if options.box_scale is not None else BOX_SCALE[detector.name]
    found_at, cx, cy, side = [], [], [], []
    previous: Box | None = None
    for k in keyframes:
        box = _pick_face(detector.detect(frames[k]), previous)
        if box is None:
            continue
        previous = box
        found_at.append(k)
        x, y = box.center
        cx.append(x)
        cy.append(y - options.box_shift * box.height)
        side.append(scale * max(box.width, box.height))
    detected = np.isin(keyframes, found_at)
    if not found_at or detected.mean() < options.min_face_fraction:
        raise SkipClip(
            f"face found in only {int(detected.sum())} of {len(keyframes)} sampled frames "
            f"(needs {options.min_face_fraction:.0%}; detector {detector.name})"
        )
    t = np.arange(F)
    tracks = []
    for values, sigma in ((cx, options.center_sigma), (cy, options.center_sigma), (side, options.size_sigma)):
        v = _running_median(np.asarray(values, np.float64), options.median_keyframes)
        v = np.interp(t, found_at, v)  # linear between keyframes, constant beyond the first/last detection
        tracks.append(_gaussian_smooth(v, sigma))
    cx_t, cy_t, side_t = tracks
    if options.keep_inside:  # clamping smooth curves keeps them continuous: no jitter, and no padded borders
        H, W = frames.shape[1:3]
        side_t = np.minimum(side_t, min(H, W))
        cx_t = np.clip(cx_t, side_t / 2, W - side_t / 2)
        cy_t = np.clip(cy_t, side_t / 2, H - side_t / 2)
    half = side_t / 2
    boxes = np.stack([cx_t - half, cy_t - half, cx_t + half, cy_t + half], axis=1).astype(np.float32)
    return FaceTrack(boxes=boxes, keyframes=keyframes, detected=detected, detector=detector.name)


def _pick_face(boxes: list[Box], previous: Box | None) -> Box | None:
    """The same person as at the last keyframe when one overlaps it well, else the largest face."""
    if not boxes:
        return None
    if previous is not None:
        best = max(boxes, key=lambda b: _iou(b, previous))
        if _iou(best, previous) > 0.3:
            return best
    return boxes[0]  # detector order: largest first


def _iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    h = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = w * h
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def _running_median(x: np.ndarray, window: int) -> np.ndarray:
    """Centred running median of odd `window`, the ends padded by repetition."""
    r = window // 2
    if r == 0 or len(x) < 3:
        return x
    padded = np.pad(x, r, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * r + 1), axis=1)


def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing over time; the ends are padded by repetition (no pull towards zero)."""
    if sigma <= 0 or len(x) < 2:
        return x
    r = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    return np.convolve(np.pad(x, r, mode="edge"), kernel, mode="valid")


def crop_frames(frames: np.ndarray, boxes: np.ndarray, resolution: int, pad_mode: str = "edge") -> np.ndarray:
    """Crop each frame to its box (float, sub-pixel) and resize: uint8 (F, H, W, 3) -> uint8 (F, R, R, 3)."""
    H, W = frames.shape[1:3]
    # One padding for the whole clip, enough for every box (plus a pixel for the resampling filter's support).
    overflow = max(0.0, -boxes[:, 0].min(), -boxes[:, 1].min(), boxes[:, 2].max() - W, boxes[:, 3].max() - H)
    pad = int(np.ceil(overflow)) + 1 if overflow > 0 else 0
    out = np.empty((len(frames), resolution, resolution, 3), np.uint8)
    for i, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
        if pad:
            frame = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
        region = tuple(float(v) + pad for v in box)
        out[i] = np.asarray(Image.fromarray(frame).resize((resolution, resolution), Image.BICUBIC, box=region))
    return out


def crop_face_track(
    frames: np.ndarray, detector: FaceDetector, resolution: int, options: CropOptions = CropOptions()
) -> np.ndarray:
    """Face-crop a whole video: uint8 (F, H, W, 3) -> uint8 (F, R, R, 3) along its smoothed face track."""
    track = face_track(frames, detector, options)
    return crop_frames(frames, track.boxes, resolution, options.pad_mode)


#################################################################################
#                                  One video                                    #
#################################################################################


@dataclass
class ProcessedClip:
    """A video ready for `ShardWriter.write_clip`."""

    frames: np.ndarray  # uint8 (F, R, R, 3)
    audio: np.ndarray  # float32 (F * sample_rate / fps,)
    track: FaceTrack | None  # None: not face-tracked (options.face_crop False)
    source_size: tuple[int, int]  # (width, height) of the input frames


def preprocess_video(path: str | Path, options: PreprocessOptions, detector: FaceDetector | None) -> ProcessedClip:
    """Decode, align, face-track and crop one video; `SkipClip` (with the reason) for an unusable input."""
    path = Path(path)
    try:
        info = probe(path)
    except MediaError as err:
        raise SkipClip(f"unreadable: {_strip_path(err, path)}") from None
    if not info.has_video:
        raise SkipClip("no video track")
    if not info.has_audio:
        raise SkipClip("no audio track")
    max_frames = None if options.max_seconds is None else max(1, int(options.max_seconds * options.fps))
    seconds = info.duration if options.max_seconds is None else min(info.duration, options.max_seconds)
    gigabytes = seconds * options.fps * info.width * info.height * 3 / 1e9
    if gigabytes > options.max_decode_gb:
        raise SkipClip(
            f"too long to decode at once ({seconds:.0f} s of {info.width}x{info.height} = {gigabytes:.1f} GB of "
            f"frames, limit {options.max_decode_gb} GB): split it, or pass --max-seconds"
        )
    try:
        frames = read_video(path, fps=options.fps, with_audio=False, max_frames=max_frames).frames
        audio = read_audio(path, options.sample_rate)
    except MediaError as err:
        raise SkipClip(f"unreadable: {_strip_path(err, path)}") from None
    samples_per_frame = options.sample_rate // options.fps
    # Align: frame n <-> samples [n * spf, (n + 1) * spf). Keep what both streams cover (a last frame with at
    # least half of its audio is kept, the rest of its audio zero-padded).
    F = min(len(frames), int(round(len(audio) / samples_per_frame)))
    min_frames = max(5, int(np.ceil(options.min_seconds * options.fps)))
    if F < min_frames:
        raise SkipClip(
            f"too short: {F} frames with both video and audio ({F / options.fps:.2f} s; needs {options.min_seconds} s)"
        )
    frames = frames[:F]
    audio = np.asarray(audio[: F * samples_per_frame], np.float32)
    if len(audio) < F * samples_per_frame:
        audio = np.pad(audio, (0, F * samples_per_frame - len(audio)))
    source_size = (frames.shape[2], frames.shape[1])
    if not options.face_crop:
        return ProcessedClip(center_crop_resize(frames, options.resolution), audio, None, source_size)
    track = face_track(frames, detector, options.crop)
    crops = crop_frames(frames, track.boxes, options.resolution, options.crop.pad_mode)
    return ProcessedClip(frames=crops, audio=audio, track=track, source_size=source_size)


def _strip_path(err: Exception, path: Path) -> str:
    """MediaError messages start with the path; the report already names the source."""
    message = str(err)
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


#################################################################################
#                                 Folder run                                    #
#################################################################################


def find_videos(root: str | Path) -> list[Path]:
    """Video files under `root` (recursive, any case of the suffix), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise RestError(f"input folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def clip_ids_for(paths: list[Path], root: str | Path) -> list[str]:
    """A clip id per input: its relative path without suffix, '/' -> '__', other odd characters -> '_'.

    Two inputs that differ only in suffix (a.mp4, a.mov) get an 8-hex-digit hash of their relative path appended.
    """
    rels = [p.relative_to(root).as_posix() for p in paths]
    ids = [_sanitize(rel.rsplit(".", 1)[0]) for rel in rels]
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    unique = []
    for i, rel in zip(ids, rels, strict=True):
        unique.append(f"{i}_{hashlib.sha1(rel.encode()).hexdigest()[:8]}" if counts[i] > 1 else i)
    return unique


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__"))
    name = name.lstrip("._-")[:180]
    return name or "clip"


@dataclass
class _Job:
    path: str
    source: str  # relative to the input root
    clip_id: str


@dataclass
class _Outcome:
    job: _Job
    record: ClipRecord | None = None
    reason: str | None = None


@dataclass
class PreprocessSummary:
    """What a folder run did."""

    written: int = 0
    skipped: int = 0
    already_done: int = 0  # in the manifest before this run
    previously_skipped: int = 0  # in report.jsonl before this run (not retried)
    seconds: float = 0.0  # of video written
    elapsed: float = 0.0  # wall-clock seconds
    detector: str = ""
    reasons: dict[str, str] = field(default_factory=dict)  # source -> reason, this run's skips

    def line(self) -> str:
        return (
            f"preprocess: wrote {self.written} clips ({self.seconds:.1f} s of video), skipped {self.skipped} "
            f"(see report.jsonl), {self.already_done} already done, {self.previously_skipped} skipped before; "
            f"{self.elapsed:.1f} s; face detector: {self.detector}"
        )


# Per-process state of a worker (or of the main process when workers == 0).
_STATE: dict = {}


def _init_worker(root: str, options: PreprocessOptions, vae_folder: str | None, threads: int | None) -> None:
    """Build the detector, the writer and (optionally) the VAE once per process."""
    if vae_folder is not None and threads is not None:
        import torch

        torch.set_num_threads(threads)  # workers share the cores
    _STATE["detector"] = FaceDetector(options.detector)
    _STATE["writer"] = ShardWriter(
        root, resolution=options.resolution, fps=options.fps, sample_rate=options.sample_rate, crf=options.crf
    )
    _STATE["options"] = options
    _STATE["vae"] = _load_vae(vae_folder) if vae_folder is not None else None
    _STATE["vae_folder"] = vae_folder


def _run_job(job: _Job) -> _Outcome:
    """Process and write one input. Any failure of this input becomes a skip, so the run goes on."""
    options: PreprocessOptions = _STATE["options"]
    writer: ShardWriter = _STATE["writer"]
    try:
        clip = preprocess_video(job.path, options, _STATE["detector"])
        latents, latents_metadata = None, None
        if _STATE["vae"] is not None:
            latents, latents_metadata = encode_latents(_STATE["vae"], clip.frames)
            latents_metadata.update(vae=str(_STATE["vae_folder"]), vae_sha256=vae_fingerprint(_STATE["vae_folder"]))
        record = writer.write_clip(
            job.clip_id,
            clip.frames,
            clip.audio,
            meta={"face_box": clip.track.boxes},
            split=options.split,
            source=job.source,
            extra={
                "detector": clip.track.detector,
                "face_fraction": round(clip.track.face_fraction, 3),
                "source_size": list(clip.source_size),
            },
            latents=latents,
            latents_metadata=latents_metadata,
        )
        return _Outcome(job, record=record)
    except SkipClip as err:
        return _Outcome(job, reason=str(err))
    except Exception as err:  # a decoder or detector failure on one file must not end a long run
        return _Outcome(job, reason=f"failed: {type(err).__name__}: {err}")


def _load_vae(folder: str):
    try:
        from rest.models.vae import CausalVideoVAE
    except ImportError as err:
        raise RestError(f"--vae needs rest.models.vae, which failed to import: {err}") from None
    import torch

    if not Path(folder).is_dir():
        raise RestError(f"VAE folder not found: {folder} (expected a save_pretrained folder: config.json + weights)")
    vae = CausalVideoVAE.from_pretrained(folder)
    return vae.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def encode_latents(vae, frames: np.ndarray, chunk_frames: int = 64) -> tuple[dict, dict[str, str]]:
    """Encode the first 1 + t*k frames of uint8 (F, R, R, 3): {"mean", "logvar"} each (C, 1 + k, h, w).

    Runs chunk by chunk through the VAE's causal cache (equal to the whole-clip pass), so memory stays bounded
    for long clips.
    """
    import torch

    t = vae.temporal_compression
    F = 1 + t * ((len(frames) - 1) // t)
    device = next(vae.parameters()).device
    cache = vae.init_cache("encode")
    means, logvars = [], []
    with torch.inference_mode():
        for s in range(0, F, chunk_frames):
            out, cache = vae.encode_chunk(_to_pixels(frames[s : min(F, s + chunk_frames)]).to(device), cache)
            means.append(out.latent_dist.mean[0].float().cpu())  # (C, latent frames completed by this chunk, h, w)
            logvars.append(out.latent_dist.logvar[0].float().cpu())
    return {"mean": torch.cat(means, dim=1), "logvar": torch.cat(logvars, dim=1)}, {"num_frames": str(F)}


def vae_fingerprint(folder: str | Path) -> str:
    """sha256 of a VAE folder's weights file: cached latents record it, trainers check it."""
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

    path = Path(folder) / SAFETENSORS_WEIGHTS_NAME
    if not path.is_file():
        raise RestError(f"{path} not found: the VAE folder must be a save_pretrained export (config.json + weights)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_latents(root: str | Path, vae_folder: str | Path, progress: bool = True) -> tuple[int, int]:
    """Encode every clip of a shard root with a VAE (one causal stream per clip) into its latents.safetensors.

    Clips whose latents were cached with the same VAE weights are kept. Each file is written beside the clip
    and renamed into place, then an updated manifest line (`has_latents`) is appended, so a killed run leaves
    every clip either with complete latents or as before. Returns (encoded, already cached).
    """
    from rest.data.shards import LATENTS_FILE, MANIFEST_FILE, ShardReader, _append_line, _save_latents

    reader = ShardReader(root)
    fingerprint = vae_fingerprint(vae_folder)
    todo = [
        r
        for r in reader.records
        if not (r.has_latents and reader.latents_metadata(r.clip_id).get("vae_sha256") == fingerprint)
    ]
    if not todo:
        return 0, len(reader.records)
    vae = _load_vae(str(vae_folder))
    frames_done = 0
    bar = tqdm(todo, desc="latents", unit="clip", disable=not progress)
    for record in bar:
        latents, metadata = encode_latents(vae, reader.frames(record.clip_id))
        metadata.update(vae=str(vae_folder), vae_sha256=fingerprint)
        final = reader.clip_dir(record.clip_id) / LATENTS_FILE
        tmp = final.with_name(f".{LATENTS_FILE}.{os.getpid()}")
        _save_latents(tmp, record.clip_id, latents, metadata)
        os.replace(tmp, final)
        record.has_latents = True
        _append_line(Path(root) / MANIFEST_FILE, record.to_json())
        frames_done += record.num_frames
        bar.set_postfix(frames=frames_done)
    return len(todo), len(reader.records) - len(todo)


def _phonetic_clip(root: str, clip_id: str) -> str:
    """Decode one clip's audio with the phonetic channel into its phonetic.npy (written, then renamed into place)."""
    from rest.data.phonetic import PhoneticAudioEncoder
    from rest.data.shards import PHONETIC_FILE, ShardReader

    reader = ShardReader(root)
    features = PhoneticAudioEncoder().encode(np.array(reader.audio(clip_id)))
    final = reader.clip_dir(clip_id) / PHONETIC_FILE
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.npy")
    np.save(tmp, features.astype(np.float32))
    os.replace(tmp, final)
    return clip_id


def cache_phonetic(root: str | Path, workers: int = 0, progress: bool = True) -> tuple[int, int]:
    """Decode every clip of a shard root with the phonetic channel (rest/data/phonetic.py: pocketsphinx phones ->
    SynthTalk's visemes, the stream's frames) into its phonetic.npy, the features a teacher or student with
    `audio_path: phonetic` trains on. Clips that have the file are kept; each file is renamed into place, so a
    killed run leaves no partial file. `workers` processes (0: this one). Returns (decoded, already cached)."""
    from rest.data.shards import ShardReader

    reader = ShardReader(root)
    todo = [r.clip_id for r in reader.records if not reader.has_phonetic(r.clip_id)]
    bar = tqdm(total=len(todo), desc="phonetic", unit="clip", disable=not progress)
    if workers <= 1:
        for clip_id in todo:
            _phonetic_clip(str(root), clip_id)
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_phonetic_clip, [str(root)] * len(todo), todo):
                bar.update()
    bar.close()
    return len(todo), len(reader.records) - len(todo)


def _to_pixels(frames: np.ndarray):
    """uint8 (F, H, W, 3) -> float (1, 3, F, H, W) in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return x.permute(3, 0, 1, 2).unsqueeze(0)


def preprocess_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    options: PreprocessOptions,
    *,
    workers: int = 0,
    vae_folder: str | Path | None = None,
    retry_skipped: bool = False,
    progress: bool = True,
) -> PreprocessSummary:
    """Preprocess every video under `input_dir` into the shard root `output_dir` (see the module docstring).

    Args:
        input_dir: folder of raw videos (searched recursively).
        output_dir: shard root; created, or resumed when it exists with the same resolution/fps/sample rate.
        options: crop, length and encoding settings.
        workers: processes; 0 runs everything in this process.
        vae_folder: a `CausalVideoVAE` save_pretrained folder; when given, latents are cached with each clip.
        retry_skipped: also retry inputs that report.jsonl lists as skipped by an earlier run.
        progress: show a tqdm bar.
    """
    started = time.perf_counter()
    input_dir = Path(input_dir)
    paths = find_videos(input_dir)
    if not paths:
        raise RestError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {input_dir}")
    # Open the root here first: checks info.json, cleans leftovers of killed runs, reads the manifest.
    writer = ShardWriter(
        output_dir, resolution=options.resolution, fps=options.fps, sample_rate=options.sample_rate, crf=options.crf
    )
    detector_name = FaceDetector(options.detector).name  # fails early with what to install
    vae_str = str(vae_folder) if vae_folder is not None else None
    if vae_str is not None:
        _check_vae(vae_str, options.resolution)
    reported = set() if retry_skipped else _reported_clip_ids(output_dir)
    summary = PreprocessSummary(detector=detector_name)
    jobs = []
    done = writer.clip_ids
    for path, clip_id in zip(paths, clip_ids_for(paths, input_dir), strict=True):
        if clip_id in done:
            summary.already_done += 1
        elif clip_id in reported:
            summary.previously_skipped += 1
        else:
            jobs.append(_Job(str(path), path.relative_to(input_dir).as_posix(), clip_id))

    bar = tqdm(total=len(jobs), desc="preprocess", unit="video", disable=not progress or not jobs)

    def collect(outcome: _Outcome) -> None:
        if outcome.record is not None:
            summary.written += 1
            summary.seconds += outcome.record.duration
        else:
            summary.skipped += 1
            summary.reasons[outcome.job.source] = outcome.reason or ""
            writer.report_skip(outcome.job.source, outcome.reason or "", clip_id=outcome.job.clip_id)
        bar.update(1)
        bar.set_postfix(written=summary.written, skipped=summary.skipped)

    try:
        if workers <= 0:
            _init_worker(str(output_dir), options, vae_str, None)
            for job in jobs:
                collect(_run_job(job))
            _STATE.clear()
        elif jobs:
            threads = max(1, (os.cpu_count() or 1) // workers)
            _run_pool(jobs, min(workers, len(jobs)), (str(output_dir), options, vae_str, threads), collect)
    finally:
        bar.close()
    summary.elapsed = time.perf_counter() - started
    return summary


def _run_pool(
    jobs: list[_Job],
    workers: int,
    initargs: tuple,
    collect: Callable[[_Outcome], None],
    run: Callable[[_Job], _Outcome] = _run_job,
) -> None:
    """Run `jobs` on `workers` spawned processes, surviving a worker that dies (a decoder or detector crash).

    At most `workers` jobs are in flight, so when the pool breaks the suspects are known: each is rerun alone in
    a fresh process (the one that crashes again is reported as a skip), then the rest continue in a new pool.
    `run` is the job function (module level, so the workers can import it).
    """
    context = multiprocessing.get_context("spawn")
    queue = list(reversed(jobs))  # pop() from the end keeps the input order
    while queue:
        suspects: list[_Job] = []
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs)
        in_flight: dict = {}
        try:
            while (queue or in_flight) and not suspects:
                while queue and len(in_flight) < workers:
                    job = queue.pop()
                    in_flight[pool.submit(run, job)] = job
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    job = in_flight.pop(future)
                    try:
                        collect(future.result())
                    except BrokenProcessPool:
                        suspects.append(job)
            suspects += in_flight.values()
        finally:
            pool.shutdown(wait=not suspects, cancel_futures=True)
        for job in suspects:
            collect(_run_isolated(job, initargs, run, context))


def _run_isolated(job: _Job, initargs: tuple, run: Callable[[_Job], _Outcome], context) -> _Outcome:
    with ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        try:
            return pool.submit(run, job).result()
        except BrokenProcessPool:
            return _Outcome(job, reason="the worker process crashed on this file (decoder or detector)")


def _reported_clip_ids(root: str | Path) -> set[str]:
    import json

    path = Path(root) / "report.jsonl"
    if not path.is_file():
        return set()
    ids = set()
    for line in path.read_text().splitlines():
        try:
            ids.add(json.loads(line).get("clip_id"))
        except json.JSONDecodeError:
            continue
    return ids - {None}


def _check_vae(folder: str, resolution: int) -> None:
    """Load the VAE once up front so that a wrong folder fails before any work (not as a skip per clip)."""
    vae = _load_vae(folder)
    if resolution % vae.spatial_compression:
        raise RestError(
            f"the VAE in {folder} compresses space {vae.spatial_compression}x, which does not divide the "
            f"resolution {resolution}; use the VAE of the same preset"
        )
    del vae


__all__ = [
    "BOX_SCALE",
    "CropOptions",
    "FaceTrack",
    "PreprocessOptions",
    "PreprocessSummary",
    "ProcessedClip",
    "SkipClip",
    "VIDEO_SUFFIXES",
    "cache_latents",
    "cache_phonetic",
    "clip_ids_for",
    "crop_face_track",
    "crop_frames",
    "encode_latents",
    "vae_fingerprint",
    "face_track",
    "find_videos",
    "preprocess_folder",
    "preprocess_video",
]
