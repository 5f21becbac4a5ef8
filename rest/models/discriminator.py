"""PatchGAN discriminator (Isola et al. 2017, pix2pix) for the VAE's optional adversarial loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class PatchDiscriminator(ModelMixin, ConfigMixin):
    """Per-frame patch classifier: (N, 3, H, W) in [-1, 1] -> (N, 1, H', W') real/fake logits.

    GroupNorm instead of pix2pix's BatchNorm, so it behaves the same under DDP and at any batch size.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(32 if out % 32 == 0 else 1, out)]
            layers.append(nn.LeakyReLU(0.2))
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (Lim & Ye 2017)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge loss."""
    return -logits_fake.mean()
