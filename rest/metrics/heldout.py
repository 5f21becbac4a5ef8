"""Held-out SynthTalk study: does a trained model follow the audio on identities and voices it never saw?

For each held-out clip (splits `test_id`: unseen faces; `test_voice`: unseen voices and languages) the first
`seconds` of its audio drive a generation from one of the clip's own frames as the portrait: the frame with the
most closed mouth among those after the evaluated window (a neutral portrait, and not a frame the model must
reproduce). Per method the study reports:

- `lipsync_corr`: Pearson correlation at lag 0 between the mouth openness the project's mouth regressor
  (rest/metrics/lipsync_gt.py) reads off the generated frames and the clip's ground-truth `mouth_open` labels;
  `lipsync_best_corr` / `lipsync_offset` at the best lag within +-MAX_OFFSET frames; `lipsync_slope`, the
  least-squares slope of that reading on the labels (lag 0): how far the mouth opens, in the regressor's units
  (the ground truth's own slope is the ceiling; a mouth that follows the audio but barely moves has a high
  correlation and a slope near 0). With a second judge (`pixel_judge`, e.g. a `PixelRidgeMouth` fit on the
  training split), `lipsync_pixel_corr` is the same correlation under it.
- the same with **shuffled audio** (the audio of the next held-out clip, labels of the clip itself): the control,
  near 0 for any model. The gap between the two is what the audio explains.
- `csim_dlib`: identity similarity of the generated frames to the portrait (rest/metrics/identity.py, dlib), over
  the frames where dlib finds a face (a clip without any has none); `csim_dlib_at_portrait`: the same with every
  frame embedded at the portrait's face alignment (`at_reference`), so that no frame is left out.
- `seconds_per_video_second`: generation wall time (model only, no I/O) per second of video.

`ground_truth` rows score the real clip frames: the ceiling the regressor allows. `other_identity` rows score the
real frames of the next held-out clip of another identity against this clip's portrait, identity only: the
similarity of a face that is not the portrait's (dlib tells procedural faces apart poorly: about 0.9).
`vae_reconstruction` rows score the ground truth after the VAE's encode and decode (when a VAE is given), streamed
as a live stream codes it: the ceiling any generator in that latent space can reach; with `lipsync_within_group`,
the correlation of the motion inside each latent's group of frames (within_group_correlation: near 0 when a latent
shows one mouth for all its frames). `vae_frames` rows code each frame on its own (one latent per frame): what the
VAE's spatial path keeps, without its temporal compression.
Methods: `teacher` (offline bidirectional sampling, `sample`, with CFG) and `student_K<k>` (the streaming rollout
with k denoising steps per chunk, `StreamingSession`, run to the end of the audio).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rest.data.shards import ShardReader
from rest.diffusion.flow import Guidance
from rest.diffusion.sample import sample
from rest.errors import RestError
from rest.media import frames_to_tensor, tensor_to_frames
from rest.metrics.lipsync_gt import MAX_OFFSET, lag_correlation, within_group_correlation
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.mouth import LABEL_KEY
from rest.models.vae import CausalVideoVAE
from rest.streaming.session import StreamingSession


@dataclass
class HeldoutClip:
    clip_id: str
    split: str
    portrait: np.ndarray  # uint8 (R, R, 3)
    audio: np.ndarray  # float32 (N,), the first `seconds`
    labels: np.ndarray  # (F,) mouth_open of the evaluated frames
    frames: np.ndarray  # uint8 (F, R, R, 3) ground truth


def heldout_clips(
    root: str | Path, splits: tuple[str, ...] = ("test_id", "test_voice"), seconds: float = 6.0, max_clips: int = 8
) -> list[HeldoutClip]:
    """Up to `max_clips` clips of `splits` (taken in turn from each split), cut to their first `seconds`."""
    reader = ShardReader(root)
    per_split = [[r for r in reader.records if r.split == s] for s in splits]
    records = [r for group in zip(*per_split, strict=False) for r in group][:max_clips]
    records += [r for group in per_split for r in group if r not in records][: max(0, max_clips - len(records))]
    if not records:
        raise RestError(f"{root} has no clips in splits {', '.join(splits)}")
    spf = reader.sample_rate // reader.fps
    clips = []
    for r in records:
        n = min(int(round(seconds * reader.fps)), r.num_frames // 2)
        labels = reader.meta(r.clip_id).get(LABEL_KEY)
        if labels is None:
            raise RestError(f"clip {r.clip_id} has no {LABEL_KEY!r} labels: the study needs SynthTalk clips")
        after = np.arange(n + 25, r.num_frames)  # at least a second after the window
        portrait_index = int(after[np.argmin(labels[after])]) if len(after) else r.num_frames - 1
        clips.append(
            HeldoutClip(
                clip_id=r.clip_id,
                split=r.split,
                portrait=reader.frames_at(r.clip_id, [portrait_index])[0],
                audio=np.array(reader.audio(r.clip_id)[: n * spf], np.float32),
                labels=np.asarray(labels[:n], np.float64),
                frames=reader.frames(r.clip_id, 0, n),
            )
        )
    return clips


@dataclass
class Models:
    vae: CausalVideoVAE
    audio_encoder: AudioEncoder
    denoiser: DenoiserDiT
    shift: float


@torch.no_grad()
def generate_teacher(
    m: Models,
    clip: HeldoutClip,
    audio: np.ndarray,
    steps: int,
    guidance: Guidance,
    seed: int,
    window: int | None = None,
):
    """Offline bidirectional sampling, `window` latent frames per pass (None: the whole clip) -> uint8 (F, R, R, 3)."""
    portrait = frames_to_tensor(clip.portrait[None])[None]  # (1, 3, 1, R, R)
    frames = sample(
        m.denoiser,
        m.vae,
        m.audio_encoder,
        portrait,
        torch.from_numpy(audio)[None],
        steps=steps,
        guidance=guidance,
        seed=seed,
        shift=m.shift,
        window=window,
    )
    return tensor_to_frames(frames[0])


@torch.no_grad()
def generate_student(
    m: Models, clip: HeldoutClip, audio: np.ndarray, sigmas: torch.Tensor, seed: int, context_timestep: float = 0.0
):
    """The streaming rollout over the whole audio -> uint8 (F, R, R, 3): the features of the encoder's whole-clip
    forward pushed at once, and the stream ended with its last whole chunk (1 + t*c*k frames, as the teacher's)."""
    device = next(m.denoiser.parameters()).device
    session = StreamingSession(
        m.denoiser,
        m.vae,
        m.vae.encode_portrait(clip.portrait),
        sigmas,
        context_timestep=context_timestep,
        seed=seed,
        end="whole_chunks",
    )
    head = session.push_features(m.audio_encoder(torch.from_numpy(audio)[None].to(device)))
    return tensor_to_frames(torch.cat([head, session.finish()], dim=2)[0])


def _score(
    regressor,
    embedder,
    clip: HeldoutClip,
    frames: np.ndarray,
    csim_stride: int,
    group: int | None = None,
    pixel_judge=None,
    landmarks=None,
) -> dict:
    """Lip-sync (and CSIM with an embedder) of `frames`; with `group`, also `lipsync_within_group`; with a
    `pixel_judge`, also `lipsync_pixel_corr`; with `landmarks` (a FaceLandmarks68), also `lipsync_landmarks_corr`."""
    pred = regressor.predict(frames)
    row = {f"lipsync_{k}": v for k, v in lag_correlation(pred, clip.labels, MAX_OFFSET).items() if k != "frames"}
    n = min(len(pred), len(clip.labels))
    row["lipsync_slope"] = float(np.polyfit(clip.labels[:n], pred[:n], 1)[0])
    if pixel_judge is not None:
        row["lipsync_pixel_corr"] = lag_correlation(pixel_judge.predict(frames), clip.labels, MAX_OFFSET)["corr"]
    if group is not None:
        row["lipsync_within_group"] = within_group_correlation(pred, clip.labels, group)
    if landmarks is not None:
        row["lipsync_landmarks_corr"] = landmark_judge(landmarks, clip, frames)
    if embedder is not None:
        row.update(identity_scores(embedder, clip.portrait, frames, csim_stride))
    return row


def landmark_judge(landmarks, clip: HeldoutClip, frames: np.ndarray) -> float | None:
    """The judge of the real-speech study on SynthTalk: the inner-lip aperture of `frames` (dlib's 68 points inside
    the portrait's face box) against the clip's `mouth_open` labels, best lag within +-2 frames; None when dlib
    finds no face in the portrait."""
    from rest.metrics.landmarks import aperture, lipsync_landmarks

    box = landmarks.detect(clip.portrait)
    if box is None:
        return None
    return lipsync_landmarks(aperture(landmarks.track(frames, box=box)[0]), clip.labels)["corr"]


def identity_scores(embedder, portrait: np.ndarray, frames: np.ndarray, stride: int) -> dict:
    """`csim_dlib` (detected faces) and, with an embedder that can align (dlib), `csim_dlib_at_portrait` of
    `frames`; None when the portrait has no face."""
    from rest.metrics.identity import can_align, identity_similarity

    at_portrait = can_align(embedder)
    try:
        row = {"csim_dlib": identity_similarity(embedder, portrait, frames, stride=stride)["value"]}
        if at_portrait:
            row["csim_dlib_at_portrait"] = identity_similarity(embedder, portrait, frames, stride, True)["value"]
    except RestError:  # no face in this portrait: no identity score for the clip
        row = {"csim_dlib": None} | ({"csim_dlib_at_portrait": None} if at_portrait else {})
    return row


def identity_of(clip: HeldoutClip) -> str:
    """The identity part of a SynthTalk clip id (`id0039` of `id0039_v333_0000`)."""
    return clip.clip_id.split("_")[0]


def heldout_study(
    clips: list[HeldoutClip],
    methods: dict[str, tuple[Models, dict]],
    regressor,
    embedder=None,
    seed: int = 0,
    csim_stride: int = 5,
    progress: bool = True,
    vae: CausalVideoVAE | None = None,
    pixel_judge=None,
    landmarks=None,
) -> dict:
    """Score every method on every clip with its own and with shuffled audio (module docstring).

    methods: name -> (models, spec); spec {"kind": "teacher", "steps": n, "guidance": Guidance, "window": w} or
        {"kind": "student", "sigmas": tensor, "context_timestep": float}.
    Returns {"per_clip": [...], "summary": {method: {metric: mean}}}.
    """
    rows = []
    judges = {"pixel_judge": pixel_judge, "landmarks": landmarks}  # the second and third lip-sync judges
    bar = tqdm(total=len(clips) * (1 + 2 * len(methods)), desc="held-out study", disable=not progress)
    for i, clip in enumerate(clips):
        shuffled = clips[(i + 1) % len(clips)].audio
        shuffled = np.pad(shuffled, (0, max(0, len(clip.audio) - len(shuffled))))[: len(clip.audio)]
        rows.append(
            {
                "clip": clip.clip_id,
                "split": clip.split,
                "method": "ground_truth",
                **_score(regressor, embedder, clip, clip.frames, csim_stride, **judges),
            }
        )
        if vae is not None:
            from rest.models.vae import reconstruct

            t = vae.temporal_compression
            frames = reconstruct(vae, clip.frames, chunk_frames=t)
            row = _score(regressor, embedder, clip, frames, csim_stride, group=t, **judges)
            rows.append({"clip": clip.clip_id, "split": clip.split, "method": "vae_reconstruction", **row})
            frames = np.concatenate([reconstruct(vae, frame[None]) for frame in clip.frames])  # 1 latent per frame
            row = _score(regressor, embedder, clip, frames, csim_stride, **judges)
            rows.append({"clip": clip.clip_id, "split": clip.split, "method": "vae_frames", **row})
        other = next((c for c in clips[i + 1 :] + clips[:i] if identity_of(c) != identity_of(clip)), None)
        if embedder is not None and other is not None:
            row = identity_scores(embedder, clip.portrait, other.frames, csim_stride)
            rows.append({"clip": clip.clip_id, "split": clip.split, "method": "other_identity", **row})
        bar.update()
        for name, (models, spec) in methods.items():
            for audio_kind, audio in (("own", clip.audio), ("shuffled", shuffled)):
                start = time.perf_counter()
                if spec["kind"] == "teacher":
                    frames = generate_teacher(
                        models, clip, audio, spec["steps"], spec["guidance"], seed, spec.get("window")
                    )
                else:
                    frames = generate_student(models, clip, audio, spec["sigmas"], seed, spec["context_timestep"])
                elapsed = time.perf_counter() - start
                row = {
                    "clip": clip.clip_id,
                    "split": clip.split,
                    "method": name,
                    "audio": audio_kind,
                    "seconds_per_video_second": elapsed / (len(frames) / 25.0),
                    "frames": len(frames),
                }
                identity = embedder if audio_kind == "own" else None
                row.update(_score(regressor, identity, clip, frames, csim_stride, **judges))
                rows.append(row)
                bar.update()
    bar.close()
    return {"per_clip": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """Means per method: own-audio metrics, and the shuffled-audio control as `shuffled_*`; `clips` scored, and
    `csim_dlib_clips`, those where dlib found a face (the clips `csim_dlib` averages over), and
    `csim_dlib_at_portrait_clips`."""
    out: dict[str, dict] = {}
    for row in rows:
        prefix = "shuffled_" if row.get("audio") == "shuffled" else ""
        target = out.setdefault(row["method"], {})
        for key, value in row.items():
            if key in ("clip", "split", "method", "audio") or value is None:
                continue
            target.setdefault(prefix + key, []).append(float(value))
    return {
        m: {k: float(np.mean(v)) for k, v in metrics.items()}
        | {f"{k}_clips": len(metrics.get(k, [])) for k in ("csim_dlib", "csim_dlib_at_portrait")}
        | {"clips": len(metrics.get("lipsync_corr", []))}
        for m, metrics in out.items()
    }


def format_summary(summary: dict) -> str:
    keys = [
        "lipsync_corr",
        "shuffled_lipsync_corr",
        "lipsync_slope",
        "lipsync_pixel_corr",
        "shuffled_lipsync_pixel_corr",
        "lipsync_landmarks_corr",
        "shuffled_lipsync_landmarks_corr",
        "lipsync_best_corr",
        "csim_dlib",
        "csim_dlib_at_portrait",
        "seconds_per_video_second",
    ]
    lines = ["| method | " + " | ".join(keys) + " | clips |", "|---" * (len(keys) + 2) + "|"]
    for method, values in summary.items():
        cells = [f"{values[k]:.3f}" if k in values else "-" for k in keys]
        clips = values["clips"] or values.get("csim_dlib_at_portrait_clips", 0)
        if "csim_dlib" in values:  # over the clips with a face found
            cells[keys.index("csim_dlib")] += f" ({values['csim_dlib_clips']}/{clips})"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {clips} |")
    return "\n".join(lines)


def write_study(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


__all__ = [
    "HeldoutClip",
    "Models",
    "format_summary",
    "generate_student",
    "generate_teacher",
    "heldout_clips",
    "heldout_study",
    "summarize",
    "write_study",
]
