"""Perceptual distance (LPIPS, Zhang et al. 2018) over a VGG16 trunk, with weights the user supplies.

No weights ship with REST and nothing is downloaded. `LPIPS.from_files(vgg, lin)` reads
- `vgg`: a VGG16 state dict in torchvision's layout (`features.{0,2,...,28}.weight|bias`; `classifier.*`
  entries, if present, are not used), as `.pth` or `.safetensors`;
- `lin` (optional): LPIPS's learned per-channel weights (`lin{0..4}.model.1.weight`, as in the lpips package's
  `weights/v0.1/vgg.pth`). Without it every channel weighs 1 (the "baseline" variant of the paper).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from rest.errors import RestError

# torchvision's vgg16().features: (conv out channels | "M" max-pool). LPIPS taps relu1_2, relu2_2, relu3_3,
# relu4_3 and relu5_3, i.e. the ReLU after the 2nd, 4th, 7th, 10th and 13th convolution.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (2, 4, 7, 10, 13)
_CHANNELS = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """The convolutional trunk of VGG16, returning the five LPIPS feature maps."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = v
        self.features = nn.Sequential(*layers)  # indices match torchvision's state dict keys

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, convs = [], 0
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                convs += 1
                if convs in _TAPS:
                    out.append(x)
        return out


class LPIPS(nn.Module):
    """LPIPS distance between images in [-1, 1]; (N, 3, H, W) x (N, 3, H, W) -> (N,)."""

    def __init__(self):
        super().__init__()
        self.net = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        for lin in self.lins:
            nn.init.ones_(lin.weight)
        # ImageNet normalisation expressed for inputs in [-1, 1] (the lpips package's ScalingLayer).
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, vgg: str | Path, lin: str | Path | None = None) -> LPIPS:
        model = cls()
        state = _load_state_dict(vgg, "VGG16")
        trunk = {k: v for k, v in state.items() if k.startswith("features.")}
        missing, unexpected = model.net.load_state_dict(trunk, strict=False)
        if missing or unexpected or not trunk:
            raise RestError(
                f"{vgg}: not a torchvision VGG16 state dict (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}); expected keys features.0.weight ... features.28.bias"
            )
        if lin is not None:
            lin_state = _load_state_dict(lin, "LPIPS linear layers")
            try:
                weights = {f"{i}.weight": lin_state[f"lin{i}.model.1.weight"] for i in range(len(_CHANNELS))}
                model.lins.load_state_dict(weights, strict=True)
            except (KeyError, RuntimeError) as err:
                raise RestError(
                    f"{lin}: not an LPIPS vgg linear-layer file (lin0.model.1.weight ...): {err}"
                ) from None
        return model.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        dist = 0.0
        for a, b, lin in zip(fx, fy, self.lins, strict=True):
            a = a * torch.rsqrt(a.pow(2).sum(dim=1, keepdim=True) + 1e-10)  # unit-normalise each feature vector
            b = b * torch.rsqrt(b.pow(2).sum(dim=1, keepdim=True) + 1e-10)
            dist = dist + lin((a - b).pow(2)).mean(dim=(2, 3))  # (N, 1)
        return dist.squeeze(1)


def _load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise RestError(f"{what} weights not found at {path}: put the file there or fix the path in your config")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file
        raise RestError(f"{path}: cannot read {what} weights ({type(err).__name__}: {err})") from None
