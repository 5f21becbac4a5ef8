"""The mouth-openness regressor: frames -> how open the mouth is (SynthTalk's `mouth_open` label, 0 .. 1).

It is a judge (the `lipsync_gt` metric, rest/metrics/lipsync_gt.py, which also trains it) and a loss network (the
VAE's and the student's mouth-expert losses, rest/training/vae.py and rest/training/student.py), so it lives here
with the other networks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from rest.models.syncnet import center_crops, center_square

LABEL_KEY = "mouth_open"  # the per-frame openness label of a SynthTalk clip's metadata


#################################################################################
#                            Mouth-openness regressor                           #
#################################################################################


class MouthRegressor(ModelMixin, ConfigMixin):
    """Frames -> mouth openness: strided conv blocks with BatchNorm on a centred crop, average pool, linear head.

    BatchNorm matters here: without it the small network does not pick out the mouth in a few hundred steps.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,  # side the centred crop is resized to
        crop_fraction: float = 0.6,  # centred square of this fraction of the frame's short side (the lower face)
        channels: tuple[int, ...] = (16, 32, 64, 64),  # one stride-2 block per entry
    ):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for ch in channels:
            layers += [nn.Conv2d(in_ch, ch, 3, stride=2, padding=1), nn.BatchNorm2d(ch), nn.SiLU()]
            layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.SiLU()]
            in_ch = ch
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B,) openness."""
        return self.head(self.body(x).mean(dim=(2, 3))).squeeze(1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) in [-1, 1] -> the output of each stride-2 block, then the openness (B, 1)."""
        feats = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i % 6 == 5:  # conv, norm, act, conv, norm, act per block
                feats.append(x)
        return feats + [self.head(x.mean(dim=(2, 3)))]

    def crop_tensor(self, frames: torch.Tensor) -> torch.Tensor:
        """Differentiable `crops`: (N, 3, H, W) in [-1, 1] -> (N, 3, S, S), the same centred square and resize."""
        top, left, side = center_square(*frames.shape[-2:], self.config.crop_fraction)
        x = frames[..., top : top + side, left : left + side]
        size = self.config.image_size
        return x if side == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def crops(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB (F, H, W, 3) -> the model's uint8 input crops (F, 3, S, S)."""
        crops = center_crops(frames, self.config.crop_fraction, self.config.image_size)
        return torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB (F, H, W, 3) -> (F, 3, S, S) in [-1, 1]."""
        return self.crops(frames).float() / 127.5 - 1.0

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Openness (F,) of uint8 RGB frames (F, H, W, 3)."""
        device = next(self.parameters()).device
        out = [
            self(self.preprocess(frames[i : i + batch_size]).to(device)).cpu()
            for i in range(0, len(frames), batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def box_slices(box: tuple[float, float, float, float], h: int, w: int) -> tuple[slice, slice]:
    """(top, bottom, left, right) fractions of an h x w frame -> the (rows, columns) slices of its pixels."""
    top, bottom, left, right = box
    return slice(round(top * h), round(bottom * h)), slice(round(left * w), round(right * w))


__all__ = ["LABEL_KEY", "MouthRegressor", "box_slices"]
