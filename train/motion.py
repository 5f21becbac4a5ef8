"""Train the face-motion model: the bidirectional teacher, then the streaming student distilled from it.

    python train/motion.py --config configs/motion/teacher.yaml [--resume latest] [--set train.max_steps=500]
    python train/motion.py --config configs/motion/student.yaml --set teacher=runs/motion/teacher/export

The data come from `rest synth --motion ROOT` (SynthTalk labels and the phonetic channel, no frames). Runs the same
under `accelerate launch`. See rest/training/motion.py for what is trained and written.
"""

import argparse

from rest.config import load_config, parse_overrides
from rest.training.motion import MotionExperiment, train_motion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (configs/motion/*.yaml)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    args = parser.parse_args()
    train_motion(load_config(MotionExperiment, args.config, parse_overrides(args.set)), resume=args.resume)


if __name__ == "__main__":
    main()
