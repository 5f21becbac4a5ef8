"""Flow matching (rectified flow) for the denoiser: training objective, schedules, Euler sampler with CFG."""

from rest.diffusion.flow import (
    FlowMatchingConfig,
    Guidance,
    RectifiedFlowLoss,
    cfg_combine,
    euler_step,
    flow_sigmas,
    guided_velocity,
    resolution_shift,
    sample_euler,
    shift_timesteps,
)
from rest.diffusion.sample import sample

__all__ = [
    "FlowMatchingConfig",
    "Guidance",
    "RectifiedFlowLoss",
    "cfg_combine",
    "euler_step",
    "flow_sigmas",
    "guided_velocity",
    "resolution_shift",
    "sample",
    "sample_euler",
    "shift_timesteps",
]
