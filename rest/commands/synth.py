"""`rest synth`: generate SynthTalk, the procedural talking-face dataset, as training shards (rest/data/shards.py)."""

from __future__ import annotations

import argparse
import time

CONTACT_SHEET_MAX = 50  # identities shown on the contact sheet (the first ones)


def register(sub: argparse._SubParsersAction) -> None:
    from rest.data.synth.generate import LANGUAGES, default_workers
    from rest.data.synth.speech import ENGINES

    parser = sub.add_parser(
        "synth",
        help="generate the procedural talking-face dataset (SynthTalk) as training shards",
        description="Render procedural faces that speak sentences in several languages (espeak-ng, and festival's and "
        "flite's voices built from real speakers' recordings), with per-frame labels (mouth opening and width, "
        "viseme, speech, head pose, blink, gaze, emotion and its intensity), into the shard root --output. "
        "Identities i with i % 10 == 9 form the test_id split; held-out voices form test_voice. Rerunning with "
        "the same options resumes; the same --seed gives the same clips. Needs espeak-ng, festival and flite "
        "(apt-get install espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-italp16k "
        "festvox-itapc16k flite), or --engines with those installed.",
    )
    parser.add_argument("--output", required=True, help="shard root (created, or resumed)")
    parser.add_argument("--identities", type=int, default=20, help="number of identities (0 .. N-1)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of video per identity")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--preset", default=None, help="take the resolution of this preset: tiny (128) | base (512)")
    size.add_argument("--resolution", type=int, default=None, help="frame size in pixels (default 128)")
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="processes (default: CPU count; 0 or 1: this process)"
    )
    parser.add_argument(
        "--languages",
        default=",".join(LANGUAGES),
        help=f"comma-separated espeak-ng languages (default: {','.join(LANGUAGES)})",
    )
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated speech synthesizers to draw voices from (default: {','.join(ENGINES)})",
    )
    parser.add_argument(
        "--clip-seconds", type=float, nargs=2, default=(10.0, 20.0), metavar=("MIN", "MAX"), help="target clip length"
    )
    parser.add_argument(
        "--contact-sheet",
        default=None,
        metavar="PNG",
        help=f"also write a grid of the first (up to {CONTACT_SHEET_MAX}) identities",
    )
    parser.add_argument("--strip", default=None, metavar="PNG", help="also write identity 0 saying one sentence")
    parser.add_argument(
        "--emotions",
        default=None,
        metavar="PNG",
        help="also write identities 0-2 in each emotion (neutral .. surprised)",
    )
    parser.add_argument(
        "--motion",
        action="store_true",
        help="write a motion set instead of shards: per clip the labels as rig frames and the phonetic channel's "
        "features, no frames (train/motion.py's data; needs pocketsphinx: pip install -e '.[metrics]')",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rest.config import get_preset
    from rest.data.synth.generate import SynthConfig, generate_dataset
    from rest.data.synth.preview import contact_sheet, emotion_sheet, speech_strip
    from rest.errors import RestError

    if args.identities < 0 or args.seconds <= 0:
        raise RestError("--identities must be >= 0 and --seconds > 0")
    resolution = get_preset(args.preset).resolution if args.preset else (args.resolution or 128)
    if resolution < 32 or resolution % 2:
        raise RestError(f"--resolution must be even and at least 32, got {resolution}")
    languages = tuple(lang.strip() for lang in args.languages.split(",") if lang.strip())
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    lo, hi = args.clip_seconds
    if not 0 < lo <= hi:
        raise RestError(f"--clip-seconds needs 0 < MIN <= MAX, got {lo} {hi}")
    cfg = SynthConfig(
        resolution=resolution,
        seconds=args.seconds,
        clip_seconds=(lo, hi),
        languages=languages,
        engines=engines,
        seed=args.seed,
    )
    if args.motion:
        from rest.data.synth.motion_set import generate_motion_set

        start = time.perf_counter()
        clips, seconds = generate_motion_set(
            args.output, args.identities, cfg, workers=args.workers, progress=not args.no_progress
        )
        wall = time.perf_counter() - start
        print(f"motion set: {clips} clips, {seconds:.0f} s of speech in {wall:.1f} s wall into {args.output}")
        return 0
    summary = generate_dataset(args.output, args.identities, cfg, workers=args.workers, progress=not args.no_progress)
    print(summary.line())
    if args.contact_sheet:
        start = time.perf_counter()
        path = contact_sheet(args.contact_sheet, min(max(args.identities, 1), CONTACT_SHEET_MAX), cfg)
        print(f"contact sheet: {path} ({time.perf_counter() - start:.1f} s)")
    if args.strip:
        path = speech_strip(args.strip, cfg, identity=0, language=languages[0])
        print(f"strip: {path}")
    if args.emotions:
        print(f"emotions: {emotion_sheet(args.emotions, cfg)}")
    return 0
