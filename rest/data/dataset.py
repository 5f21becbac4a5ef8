"""Training clips from a shard root: a window of frames, the audio of exactly that window, and a reference frame.

Alignment: at `fps` frames/s and `sample_rate` samples/s, frame n covers audio samples
[n * spf, (n + 1) * spf), spf = sample_rate / fps (640 at 25 fps and 16 kHz). A window of N frames starting at
frame s therefore gets samples [s * spf, (s + N) * spf), followed by `audio_lookahead_frames` frames more of the
real audio (the audio encoder's look-ahead); past the end of the clip's audio that margin is zeros.

Reference frame (the portrait the model animates): a frame of the same video at least `ref_min_gap` frames away
from every frame of the window (default: N, the window length), drawn uniformly from the frames before and after
the window that satisfy it. When the video is too short for that gap, the frame outside the window farthest from
it is used; when the window is the whole video, a random frame of the window. A nearby reference would let the
model copy pose and expression instead of following the audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rest.data.augment import AugmentConfig, SpeechAugment
from rest.data.shards import ClipRecord, ShardReader
from rest.errors import RestError
from rest.media import frames_to_tensor


def clips_in_turn(starts: list[range]) -> list[tuple[int, int]]:
    """(clip, start) windows for evaluation sets: the middle window of every clip, then every clip's next one, and
    so on (wrapping round to each clip's start).

    Middle first because clips open alike: in SynthTalk every clip starts with a short silence before the speech,
    so the opening windows of two clips have nearly the same audio envelope, and a loss with "another clip's audio"
    there barely differs from the loss with the clip's own.
    """
    rotated = [list(r)[len(r) // 2 :] + list(r)[: len(r) // 2] for r in starts]
    depth = max((len(r) for r in rotated), default=0)
    return [(i, r[k]) for k in range(depth) for i, r in enumerate(rotated) if k < len(r)]


class TalkingClipDataset(Dataset):
    """Windows of `num_frames` frames with aligned audio and a reference frame, from a shard root.

    Args:
        root: shard root written by `rest preprocess` or SynthTalk.
        num_frames: N, frames per item; must be 1 + t*k for the VAE's temporal compression t.
        temporal_compression: t of the VAE the clips are for.
        split: use only the clips of this split; None uses all.
        audio_features: optional callable on the item's audio (float32 (N_samples,) tensor); its result is
            returned as "audio_features" (e.g. a log-mel transform).
        seed: with the epoch (`set_epoch`) and the item index, fixes every random choice, so an item is the same
            whichever DataLoader worker builds it.
        audio_lookahead_frames: frames of audio appended after the window (zeros past the end of the clip).
        ref_min_gap: minimum distance in frames between the reference frame and the window (default: N).
        random_windows: True: one item per clip per epoch, at a random start (training). False: every
            non-overlapping window of every clip, clips taken in turn, so that the first n windows come from
            n different clips when the split has that many (evaluation sets).
        phonetic: return the clip's phonetic features (`rest preprocess --phonetic`) as "audio" instead of samples.
        augment_audio: pass each window's audio through `rest.data.augment.SpeechAugment` with this config
            (drawn from the item's own random stream; every transform but speed keeps the timing, and speed is not
            used here), so that a model learns to hear speech through rooms, microphones and codecs.

    Items are dicts:
        video: float32 (3, N, R, R) in [-1, 1]
        audio: float32 ((N + audio_lookahead_frames) * spf,), frame n of the window <-> samples [n*spf, (n+1)*spf);
            with `phonetic`, the clip's cached phonetic features of those frames, (N + audio_lookahead_frames, 3)
        audio_features: whatever `audio_features` returns (only when it is given)
        ref: float32 (3, 1, R, R) in [-1, 1]
        ref_index: int, frame index of the reference in the clip
        clip_id: str; start: int, index of the window's first frame in the clip
        meta: dict of the clip's per-frame arrays sliced to the window (leading dim N); numeric ones as tensors
    """

    def __init__(
        self,
        root: str | Path,
        *,
        num_frames: int,
        temporal_compression: int,
        split: str | None = "train",
        audio_features: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        audio_lookahead_frames: int = 0,
        ref_min_gap: int | None = None,
        random_windows: bool = True,
        augment_audio: AugmentConfig | None = None,
        phonetic: bool = False,
    ):
        t = temporal_compression
        if phonetic and (augment_audio is not None or audio_features is not None):
            raise RestError(
                "phonetic features are decoded once per clip: audio augmentation and audio_features "
                "do not apply to them"
            )
        if t < 1 or num_frames < 1 or (num_frames - 1) % t:
            lower = 1 + t * max(0, (num_frames - 1) // t)
            raise RestError(
                f"num_frames must be 1 + {t}*k for a VAE with temporal compression {t} "
                f"(e.g. {lower} or {lower + t}), got {num_frames}"
            )
        if ref_min_gap is not None and ref_min_gap < 1:
            raise RestError(f"ref_min_gap must be >= 1 frame, got {ref_min_gap}")
        if audio_lookahead_frames < 0:
            raise RestError(f"audio_lookahead_frames must be >= 0, got {audio_lookahead_frames}")
        self.reader = ShardReader(root)
        fps, sr = self.reader.fps, self.reader.sample_rate
        if sr % fps:
            raise RestError(f"{root}: {sr} Hz audio does not split into whole samples per frame at {fps} fps")
        self.samples_per_frame = sr // fps
        self.num_frames = num_frames
        self.temporal_compression = t
        self.split = split
        self.audio_features = audio_features
        self.seed = seed
        self.epoch = 0
        self.audio_lookahead_frames = audio_lookahead_frames
        self.ref_min_gap = num_frames if ref_min_gap is None else ref_min_gap
        self.random_windows = random_windows
        self.augment = SpeechAugment(augment_audio, sr) if augment_audio is not None else None
        self.phonetic = phonetic

        in_split = [r for r in self.reader.records if split is None or r.split == split]
        self.clips: list[ClipRecord] = [r for r in in_split if r.num_frames >= num_frames]
        if phonetic:
            _check_phonetic(self.reader, self.clips, split, root)
        self.too_short = len(in_split) - len(self.clips)  # clips left out, for the caller's log
        if not self.clips:
            raise RestError(
                f"no clip of split {split!r} in {root} has {num_frames} frames "
                f"({len(in_split)} clips in the split, {self.too_short} too short); use shorter windows"
            )
        if random_windows:
            self.windows = [(i, -1) for i in range(len(self.clips))]  # start drawn per epoch
        else:
            self.windows = clips_in_turn([range(0, r.num_frames - num_frames + 1, num_frames) for r in self.clips])

    def set_epoch(self, epoch: int) -> None:
        """New random windows and references for a new epoch (call before creating the epoch's iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        clip_index, start = self.windows[index]
        record = self.clips[clip_index]
        N, F, spf = self.num_frames, record.num_frames, self.samples_per_frame
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if start < 0:
            start = int(rng.integers(0, F - N + 1))
        ref_index = reference_index(F, start, N, self.ref_min_gap, rng)

        frames = self.reader.frames_at(record.clip_id, [*range(start, start + N), ref_index])  # (N + 1, R, R, 3)
        video = frames_to_tensor(frames)  # (3, N + 1, R, R)

        if self.phonetic:
            features = self.reader.phonetic(record.clip_id)
            audio = np.zeros((N + self.audio_lookahead_frames, features.shape[1]), np.float32)
            piece = features[start : start + len(audio)]
        else:
            wanted = (N + self.audio_lookahead_frames) * spf
            audio = np.zeros(wanted, np.float32)
            piece = self.reader.audio(record.clip_id)[start * spf : start * spf + wanted]
        audio[: len(piece)] = piece
        if self.augment is not None:
            audio = self.augment(audio, rng)
        audio = torch.from_numpy(audio)

        item = {
            "video": video[:, :N],
            "audio": audio,
            "ref": video[:, N:],
            "ref_index": ref_index,
            "clip_id": record.clip_id,
            "start": start,
            "meta": {k: _to_tensor(v[start : start + N]) for k, v in self.reader.meta(record.clip_id).items()},
        }
        if self.audio_features is not None:
            item["audio_features"] = self.audio_features(audio)
        return item


class TalkingLatentDataset(Dataset):
    """Windows of `num_latent_frames` cached VAE latents (`rest preprocess --vae`), their audio, and a reference.

    The cache holds each clip's latents encoded as one causal stream from its first frame, so a window that starts
    at latent frame j >= 1 is a *continuation*: its latents are what the VAE's streaming encoder gives deep in a
    stream (warm causal caches), which is what the streaming student generates after its first chunk. A window at
    j = 0 is a stream start (latent frame 0 covers frame 0 alone). Reading latents instead of frames also takes the
    VAE encoder out of the training step.

    Keys are `(index, stream_start)` pairs (see `StreamStartBatchSampler`): the denoiser takes one
    `first_latent_frame` per batch, so a batch is all stream starts or all continuations.

    Items are dicts:
        mean, logvar: float32 (C, L, h, w), the cached posterior of the window
        audio: float32 samples of the video frames the window covers (1 + t*(L-1) frames at a stream start,
            t*L after it) plus `audio_lookahead_frames` frames (zeros past the end of the clip); with `phonetic`,
            the cached phonetic features of those frames instead, (frames, 3) (`rest preprocess --phonetic`)
        ref: float32 (3, 1, R, R) reference frame in [-1, 1], at least `ref_min_gap` frames from the window
        first_latent_frame: 0 for a stream start, 1 for a continuation (the denoiser's audio alignment)
        clip_id: str; start: int, the window's first latent frame in the clip; start_frame: its first video frame
    """

    def __init__(
        self,
        root: str | Path,
        *,
        num_latent_frames: int,
        temporal_compression: int,
        split: str | None = "train",
        seed: int = 0,
        audio_lookahead_frames: int = 0,
        ref_min_gap: int | None = None,
        random_windows: bool = True,
        vae_fingerprint: str | None = None,
        augment_audio: AugmentConfig | None = None,
        phonetic: bool = False,
    ):
        if num_latent_frames < 1 or temporal_compression < 1 or audio_lookahead_frames < 0:
            raise RestError("num_latent_frames and temporal_compression must be >= 1, the look-ahead >= 0")
        if phonetic and augment_audio is not None:
            raise RestError("phonetic features are decoded once per clip: audio augmentation does not apply to them")
        self.phonetic = phonetic
        self.reader = ShardReader(root)
        fps, sr = self.reader.fps, self.reader.sample_rate
        if sr % fps:
            raise RestError(f"{root}: {sr} Hz audio does not split into whole samples per frame at {fps} fps")
        self.samples_per_frame = sr // fps
        self.num_latent_frames = L = num_latent_frames
        self.temporal_compression = t = temporal_compression
        self.seed = seed
        self.epoch = 0
        self.audio_lookahead_frames = audio_lookahead_frames
        self.ref_min_gap = 1 + t * (L - 1) if ref_min_gap is None else ref_min_gap
        self.random_windows = random_windows
        self.augment = SpeechAugment(augment_audio, sr) if augment_audio is not None else None

        in_split = [r for r in self.reader.records if split is None or r.split == split]
        missing = [r.clip_id for r in in_split if not r.has_latents]
        if missing:
            raise RestError(
                f"{len(missing)} of {len(in_split)} clips of split {split!r} in {root} have no cached latents "
                f"(e.g. {missing[0]}); run `rest preprocess --output {root} --vae VAE_FOLDER` first"
            )
        self.clips: list[ClipRecord] = []
        self.latent_frames: list[int] = []
        for record in in_split:
            header = self.reader.latents_metadata(record.clip_id)
            if vae_fingerprint is not None and header.get("vae_sha256") != vae_fingerprint:
                raise RestError(
                    f"the latents of {record.clip_id} in {root} were cached with another VAE "
                    f"({header.get('vae', 'unknown')}); rerun `rest preprocess --output {root} --vae VAE_FOLDER` "
                    "with the VAE this run uses"
                )
            f = 1 + (int(header["num_frames"]) - 1) // t
            if f > L:  # at least one continuation window
                self.clips.append(record)
                self.latent_frames.append(f)
        if phonetic:
            _check_phonetic(self.reader, self.clips, split, root)
        self.too_short = len(in_split) - len(self.clips)
        if not self.clips:
            raise RestError(f"no clip of split {split!r} in {root} has more than {L} latent frames")
        if random_windows:
            self.windows = [(i, -1) for i in range(len(self.clips))]
        else:  # every non-overlapping continuation window, clips taken in turn
            self.windows = clips_in_turn([range(1, f - L + 1, L) for f in self.latent_frames])

    def set_epoch(self, epoch: int) -> None:
        """New random windows and references for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: int | tuple[int, bool]) -> dict:
        index, stream_start = key if isinstance(key, tuple) else (key, False)
        clip_index, start = self.windows[index]
        record, f = self.clips[clip_index], self.latent_frames[clip_index]
        L, t, spf = self.num_latent_frames, self.temporal_compression, self.samples_per_frame
        rng = np.random.default_rng([self.seed, self.epoch, index, int(stream_start)])
        if stream_start:
            start = 0
        elif start < 0:
            start = int(rng.integers(1, f - L + 1))
        first_frame = 0 if start == 0 else t * (start - 1) + 1
        covered = (1 + t * (L - 1)) if start == 0 else t * L
        ref_index = reference_index(record.num_frames, first_frame, covered, self.ref_min_gap, rng)

        latents = self.reader.latents(record.clip_id)
        if self.phonetic:
            wanted = covered + self.audio_lookahead_frames
            features = self.reader.phonetic(record.clip_id)
            audio = np.zeros((wanted, features.shape[1]), np.float32)
            piece = features[first_frame : first_frame + wanted]
        else:
            wanted = (covered + self.audio_lookahead_frames) * spf
            audio = np.zeros(wanted, np.float32)
            piece = self.reader.audio(record.clip_id)[first_frame * spf : first_frame * spf + wanted]
        audio[: len(piece)] = piece
        if self.augment is not None:
            audio = self.augment(audio, rng)
        return {
            "mean": latents["mean"][:, start : start + L].float(),
            "logvar": latents["logvar"][:, start : start + L].float(),
            "audio": torch.from_numpy(audio),
            "ref": frames_to_tensor(self.reader.frames_at(record.clip_id, [ref_index])),
            "first_latent_frame": 0 if start == 0 else 1,
            "clip_id": record.clip_id,
            "start": start,
            "start_frame": first_frame,
        }


class StreamStartBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Shuffled batches of `TalkingLatentDataset` keys; each batch is all stream starts (with probability
    `stream_start_share`) or all continuations. Deterministic in (seed, epoch); drops the last partial batch."""

    def __init__(self, dataset: TalkingLatentDataset, batch_size: int, stream_start_share: float, seed: int = 0):
        if not 0.0 <= stream_start_share <= 1.0:
            raise RestError(f"stream_start_share must be in [0, 1], got {stream_start_share}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.stream_start_share = stream_start_share
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        rng = np.random.default_rng([self.seed, self.dataset.epoch, 7])
        order = rng.permutation(len(self.dataset))
        for b in range(len(self)):
            start = bool(rng.random() < self.stream_start_share)
            yield [(int(i), start) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]


def reference_index(num_frames: int, start: int, length: int, min_gap: int, rng: np.random.Generator) -> int:
    """A reference frame for window [start, start + length) of a video of `num_frames` frames (module docstring).

    Distance of frame r to the window: start - r before it, r - (start + length - 1) after it.
    """
    end = start + length  # exclusive
    before = np.arange(0, max(0, start - min_gap + 1))  # distance >= min_gap
    after = np.arange(min(num_frames, end - 1 + min_gap), num_frames)
    candidates = np.concatenate([before, after])
    if len(candidates):
        return int(rng.choice(candidates))
    if start > 0 or end < num_frames:  # too short for the gap: the farthest frame outside the window
        return 0 if start >= num_frames - end else num_frames - 1
    return int(rng.integers(start, end))


def _check_phonetic(reader: ShardReader, clips: list[ClipRecord], split: str | None, root: str | Path) -> None:
    missing = [r.clip_id for r in clips if not reader.has_phonetic(r.clip_id)]
    if missing:
        raise RestError(
            f"{len(missing)} of {len(clips)} clips of split {split!r} in {root} have no phonetic features (e.g. "
            f"{missing[0]}); run `rest preprocess --output {root} --phonetic` first"
        )


def _to_tensor(value: np.ndarray) -> torch.Tensor | np.ndarray:
    if value.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


__all__ = ["StreamStartBatchSampler", "TalkingClipDataset", "TalkingLatentDataset", "reference_index"]
