"""`rest evaluate`: FID, FVD, LSE-C/D, CSIM, PSNR/SSIM/LPIPS and SynthTalk lip sync of generated vs real videos."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rest.metrics.evaluate import METRICS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="score generated videos against ground truth (JSON + table)",
        description="Pair the videos of --pred and --gt by file name and compute the metrics with pinned conventions "
        "(see evaluation/README.md). Every metric names its extractor and weights hash in the output. Weights are "
        "never downloaded: they are read from weights/metrics/ or the paths given here.",
    )
    parser.add_argument("--pred", required=True, help="folder of generated videos")
    parser.add_argument("--gt", required=True, help="folder of ground-truth videos (same file names)")
    parser.add_argument("--ref", default=None, help="folder of reference portraits <name>.png|jpg (CSIM)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        choices=METRICS,
        metavar="METRIC",
        help=f"any of {', '.join(METRICS)} (default: all whose weights are present)",
    )
    parser.add_argument("--output", default="results.json", help="JSON file (default results.json)")
    weights = parser.add_argument_group("weights (defaults under weights/metrics/)")
    weights.add_argument("--fid-weights", default=None, help="inception-2015-12-05.pt or pt_inception-*.pth")
    weights.add_argument("--fvd-weights", default=None, help="i3d_torchscript.pt")
    weights.add_argument("--syncnet-weights", default=None, help="syncnet_v2.model or a train/syncnet.py export/")
    weights.add_argument("--lpips-vgg", default=None, help="torchvision VGG16 state dict (vgg16.pth)")
    weights.add_argument("--lpips-lin", default=None, help="lpips linear layers (vgg.pth), optional")
    weights.add_argument("--mouth-regressor", default=None, help="folder from train/mouth_regressor.py")
    weights.add_argument("--insightface-root", default="weights/insightface", help="holds models/buffalo_l/")
    parser.add_argument("--csim-backend", default="auto", choices=["auto", "arcface", "dlib"])
    parser.add_argument("--csim-stride", type=int, default=1, help="CSIM on every n-th frame (default 1)")
    parser.add_argument("--fid-stride", type=int, default=1, help="FID on every n-th frame (default 1)")
    parser.add_argument(
        "--sync-crop", default=None, choices=["face", "center"], help="SyncNet input crop (default: the model's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def json_safe(x):
    """Strict JSON: non-finite floats (PSNR of identical frames is inf) become the strings "inf", "-inf", "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def run(args: argparse.Namespace) -> int:
    from rest.metrics.evaluate import EvalOptions, evaluate, format_table

    weights = {
        "fid": args.fid_weights,
        "fvd": args.fvd_weights,
        "lse": args.syncnet_weights,
        "lpips": args.lpips_vgg,
        "lipsync_gt": args.mouth_regressor,
    }
    opts = EvalOptions(
        pred=Path(args.pred),
        gt=Path(args.gt),
        ref=Path(args.ref) if args.ref else None,
        metrics=args.metrics,
        weights={k: v for k, v in weights.items() if v},
        lpips_lin=args.lpips_lin,
        csim_backend=args.csim_backend,
        insightface_root=args.insightface_root,
        sync_crop=args.sync_crop,
        csim_stride=args.csim_stride,
        fid_stride=args.fid_stride,
        device=args.device,
        progress=not args.no_progress,
    )
    result = evaluate(opts)
    print(format_table(result))
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
    print(f"results: {path}")
    return 0
