"""Reconstruct a video through an exported VAE and write original | reconstruction side by side as MP4.

python infer/vae_reconstruct.py --vae runs/vae_tiny/export --input clip.mp4 --output side_by_side.mp4
"""

import argparse

import numpy as np

from rest.media import center_crop_resize, read_video, write_video
from rest.metrics.reconstruction import reconstruction_metrics
from rest.models.loading import load_local
from rest.models.vae import CausalVideoVAE, reconstruct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", required=True, help="exported VAE folder (save_pretrained layout)")
    parser.add_argument("--input", required=True, help="a video file")
    parser.add_argument("--output", required=True, help="MP4 to write")
    parser.add_argument("--resolution", type=int, default=128, help="square center crop size")
    args = parser.parse_args()
    vae = load_local(CausalVideoVAE, args.vae).eval()
    video = read_video(args.input, fps=25)
    frames = center_crop_resize(video.frames, args.resolution)
    recon = reconstruct(vae, frames, chunk_frames=vae.temporal_compression)
    side = np.concatenate([frames[: len(recon)], recon], axis=2)  # (F, R, 2R, 3)
    audio = video.audio.samples if video.audio is not None else None
    write_video(args.output, side, fps=25, audio=audio)
    scores = reconstruction_metrics(frames[: len(recon)], recon)
    print(f"wrote {args.output}: {len(recon)} frames, PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}")


if __name__ == "__main__":
    main()
