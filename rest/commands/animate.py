"""`rest animate`: speech -> face motion for 3D avatars (ARKit blendshapes and head rotation per frame).

The motion model streams the file as a live stream would (rest/pipelines/motion.py) and the frames are written as
JSON (`rest-motion`: rig parameters and ARKit values per frame) or as LiveLink Face's CSV (by the output's suffix).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_MOTION = "weights/rest-motion"
FORMATS = (".json", ".csv")


def default_motion() -> Path:
    """The bundled motion model: weights/rest-motion of the source tree, else of the working directory."""
    bundled = Path(__file__).resolve().parents[2] / DEFAULT_MOTION
    return bundled if bundled.is_dir() else Path(DEFAULT_MOTION)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "animate",
        help="speech -> face motion (ARKit blendshapes, head rotation) as JSON or LiveLink CSV",
        description="Generate per-frame face motion for --audio with the streaming motion model: 52 ARKit "
        "blendshapes (the subset SynthTalk can express is animated: jaw, lips, smile/frown, blinks, eye look, "
        "squint/wide, brows) and head/eye rotations in radians, at 25 fps. --output X.json writes the rig "
        "parameters and ARKit values per frame; X.csv writes LiveLink Face's CSV layout (Timecode, "
        "BlendShapeCount, 61 columns).",
    )
    parser.add_argument("--audio", required=True, help="speech: any audio file or a video's audio track")
    parser.add_argument("--output", required=True, help="motion file to write: .json or .csv")
    parser.add_argument("--emotion", default=None, help="neutral | happy | sad | angry | surprised (default: none)")
    parser.add_argument(
        "--gaze",
        default=None,
        metavar="X,Y",
        help="hold the eyes on a target: x, y in -1 .. 1 (x to the image's right, y down; default: the model's gaze)",
    )
    parser.add_argument(
        "--no-blinks", action="store_true", help="no blink process: the eyelids only as the model moves them"
    )
    parser.add_argument(
        "--saccades",
        action="store_true",
        help="eyes from a gaze process, fixations and saccades (costs some lip-sync)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the blinks (and saccades; and of the idle motion where motion.json's noise_scale > 0)",
    )
    parser.add_argument("--weights", default=None, help=f"motion model folder (default: the bundled {DEFAULT_MOTION})")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer audio (default %(default)s)")
    parser.set_defaults(func=run)


def parse_gaze(text: str | None) -> tuple[float, float] | None:
    """--gaze "X,Y" -> (x, y); None -> None."""
    from rest.errors import RestError

    if text is None:
        return None
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise RestError(f"--gaze {text}: two numbers X,Y in -1 .. 1, e.g. --gaze 0.5,-0.2") from None
    return x, y


def run(args: argparse.Namespace) -> int:
    from rest.errors import RestError

    output = Path(args.output)
    if output.suffix.lower() not in FORMATS:
        raise RestError(f"--output {output}: the format comes from the suffix, use .json or .csv")
    if output.is_dir() or not output.parent.is_dir():
        raise RestError(f"--output {output}: not a writable file path (is its folder there?)")
    if not Path(args.audio).is_file():
        raise RestError(f"--audio {args.audio}: no such file")
    if not 0 <= args.seed < 2**31:
        raise RestError(f"--seed {args.seed}: must be an integer from 0 to {2**31 - 1}")
    gaze = parse_gaze(args.gaze)

    import torch

    from rest.media.decode import read_audio
    from rest.pipelines.motion import MotionPipeline, write_livelink_csv, write_motion_json

    # A motion chunk is a few 128-wide tokens: too small to split across threads, and on a busy machine the
    # threads' synchronisation costs far more than the work (8 s of speech: 4 s on one thread, minutes on two
    # beside another job).
    torch.set_num_threads(1)

    weights = Path(args.weights) if args.weights else default_motion()
    pipe = MotionPipeline.from_pretrained(weights)
    pipe.emotion_label(args.emotion)  # an unknown name fails before the audio is read
    pipe.check_gaze(gaze)  # so does a target out of range
    samples = read_audio(args.audio, pipe.sample_rate)
    seconds = len(samples) / pipe.sample_rate
    if seconds > args.max_seconds:
        raise RestError(f"--audio {args.audio}: {seconds:.0f} s is longer than --max-seconds {args.max_seconds:g}")
    start = time.perf_counter()
    frames = pipe.animate(
        samples,
        emotion=args.emotion,
        seed=args.seed,
        gaze=gaze,
        blinks=not args.no_blinks,
        saccades=args.saccades,
    )
    wall = time.perf_counter() - start
    if output.suffix.lower() == ".csv":
        write_livelink_csv(output, frames, pipe.fps)
    else:
        write_motion_json(output, frames, pipe.fps, args.emotion)
    print(
        f"{output}: {len(frames)} frames ({seconds:.2f} s of audio) in {wall:.2f} s "
        f"(RTF {wall / max(seconds, 1e-9):.3f}), emotion {args.emotion or 'none'}"
    )
    return 0
