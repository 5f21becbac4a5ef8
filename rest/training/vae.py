"""Training of the causal video VAE: L1 + KL (+ LPIPS with user weights) (+ a mouth expert) (+ PatchGAN after a
warm-up), EMA.

Runs unchanged on CPU, one GPU or many through accelerate (`accelerate launch train/vae.py --config ...`).
A run folder holds `checkpoints/` (resumable accelerate state), `metrics.jsonl` (status lines and the PSNR
curve) and `export/` (EMA weights, `save_pretrained` layout, with the latent scale measured on the data).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from einops import rearrange
from torch.utils.data import DataLoader

from rest.config import VAEArch, from_dict, get_preset, merge, to_dict
from rest.data.videos import VideoClipDataset, motion_map
from rest.media import frames_to_tensor
from rest.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from rest.models.loading import load_local
from rest.models.mouth import MouthRegressor
from rest.models.perceptual import LPIPS
from rest.models.vae import CausalVideoVAE
from rest.training.common import TrainConfig, start_from
from rest.training.loop import StepOutput, Trainer, epochs, training_loop

#################################################################################
#                                    Config                                     #
#################################################################################


@dataclass
class VAEDataConfig:
    root: str  # folder of videos (searched recursively) or one video file
    resolution: int | None = None  # square crop size; None = the preset's resolution
    num_frames: int = 9  # frames per training clip, 1 + t*k
    context_frames: int = 0  # max warm-up frames (1 + t*j) streamed without gradients before the window; 0 = none
    crop: Literal["center", "face"] = "center"
    fps: float = 25.0  # videos are resampled to this rate
    cache_in_memory: bool = True  # decode every video once at the target resolution
    num_workers: int = 0  # DataLoader workers


@dataclass
class VAELossConfig:
    kl_weight: float = 1e-4  # weight of the KL term, both terms averaged per element
    # Motion-weighted L1: a pixel's L1 weight is 1 + motion_weight * min(motion, motion_cap), where motion is
    # its temporal std over the whole video relative to the frame's mean (VideoClipDataset.motion_maps). Talking
    # heads move at the mouth and eyes, a few percent of the frame that a plain mean leaves for last.
    motion_weight: float = 0.0
    motion_cap: float = 8.0
    # Temporal L1: the L1 of the reconstruction's frame-to-frame differences against the clip's. A decoder that
    # shows the mouth of a 4-frame latent as one averaged pose loses little plain L1 (the mouth is a few percent
    # of the pixels) but all of this term, which is zero wherever nothing moves.
    temporal_weight: float = 0.0
    # Mouth-expert loss: a frozen MouthRegressor (rest/models/mouth.py, trained on SynthTalk labels) reads
    # reconstruction and clip; the loss is the distance of its unit-normalised block features plus the squared
    # difference of its openness readings (`mouth_expert_distance`). A perceptual loss that looks only at the mouth:
    # the few percent of pixels a talking head is about. Use a regressor other than the one that scores the results.
    mouth_weight: float = 0.0
    mouth_expert: str | None = None  # MouthRegressor export folder (train/mouth_regressor.py)
    perceptual_weight: float = 0.0  # LPIPS weight; needs perceptual_vgg
    perceptual_vgg: str | None = (
        None  # torchvision-layout VGG16 state dict (user-supplied, see rest/models/perceptual.py)
    )
    perceptual_lin: str | None = None  # optional LPIPS linear-layer weights
    gan_weight: float = 0.0  # adversarial weight; 0 disables the discriminator
    gan_start_step: int = 2000  # the discriminator starts after this warm-up
    disc_lr: float = 2e-4
    disc_channels: int = 64
    disc_layers: int = 3


@dataclass
class VAETrainConfig(TrainConfig):
    output_dir: str = "runs/vae"
    batch_size: int = 2
    lr: float = 1e-4  # 1e-3 barely learns with this architecture on varied footage (configs/demo/vae.yaml)
    max_steps: int = 3000
    eval_every: int = 250  # PSNR of the EMA model on the training videos (steps; 0 = only at the end)
    eval_max_frames: int = 201  # frames per video used for evaluation (cut to 1 + t*k)
    eval_videos: int | None = None  # evaluate (and measure the latent scale) on the first n videos; None = all
    checkpoint_every: int = 500


@dataclass
class VAEExperiment:
    data: VAEDataConfig
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # overrides of the preset's VAE architecture (VAEArch fields)
    init: str | None = None  # a VAE export folder to start from (fine-tuning); None = random initialisation
    # `init` was trained on single frames only: start the untrained first-frame halves of its temporal upsamplers
    # as copies of the trained halves (CausalVideoVAE.copy_last_frame_weights_)
    init_from_frames: bool = False
    # keep `init`'s latent shift and scale instead of measuring them on this data: a fine-tuned VAE whose latents a
    # trained generator already reads (`rest avatar train`), so that they stay where that generator expects them
    keep_latent_scale: bool = False
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    train: VAETrainConfig = field(default_factory=VAETrainConfig)

    def arch(self) -> VAEArch:
        return from_dict(VAEArch, merge(to_dict(get_preset(self.preset).vae), self.model), where="model")

    def resolution(self) -> int:
        return self.data.resolution or get_preset(self.preset).resolution


#################################################################################
#                                   Training                                    #
#################################################################################


def mouth_expert_distance(expert: MouthRegressor, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mouth-expert distance of frames (N, 3, H, W) in [-1, 1]: per block, the squared distance of the channel-wise
    unit-normalised features averaged over positions (LPIPS without learned weights), summed over blocks, plus the
    squared difference of the openness readings. Gradients reach `recon` only; the expert stays as it is."""
    with torch.no_grad():
        want = expert.features(expert.crop_tensor(target))
    got = expert.features(expert.crop_tensor(recon))
    dist = (got[-1] - want[-1]).pow(2).mean()
    for a, b in zip(got[:-1], want[:-1], strict=True):
        dist = dist + (F.normalize(a, dim=1) - F.normalize(b, dim=1)).pow(2).sum(1).mean()
    return dist


def kl_per_element(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over latent elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


@torch.no_grad()
def evaluate_psnr(vae: CausalVideoVAE, videos: list, max_frames: int, device: torch.device) -> dict[str, float]:
    """PSNR (dB, on [0, 1] pixels) of whole-clip reconstructions (posterior mode), per video and averaged.

    `psnr_motion` weighs each pixel's squared error by its motion map (`motion_map`: temporal std over the
    evaluated frames, over its mean): the PSNR of what moves (mouth, eyes), which a plain mean hides behind the
    still background.
    """
    t = vae.temporal_compression
    psnrs, motion_psnrs = [], []
    for frames in videos:
        n = min(len(frames), max_frames)
        n = 1 + t * ((n - 1) // t)
        x = frames_to_tensor(frames[:n]).unsqueeze(0).to(device)  # (1, 3, F, R, R)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        err = ((y - x) / 2).pow(2)  # on [0, 1] pixels
        weight = motion_map(frames[:n]).to(device)  # (1, R, R), mean 1
        psnrs.append(10 * math.log10(1.0 / max(err.mean().item(), 1e-12)))
        motion_psnrs.append(10 * math.log10(1.0 / max((err * weight).mean().item(), 1e-12)))
    return {
        "psnr": sum(psnrs) / len(psnrs),
        "psnr_motion": sum(motion_psnrs) / len(motion_psnrs),
        "psnr_per_video": psnrs,
    }


@torch.no_grad()
def measure_latent_scale(
    vae: CausalVideoVAE, videos: list, max_frames: int, device: torch.device
) -> tuple[float, float]:
    """(shift, scale) so that `(z - shift) * scale` has zero mean and unit std on these videos."""
    t = vae.temporal_compression
    zs = []
    for frames in videos:
        n = 1 + t * ((min(len(frames), max_frames) - 1) // t)
        zs.append(vae.encode(frames_to_tensor(frames[:n]).unsqueeze(0).to(device)).latent_dist.mode().flatten())
    z = torch.cat(zs)
    return z.mean().item(), 1.0 / z.std().item()


def train_vae(cfg: VAEExperiment, resume: str | None = None) -> Path:
    """Train (or resume) and export; returns the export folder."""
    return training_loop(VAETrainer(cfg), cfg.train, to_dict(cfg), resume)


class VAETrainer(Trainer):
    """The VAE's part of `training_loop`: random clips of videos, warm-up context, the losses of `VAELossConfig`,
    the discriminator after its warm-up; PSNR on the main process; the export measures the latent scale."""

    name = "vae"
    log_grad_norm = False
    evaluate_on = "main"  # evaluation and latent scale on the unwrapped model

    def __init__(self, cfg: VAEExperiment):
        self.cfg = cfg

    def build(self, accelerator: Accelerator) -> None:
        cfg, tc, lc = self.cfg, self.cfg.train, self.cfg.loss
        self.accelerator = accelerator
        vae = CausalVideoVAE(**to_dict(cfg.arch()))
        if cfg.init is not None:
            start_from(vae, cfg.init, "init", "model", ignore=("scaling_factor", "shift_factor"))  # measured, not arch
            if cfg.init_from_frames:
                vae.copy_last_frame_weights_()
        elif cfg.init_from_frames:
            raise ValueError("init_from_frames needs init: the single-frame VAE export to start from")
        elif cfg.keep_latent_scale:
            raise ValueError("keep_latent_scale needs init: the VAE export whose latent shift and scale to keep")
        t = vae.temporal_compression
        if (cfg.data.num_frames - 1) % t:
            raise ValueError(f"data.num_frames must be 1 + {t}*k for this VAE, got {cfg.data.num_frames}")
        if cfg.data.context_frames and (cfg.data.context_frames - 1) % t:
            raise ValueError(f"data.context_frames must be 0 or 1 + {t}*j for this VAE, got {cfg.data.context_frames}")
        # Context lengths drawn per step: none (the window starts the stream) or 1, 1 + t, ..., context_frames.
        # The context streams through without gradients (CausalVideoVAE.forward), so the model learns the warm
        # caches of long streams: its temporal receptive field is far longer than a clip we can backpropagate through.
        self.context_lengths = [0] + list(range(1, cfg.data.context_frames + 1, t))
        clip_frames = cfg.data.num_frames + max(0, cfg.data.context_frames - 1)
        use_gan = lc.gan_weight > 0
        disc = PatchDiscriminator(channels=lc.disc_channels, num_layers=lc.disc_layers) if use_gan else None
        self.lpips = None
        if lc.perceptual_weight > 0:
            if lc.perceptual_vgg is None:
                raise ValueError("loss.perceptual_weight > 0 needs loss.perceptual_vgg (a VGG16 state dict path)")
            self.lpips = LPIPS.from_files(lc.perceptual_vgg, lc.perceptual_lin).to(accelerator.device)
        self.expert = None
        if lc.mouth_weight > 0:
            if lc.mouth_expert is None:
                raise ValueError("loss.mouth_weight > 0 needs loss.mouth_expert (a MouthRegressor export folder)")
            self.expert = load_local(MouthRegressor, lc.mouth_expert, "mouth expert").eval().requires_grad_(False)
            self.expert.to(accelerator.device)
        self.dataset = VideoClipDataset(
            cfg.data.root,
            resolution=cfg.resolution(),
            num_frames=clip_frames,
            crop=cfg.data.crop,
            fps=cfg.data.fps,
            cache_in_memory=cfg.data.cache_in_memory,
            clips_per_epoch=max(1000, tc.batch_size * 100),
            motion_maps=lc.motion_weight > 0,
        )
        loader = DataLoader(
            self.dataset, batch_size=tc.batch_size, shuffle=True, drop_last=True, num_workers=cfg.data.num_workers
        )
        opt = torch.optim.AdamW(vae.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
        self.disc = self.opt_d = None
        if use_gan:  # the discriminator keeps its own rate (loss.disc_lr)
            opt_d = torch.optim.AdamW(disc.parameters(), lr=lc.disc_lr, betas=(0.5, 0.9))
            self.model, self.disc, self.optimizer, self.opt_d, self.loader = accelerator.prepare(
                vae, disc, opt, opt_d, loader
            )
        else:
            self.model, self.optimizer, self.loader = accelerator.prepare(vae, opt, loader)
        self.unwrapped = accelerator.unwrap_model(self.model)

    def summary(self, accelerator: Accelerator) -> str:
        n_params = sum(p.numel() for p in self.unwrapped.parameters())
        return (
            f"VAE {n_params / 1e6:.2f}M params, {vae_summary(self.unwrapped)}; {len(self.dataset.paths)} videos; "
            f"{accelerator.num_processes} process(es) on {accelerator.device}"
        )

    def batches(self, step: int) -> Iterator:
        return epochs(self.loader, step)

    def train_step(self, clip, step: int) -> StepOutput:
        """clip: (B, 3, clip_frames, R, R), with (B, 1, R, R) motion maps if the L1 is motion-weighted."""
        cfg, lc = self.cfg, self.cfg.loss
        gan_on = self.disc is not None and step >= lc.gan_start_step
        weight = None
        if lc.motion_weight > 0:
            clip, motion = clip
            weight = (1 + lc.motion_weight * motion.clamp(max=lc.motion_cap)).unsqueeze(2)  # (B, 1, 1, R, R)
        context = self.context_lengths[int(torch.randint(len(self.context_lengths), ()))]
        end = cfg.data.num_frames if context == 0 else context + cfg.data.num_frames - 1
        x = clip[:, :, context:end]  # the frames the loss sees
        recon, posterior = self.model(clip[:, :, :end], context_frames=context)
        err = (recon - x).abs()
        l1 = err.mean()
        rec = l1 if weight is None else (err * weight).mean() / weight.mean()
        kl = kl_per_element(posterior.mean, posterior.logvar)
        loss = rec + lc.kl_weight * kl
        values = {"loss": 0.0, "l1": l1.item(), "kl": kl.item()}
        if lc.temporal_weight > 0 and x.shape[2] > 1:
            temporal = (recon.diff(dim=2) - x.diff(dim=2)).abs().mean()
            loss = loss + lc.temporal_weight * temporal
            values["l1_temporal"] = temporal.item()
        if weight is not None:
            values["l1_motion"] = rec.item()
        frames_r = rearrange(recon, "b c t h w -> (b t) c h w")  # for the per-frame losses
        frames_x = rearrange(x, "b c t h w -> (b t) c h w")
        if self.lpips is not None:
            perc = self.lpips(frames_r, frames_x).mean()
            loss = loss + lc.perceptual_weight * perc
            values["lpips"] = perc.item()
        if self.expert is not None:
            mouth = mouth_expert_distance(self.expert, frames_r, frames_x)
            loss = loss + lc.mouth_weight * mouth
            values["mouth"] = mouth.item()
        if gan_on:
            g = hinge_g_loss(self.disc(frames_r))
            loss = loss + lc.gan_weight * g
            values["g_loss"] = g.item()
        values["loss"] = loss.item()

        def update_discriminator() -> dict[str, float]:
            d = hinge_d_loss(self.disc(frames_x), self.disc(frames_r.detach()))
            self.accelerator.backward(d)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
            return {"d_loss": d.item()}

        return StepOutput(
            loss, values, samples=x.shape[0] * x.shape[2], after_update=update_discriminator if gan_on else None
        )

    def evaluate(self, step: int) -> dict:
        tc = self.cfg.train
        videos = self.dataset.whole_videos()[: tc.eval_videos]
        return evaluate_psnr(self.unwrapped, videos, tc.eval_max_frames, self.accelerator.device)

    def format_eval(self, step: int, result: dict, final: bool) -> str:
        psnr, moving = result["psnr"], result["psnr_motion"]
        if final:
            n = len(result["psnr_per_video"])
            return f"final eval psnr {psnr:.2f} dB, moving pixels {moving:.2f} dB (EMA weights, {n} videos)"
        return f"step {step} | eval psnr {psnr:.2f} dB, moving pixels {moving:.2f} dB"

    def export(self, accelerator: Accelerator, folder: Path, step: int) -> None:
        if not accelerator.is_main_process:
            return
        tc, model = self.cfg.train, self.unwrapped
        model.eval()
        if self.cfg.keep_latent_scale:
            start = load_local(CausalVideoVAE, self.cfg.init, "init VAE").config
            shift, scale = start.shift_factor, start.scaling_factor
        else:
            videos = self.dataset.whole_videos()[: tc.eval_videos]
            shift, scale = measure_latent_scale(model, videos, tc.eval_max_frames, accelerator.device)
        model.register_to_config(shift_factor=shift, scaling_factor=scale)
        model.save_pretrained(folder)
        print(f"exported EMA weights to {folder} (latent shift {shift:.4f}, scale {scale:.4f})")


def vae_summary(vae: CausalVideoVAE) -> str:
    a = vae.arch
    return f"{a.spatial_compression}x spatial, {a.temporal_compression}x temporal, {a.latent_channels} latent channels"
