"""Train a SyncNet (LSE-C / LSE-D extractor) on a shard root, e.g. SynthTalk.

    python train/syncnet.py --data data/synthtalk --output runs/syncnet_small [--steps 3000] [--resume latest]
    python train/syncnet.py --data data/synthtalk --output runs/syncnet_small --set margin=12 model.embed_dim=512

The export (`<output>/export/`, config.json + safetensors) is what `rest evaluate --syncnet-weights` loads. See
rest/training/syncnet.py for the objective and the data it draws.
"""

import argparse

from rest.config import from_dict, merge, parse_overrides
from rest.metrics.syncnet import evaluate_sync
from rest.training.syncnet import SyncNetTrainConfig, train_syncnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="shard root")
    parser.add_argument("--output", required=True, help="run folder")
    parser.add_argument("--preset", default="small", help="small (CPU, 96 px centre crops) | syncnet_v2 (224 px)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    args = parser.parse_args()
    base = {"data": args.data, "output": args.output, "preset": args.preset, "steps": args.steps}
    cfg = from_dict(SyncNetTrainConfig, merge(base, parse_overrides(args.set)), "syncnet config")
    train_syncnet(cfg, resume=args.resume, evaluate=evaluate_sync)


if __name__ == "__main__":
    main()
