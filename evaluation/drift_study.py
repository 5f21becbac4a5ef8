"""Drift over long streams (rest/metrics/drift.py): identity similarity and sharpness per 10-second window of a
long held-out stream, for the full student and its ablations, as a JSON table and a PNG plot.

    python evaluation/drift_study.py --data runs/demo/synthtalk --student runs/demo/student/export \\
        [--no-asd-student runs/demo/student_tf/export] --seconds 120 --output runs/demo/drift

The stream's audio is the held-out clips' audio (unseen voices and identities) joined end to end; the portrait is
a held-out identity's frame (the most closed mouth, as in the held-out study).

Identity is scored two ways (rest/metrics/drift.py): on the faces dlib detects (`csim_dlib`, with `faces_found`,
the share of frames where it finds one), and at the portrait's face alignment on every frame
(`csim_dlib_at_portrait`). The latter reads between two references on real frames, in `references` of
drift.json and as dashed lines on its panel: the portrait identity's own video (`same_identity`: what a perfect
generator would score) and the other held-out identities' videos (`other_identities`: what a face that is not
the portrait's scores).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rest.diffusion.flow import flow_sigmas
from rest.exports import load_student, load_vae
from rest.metrics.drift import drift_curve, stream_frames
from rest.metrics.heldout import heldout_clips, identity_of
from rest.models.dit import DenoiserDiT

METRICS = {
    "csim_dlib_at_portrait": "identity similarity, at the portrait's alignment",
    "csim_dlib": "identity similarity, detected faces",
    "faces_found": "share of frames with a face found",
    "mean_abs_diff_portrait": "mean |frame - portrait| (0-255)",
    "sharpness": "sharpness (Laplacian variance)",
}


def identity_references(embedder, portrait: np.ndarray, same: np.ndarray, others: list[np.ndarray]) -> dict:
    """csim_dlib_at_portrait of real frames: the portrait identity's own video and the other identities' videos."""
    from rest.metrics.identity import identity_similarity

    def score(frames: np.ndarray) -> float:
        return identity_similarity(embedder, portrait, frames, stride=5, at_reference=True)["value"]

    references = {"same_identity": score(same)}
    if others:  # another held-out identity to compare with
        references["other_identities"] = float(np.mean([score(f) for f in others]))
    return references


def write_report(curves: dict, references: dict, out: Path) -> str:
    """drift.md (a table per metric and variant) and drift.png (one panel per metric); returns the table."""
    lines = ["| variant | " + " | ".join(f"{r['start_s']:.0f}s" for r in curves["full"]) + " |"]
    lines.append("|---" * (len(curves["full"]) + 1) + "|")
    for metric in METRICS:
        for name, rows in curves.items():
            cells = [f"{r[metric]:.3f}" if r.get(metric) is not None else "-" for r in rows]
            lines.append(f"| {name} {metric} | " + " | ".join(cells) + " |")
    refs = ", ".join(f"{name} {value:.3f}" for name, value in references.items())
    table = "\n".join(lines) + f"\n\ncsim_dlib_at_portrait of real frames: {refs}\n"
    (out / "drift.md").write_text(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 4))
    for ax, (metric, title) in zip(axes, METRICS.items(), strict=True):
        for name, rows in curves.items():
            values = [np.nan if r.get(metric) is None else r[metric] for r in rows]
            ax.plot([r["start_s"] for r in rows], values, marker="o", label=name)
        ax.set(title=title, xlabel="stream time (s)")
    for (name, value), color in zip(references.items(), ("black", "grey"), strict=False):
        axes[0].axhline(value, color=color, linestyle="--", label=f"real frames, {name.replace('_', ' ')}")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=100)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SynthTalk shard root")
    parser.add_argument("--student", required=True, help="export/ of train/student.py (with ASD)")
    parser.add_argument("--no-asd-student", default=None, help="export/ of a student trained by teacher forcing only")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per scored window")
    parser.add_argument("--steps", type=int, default=None, help="K (default: student.json's)")
    parser.add_argument("--portrait-clip", type=int, default=0, help="which held-out clip gives the portrait")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="folder for drift.json and drift.png")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    clips = heldout_clips(args.data, seconds=1e9, max_clips=64)
    portrait = clips[args.portrait_clip].portrait
    identity = identity_of(clips[args.portrait_clip])
    audio = np.concatenate([c.audio for c in clips])[: int(args.seconds * 16000)]

    from rest.metrics.identity import load_face_embedder

    embedder = load_face_embedder("dlib")
    others = [c.frames for c in clips if identity_of(c) != identity][:8]
    references = identity_references(embedder, portrait, clips[args.portrait_clip].frames, others)
    runs = [("full", args.student, "full"), ("no_sink", args.student, "no_sink")]
    runs += [("no_context", args.student, "no_context")]
    if args.no_asd_student:
        runs.append(("no_asd", args.no_asd_student, "full"))
    curves = {}
    for name, folder, variant in runs:
        denoiser, audio_encoder, info = load_student(folder)
        vae = load_vae(info.vae).eval()
        if variant == "no_context":  # the same weights, a window without context chunks
            weights = denoiser.state_dict()
            denoiser = DenoiserDiT.from_config(denoiser.config, context_chunks=0)
            denoiser.load_state_dict(weights)
        denoiser.eval()
        audio_encoder.eval()
        portrait_latents = vae.encode_portrait(portrait)
        sigmas = flow_sigmas(args.steps or info.steps, info.shift)
        blocks = stream_frames(
            denoiser, vae, audio_encoder, portrait_latents, audio, sigmas, variant, info.context_timestep, args.seed
        )
        curves[name] = drift_curve(blocks, portrait, embedder, window_seconds=args.window)
        last = curves[name][-1]
        print(
            f"{name}: {len(curves[name])} windows; last csim {last.get('csim_dlib')} sharpness {last['sharpness']:.1f}"
        )

    result = {"settings": vars(args), "references": references, "curves": curves}
    (out / "drift.json").write_text(json.dumps(result, indent=2) + "\n")
    print(write_report(curves, references, out))
    print(f"wrote {out / 'drift.json'}, {out / 'drift.md'}, {out / 'drift.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
