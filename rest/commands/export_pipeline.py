"""`rest export-pipeline`: a train/student.py export (+ its VAE) -> a pipeline folder for `rest generate` / `serve`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export-pipeline",
        help="assemble a pipeline folder (vae/, audio_encoder/, denoiser/, pipeline.json) from a student export",
        description="Copy the distilled student's denoiser and audio encoder and the VAE that student.json names "
        "(or --vae) into one folder with pipeline.json (the streaming settings), the folder `rest generate "
        "--weights` and `TalkingHeadPipeline.from_pretrained` load. An existing README.md (model card) is kept.",
    )
    parser.add_argument("--student", required=True, help="export/ folder of a train/student.py run")
    parser.add_argument("--output", required=True, help="pipeline folder to write (replaced if it exists)")
    parser.add_argument("--vae", default=None, help="VAE folder (default: the one student.json names)")
    parser.add_argument("--preset", default="tiny", help="preset the models were trained for (tiny | base)")
    parser.add_argument(
        "--audio-encoder",
        default=None,
        help="an audio encoder folder to ship instead of the student's own (train/audio_expert.py --feature-teacher)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rest.pipelines import export_pipeline

    folder = export_pipeline(
        args.student, args.output, vae=args.vae, preset=args.preset, audio_encoder=args.audio_encoder
    )
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"wrote pipeline folder {folder} ({size / 2**20:.1f} MiB)")
    return 0
