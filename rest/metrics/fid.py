"""FID: Inception-v3 pool features (2048-d) and the Frechet distance between two sets of features.

Two weight files are accepted, both computing the same network (TensorFlow's `inception-2015-12-05` graph):

- the TorchScript file of StyleGAN2-ADA / clean-fid, `inception-2015-12-05.pt`, run with `torch.jit.load` and called
  as they call it: `detector(x, return_features=True)` with `x` float `(N, 3, H, W)` in the uint8 range [0, 255]
  (clean-fid's `InceptionV3W`, stylegan2-ada's `metric_utils`);
- pytorch-fid's state dict, `pt_inception-2015-12-05-6726825d.pth`, loaded into `InceptionV3FID` below: our own
  definition of pytorch-fid's FID Inception (torchvision's Inception-v3 layout and key names, with pytorch-fid's
  FID-specific blocks: average pools that do not count padding in Mixed_5b-d, 6b-e and 7b, a max pool in 7c),
  input scaled to [-1, 1].

Preprocessing is pinned for both: uint8 RGB frames -> [0, 1] -> bilinear resize to 299 x 299 (align_corners=False,
no antialiasing, as pytorch-fid does) -> the network's own input range. The TorchScript model would also resize
internally; at 299 x 299 its resize is the identity, so both files see the same pixels.

The Frechet distance is computed in float64:
    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2),
with tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2) from symmetric eigendecompositions (no complex square roots), and
covariances with the unbiased (N - 1) normalisation of numpy.cov, as pytorch-fid.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rest.errors import RestError

FID_SIZE = 299  # Inception-v3 input side
FID_DIM = 2048  # pool feature size


#################################################################################
#                      Inception-v3, pytorch-fid's FID variant                  #
#################################################################################


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TensorFlow's) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, that ignores the zero padding (TensorFlow's; pytorch-fid's patch)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1 | 5x5 | double 3x3 | pool -> 1x1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], dim=1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], dim=1)


class FIDInceptionC(nn.Module):
    """Mixed_6b-6e: factorised 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], dim=1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (`pool="avg"`, padding not counted) and Mixed_7c (`pool="max"`, as in the FID graph)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)
        pooled = _tf_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], dim=1)


class InceptionV3FID(nn.Module):
    """pytorch-fid's FID Inception-v3: images in [-1, 1] at 299 x 299 -> 2048-d pool features.

    Module names equal torchvision's / pytorch-fid's, so `pt_inception-2015-12-05-6726825d.pth` loads as is; `fc`
    (1008 ImageNet classes of the TF graph) is there only so the file's keys match, features are taken before it.
    """

    def __init__(self, num_classes: int = 1008):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(FID_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 299, 299) in [-1, 1] -> (N, 2048)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (N, 288, 35, 35)
        x = self.Mixed_6a(x)  # (N, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (N, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048), the adaptive average pool


#################################################################################
#                                Weight loading                                 #
#################################################################################


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (the metric outputs quote its first 12 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_torchscript(path: str | Path) -> bool:
    """Whether `path` is a TorchScript archive (a zip holding compiled `code/`), not a pickled state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name or name.endswith("constants.pkl") for name in z.namelist())


def load_state_dict_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A tensor state dict from `.pth` / `.pt` / `.model` (torch.save) or `.safetensors`; RestError otherwise."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, foreign or pickled-code file
        raise RestError(f"{path}: cannot read {what} weights ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RestError(f"{path}: not a state dict of tensors, so not {what} weights")
    return state


@dataclass
class Extractor:
    """Which network and which weights file produced a metric's features (every metric output names one)."""

    name: str  # e.g. "inception-v3-fid (pytorch-fid state dict)"
    weights: str  # path of the weights file ("" when the metric needs none)
    sha256: str  # full hex digest of that file ("" when none)

    def describe(self) -> dict:
        return {"extractor": self.name, "weights": self.weights, "sha256": self.sha256[:12]}


class InceptionFeatures:
    """FID features of uint8 frames with either weight file (module docstring); `extractor` names which."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", batch_size: int = 32):
        path = Path(path)
        if not path.is_file():
            raise RestError(f"FID Inception weights not found at {path}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        if is_torchscript(path):
            try:
                self.model = torch.jit.load(str(path), map_location="cpu").eval().to(self.device)
            except Exception as err:
                raise RestError(f"{path}: cannot load TorchScript Inception ({type(err).__name__}: {err})") from None
            self.torchscript = True
            kind = "torchscript"
        else:
            self.model = load_inception_state_dict(path).to(self.device)
            self.torchscript = False
            kind = "pytorch-fid state dict"
        self.extractor = Extractor(f"inception-v3-2015-12-05 ({kind})", str(path), file_sha256(path))

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 `(N, H, W, 3)` -> float64 `(N, 2048)`."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[i : i + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W) in [0, 1]
            x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
            if self.torchscript:
                feats = self.model(x * 255.0, return_features=True)  # uint8 range, its call convention
            else:
                feats = self.model(2.0 * x - 1.0)
            feats = feats.reshape(len(x), -1)
            if feats.shape[1] != FID_DIM:
                raise RestError(f"{self.extractor.weights}: gives {feats.shape[1]}-d features, FID needs {FID_DIM}")
            out.append(feats.double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FID_DIM))


def load_inception_state_dict(path: str | Path) -> InceptionV3FID:
    """Our FID Inception with pytorch-fid's weights; strict except BatchNorm's `num_batches_tracked` counters."""
    state = load_state_dict_file(path, "pytorch-fid Inception")
    model = InceptionV3FID()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise RestError(
            f"{path}: not pytorch-fid's Inception state dict (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "expected keys Conv2d_1a_3x3.conv.weight ... Mixed_7c.branch_pool.bn.running_var, fc.weight, fc.bias"
        )
    try:
        model.load_state_dict(state, strict=False)  # only the num_batches_tracked counters may be absent
    except RuntimeError as err:
        raise RestError(f"{path}: tensor shapes do not match pytorch-fid's Inception ({err})") from None
    return model.eval().requires_grad_(False)


#################################################################################
#                               Frechet distance                                #
#################################################################################


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D) for a covariance, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding count as 0)."""
    a = (np.asarray(a, dtype=np.float64) + np.asarray(a, dtype=np.float64).T) / 2
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for PSD S1, S2, as tr sqrt(S1^1/2 S2 S1^1/2) (a symmetric PSD matrix with the same spectrum)."""
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, S1) and N(mu2, S2) (the FID / FVD value), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def frechet_distance_features(features1: np.ndarray, features2: np.ndarray, method: str = "auto") -> float:
    """Frechet distance of two feature sets (N1, D), (N2, D).

    method "stats" goes through the covariances (`frechet_distance`). With no more samples than dimensions the
    covariances are singular, and the square roots of their rounding-level eigenvalues (~1e-8 each, times D) would
    swamp a small distance; method "samples" computes tr sqrt(S1 S2) exactly from the samples instead: with centred
    X1, X2, S1 S2 = X1^T (X1 X2^T) X2 / ((N1 - 1)(N2 - 1)), whose square-root trace is the nuclear norm of X1 X2^T
    over sqrt((N1 - 1)(N2 - 1)). "auto" takes "samples" when min(N1, N2) <= D. Both agree on full-rank data (tested).
    """
    if method not in ("auto", "stats", "samples"):
        raise ValueError(f"method must be auto, stats or samples, got {method!r}")
    x1, x2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    mu1, sigma1 = feature_stats(x1)
    mu2, sigma2 = feature_stats(x2)
    if method == "stats" or (method == "auto" and min(len(x1), len(x2)) > x1.shape[1]):
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    c1, c2 = x1 - mu1, x2 - mu2
    nuclear = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt((len(x1) - 1) * (len(x2) - 1))
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * nuclear, 0.0))


__all__ = [
    "FID_DIM",
    "FID_SIZE",
    "Extractor",
    "InceptionFeatures",
    "InceptionV3FID",
    "feature_stats",
    "file_sha256",
    "frechet_distance",
    "frechet_distance_features",
    "is_torchscript",
    "load_inception_state_dict",
    "load_state_dict_file",
    "sqrtm_psd",
    "trace_sqrt_product",
]
