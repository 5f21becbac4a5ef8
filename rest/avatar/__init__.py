"""Your own face: a person-specific pipeline fine-tuned from one video of one speaker (`rest avatar train`).

Every shipped weight was trained on procedural faces (SynthTalk), so a real photograph comes out as a smudge. A
few minutes of one person's footage are enough to animate that person from new speech (the person-specific talking
heads: AD-NeRF, ER-NeRF, GeneFace, SyncTalk, TalkingGaussian). The recipe (`recipe.py`) fine-tunes a base pipeline
(`weights/rest-tiny`) on the video:

    prepare   decode at 25 fps and 16 kHz, face-track and crop (rest.data.preprocess), hold out the last part of
              the video for evaluation, cut the rest into segments (the training clips), pick the portrait
    vae       the base VAE fine-tuned on the person's frames, its latent shift and scale kept (the generator
              reads its latents where it read the base VAE's)
    student   the base streaming student (denoiser and audio encoder) fine-tuned on the person's latents and
              speech with the ground truth as the target (rest/training/student.py with no teacher), by teacher
              forcing: the flow loss at the student's own level after the re-noised true past, as its cache holds
              it; `rollout_loss` adds the target seen from the student's own rollout (the past it generated)
    export    a pipeline folder like any other (pipeline.json, vae/, audio_encoder/, denoiser/), plus the
              portrait (portrait.png), avatar.json (what it was trained on, stage times) and the report

and `report.py` scores it on the held-out part, driven by its own audio and by shuffled audio, against the base
pipeline on the same frames: PSNR, SSIM, M-LMD, F-LMD, the landmark mouth correlation, identity similarity, and a
strip of real and generated frames.

Nothing trained on a user's video is shipped: the avatar folder stays on the user's machine.
"""

from rest.avatar.recipe import AvatarOptions, train_avatar
from rest.avatar.report import evaluate_avatar

__all__ = ["AvatarOptions", "evaluate_avatar", "train_avatar"]
