"""`rest generate`: portrait + speech -> MP4 (H.264 at 25 fps with the speech muxed), one file or a batch."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_WEIGHTS = "weights/rest-tiny"
DEFAULT_MAX_SECONDS = 600.0


def default_weights() -> Path:
    """The bundled pipeline: weights/rest-tiny of the source tree, else of the working directory."""
    bundled = Path(__file__).resolve().parents[2] / DEFAULT_WEIGHTS
    return bundled if bundled.is_dir() else Path(DEFAULT_WEIGHTS)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "generate",
        help="portrait + speech -> talking-head MP4",
        description="Detect and crop the face of --portrait, generate it speaking --audio with the streaming "
        "student (the live path run to the end), paste the result back into the portrait with a feathered blend "
        "(or keep the crop: --crop-only) and write an H.264 MP4 at 25 fps with the audio muxed. The video lasts "
        "as long as the audio (within one frame). Batch: --jobs FILE.jsonl, one JSON object per line with "
        "portrait, audio, output and optionally seed, steps, emotion, crop_only.",
    )
    parser.add_argument("--portrait", help="image file (any size; the face is detected)")
    parser.add_argument("--audio", help="speech: any audio file or a video's audio track")
    parser.add_argument("--output", help="MP4 to write")
    parser.add_argument("--jobs", default=None, metavar="JSONL", help="batch mode: one job per line")
    parser.add_argument("--weights", default=None, help=f"pipeline folder (default: the bundled {DEFAULT_WEIGHTS})")
    parser.add_argument("--preset", default=None, help="check that the weights are of this preset (tiny | base)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--emotion", type=int, default=None, help="emotion / style label (models trained with them)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--crop-only", action="store_true", help="write the generated face crop, not the portrait")
    parser.add_argument("--portrait-is-crop", action="store_true", help="the portrait already is a face crop")
    parser.add_argument(
        "--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="refuse longer audio (default %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rest.errors import RestError

    if args.jobs is not None:
        if args.portrait or args.audio or args.output:
            raise RestError("give either --jobs or --portrait/--audio/--output, not both")
        jobs = read_jobs(args.jobs)
    else:
        missing = [f"--{k}" for k in ("portrait", "audio", "output") if getattr(args, k) is None]
        if missing:
            raise RestError(f"missing {', '.join(missing)} (or give --jobs FILE.jsonl)")
        jobs = [{"portrait": args.portrait, "audio": args.audio, "output": args.output}]
    pipe = load_pipeline(args)
    failures = 0
    for i, job in enumerate(jobs):
        try:
            generate_one(pipe, job, args)
        except RestError as err:
            if len(jobs) == 1:
                raise
            failures += 1
            print(f"error: job {i + 1} ({job.get('output')}): {err}")
    if failures:
        print(f"{failures} of {len(jobs)} jobs failed")
        return 1
    return 0


def read_jobs(path: str) -> list[dict]:
    from rest.errors import RestError

    file = Path(path)
    if not file.is_file():
        raise RestError(f"{path}: file not found")
    jobs = []
    allowed = {"portrait", "audio", "output", "seed", "steps", "emotion", "crop_only", "portrait_is_crop"}
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
        except json.JSONDecodeError as err:
            raise RestError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(job, dict) or not {"portrait", "audio", "output"} <= set(job):
            raise RestError(f"{path}:{n}: a job is an object with portrait, audio and output")
        unknown = sorted(set(job) - allowed)
        if unknown:
            raise RestError(f"{path}:{n}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
        jobs.append(job)
    if not jobs:
        raise RestError(f"{path}: no jobs")
    return jobs


def load_pipeline(args: argparse.Namespace):
    from rest.config import get_preset
    from rest.errors import RestError
    from rest.pipelines import TalkingHeadPipeline

    if args.preset is not None:
        get_preset(args.preset)  # unknown preset -> ConfigError listing the known ones
    weights = Path(args.weights) if args.weights else default_weights()
    pipe = TalkingHeadPipeline.from_pretrained(weights, device=args.device)
    if args.preset is not None and pipe.config.preset != args.preset:
        raise RestError(f"{weights} holds a {pipe.config.preset!r} model, not {args.preset!r}")
    return pipe


def generate_one(pipe, job: dict, args: argparse.Namespace) -> Path:
    """Check every input before generating; write the MP4 atomically; print one summary line."""
    from tqdm import tqdm

    from rest.errors import RestError
    from rest.media import VideoWriter, read_audio, read_image
    from rest.pipelines import Paster

    output = Path(job["output"])
    if output.suffix.lower() not in (".mp4", ".mov"):
        raise RestError(f"{output}: the output must be an .mp4 or .mov file")
    image = read_image(job["portrait"])
    audio = read_audio(job["audio"], pipe.sample_rate)
    seconds = len(audio) / pipe.sample_rate
    if seconds > args.max_seconds:
        raise RestError(f"{job['audio']}: {seconds:.1f} s of audio is longer than --max-seconds {args.max_seconds:g}")
    if pipe.frames_for(len(audio)) < 1:
        raise RestError(f"{job['audio']}: the audio is shorter than one video frame")
    crop = "as_is" if job.get("portrait_is_crop", args.portrait_is_crop) else "face"
    portrait = pipe.prepare_portrait(image, crop=crop, name=str(job["portrait"]))
    crop_only = job.get("crop_only", args.crop_only)
    paster = None if crop_only else Paster(portrait)
    width, height = (pipe.resolution, pipe.resolution) if paster is None else (paster.W, paster.H)
    total = pipe.frames_for(len(audio))
    output.parent.mkdir(parents=True, exist_ok=True)  # every input is checked by now
    start = time.perf_counter()
    bar = tqdm(total=total, desc=output.name, unit="frame", disable=args.no_progress)
    with VideoWriter(output, width, height, pipe.fps, audio, pipe.sample_rate, num_frames=total) as writer:
        blocks = pipe.generate(
            portrait,
            audio,
            seed=job.get("seed", args.seed),
            steps=job.get("steps", args.steps),
            emotion=job.get("emotion", args.emotion),
        )
        for frames, session in blocks:
            if len(frames):
                writer.write(frames if paster is None else paster.paste(frames))
                bar.update(len(frames))
                elapsed = time.perf_counter() - start
                rtf = elapsed / (writer.frames_written / pipe.fps)
                bar.set_postfix(rtf=f"{rtf:.2f}", model_rtf=f"{session.stats()['rtf']:.2f}")
    bar.close()
    elapsed = time.perf_counter() - start
    stats = session.stats()
    print(
        f"wrote {output}: {total} frames ({total / pipe.fps:.2f} s, audio {seconds:.2f} s), {width}x{height}; "
        f"{elapsed:.1f} s, real-time factor {elapsed / (total / pipe.fps):.2f} (model {stats['rtf']:.2f})"
    )
    return output
