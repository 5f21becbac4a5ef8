"""Plot a training run's curves from its metrics.jsonl: loss per status line and the eval metric per step.

python evaluation/plot_training.py runs/vae_tiny/metrics.jsonl --eval-key psnr --output curve.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rest.training.common import MetricsLog  # noqa: E402


def _latest_per_step(rows) -> list[dict]:
    """One row per step, sorted; a resumed run re-logs steps after its checkpoint, and the newest line wins."""
    by_step = {}
    for r in rows:
        by_step[r["step"]] = r
    return [by_step[k] for k in sorted(by_step)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.jsonl of a run")
    parser.add_argument("--loss-key", default="loss")
    parser.add_argument("--eval-key", default="psnr")
    parser.add_argument("--output", required=True, help="PNG file")
    args = parser.parse_args()
    rows = MetricsLog.read(args.metrics)
    train = _latest_per_step(r for r in rows if r["kind"] == "train")
    evals = _latest_per_step(r for r in rows if r["kind"] == "eval" and args.eval_key in r)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot([r["step"] for r in train], [r[args.loss_key] for r in train])
    axes[0].set(xlabel="step", ylabel=args.loss_key, yscale="log", title="training loss")
    axes[1].plot([r["step"] for r in evals], [r[args.eval_key] for r in evals], marker="o")
    axes[1].set(xlabel="step", ylabel=args.eval_key, title=f"eval {args.eval_key} (EMA weights)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
