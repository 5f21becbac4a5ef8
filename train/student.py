"""Distil the streaming student from the teacher with Asynchronous Streaming Distillation (ASD).

    accelerate launch train/student.py --config configs/student_tiny.yaml [--resume latest] [--set train.max_steps=500]
    accelerate launch --config_file configs/accelerate/ddp.yaml train/student.py --config configs/student_base.yaml

Works the same with plain `python train/student.py ...` on CPU. See rest/training/student.py for the schedule, the
losses and what is written.
"""

import argparse

from rest.config import load_config, parse_overrides
from rest.training.student import StudentExperiment, train_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/student_*.yaml)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    args = parser.parse_args()
    cfg = load_config(StudentExperiment, args.config, parse_overrides(args.set))
    train_student(cfg, resume=args.resume)


if __name__ == "__main__":
    main()
