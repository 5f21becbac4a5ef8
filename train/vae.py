"""Train the causal video VAE.

    accelerate launch train/vae.py --config configs/vae_tiny.yaml [--resume latest] [--set train.max_steps=500]

Works the same with plain `python train/vae.py ...` on CPU. See rest/training/vae.py for the losses and outputs.
"""

import argparse

from rest.config import load_config, parse_overrides
from rest.training.vae import VAEExperiment, train_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/vae_*.yaml)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    args = parser.parse_args()
    cfg = load_config(VAEExperiment, args.config, parse_overrides(args.set))
    train_vae(cfg, resume=args.resume)


if __name__ == "__main__":
    main()
