"""`rest serve`: the live talking-head web demo and WebSocket API (protocol in rest/serve/app.py and the README),
and with a motion model (--motion) the live face-motion page and its WebSocket."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from rest.commands.animate import DEFAULT_MOTION
    from rest.commands.generate import DEFAULT_WEIGHTS

    parser = sub.add_parser(
        "serve",
        help="live web demo + WebSocket API: stream speech in, get video frames back",
        description="Serve a web page (choose a portrait, stream a file or the microphone, watch the video) and the "
        "WebSocket API it uses. Each connection is one stream with its own state; needs `pip install -e .[serve]`.",
    )
    parser.add_argument("--weights", default=None, help=f"pipeline folder (default: the bundled {DEFAULT_WEIGHTS})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--portraits", default=None, help="folder of portraits offered on the page (default: bundled)")
    parser.add_argument(
        "--motion",
        default=None,
        metavar="FOLDER",
        help=f"face-motion model folder for /motion and /ws/motion: rig parameters and ARKit blendshapes per frame "
        f"(default: the bundled {DEFAULT_MOTION} if present, else none)",
    )
    parser.add_argument("--max-sessions", type=int, default=4, help="concurrent streams (more are refused)")
    parser.add_argument("--max-upload-mb", type=float, default=8.0, help="portrait upload limit")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="close a stream idle for this many seconds")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rest.commands.animate import default_motion
    from rest.commands.generate import default_weights, device_problem
    from rest.errors import RestError
    from rest.pipelines import TalkingHeadPipeline
    from rest.pipelines.motion import MOTION_HINT, MotionPipeline

    try:
        import uvicorn

        from rest.serve import ServeOptions, create_app
    except ImportError as err:
        raise RestError(
            f"rest serve needs the serve extra: pip install -e '.[serve]' ({err.name} is missing)"
        ) from None
    if args.max_sessions < 1 or args.max_upload_mb <= 0 or args.idle_timeout <= 0:
        raise RestError("--max-sessions must be >= 1, --max-upload-mb and --idle-timeout > 0")
    problem = device_problem(args.device)
    if problem:
        raise RestError(problem)
    if args.motion is not None and not Path(args.motion).is_dir():
        raise RestError(f"--motion {args.motion}: no such folder ({MOTION_HINT})")
    motion_folder = Path(args.motion) if args.motion is not None else default_motion()
    pipe = TalkingHeadPipeline.from_pretrained(Path(args.weights) if args.weights else default_weights(), args.device)
    motion = MotionPipeline.from_pretrained(motion_folder, args.device) if motion_folder.is_dir() else None
    portraits = args.portraits
    if portraits is None:
        bundled = Path(__file__).resolve().parents[2] / "assets" / "demo"
        portraits = bundled if bundled.is_dir() else None
    options = ServeOptions(
        max_sessions=args.max_sessions,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        idle_timeout_s=args.idle_timeout,
    )
    app = create_app(pipe, options, portraits, motion)
    print(f"REST live demo on http://{args.host}:{args.port}/ ({pipe.config.preset}, {args.device})")
    if motion is not None:
        print(f"face motion on http://{args.host}:{args.port}/motion ({motion_folder})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
