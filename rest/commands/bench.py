"""`rest bench ...`: speed and memory benchmarks, printed and written as JSON."""

from __future__ import annotations

import argparse

import torch

from rest.bench.common import write_result
from rest.errors import RestError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _device(name: str) -> torch.device:
    from rest.commands.generate import device_problem

    problem = device_problem(name)
    if problem:
        raise RestError(problem)
    return torch.device(name)


def _model_bench_args(parser: argparse.ArgumentParser, name: str) -> None:
    """The arguments the model benchmarks share: --preset, --device, --dtype, --output."""
    parser.add_argument("--preset", default="tiny", help="tiny | base")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--output", default=None, help=f"JSON file (default runs/bench/{name}_<preset>_<device>.json)")


def _checked(args: argparse.Namespace) -> torch.device:
    """Validate --preset (a RestError naming the known ones) and --device; the device to run on."""
    from rest.config import get_preset

    get_preset(args.preset)
    return _device(args.device)


def _write(result: dict, args: argparse.Namespace, name: str) -> None:
    write_result(result, args.output or f"runs/bench/{name}_{args.preset}_{args.device}.json")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="speed benchmarks (JSON output)")
    which = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")

    vae = which.add_parser("vae", help="VAE encode/decode fps and memory, ours vs diffusers' LTX-Video VAE")
    _model_bench_args(vae, "vae")
    vae.add_argument("--frames", type=int, default=33, help="clip length, 1 + t*k (default 33)")
    vae.add_argument("--resolution", type=int, default=None, help="default: the preset's")
    vae.add_argument("--repeats", type=int, default=3)
    vae.add_argument("--weights", default=None, help="a VAE folder (save_pretrained layout); default random init")
    vae.add_argument("--no-peer", action="store_true", help="skip the diffusers LTX-Video comparison")
    vae.set_defaults(func=_run_vae)

    teacher = which.add_parser("teacher", help="denoiser DiT: seconds per denoising step (plain and CFG batch)")
    _model_bench_args(teacher, "teacher")
    teacher.add_argument("--latent-frames", type=int, default=9, help="latent frames of the clip (default 9)")
    teacher.add_argument("--steps", type=int, default=50, help="denoising steps per clip, for the per-second cost")
    teacher.add_argument("--repeats", type=int, default=3)
    teacher.add_argument(
        "--student-steps", type=int, default=1, help="K of the streaming student it is compared with (default 1)"
    )
    teacher.add_argument("--student-chunks", type=int, default=12, help="chunks the student streams (default 12)")
    teacher.add_argument("--no-student", action="store_true", help="skip the teacher vs student comparison")
    teacher.set_defaults(func=_run_teacher)

    stream = which.add_parser(
        "stream", help="streaming student: per-chunk and first-frame latency, real-time factor, memory vs length"
    )
    _model_bench_args(stream, "stream")
    stream.add_argument(
        "--seconds", type=float, nargs="+", default=[10.0, 60.0], help="stream lengths in seconds (default 10 60)"
    )
    stream.add_argument("--steps", type=int, default=None, help="denoising steps K (default: student.json's, else 1)")
    stream.add_argument(
        "--weights", default=None, help="folder with denoiser/, audio_encoder/ and vae/ (or student.json naming it)"
    )
    stream.add_argument("--depth", type=int, default=None, help="random weights only: override the preset's depth")
    stream.add_argument(
        "--compile",
        default=None,
        metavar="MODE",
        help="run the denoiser's blocks under torch.compile: default | reduce-overhead (CUDA graphs) | "
        "max-autotune-no-cudagraphs",
    )
    stream.set_defaults(func=_run_stream)

    gpu = which.add_parser(
        "gpu", help="one JSON of the GPU checks: base streaming (eager, compiled), VAE vs LTX, teacher vs student, MFU"
    )
    gpu.add_argument("--device", default=None, help="cuda | cpu (implies --dry-run); default cuda if there is one")
    gpu.add_argument("--dry-run", action="store_true", help="the same code path at small sizes (tiny, 2 blocks)")
    gpu.add_argument("--output", default=None, help="JSON file (default runs/bench/gpu_<device>.json)")
    gpu.set_defaults(func=_run_gpu)

    phonetic = which.add_parser(
        "phonetic", help="the phonetic channel (pocketsphinx phones) per 40 ms piece vs the mel audio encoder"
    )
    phonetic.add_argument("--audio", default=None, help="speech to loop (default: assets/demo/speech.wav)")
    phonetic.add_argument("--seconds", type=float, default=300.0, help="stream length (default 300)")
    phonetic.add_argument("--settle", type=float, default=0.0, help="seconds before a phone is final (default 0)")
    phonetic.add_argument("--threads", type=int, default=1, help="torch threads for the mel encoder (default 1)")
    phonetic.add_argument(
        "--weights",
        default=None,
        help="a folder whose audio_encoder/ is the mel baseline (default: the mel encoder's default architecture, "
        "random weights: the same cost)",
    )
    phonetic.add_argument("--output", default="runs/bench/phonetic.json", help="JSON file")
    phonetic.set_defaults(func=_run_phonetic)

    motion = which.add_parser("motion", help="the face-motion stream per 80 ms chunk over a long stream")
    motion.add_argument(
        "--weights", default=None, help="motion model folder (default: the bundled weights/rest-motion)"
    )
    motion.add_argument("--audio", default=None, help="speech to loop (default: assets/demo/speech.wav)")
    motion.add_argument("--seconds", type=float, default=600.0, help="stream length (default 600)")
    motion.add_argument("--emotion", default=None, help="emotion of the stream (default: none)")
    motion.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    motion.add_argument("--output", default="runs/bench/motion.json", help="JSON file")
    motion.set_defaults(func=_run_motion)

    serve = which.add_parser("serve", help="load test of rest serve: N concurrent live sessions on loopback")
    serve.add_argument("--weights", default=None, help="pipeline folder (default: the bundled weights/rest-tiny)")
    serve.add_argument("--sessions", type=int, default=8)
    serve.add_argument("--seconds", type=float, default=60.0, help="audio streamed per session, in real time")
    serve.add_argument("--portrait", default=None, help="portrait image (default: assets/demo/portrait.png)")
    serve.add_argument("--audio", default=None, help="speech to loop (default: assets/demo/speech.wav)")
    serve.add_argument("--rounds", type=int, default=1, help="run the sessions this many times on one server")
    serve.add_argument("--url", default=None, help="load-test a running server (http://HOST:PORT) instead")
    serve.add_argument(
        "--upload-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="meanwhile upload a 6300 x 6300 PNG of the portrait this often (do uploads stall the streams?)",
    )
    serve.add_argument("--output", default="runs/bench/serve.json", help="JSON file")
    serve.set_defaults(func=_run_serve)


def _run_phonetic(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from rest.bench.phonetic import bench_phonetic
    from rest.media import read_audio
    from rest.models.audio import AudioEncoder
    from rest.models.loading import load_local

    audio = read_audio(args.audio or Path(__file__).resolve().parents[2] / "assets" / "demo" / "speech.wav")
    if args.weights is None:
        torch.manual_seed(0)
        encoder = AudioEncoder().eval()
    else:
        encoder = load_local(AudioEncoder, Path(args.weights) / "audio_encoder", "audio encoder").eval()
    result = bench_phonetic(audio, args.seconds, encoder, settle_s=args.settle, threads=args.threads)
    write_result(result, args.output)
    return 0


def _run_motion(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rest.bench.motion import bench_motion
    from rest.commands.animate import default_motion
    from rest.media import read_audio
    from rest.pipelines.motion import MotionPipeline

    pipe = MotionPipeline.from_pretrained(args.weights or default_motion())
    audio = read_audio(args.audio or Path(__file__).resolve().parents[2] / "assets" / "demo" / "speech.wav")
    write_result(bench_motion(pipe, audio, args.seconds, args.emotion, threads=args.threads), args.output)
    return 0


def _run_vae(args: argparse.Namespace) -> int:
    from rest.bench.vae import bench_vae

    result = bench_vae(
        args.preset,
        _checked(args),
        frames=args.frames,
        resolution=args.resolution,
        repeats=args.repeats,
        dtype=DTYPES[args.dtype],
        with_peer=not args.no_peer,
        weights=args.weights,
    )
    _write(result, args, "vae")
    return 0


def _run_teacher(args: argparse.Namespace) -> int:
    from rest.bench.teacher import bench_teacher

    device = _checked(args)
    if args.latent_frames < 1 or args.steps < 1:
        raise RestError(f"--latent-frames and --steps must be >= 1, got {args.latent_frames}, {args.steps}")
    if args.student_steps < 1 or args.student_chunks < 1:
        got = f"{args.student_steps}, {args.student_chunks}"
        raise RestError(f"--student-steps and --student-chunks must be >= 1, got {got}")
    result = bench_teacher(
        args.preset,
        device,
        latent_frames=args.latent_frames,
        steps=args.steps,
        repeats=args.repeats,
        dtype=DTYPES[args.dtype],
        student_steps=None if args.no_student else args.student_steps,
        student_chunks=args.student_chunks,
    )
    _write(result, args, "teacher")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rest.bench.serve import bench_serve, format_table
    from rest.commands.generate import default_weights

    if args.sessions < 1 or args.seconds <= 0:
        raise RestError("--sessions must be >= 1 and --seconds > 0")
    if args.upload_every is not None and not args.upload_every > 0:
        raise RestError(f"--upload-every {args.upload_every:g}: must be a positive number of seconds")
    try:
        import websockets  # noqa: F401

        if args.url is None:
            import rest.serve  # noqa: F401
    except ImportError as err:
        raise RestError(
            f"rest bench serve needs the serve extra: pip install -e '.[serve]' ({err.name} is missing)"
        ) from None
    assets = Path(__file__).resolve().parents[2] / "assets" / "demo"
    portrait = args.portrait or assets / "portrait.png"
    audio = args.audio or (assets / "speech.wav" if (assets / "speech.wav").is_file() else None)
    weights = None if args.url else args.weights or default_weights()
    result = bench_serve(
        weights,
        args.sessions,
        args.seconds,
        portrait,
        audio,
        url=args.url,
        rounds=args.rounds,
        upload_every=args.upload_every,
    )
    print(format_table(result))
    write_result(result, args.output)
    return 0


def _run_stream(args: argparse.Namespace) -> int:
    from rest.bench.stream import bench_stream

    device = _checked(args)
    if min(args.seconds) <= 0 or (args.steps is not None and args.steps < 1):
        raise RestError(f"--seconds must be > 0 and --steps >= 1, got {args.seconds}, {args.steps}")
    if args.depth is not None and (args.weights is not None or args.depth < 1):
        raise RestError("--depth (>= 1) only applies to random weights; drop it with --weights")
    result = bench_stream(
        args.preset,
        device,
        seconds=args.seconds,
        steps=args.steps,
        weights=args.weights,
        dtype=DTYPES[args.dtype],
        depth=args.depth,
        compile_mode=args.compile,
    )
    _write(result, args, "stream")
    return 0


def _run_gpu(args: argparse.Namespace) -> int:
    from rest.bench.gpu import bench_gpu

    device = _device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dry_run = args.dry_run or device.type != "cuda"
    output = args.output or f"runs/bench/gpu_{'dry_run' if dry_run else args.device}.json"
    result = bench_gpu(device, dry_run=dry_run, partial=output)
    write_result(result, output)
    return 0
