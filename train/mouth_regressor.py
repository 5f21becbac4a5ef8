"""Train the mouth-openness regressor used by the `lipsync_gt` metric, on SynthTalk shards (`mouth_open` labels).

    python train/mouth_regressor.py --data data/synthtalk --output weights/metrics/mouth_regressor [--steps 1000]
    python train/mouth_regressor.py --data data/synthtalk --output runs/mouth_vae --vae runs/vae/export  # VAE domain

See rest/models/mouth.py for the model and rest/metrics/lipsync_gt.py for the metric.
"""

import argparse

from rest.training.mouth_regressor import train_mouth_regressor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SynthTalk shard root")
    parser.add_argument("--output", required=True, help="export folder (save_pretrained layout)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--split", default="train", help="clips trained on ('all' for every split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae", default=None, help="train on this VAE's reconstructions of the clips")
    parser.add_argument("--max-clip-frames", type=int, default=None, help="first n frames of each clip")
    args = parser.parse_args()
    vae = None
    if args.vae is not None:
        from rest.models.loading import load_local
        from rest.models.vae import CausalVideoVAE

        vae = load_local(CausalVideoVAE, args.vae, "VAE").eval()
    train_mouth_regressor(
        args.data,
        args.steps,
        output=args.output,
        batch_size=args.batch_size,
        lr=args.lr,
        split=None if args.split == "all" else args.split,
        seed=args.seed,
        vae=vae,
        max_clip_frames=args.max_clip_frames,
    )


if __name__ == "__main__":
    main()
