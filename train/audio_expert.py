"""Pretrain the audio encoder to hear the mouth: per-frame mouth openness from the audio, on SynthTalk shards.

    python train/audio_expert.py --data runs/demo/synthtalk --output runs/demo/audio_expert [--steps 1500]

The teacher then starts from it: `audio_encoder_init: runs/demo/audio_expert` in its config. See
rest/training/audio_expert.py.
"""

import argparse

from rest.data.augment import AugmentConfig
from rest.training.audio_expert import train_audio_expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SynthTalk shard root (clips with mouth_open labels)")
    parser.add_argument("--output", required=True, help="export folder of the audio encoder (save_pretrained)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--window-frames", type=int, default=64, help="video frames of audio per training window")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--feature-teacher",
        default=None,
        help="an AudioEncoder folder (a trained generator's encoder): start from it and keep its feature space",
    )
    parser.add_argument("--feature-weight", type=float, default=1.0, help="weight of the feature loss")
    parser.add_argument(
        "--no-augment",
        action="store_true",
        help="train on the clips' audio as it is (default: rest.data.augment's chain, for real speech)",
    )
    args = parser.parse_args()
    train_audio_expert(
        args.data,
        args.output,
        steps=args.steps,
        batch_size=args.batch_size,
        window_frames=args.window_frames,
        lr=args.lr,
        seed=args.seed,
        augment=None if args.no_augment else AugmentConfig(),
        feature_teacher=args.feature_teacher,
        feature_weight=args.feature_weight,
    )


if __name__ == "__main__":
    main()
