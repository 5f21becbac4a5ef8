"""Train the bidirectional teacher (denoiser DiT + audio encoder) with rectified flow.

    accelerate launch train/teacher.py --config configs/teacher_tiny.yaml [--resume latest] [--set train.max_steps=500]
    accelerate launch --config_file configs/accelerate/ddp.yaml train/teacher.py --config configs/teacher_base.yaml

Works the same with plain `python train/teacher.py ...` on CPU. See rest/training/teacher.py for what is trained
and written.
"""

import argparse

from rest.config import load_config, parse_overrides
from rest.training.teacher import TeacherExperiment, train_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/teacher_*.yaml)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    args = parser.parse_args()
    cfg = load_config(TeacherExperiment, args.config, parse_overrides(args.set))
    train_teacher(cfg, resume=args.resume)


if __name__ == "__main__":
    main()
