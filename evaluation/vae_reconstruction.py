"""Reconstruction quality (PSNR, SSIM) of an exported VAE on a folder of videos, as JSON.

python evaluation/vae_reconstruction.py --vae runs/vae_tiny/export --videos PATH [--stream] [--output r.json]
"""

import argparse

from rest.bench.common import write_result
from rest.data.videos import list_videos
from rest.media import center_crop_resize, read_video
from rest.metrics.reconstruction import reconstruction_metrics
from rest.models.loading import load_local
from rest.models.vae import CausalVideoVAE, reconstruct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", required=True, help="exported VAE folder (save_pretrained layout)")
    parser.add_argument("--videos", required=True, help="a video file or a folder of videos")
    parser.add_argument("--resolution", type=int, default=128, help="square center crop size")
    parser.add_argument("--stream", action="store_true", help="code chunk by chunk (chunks of t frames)")
    parser.add_argument("--output", default=None, help="JSON file")
    args = parser.parse_args()
    vae = load_local(CausalVideoVAE, args.vae).eval()
    chunk = vae.temporal_compression if args.stream else None
    per_video = {}
    for path in list_videos(args.videos):
        frames = center_crop_resize(read_video(path, fps=25, with_audio=False).frames, args.resolution)
        recon = reconstruct(vae, frames, chunk_frames=chunk)
        per_video[path.name] = reconstruction_metrics(frames[: len(recon)], recon)
    mean = {k: sum(v[k] for v in per_video.values()) / len(per_video) for k in ("psnr", "ssim")}
    write_result({"vae": args.vae, "streaming": args.stream, "mean": mean, "videos": per_video}, args.output)


if __name__ == "__main__":
    main()
