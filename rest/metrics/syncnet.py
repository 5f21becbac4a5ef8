"""LSE-C / LSE-D: audio-visual sync with SyncNet, following syncnet_python (joonson/syncnet_python) exactly.

What syncnet_python does, and we do (SyncNetInstance.evaluate, SyncNetModel.S, run_pipeline.crop_video):

- Network, MFCC, windows and centred crops: rest/models/syncnet.py (`SyncNet`, `syncnet_mfcc`, `sync_windows`,
  `center_crops`), where the network lives beside the other networks (a trained SyncNet is also a loss).
- Offsets: distance[i, j] = L2(video_i, audio_{i + j - vshift}) (`torch.nn.functional.pairwise_distance`, eps 1e-6),
  audio embeddings zero-padded by `vshift = 15` windows on both sides; mean over i -> 31 mean distances;
  LSE-D = min, LSE-C = median - min, offset = vshift - argmin. A positive offset means the audio comes *earlier*
  than the video; audio delayed by d frames gives offset -d. LSE-C and LSE-D are read at the best offset, so a
  constant shift within +-15 frames shows in `offset`, not in them; `mean_dists[vshift]` (reported by
  `rest evaluate` as `lse_d_offset0`, our addition) is the distance at zero offset, which a shift does raise.
- Face crops (`crop="face"`): one face box per frame (our `FaceDetector`: SCRFD when its weights exist, else dlib's
  HOG, where syncnet_python uses S3FD), missing frames interpolated, box size and centre median-filtered over 13
  frames, then syncnet_python's crop: half-size s = max(w, h) / 2, rows [cy - s, cy + 1.8 s), columns
  [cx - 1.4 s, cx + 1.4 s) (crop_scale 0.4) of the frame padded with grey 110, resized to 224 x 224. For videos
  that are already a face crop (our generator's output), `crop="center"` takes the centred square of
  `crop_fraction` of the frame instead. The model's config records which crop it was trained with.

A clip with fewer than 6 frames (no 5-frame window under syncnet_python's `min_length - 5` rule) or without audio
is not scored; `score_video` returns the reason instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rest.data.shards import ShardReader
from rest.errors import RestError
from rest.metrics.fid import Extractor, file_sha256, load_state_dict_file
from rest.models.syncnet import (
    MFCC_PER_FRAME,
    SAMPLES_PER_FRAME,
    SyncNet,
    center_crops,
    resize_frames,
    sync_windows,
    syncnet_mfcc,
)

VSHIFT = 15  # syncnet_python run_syncnet.py default
CROP_SCALE = 0.4  # syncnet_python run_pipeline.py default
PAD_VALUE = 110  # grey padding of run_pipeline.crop_video
SMOOTH_KERNEL = 13  # median filter of box size / centre in run_pipeline.crop_video


#################################################################################
#                                    Weights                                    #
#################################################################################


def load_syncnet(path: str | Path) -> tuple[SyncNet, Extractor]:
    """A SyncNet from syncnet_python's state dict (`syncnet_v2.model`) or a folder written by `save_pretrained`.

    The state dict must match the default config exactly (BatchNorm `num_batches_tracked` may be absent, as in the
    2017 files); anything else is a RestError that names the mismatch.
    """
    path = Path(path)
    if path.is_dir():
        from rest.models.loading import load_local

        model = load_local(SyncNet, path, "SyncNet")
        weights = path / "diffusion_pytorch_model.safetensors"
        name = f"syncnet (project-trained, {model.config.image_size}px {model.config.crop} crop)"
        return model.eval().requires_grad_(False), Extractor(name, str(weights), file_sha256(weights))
    if not path.is_file():
        raise RestError(f"SyncNet weights not found at {path}")
    state = load_state_dict_file(path, "SyncNet")
    model = SyncNet()
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise RestError(
            f"{path}: not syncnet_python's SyncNet state dict (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "expected keys netcnnaud.0.weight ... netfclip.3.bias (syncnet_v2.model)"
        )
    try:
        model.load_state_dict(state, strict=True)  # BatchNorm fills absent num_batches_tracked for metadata-free dicts
    except RuntimeError as err:
        raise RestError(f"{path}: tensor shapes do not match syncnet_python's SyncNet ({err})") from None
    return model.eval().requires_grad_(False), Extractor("syncnet_v2 (syncnet_python)", str(path), file_sha256(path))


#################################################################################
#                            Offset search (LSE-C/D)                            #
#################################################################################


@dataclass
class SyncResult:
    """syncnet_python's outputs for one clip."""

    offset: int  # frames; vshift - argmin (audio earlier than video > 0)
    lse_d: float  # min over offsets of the mean distance
    lse_c: float  # median - min of the mean distances
    windows: int  # 5-frame windows compared
    mean_dists: list[float] = field(default_factory=list)  # (2 vshift + 1,), offsets -vshift .. +vshift of j


def offset_search(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
    """syncnet_python's `calc_pdist` + offset/confidence: embeddings (T, D) of aligned windows -> SyncResult."""
    if video_emb.shape != audio_emb.shape or video_emb.ndim != 2 or len(video_emb) == 0:
        raise ValueError(f"need two (T, D) embeddings of equal shape, got {video_emb.shape}, {audio_emb.shape}")
    win = 2 * vshift + 1
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))  # zero embeddings beyond both ends, as syncnet_python
    dists = torch.stack(
        [F.pairwise_distance(video_emb[[i]].repeat(win, 1), padded[i : i + win]) for i in range(len(video_emb))], 1
    )  # (win, T)
    mdist = dists.mean(dim=1)  # (win,)
    minval, minidx = torch.min(mdist, 0)
    return SyncResult(
        offset=int(vshift - minidx),
        lse_d=float(minval),
        lse_c=float(torch.median(mdist) - minval),
        windows=len(video_emb),
        mean_dists=[float(d) for d in mdist],
    )


#################################################################################
#                                 Face crops                                    #
#################################################################################


def _median_filter(x: np.ndarray, kernel: int) -> np.ndarray:
    """scipy.signal.medfilt: zero-padded running median with an odd kernel.

    A series of at most kernel // 2 values would be all zeros (more zeros than values in every window); it gets
    its plain median instead (syncnet_python never meets this: it drops face tracks under 100 frames).
    """
    half = kernel // 2
    if len(x) <= half:
        return np.full(len(x), np.median(x))
    padded = np.concatenate([np.zeros(half), x, np.zeros(half)])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, kernel), axis=1)


def face_boxes(frames: np.ndarray, detector) -> np.ndarray | None:
    """(F, 4) boxes x0, y0, x1, y1 of the largest face per frame, gaps interpolated; None when no frame has one."""
    found, boxes = [], []
    for i, frame in enumerate(frames):
        faces = detector.detect(frame)
        if faces:
            found.append(i)
            boxes.append(faces[0][:4])
    if not found:
        return None
    boxes = np.asarray(boxes, dtype=np.float64)
    index = np.arange(len(frames))
    return np.stack([np.interp(index, found, boxes[:, j]) for j in range(4)], axis=1)


def syncnet_face_crops(frames: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """syncnet_python's crop_video: uint8 (F, H, W, 3) + boxes (F, 4) -> uint8 (F, size, size, 3)."""
    s = _median_filter(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2, SMOOTH_KERNEL)
    cy = _median_filter((boxes[:, 1] + boxes[:, 3]) / 2, SMOOTH_KERNEL)
    cx = _median_filter((boxes[:, 0] + boxes[:, 2]) / 2, SMOOTH_KERNEL)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        bs = s[i]
        pad = int(bs * (1 + 2 * CROP_SCALE))
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=PAD_VALUE)
        my, mx = cy[i] + pad, cx[i] + pad
        face = padded[
            int(my - bs) : int(my + bs * (1 + 2 * CROP_SCALE)),
            int(mx - bs * (1 + CROP_SCALE)) : int(mx + bs * (1 + CROP_SCALE)),
        ]
        out[i] = resize_frames(face[None], size)[0]
    return out


#################################################################################
#                                  Scoring                                      #
#################################################################################


class SyncNetScorer:
    """Scores videos with a SyncNet: crops, MFCC, embeddings in batches, offset search."""

    def __init__(
        self,
        model: SyncNet,
        extractor: Extractor,
        device: torch.device | str = "cpu",
        batch_size: int = 20,
        vshift: int = VSHIFT,
        crop: str | None = None,
        detector=None,
    ):
        self.model = model.to(device).eval()
        self.extractor = extractor
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.vshift = vshift
        self.crop = crop or model.config.crop
        if self.crop not in ("face", "center"):
            raise RestError(f"SyncNet crop must be 'face' or 'center', got {self.crop!r}")
        self._detector = detector

    def crops(self, frames: np.ndarray) -> np.ndarray | str:
        """The model's input crops of uint8 RGB frames, or the reason there are none."""
        size = self.model.config.image_size
        if self.crop == "center":
            return center_crops(frames, self.model.config.crop_fraction, size)
        if self._detector is None:
            from rest.data.face import FaceDetector

            self._detector = FaceDetector()
        boxes = face_boxes(frames, self._detector)
        if boxes is None:
            return f"no face found by {self._detector.name} in any frame"
        return syncnet_face_crops(frames, boxes, size)

    @torch.no_grad()
    def embed(self, crops: np.ndarray, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Lip and audio embeddings (T, D) of every window (module docstring); crops uint8 RGB (F, S, S, 3)."""
        cfg = self.model.config
        n = sync_windows(len(crops), len(audio), cfg.window_frames)
        video = (
            torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).permute(3, 0, 1, 2).float()
        )  # BGR (3, F, S, S)
        cc = torch.from_numpy(syncnet_mfcc(audio)).float()  # (13, M)
        lip, aud = [], []
        for i in range(0, n, self.batch_size):
            starts = range(i, min(n, i + self.batch_size))
            v = torch.stack([video[:, s : s + cfg.window_frames] for s in starts])  # (B, 3, 5, S, S)
            a = torch.stack([cc[None, :, MFCC_PER_FRAME * s : MFCC_PER_FRAME * s + cfg.mfcc_frames] for s in starts])
            lip.append(self.model.forward_lip(v.to(self.device)).cpu())
            aud.append(self.model.forward_aud(a.to(self.device)).cpu())
        return torch.cat(lip), torch.cat(aud)

    def score(self, frames: np.ndarray, audio: np.ndarray | None) -> SyncResult | str:
        """SyncResult of a video (uint8 RGB (F, H, W, 3) at 25 fps, 16 kHz audio), or why it cannot be scored."""
        if audio is None or len(audio) == 0:
            return "no audio track"
        need = self.model.config.window_frames + 1
        if sync_windows(len(frames), len(audio), self.model.config.window_frames) < 1:
            have = min(len(frames), len(audio) // SAMPLES_PER_FRAME)
            return f"too short: {have} frames with audio; SyncNet needs at least {need} (5-frame windows)"
        crops = self.crops(frames)
        if isinstance(crops, str):
            return crops
        lip, aud = self.embed(crops, audio)
        return offset_search(lip, aud, self.vshift)


@torch.no_grad()
def evaluate_sync(
    model: SyncNet, reader: ShardReader, clip_ids: list[str], device: torch.device, shift: int = 5
) -> dict:
    """Offset, LSE-D and LSE-C of shard clips as they are and with the audio delayed by `shift` frames (expected
    offset -shift): the held-out check at the end of a SyncNet training run (rest/training/syncnet.py)."""
    scorer = SyncNetScorer(model, Extractor("syncnet (training run)", "", ""), device=device)
    rows = {}
    for clip_id in clip_ids:
        frames = reader.frames(clip_id)
        audio = np.asarray(reader.audio(clip_id), dtype=np.float32)
        delayed = np.concatenate([np.zeros(shift * 640, np.float32), audio[: len(audio) - shift * 640]])
        for name, track in (("sync", audio), (f"delayed_{shift}", delayed)):
            r = scorer.score(frames, track)
            rows[f"{clip_id}/{name}"] = (
                r
                if isinstance(r, str)
                else {"offset": r.offset, "lse_d": round(r.lse_d, 3), "lse_c": round(r.lse_c, 3)}
            )
    return rows


__all__ = [
    "SyncNetScorer",
    "SyncResult",
    "evaluate_sync",
    "face_boxes",
    "load_syncnet",
    "offset_search",
    "syncnet_face_crops",
]
