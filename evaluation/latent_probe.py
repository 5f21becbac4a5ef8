"""Latent probe: how much mouth openness a VAE's latents carry, on held-out SynthTalk identities
(rest/metrics/latent_probe.py). Run it on a VAE before training a teacher on it.

    python evaluation/latent_probe.py --data runs/demo/synthtalk --vae runs/demo/vae/export \\
        --output runs/demo/latent_probe.json
"""

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from rest.data.shards import ShardReader
from rest.errors import RestError
from rest.media import frames_to_tensor
from rest.metrics.latent_probe import latent_label_pairs, ridge_probe
from rest.models.loading import load_local
from rest.models.mouth import LABEL_KEY
from rest.models.vae import CausalVideoVAE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SynthTalk shard root")
    parser.add_argument("--vae", required=True, help="VAE export folder (save_pretrained layout)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--train-clips", type=int, default=40)
    parser.add_argument("--test-split", default="test_id")
    parser.add_argument("--test-clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.4, help="encoded from each clip's start")
    parser.add_argument("--ridge", type=float, default=100.0)
    parser.add_argument("--output", default=None, help="JSON file")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    vae = load_local(CausalVideoVAE, args.vae, "VAE").eval()
    reader = ShardReader(args.data)
    t = vae.temporal_compression
    frames_per_clip = 1 + t * int(args.seconds * reader.fps // t)

    def clips(split: str, limit: int):
        records = [r for r in reader.records if r.split == split][:limit]
        if not records:
            raise RestError(f"{args.data} has no clips in split {split!r}")
        for r in tqdm(records, desc=f"encoding {split}", unit="clip"):
            labels = reader.meta(r.clip_id).get(LABEL_KEY)
            if labels is None:
                raise RestError(f"clip {r.clip_id} has no {LABEL_KEY!r} labels: the probe needs SynthTalk clips")
            frames = reader.frames(r.clip_id, 0, min(frames_per_clip, r.num_frames))
            yield frames, labels[: len(frames)]

    def encode(frames):
        return vae.encode(frames_to_tensor(frames)[None]).latent_dist.mean[0]

    x_train, y_train = latent_label_pairs(clips(args.train_split, args.train_clips), encode, t)
    x_test, y_test = latent_label_pairs(clips(args.test_split, args.test_clips), encode, t)
    result = {"vae": args.vae, "label": LABEL_KEY, **ridge_probe(x_train, y_train, x_test, y_test, args.ridge)}
    print(
        f"held-out ({args.test_split}) correlation of {LABEL_KEY} read linearly from the latents: "
        f"{result['corr']:.3f} (train {result['train_corr']:.3f}; {result['train_samples']} / "
        f"{result['test_samples']} latent frames, {result['dims']} dims)"
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
