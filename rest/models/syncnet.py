"""SyncNet (syncnet_python's `S` model) and the inputs it reads: MFCC windows, centred face crops, windows.

The network and its preprocessing follow joonson/syncnet_python exactly, so its published `syncnet_v2.model` loads
and scores as there (rest/metrics/syncnet.py reads its embeddings as LSE-C / LSE-D):

- Media: video at 25 fps, audio 16 kHz mono as 16-bit integers (ffmpeg `-acodec pcm_s16le -ar 16000` then
  `scipy.io.wavfile.read`). We decode with `rest.media`, scale the float samples by 32768, round and clip to int16.
- Audio features: `python_speech_features.mfcc(audio, 16000)` with its defaults (25 ms frames, 10 ms step, 13
  coefficients, 26 mel filters, 512-point FFT, pre-emphasis 0.97, lifter 22, c0 replaced by the log frame energy):
  100 MFCC frames per second, 4 per video frame. `mfcc()` below reimplements it in numpy (tested against the package).
- Windows: for every start frame i in `range(0, min_length - 5)`, with `min_length = min(frames, samples // 640)`,
  the video window is frames [i, i + 5) and the audio window MFCC frames [4i, 4i + 20) (both 200 ms).
- Video input: 224 x 224 face crops in BGR order (cv2), float in [0, 255], no normalisation; `(B, 3, 5, 224, 224)`.
  For videos that are already a face crop (our generator's output), `crop="center"` takes the centred square of
  `crop_fraction` of the frame (`center_crops`); the model's config records which crop it was trained with.

A small SyncNet trained on the project's data (rest/training/syncnet.py) is also a loss network: it lives here,
with the other networks, and the metric imports it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4  # 100 MFCC frames/s at 25 fps


#################################################################################
#                       MFCC (python_speech_features' mfcc)                     #
#################################################################################


def _hz2mel(hz):
    return 2595 * np.log10(1 + hz / 700.0)


def _mel2hz(mel):
    return 700 * (10 ** (mel / 2595.0) - 1)


def _filterbanks(nfilt: int, nfft: int, sample_rate: int, lowfreq: float, highfreq: float) -> np.ndarray:
    """Triangular filters on FFT bins placed at floor((nfft + 1) * hz / sr), as python_speech_features."""
    mels = np.linspace(_hz2mel(lowfreq), _hz2mel(highfreq), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(mels) / sample_rate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    i = np.arange(nfft // 2 + 1)
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        rise = (i >= lo) & (i < mid)
        fall = (i >= mid) & (i < hi)
        fb[j, rise] = (i[rise] - lo) / (mid - lo)
        fb[j, fall] = (hi - i[fall]) / (hi - mid)
    return fb


def _dct2_ortho(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II matrix (scipy.fftpack.dct(type=2, norm='ortho') as a matrix)."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * i + 1) / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m


def mfcc(
    signal: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    winlen: float = 0.025,
    winstep: float = 0.01,
    numcep: int = 13,
    nfilt: int = 26,
    nfft: int = 512,
    preemph: float = 0.97,
    ceplifter: int = 22,
) -> np.ndarray:
    """MFCCs (num_frames, numcep) of a 1-D signal, as `python_speech_features.mfcc` with its defaults.

    Frames: length round(winlen * sr), step round(winstep * sr) (half up), `1 + ceil((N - len) / step)` frames,
    the last zero-padded; rectangular window; power spectrum |rfft|^2 / nfft; c0 = log of the frame energy.
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"mfcc expects a non-empty 1-D signal, got shape {x.shape}")
    x = np.append(x[0], x[1:] - preemph * x[:-1])
    frame_len = int(math.floor(winlen * sample_rate + 0.5))
    frame_step = int(math.floor(winstep * sample_rate + 0.5))
    n = 1 if len(x) <= frame_len else 1 + int(math.ceil((len(x) - frame_len) / frame_step))
    padded = np.concatenate([x, np.zeros((n - 1) * frame_step + frame_len - len(x))])
    idx = np.arange(frame_len)[None, :] + frame_step * np.arange(n)[:, None]
    frames = padded[idx]  # (n, frame_len)
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft  # (n, nfft // 2 + 1)
    eps = np.finfo(float).eps
    energy = pspec.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ _filterbanks(nfilt, nfft, sample_rate, 0.0, sample_rate / 2).T  # (n, nfilt)
    feat = np.where(feat == 0, eps, feat)
    cep = np.log(feat) @ _dct2_ortho(nfilt).T[:, :numcep]  # (n, numcep)
    if ceplifter > 0:
        cep = cep * (1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter))
    cep[:, 0] = np.log(energy)
    return cep


def audio_to_int16_range(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] samples -> the int16 values syncnet_python reads from its 16-bit WAV (as float64)."""
    return np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767)


def syncnet_mfcc(audio: np.ndarray) -> np.ndarray:
    """16 kHz float audio (N,) -> MFCC (13, num_frames) in syncnet_python's convention (int16 scale)."""
    return mfcc(audio_to_int16_range(audio), SAMPLE_RATE).T


#################################################################################
#                                    SyncNet                                    #
#################################################################################


def _lip_spatial_out(size: int) -> int:
    """Spatial side before the lip stream's last convolution (6 for 224 input)."""
    s = (size - 7) // 2 + 1  # conv 7x7 stride 2
    s = (s - 3) // 2 + 1  # max-pool 3 stride 2
    s = (s + 2 - 5) // 2 + 1  # conv 5x5 stride 2 pad 1
    s = (s + 2 - 3) // 2 + 1  # max-pool 3 stride 2 pad 1
    return (s - 3) // 2 + 1  # max-pool 3 stride 2


def _audio_out(num_mfcc: int, mfcc_frames: int) -> tuple[int, int]:
    """(height, width) before the audio stream's last convolution ((5, 4) for 13 x 20 MFCC input)."""
    h, w = num_mfcc - 2, (mfcc_frames - 3) // 2 + 1  # max-pool (3, 3) stride (1, 2)
    return (h - 3) // 2 + 1, (w - 3) // 2 + 1  # max-pool 3 stride 2


class SyncNet(ModelMixin, ConfigMixin):
    """syncnet_python's `S` model: a lip stream (5 frames) and an audio stream (20 MFCC frames) -> embeddings.

    Module names and layer order equal syncnet_python's (`netcnnaud`, `netfcaud`, `netcnnlip`, `netfclip`), so
    `syncnet_v2.model` loads into the default config; the no-op `MaxPool2d(1, 1)` is kept for the indices. The
    widths, input size and embedding size are arguments so a small SyncNet can be trained on CPU
    (rest/training/syncnet.py); the preprocessing it was trained with (`crop`, `crop_fraction`) is part of its config.
    """

    @register_to_config
    def __init__(
        self,
        audio_channels: tuple[int, ...] = (64, 192, 384, 256, 256, 512),  # six convolutions of the audio stream
        lip_channels: tuple[int, ...] = (96, 256, 256, 256, 256, 512),  # six convolutions of the lip stream
        fc_dim: int = 512,  # hidden size of both fully connected heads
        embed_dim: int = 1024,  # output embedding size (num_layers_in_fc_layers)
        image_size: int = 224,  # side of the square face crops
        window_frames: int = 5,  # video frames per window (temporal kernel of the first lip convolution)
        num_mfcc: int = 13,  # MFCC coefficients
        mfcc_frames: int = 20,  # MFCC frames per audio window
        crop: str = "face",  # preprocessing: "face" (detected, syncnet_python geometry) or "center"
        crop_fraction: float = 1.0,  # "center": side of the centred square as a fraction of the frame's short side
    ):
        super().__init__()
        a, v = tuple(audio_channels), tuple(lip_channels)
        if len(a) != 6 or len(v) != 6:
            raise ValueError("audio_channels and lip_channels need six widths each")
        if crop not in ("face", "center") or not 0 < crop_fraction <= 1:
            raise ValueError(
                f"crop must be 'face' or 'center' and 0 < crop_fraction <= 1, got {crop}, {crop_fraction}"
            )
        ah, aw = _audio_out(num_mfcc, mfcc_frames)
        ls = _lip_spatial_out(image_size)
        if min(ah, aw, ls) < 1:
            raise ValueError(f"inputs too small: image_size {image_size}, MFCC {num_mfcc} x {mfcc_frames}")

        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, a[0], kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(a[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=1, stride=1),
            nn.Conv2d(a[0], a[1], kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(a[1]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            nn.Conv2d(a[1], a[2], kernel_size=3, padding=1),
            nn.BatchNorm2d(a[2]),
            nn.ReLU(inplace=True),
            nn.Conv2d(a[2], a[3], kernel_size=3, padding=1),
            nn.BatchNorm2d(a[3]),
            nn.ReLU(inplace=True),
            nn.Conv2d(a[3], a[4], kernel_size=3, padding=1),
            nn.BatchNorm2d(a[4]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(a[4], a[5], kernel_size=(ah, aw), padding=0),
            nn.BatchNorm2d(a[5]),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(a[5], fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(), nn.Linear(fc_dim, embed_dim)
        )
        self.netfclip = nn.Sequential(
            nn.Linear(v[5], fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(), nn.Linear(fc_dim, embed_dim)
        )
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, v[0], kernel_size=(window_frames, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(v[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(v[0], v[1], kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(v[1]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(v[1], v[2], kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(v[2]),
            nn.ReLU(inplace=True),
            nn.Conv3d(v[2], v[3], kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(v[3]),
            nn.ReLU(inplace=True),
            nn.Conv3d(v[3], v[4], kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(v[4]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(v[4], v[5], kernel_size=(1, ls, ls), padding=0),
            nn.BatchNorm3d(v[5]),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """MFCC windows (B, 1, num_mfcc, mfcc_frames) -> (B, embed_dim)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        """BGR windows (B, 3, window_frames, S, S) in [0, 255] -> (B, embed_dim)."""
        return self.netfclip(self.netcnnlip(video).flatten(1))

    def forward(self, video: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lip embeddings, audio embeddings) of paired windows."""
        return self.forward_lip(video), self.forward_aud(mfcc)


#################################################################################
#                              Crops and windows                                #
#################################################################################


def center_square(h: int, w: int, fraction: float) -> tuple[int, int, int]:
    """(top, left, side) of the centred square of `fraction` of an h x w frame's short side."""
    side = max(1, round(min(h, w) * fraction))
    return (h - side) // 2, (w - side) // 2, side


def center_crops(frames: np.ndarray, fraction: float, size: int) -> np.ndarray:
    """The centred square of `fraction` of the short side, resized: uint8 (F, H, W, 3) -> (F, size, size, 3)."""
    top, left, side = center_square(*frames.shape[1:3], fraction)
    return resize_frames(frames[:, top : top + side, left : left + side], size)


def resize_frames(frames: np.ndarray, size: int, batch: int = 64) -> np.ndarray:
    """Bilinear resize (cv2.resize's INTER_LINEAR equivalent: align_corners=False, no antialias)."""
    if frames.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out[i : i + batch] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def sync_windows(num_frames: int, num_samples: int, window_frames: int = 5) -> int:
    """Windows syncnet_python scores: `min(frames, samples // 640) - 5` (its `lastframe`), at least 0."""
    return max(0, min(num_frames, num_samples // SAMPLES_PER_FRAME) - window_frames)


__all__ = [
    "FPS",
    "MFCC_PER_FRAME",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "SyncNet",
    "audio_to_int16_range",
    "center_crops",
    "center_square",
    "mfcc",
    "resize_frames",
    "sync_windows",
    "syncnet_mfcc",
]
