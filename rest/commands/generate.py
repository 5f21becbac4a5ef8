"""`rest generate`: portrait + speech -> MP4 (H.264 at 25 fps with the speech muxed), one file or a batch.

Everything that can be checked without the model is checked first, for the options and every job of a batch: the
values, the device, that the input files exist, and that each output can be written (not a folder, in a writable
folder, no two jobs writing one file, no output replacing an input). Each problem is one line on stderr naming the
option or the job's line and the value, and the command exits with 2 before the model loads. Then the model loads,
and what needs it is checked (emotion labels; a warning for more steps than the model was distilled for).

A batch then runs every job. One that fails on its inputs (an image without a face, audio longer than --max-seconds)
is reported on stderr and the others go on; a summary ends the batch, and the exit code is 1 if any job failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rest.config import MAX_SEED
from rest.data.synth.emotion import EMOTIONS

DEFAULT_WEIGHTS = "weights/rest-tiny"
DEFAULT_MAX_SECONDS = 600.0
JOB_KEYS = ("portrait", "audio", "output", "seed", "steps", "emotion", "crop_only", "portrait_is_crop")
REQUIRED_KEYS = ("portrait", "audio", "output")
Problem = tuple[int, str]  # (line of the jobs file, 0 for the options; the one-line message)


def emotion_label(text: str) -> int:
    """--emotion: a SynthTalk emotion name (its index in EMOTIONS, the label order the motion set and the video
    pipeline share) or an integer label."""
    if text in EMOTIONS:
        return EMOTIONS.index(text)
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use an integer label or one of {', '.join(EMOTIONS)}") from None


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
        "portrait, audio, output and optionally seed, steps, emotion, crop_only, portrait_is_crop; every job is "
        "checked before the model loads, and a job that fails does not stop the others.",
    )
    parser.add_argument(
        "--portrait", help="image file (any size; the face is detected); an avatar's --weights default to its own"
    )
    parser.add_argument("--audio", help="speech: any audio file or a video's audio track")
    parser.add_argument("--output", help="MP4 to write")
    parser.add_argument("--jobs", default=None, metavar="JSONL", help="batch mode: one job per line")
    parser.add_argument("--weights", default=None, help=f"pipeline folder (default: the bundled {DEFAULT_WEIGHTS})")
    parser.add_argument("--preset", default=None, help="check that the weights are of this preset (tiny | base)")
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps per chunk, >= 1 (default: the model's own)"
    )
    parser.add_argument("--seed", type=int, default=0, help=f"0 .. {MAX_SEED} (default 0)")
    parser.add_argument(
        "--emotion",
        type=emotion_label,
        default=None,
        help="emotion / style label (models trained with them): an integer, or a name of SynthTalk's emotions "
        "(neutral, happy, sad, angry, surprised: labels 0-4)",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--crop-only", action="store_true", help="write the generated face crop, not the portrait")
    parser.add_argument("--portrait-is-crop", action="store_true", help="the portrait already is a face crop")
    parser.add_argument(
        "--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="refuse longer audio (default %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


@dataclass
class Job:
    """One video to make, from the command line's options or from one line of a --jobs file, its values checked."""

    portrait: Path
    audio: Path
    output: Path
    seed: int
    steps: int | None  # None: the model's own
    emotion: int | None  # None: the null label
    crop_only: bool
    portrait_is_crop: bool
    where: str | None  # "FILE:LINE" of a job line; None for the options
    line: int = 0  # the job's line in its file; 0 for the options

    def label(self, key: str) -> str:
        """How messages name one of this job's values: "--steps" for the options, "FILE:LINE: steps" for a line."""
        return f"--{key.replace('_', '-')}" if self.where is None else f"{self.where}: {key}"


def run(args: argparse.Namespace) -> int:
    from rest.errors import RestError

    if args.jobs is not None:
        if args.portrait or args.audio or args.output:
            raise RestError("give either --jobs or --portrait/--audio/--output, not both")
        jobs, problems = read_jobs(args.jobs, args)
    else:
        if args.portrait is None and args.weights and (Path(args.weights) / "avatar.json").is_file():
            # an avatar (`rest avatar train`) animates its own face: its portrait, a crop already
            args.portrait, args.portrait_is_crop = str(Path(args.weights) / "portrait.png"), True
        missing = [f"--{k}" for k in REQUIRED_KEYS if getattr(args, k) is None]
        if missing:
            raise RestError(f"missing {', '.join(missing)} (or give --jobs FILE.jsonl)")
        jobs, problems = [job_from_options(args)], []
    problems = sorted(check_options(args) + problems + check_files(jobs), key=lambda p: p[0])  # by line, stable
    if problems:
        return _report(problems)
    pipe = load_pipeline(args)
    problems = check_against_model(jobs, pipe)
    if problems:
        return _report(problems)
    if args.jobs is None:
        generate_one(pipe, jobs[0], args)  # a RestError is the command's one error line
        return 0
    failed = []
    for job in jobs:
        try:
            generate_one(pipe, job, args)
        except RestError as err:
            failed.append(job.where)
            print(f"error: {job.where} ({job.output}): {err}", file=sys.stderr)
    if failed:
        ok = len(jobs) - len(failed)
        print(f"error: {len(failed)} of {len(jobs)} jobs failed ({', '.join(failed)}); {ok} written", file=sys.stderr)
        return 1
    print(f"{len(jobs)} of {len(jobs)} jobs written")
    return 0


def _report(problems: list[Problem]) -> int:
    """Every problem found before the work, one line each on stderr; exit code 2."""
    for _, message in problems:
        print(f"error: {message}", file=sys.stderr)
    return 2


#################################################################################
#                    Checks: before the model loads, then with it               #
#################################################################################


def value_problem(key: str, value) -> str | None:
    """What is wrong with `value` for a job's `key` (or the option of that name), or None."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    if key in REQUIRED_KEYS:
        ok = isinstance(value, str) and value.strip() != ""
        return None if ok else "must be a file path (a non-empty string)"
    if key == "seed":
        return None if integer and 0 <= value <= MAX_SEED else f"must be an integer from 0 to {MAX_SEED}"
    if key == "steps":
        ok = value is None or (integer and value >= 1)
        return None if ok else "must be an integer >= 1 (denoising steps per chunk; leave it out for the model's own)"
    if key == "emotion":
        if isinstance(value, str):
            return None if value in EMOTIONS else f"must be one of {', '.join(EMOTIONS)} or an integer label"
        return None if value is None or (integer and value >= 0) else "must be an emotion label, an integer >= 0"
    if key in ("crop_only", "portrait_is_crop"):
        return None if isinstance(value, bool) else "must be true or false"
    raise KeyError(key)


def check_options(args: argparse.Namespace) -> list[Problem]:
    """The options' values and the device, one message per problem (the jobs' defaults come from them)."""
    problems = []
    for key in ("seed", "steps", "emotion"):
        problem = value_problem(key, getattr(args, key))
        if problem is not None:
            problems.append((0, f"--{key} {getattr(args, key)}: {problem}"))
    if not (math.isfinite(args.max_seconds) and args.max_seconds > 0):
        problems.append((0, f"--max-seconds {args.max_seconds:g}: must be a positive number of seconds"))
    device = device_problem(args.device)
    return problems + ([(0, device)] if device is not None else [])


def device_problem(name: str) -> str | None:
    """Whether `name` is a device this torch can run on; if not, what to do about it."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name}: not a device; use cpu, cuda or cuda:N"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"--device {name}: REST runs on cpu, cuda or cuda:N"
    if not torch.backends.cuda.is_built():
        return (
            f"--device {name}: this torch ({torch.__version__}) is built without CUDA; install a CUDA build of torch "
            "(see https://pytorch.org/get-started/locally/), or use --device cpu"
        )
    count = torch.cuda.device_count()
    if count == 0:
        return (
            f"--device {name}: torch sees no CUDA device (no GPU, no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides "
            "it); use --device cpu"
        )
    if device.index is not None and device.index >= count:
        return f"--device {name}: there are {count} CUDA devices, cuda:0 .. cuda:{count - 1}"
    return None


def job_from_options(args: argparse.Namespace) -> Job:
    """The one job of --portrait / --audio / --output (the options' values are checked by `check_options`)."""
    return Job(
        portrait=Path(args.portrait),
        audio=Path(args.audio),
        output=Path(args.output),
        seed=args.seed,
        steps=args.steps,
        emotion=args.emotion,
        crop_only=args.crop_only,
        portrait_is_crop=args.portrait_is_crop,
        where=None,
    )


def read_jobs(path: str, args: argparse.Namespace) -> tuple[list[Job], list[Problem]]:
    """The jobs of a JSONL file and one message per problem, naming FILE:LINE, the key and the value. A key a line
    leaves out takes the option's value (--seed, --steps, ...)."""
    from rest.errors import RestError

    file = Path(path)
    if not file.is_file():
        raise RestError(f"--jobs {path}: file not found")
    jobs, problems = [], []
    lines = [(n, line) for n, line in enumerate(file.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise RestError(f"--jobs {path}: no jobs (one JSON object per line)")
    for n, line in lines:
        where = f"{path}:{n}"
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append((n, f"{where}: not valid JSON ({err.msg})"))
            continue
        if not isinstance(fields, dict):
            problems.append((n, f"{where}: a job is a JSON object with portrait, audio and output"))
            continue
        line_problems = [f"{where}: missing {key!r}" for key in REQUIRED_KEYS if key not in fields]
        line_problems += [
            f"{where}: unknown key {key!r} (known: {', '.join(JOB_KEYS)})" for key in fields if key not in JOB_KEYS
        ]
        for key, value in fields.items():
            problem = value_problem(key, value) if key in JOB_KEYS else None
            if problem is not None:
                line_problems.append(f"{where}: {key} {json.dumps(value)}: {problem}")
        problems += [(n, message) for message in line_problems]
        if line_problems:
            continue
        options = {k: getattr(args, k) for k in ("seed", "steps", "emotion", "crop_only", "portrait_is_crop")}
        values = {**options, **fields}
        for key in REQUIRED_KEYS:
            values[key] = Path(values[key])
        if isinstance(values["emotion"], str):
            values["emotion"] = EMOTIONS.index(values["emotion"])
        jobs.append(Job(**values, where=where, line=n))
    return jobs, problems


def check_files(jobs: list[Job]) -> list[Problem]:
    """The inputs exist and are readable; each output can be written, is no other job's output and no input."""
    from rest.errors import RestError
    from rest.media import check_input_file, check_output_file

    problems = []
    inputs = {}  # resolved path -> (job, key) of its first use
    for job in jobs:
        for key in ("portrait", "audio"):
            path = getattr(job, key)
            try:
                check_input_file(path)
            except RestError as err:
                problems.append((job.line, f"{job.label(key)} {err}"))
            inputs.setdefault(path.resolve(), (job, key))
    outputs = {}
    for job in jobs:
        try:
            check_output_file(job.output)
        except RestError as err:
            problems.append((job.line, f"{job.label('output')} {err}"))
            continue
        target = job.output.resolve()
        if target in outputs:
            first = outputs[target]
            message = f"{first.where} writes this file too; give each job its own output"
            problems.append((job.line, f"{job.label('output')} {job.output}: {message}"))
        elif target in inputs:
            owner, key = inputs[target]
            message = f"is the input {owner.label(key)}; writing it would replace it"
            problems.append((job.line, f"{job.label('output')} {job.output}: {message}"))
        outputs.setdefault(target, job)
    return problems


def check_against_model(jobs: list[Job], pipe) -> list[Problem]:
    """Emotion labels in the model's range (problems); more steps than it was distilled for (a warning, once)."""
    n = pipe.config.num_emotions
    known = f"labels 0 .. {n - 1}" if n else "no emotion labels"
    problems = [
        (job.line, f"{job.label('emotion')} {job.emotion}: out of range; this model has {known}")
        for job in jobs
        if job.emotion is not None and job.emotion >= n
    ]
    distilled = pipe.config.steps
    most = max(jobs, key=lambda job: job.steps or 0)
    if most.steps is not None and most.steps > distilled:
        print(
            f"warning: {most.label('steps')} {most.steps}: this model was distilled for {distilled} step(s) per "
            f"chunk; {most.steps} steps run its denoiser {most.steps / distilled:g}x as often (that much slower), and "
            "a distilled student gets no better with steps it was not trained for, usually worse",
            file=sys.stderr,
        )
    return problems


#################################################################################
#                                   Generation                                  #
#################################################################################


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


def generate_one(pipe, job: Job, args: argparse.Namespace) -> Path:
    """Read and check the inputs, then generate; write the MP4 atomically; print one summary line."""
    from tqdm import tqdm

    from rest.errors import RestError
    from rest.media import VideoWriter, read_audio, read_image
    from rest.pipelines import Paster
    from rest.pipelines.portrait import NoFaceError

    image = read_image(job.portrait)
    audio = read_audio(job.audio, pipe.sample_rate)
    seconds = len(audio) / pipe.sample_rate
    if seconds > args.max_seconds:
        raise RestError(f"{job.audio}: {seconds:.1f} s of audio is longer than --max-seconds {args.max_seconds:g}")
    if pipe.frames_for(len(audio)) < 1:
        raise RestError(f"{job.audio}: the audio is shorter than one video frame")
    crop = "as_is" if job.portrait_is_crop else "face"
    try:
        portrait = pipe.prepare_portrait(image, crop=crop, name=str(job.portrait))
    except NoFaceError as err:  # the detector misses drawn and stylised faces
        option = "--portrait-is-crop" if job.where is None else '"portrait_is_crop": true in its job line'
        raise RestError(f"{err}; if the image already is a face crop (a drawing, say), pass {option}") from None
    paster = None if job.crop_only else Paster(portrait)
    width, height = (pipe.resolution, pipe.resolution) if paster is None else (paster.W, paster.H)
    total = pipe.frames_for(len(audio))
    start = time.perf_counter()
    with _parent_folders(job.output):  # every input is checked by now
        bar = tqdm(total=total, desc=job.output.name, unit="frame", disable=args.no_progress)
        with VideoWriter(job.output, width, height, pipe.fps, audio, pipe.sample_rate, num_frames=total) as writer:
            blocks = pipe.generate(portrait, audio, seed=job.seed, steps=job.steps, emotion=job.emotion)
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
        f"wrote {job.output}: {total} frames ({total / pipe.fps:.2f} s, audio {seconds:.2f} s), {width}x{height}; "
        f"{elapsed:.1f} s, real-time factor {elapsed / (total / pipe.fps):.2f} (model {stats['rtf']:.2f})"
    )
    return job.output


@contextlib.contextmanager
def _parent_folders(output: Path):
    """Create the output's missing folders; remove them again (if still empty) when the block fails or is
    interrupted, so that a failed job leaves nothing behind."""
    folder = output.absolute().parent
    created = [f for f in (folder, *folder.parents) if not f.exists()]
    for f in reversed(created):
        f.mkdir(exist_ok=True)
    try:
        yield
    except BaseException:
        for f in created:
            try:
                f.rmdir()
            except OSError:  # not empty: something else was written into it meanwhile
                break
        raise
