"""The training-data shard format: what `rest preprocess` and SynthTalk write and what training reads.

Layout of a dataset root::

    root/info.json                           {"format": "rest-shards", "version": 1, "resolution": R, "fps": 25,
                                              "sample_rate": 16000}
    root/manifest.jsonl                      one `ClipRecord` per finished clip, appended after its folder is complete
    root/report.jsonl                        one {"source", "reason", ...} per skipped input
    root/clips/<clip_id>/frames.mp4          H.264 (crf `crf`, yuv420p), R x R, `fps`, no audio
    root/clips/<clip_id>/audio.npy           float32 (N,), mono at `sample_rate`; N within one frame of F * sr / fps
    root/clips/<clip_id>/meta.npz            per-frame arrays, leading dimension F (face boxes, labels, ...)
    root/clips/<clip_id>/latents.safetensors optional cached VAE latents "mean", "logvar" (C, f, h, w) + metadata

Guarantees:

- A clip is written into `clips/.tmp-<clip_id>-<pid>` and renamed to `clips/<clip_id>` only when complete; its
  manifest line is appended after the rename (flushed and fsynced). A clip is "in the dataset" exactly when it has
  a manifest line, so a killed run never leaves a half-written clip that a reader would see. Leftover `.tmp-*`
  folders of dead processes are removed by the next `ShardWriter`; a complete folder without a manifest line (a
  kill between rename and append) is replaced when that clip is written again.
- Several processes may write into one root at once (worker pools, or independent runs on disjoint inputs): every
  append to `manifest.jsonl` and `report.jsonl` holds an exclusive `fcntl.flock` on that file and writes one whole
  line, so lines never interleave. We chose file locking over funnelling records through one parent process
  because it keeps `ShardWriter` self-contained: any writer, in any process, leaves a valid manifest. (POSIX only.)
- Readers take the last manifest line of a clip id if it appears twice (two runs wrote the same clip).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rest.errors import RestError
from rest.media import RandomAccessVideo, write_video

if TYPE_CHECKING:  # torch is needed only for cached latents; keep the import cheap for workers that never use them
    import torch

FORMAT = "rest-shards"
VERSION = 1
INFO_FILE = "info.json"
MANIFEST_FILE = "manifest.jsonl"
REPORT_FILE = "report.jsonl"
CLIPS_DIR = "clips"
FRAMES_FILE = "frames.mp4"
AUDIO_FILE = "audio.npy"
META_FILE = "meta.npz"
LATENTS_FILE = "latents.safetensors"
PHONETIC_FILE = "phonetic.npy"  # the phonetic channel's features (F, 3) of the audio (`rest preprocess --phonetic`)
TMP_PREFIX = ".tmp-"

_CLIP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ShardError(RestError):
    """A shard root or clip is missing, malformed, or does not match what the caller asked for."""


@dataclass
class ClipRecord:
    """One finished clip: a line of `manifest.jsonl`."""

    clip_id: str  # folder name under clips/, unique in the root
    num_frames: int  # F, frames in frames.mp4
    fps: int  # frame rate of frames.mp4
    resolution: int  # R, frames are R x R
    num_samples: int  # N, samples in audio.npy
    sample_rate: int  # of audio.npy
    split: str = "train"  # "train", "val", "test", ...
    source: str = ""  # where the clip came from (input path relative to the input root, generator name, ...)
    extra: dict = field(default_factory=dict)  # free-form JSON (detector name, generator parameters, ...)
    has_latents: bool = False  # latents.safetensors exists

    @property
    def duration(self) -> float:
        """Seconds of video."""
        return self.num_frames / self.fps

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> ClipRecord:
        data = json.loads(line)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def make_info(resolution: int, fps: int = 25, sample_rate: int = 16000) -> dict:
    """The `info.json` mapping of a root."""
    return {"format": FORMAT, "version": VERSION, "resolution": resolution, "fps": fps, "sample_rate": sample_rate}


def read_info(root: str | Path) -> dict:
    """Load and check `root/info.json`."""
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise ShardError(f"{root} is not a shard root (no {INFO_FILE}); create one with `rest preprocess`")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShardError(f"{path} is not valid JSON: {err}") from None
    if info.get("format") != FORMAT:
        raise ShardError(f"{path}: format is {info.get('format')!r}, expected {FORMAT!r}")
    if info.get("version") != VERSION:
        raise ShardError(f"{path}: shard format version {info.get('version')}, this code reads version {VERSION}")
    return info


def read_manifest(root: str | Path) -> list[ClipRecord]:
    """All clips of a root in manifest order; a clip id that appears twice keeps its last record."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        return []
    records: dict[str, ClipRecord] = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = ClipRecord.from_json(line)
        except (json.JSONDecodeError, TypeError) as err:
            raise ShardError(f"{path}, line {i + 1} is not a clip record ({err}); remove that line") from None
        records.pop(record.clip_id, None)  # re-insert so the order follows the last write
        records[record.clip_id] = record
    return list(records.values())


def _append_line(path: Path, line: str) -> None:
    """Append one line under an exclusive lock, then flush and fsync (safe with concurrent writers)."""
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


#################################################################################
#                                    Writer                                     #
#################################################################################


class ShardWriter:
    """Writes clips into a shard root, atomically, resuming whatever is already there.

    Args:
        root: the dataset folder; created if missing.
        resolution: R, the side of the square frames every clip must have.
        fps: frame rate of every clip.
        sample_rate: audio sample rate of every clip.
        source: default `source` for records whose `write_clip` call gives none.
        crf: H.264 quality of frames.mp4 (lower is better; 12 is visually lossless at these sizes).

    An existing root must have the same `info.json` (resolution, fps, sample rate), else `ShardError`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        resolution: int,
        fps: int = 25,
        sample_rate: int = 16000,
        source: str = "",
        crf: int = 12,
    ):
        self.root = Path(root)
        self.resolution = int(resolution)
        self.fps = int(fps)
        self.sample_rate = int(sample_rate)
        self.source = source
        self.crf = int(crf)
        self.info = make_info(self.resolution, self.fps, self.sample_rate)
        self.clips_dir = self.root / CLIPS_DIR
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        self._write_or_check_info()
        self._clean_leftovers()
        self._done = {r.clip_id for r in read_manifest(self.root)}

    def _write_or_check_info(self) -> None:
        path = self.root / INFO_FILE
        if not path.exists():
            tmp = path.with_name(f"{INFO_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.info, indent=2) + "\n")
            os.replace(tmp, path)  # concurrent creators write the same content, so the last rename wins harmlessly
        existing = read_info(self.root)
        diff = {k: (existing.get(k), v) for k, v in self.info.items() if existing.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: root has {old!r}, writer asked for {new!r}" for k, (old, new) in diff.items())
            raise ShardError(f"{self.root} holds a different dataset ({what}); use another output folder")

    def _clean_leftovers(self) -> None:
        """Remove `.tmp-<clip_id>-<pid>` folders left by killed writers (a live writer's folder is kept)."""
        for tmp in self.clips_dir.glob(f"{TMP_PREFIX}*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def clip_ids(self) -> set[str]:
        """Clips finished in this root (at open time, plus those written through this writer)."""
        return set(self._done)

    def has(self, clip_id: str) -> bool:
        """Whether `clip_id` is finished (listed in the manifest when this writer opened, or written by it)."""
        return clip_id in self._done

    def write_clip(
        self,
        clip_id: str,
        frames: np.ndarray,
        audio: np.ndarray,
        *,
        meta: dict[str, np.ndarray] | None = None,
        split: str = "train",
        source: str = "",
        extra: dict | None = None,
        latents: dict[str, torch.Tensor] | None = None,
        latents_metadata: dict[str, str] | None = None,
    ) -> ClipRecord:
        """Write one clip atomically and append its manifest line; returns the record.

        Args:
            clip_id: folder name, `[A-Za-z0-9][A-Za-z0-9._-]*` (at most 200 characters).
            frames: uint8 (F, R, R, 3) RGB.
            audio: float32 (N,) mono at `sample_rate`, N within one frame of F * sample_rate / fps.
            meta: per-frame arrays, each with leading dimension F.
            split: dataset split name.
            source: where the clip came from (defaults to the writer's `source`).
            extra: JSON-serialisable details stored in the record.
            latents: cached VAE posterior, e.g. {"mean": (C, f, h, w), "logvar": (C, f, h, w)}.
            latents_metadata: strings stored in the safetensors header (VAE folder, frames covered, ...).

        A clip id is written once: writing one that `has()` is an error. Concurrent writers must use disjoint ids.
        """
        if self.has(clip_id):
            raise ShardError(f"clip {clip_id} is already in {self.root}; check has() first, or use a new clip id")
        frames, audio, meta = self._validate(clip_id, frames, audio, meta, extra)
        final = self.clips_dir / clip_id
        tmp = self.clips_dir / f"{TMP_PREFIX}{clip_id}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            write_video(tmp / FRAMES_FILE, frames, fps=self.fps, crf=self.crf)
            np.save(tmp / AUDIO_FILE, audio)
            np.savez(tmp / META_FILE, **meta)
            if latents is not None:
                _save_latents(tmp / LATENTS_FILE, clip_id, latents, latents_metadata)
            _fsync_dir_files(tmp)
            if final.exists():  # complete folder without a manifest line (killed between rename and append)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        record = ClipRecord(
            clip_id=clip_id,
            num_frames=int(frames.shape[0]),
            fps=self.fps,
            resolution=self.resolution,
            num_samples=int(audio.shape[0]),
            sample_rate=self.sample_rate,
            split=split,
            source=source or self.source,
            extra=dict(extra or {}),
            has_latents=latents is not None,
        )
        _append_line(self.root / MANIFEST_FILE, record.to_json())
        self._done.add(clip_id)
        return record

    def report_skip(self, source: str, reason: str, **details: Any) -> None:
        """Record an input that was not turned into a clip, and why (one line of report.jsonl)."""
        _append_line(self.root / REPORT_FILE, json.dumps({"source": source, "reason": reason, **details}))

    def _validate(
        self, clip_id: str, frames: np.ndarray, audio: np.ndarray, meta: dict | None, extra: dict | None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        if not isinstance(clip_id, str) or not _CLIP_ID.match(clip_id):
            raise ShardError(
                f"invalid clip id {clip_id!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        R = self.resolution
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.shape[1:] != (R, R, 3):
            got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise ShardError(f"clip {clip_id}: frames must be uint8 (F, {R}, {R}, 3), got {got}")
        F = frames.shape[0]
        if F < 1:
            raise ShardError(f"clip {clip_id}: no frames")
        if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim != 1:
            got = f"{audio.dtype} {audio.shape}" if isinstance(audio, np.ndarray) else type(audio).__name__
            raise ShardError(f"clip {clip_id}: audio must be float32 (N,), got {got}")
        samples_per_frame = self.sample_rate / self.fps
        expected = F * samples_per_frame
        if abs(audio.shape[0] - expected) > samples_per_frame:
            raise ShardError(
                f"clip {clip_id}: {audio.shape[0]} audio samples do not match {F} frames at {self.fps} fps "
                f"({expected:.0f} +- {samples_per_frame:.0f} expected); trim or pad the audio to the video"
            )
        meta = dict(meta or {})
        for key, value in meta.items():
            if not _META_KEY.match(key) or key in ("file", "allow_pickle"):  # np.savez's own argument names
                raise ShardError(f"clip {clip_id}: meta key {key!r} must be an identifier, not file or allow_pickle")
            if not isinstance(value, np.ndarray) or value.ndim < 1 or value.shape[0] != F:
                shape = value.shape if isinstance(value, np.ndarray) else type(value).__name__
                raise ShardError(f"clip {clip_id}: meta[{key!r}] must have leading dimension F = {F}, got {shape}")
            if value.dtype == object:
                raise ShardError(f"clip {clip_id}: meta[{key!r}] has dtype object; store numbers or fixed-size text")
        try:
            json.dumps(extra or {})
        except TypeError as err:
            raise ShardError(f"clip {clip_id}: extra must be JSON-serialisable ({err})") from None
        return np.ascontiguousarray(frames), np.ascontiguousarray(audio), meta


def _save_latents(path: Path, clip_id: str, latents: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    from safetensors.torch import save_file

    for key, value in latents.items():
        if value.ndim != 4:
            raise ShardError(f"clip {clip_id}: latents[{key!r}] must be (C, f, h, w), got {tuple(value.shape)}")
    header = {"format": "rest-latents", "clip_id": clip_id, **{k: str(v) for k, v in (metadata or {}).items()}}
    save_file({k: v.detach().cpu().contiguous() for k, v in latents.items()}, str(path), metadata=header)


def _fsync_dir_files(folder: Path) -> None:
    """Make the clip's files durable before the rename publishes them."""
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


#################################################################################
#                                    Reader                                     #
#################################################################################


class ShardReader:
    """Read side of a shard root: records, and random access to each clip's frames, audio, meta and latents.

    Video readers are opened lazily and a few are kept open (`max_open_videos`); the cache is dropped in a forked
    child (e.g. a DataLoader worker), so each process opens its own decoders.
    """

    def __init__(self, root: str | Path, max_open_videos: int = 8):
        self.root = Path(root)
        self.info: dict = read_info(self.root)
        self.records: list[ClipRecord] = read_manifest(self.root)
        self._by_id = {r.clip_id: r for r in self.records}
        self.max_open_videos = max_open_videos
        self._videos: OrderedDict = OrderedDict()
        self._videos_pid = os.getpid()
        self._inherited: list[OrderedDict] = []

    @property
    def resolution(self) -> int:
        return int(self.info["resolution"])

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def sample_rate(self) -> int:
        return int(self.info["sample_rate"])

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._by_id

    def record(self, clip_id: str) -> ClipRecord:
        if clip_id not in self._by_id:
            raise ShardError(f"no clip {clip_id!r} in {self.root} (it has {len(self.records)} clips)")
        return self._by_id[clip_id]

    def clip_dir(self, clip_id: str) -> Path:
        self.record(clip_id)
        return self.root / CLIPS_DIR / clip_id

    def frames(self, clip_id: str, start: int = 0, count: int | None = None) -> np.ndarray:
        """Frames [start, start + count) of a clip: uint8 (count, R, R, 3). `count=None` reads to the end."""
        F = self.record(clip_id).num_frames
        count = F - start if count is None else count
        if start < 0 or count < 0 or start + count > F:
            raise ShardError(f"clip {clip_id}: frames [{start}, {start + count}) are outside its {F} frames")
        return self.frames_at(clip_id, range(start, start + count))

    def frames_at(self, clip_id: str, indices: Sequence[int]) -> np.ndarray:
        """Frames at arbitrary indices (any order, repeats allowed): uint8 (len(indices), R, R, 3)."""
        F = self.record(clip_id).num_frames
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < F]
        if bad:
            raise ShardError(f"clip {clip_id}: frame index {bad[0]} is outside its {F} frames")
        R = self.resolution
        if not indices:
            return np.zeros((0, R, R, 3), np.uint8)
        return np.asarray(self._video(clip_id).get(indices))

    def _video(self, clip_id: str):
        if os.getpid() != self._videos_pid:
            # Forked (e.g. a DataLoader worker): the parent's decoders must be neither used nor freed here (freeing
            # an inherited FFmpeg context crashes), so they are parked for the life of this process.
            self._inherited.append(self._videos)
            self._videos = OrderedDict()
            self._videos_pid = os.getpid()
        if clip_id in self._videos:
            self._videos.move_to_end(clip_id)
            return self._videos[clip_id]
        video = RandomAccessVideo(self.root / CLIPS_DIR / clip_id / FRAMES_FILE)
        self._videos[clip_id] = video
        while len(self._videos) > self.max_open_videos:
            self._videos.popitem(last=False)
        return video

    def audio(self, clip_id: str) -> np.ndarray:
        """The clip's audio: float32 (N,), memory-mapped read-only (slice it, then copy)."""
        return np.load(self.clip_dir(clip_id) / AUDIO_FILE, mmap_mode="r")

    def meta(self, clip_id: str) -> dict[str, np.ndarray]:
        """Per-frame arrays of the clip (leading dimension F); empty when it has none."""
        with np.load(self.clip_dir(clip_id) / META_FILE) as data:
            return {k: data[k] for k in data.files}

    def latents(self, clip_id: str) -> dict[str, torch.Tensor]:
        """Cached VAE latents, e.g. {"mean", "logvar"}: (C, f, h, w) each."""
        from safetensors.torch import load_file

        if not self.record(clip_id).has_latents:
            raise ShardError(f"clip {clip_id} has no cached latents; run `rest preprocess --vae FOLDER`")
        return load_file(str(self.clip_dir(clip_id) / LATENTS_FILE))

    def has_phonetic(self, clip_id: str) -> bool:
        """Whether the clip's phonetic features are cached (`rest preprocess --output ROOT --phonetic`)."""
        return (self.clip_dir(clip_id) / PHONETIC_FILE).is_file()

    def phonetic(self, clip_id: str) -> np.ndarray:
        """The phonetic channel's features of the clip's audio: float32 (F, 3) (rest.data.phonetic), cached by
        `rest preprocess --output ROOT --phonetic`."""
        if not self.has_phonetic(clip_id):
            raise ShardError(
                f"clip {clip_id} has no phonetic features; run `rest preprocess --output {self.root} --phonetic` first"
            )
        return np.load(self.clip_dir(clip_id) / PHONETIC_FILE)

    def latents_metadata(self, clip_id: str) -> dict[str, str]:
        """The safetensors header metadata of the clip's latents."""
        from safetensors import safe_open

        with safe_open(str(self.clip_dir(clip_id) / LATENTS_FILE), framework="pt") as f:
            return dict(f.metadata() or {})


__all__ = [
    "ClipRecord",
    "ShardError",
    "ShardReader",
    "ShardWriter",
    "make_info",
    "read_info",
    "read_manifest",
]
