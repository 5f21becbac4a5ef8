"""`rest preprocess`: a folder of raw talking-face videos -> a shard root for training (rest/data/shards.py)."""

from __future__ import annotations

import argparse
import os
import time


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "preprocess",
        help="face-crop, resample and store a folder of videos as training shards",
        description="Decode every video under --input at 25 fps with 16 kHz mono audio, crop a temporally "
        "smoothed square around the face, resize to the preset's resolution and write clips into --output. "
        "Bad inputs are skipped with their reason in OUTPUT/report.jsonl; rerunning resumes. Without --input, "
        "--vae caches the latents of the clips already in --output (e.g. a SynthTalk root), and --phonetic their "
        "phonetic features (the audio path of models trained with audio_path: phonetic).",
    )
    parser.add_argument("--input", default=None, help="folder of videos (.mp4 .mov .mkv .avi .webm, recursive)")
    parser.add_argument("--output", required=True, help="shard root (created, or resumed)")
    parser.add_argument("--preset", default="tiny", help="tiny (128 px) | base (512 px)")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (0: in this process)"
    )
    parser.add_argument(
        "--vae", default=None, metavar="FOLDER", help="also cache latents of this CausalVideoVAE (teacher training)"
    )
    parser.add_argument(
        "--phonetic",
        action="store_true",
        help="also cache each clip's phonetic features (pocketsphinx phones -> visemes, rest/data/phonetic.py)",
    )
    parser.add_argument(
        "--detector", default="auto", choices=["auto", "scrfd", "dlib-hog"], help="face detector (rest/data/face.py)"
    )
    parser.add_argument("--detect-every", type=int, default=5, help="run the face detector on every n-th frame")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="skip shorter inputs")
    parser.add_argument("--max-seconds", type=float, default=None, help="keep only the first seconds of each input")
    parser.add_argument("--crf", type=int, default=12, help="H.264 quality of the stored frames (lower: better)")
    parser.add_argument("--split", default="train", help="split name recorded for these clips")
    parser.add_argument("--retry-skipped", action="store_true", help="retry inputs an earlier run skipped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from rest.config import get_preset
    from rest.data.preprocess import CropOptions, PreprocessOptions, cache_latents, cache_phonetic, preprocess_folder
    from rest.errors import RestError

    if args.input is None and args.vae is None and not args.phonetic:
        raise RestError(
            "give --input VIDEOS to preprocess, or --vae FOLDER / --phonetic to cache the latents / phonetic features "
            "of --output's clips"
        )
    if args.input is None and args.vae is not None:
        start = time.perf_counter()
        encoded, kept = cache_latents(args.output, args.vae, progress=not args.no_progress)
        print(f"latents: {encoded} clips encoded, {kept} already cached; {time.perf_counter() - start:.1f} s")
    if args.input is not None:
        preset = get_preset(args.preset)
        options = PreprocessOptions(
            resolution=preset.resolution,
            fps=preset.fps,
            min_seconds=args.min_seconds,
            max_seconds=args.max_seconds,
            crop=CropOptions(detect_every=args.detect_every),
            crf=args.crf,
            split=args.split,
            detector=args.detector,
        )
        summary = preprocess_folder(
            args.input,
            args.output,
            options,
            workers=args.workers,
            vae_folder=args.vae,
            retry_skipped=args.retry_skipped,
            progress=not args.no_progress,
        )
        for source, reason in sorted(summary.reasons.items()):
            print(f"skipped {source}: {reason}")
        print(summary.line())
    if args.phonetic:
        start = time.perf_counter()
        decoded, kept = cache_phonetic(args.output, args.workers, progress=not args.no_progress)
        print(f"phonetic: {decoded} clips decoded, {kept} already cached; {time.perf_counter() - start:.1f} s")
    return 0
