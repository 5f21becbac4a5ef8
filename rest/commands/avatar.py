"""`rest avatar train | eval`: your own face from a short video of you speaking (rest/avatar/)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "avatar",
        help="fine-tune a pipeline on one person's video (your own face), and score it",
        description="`rest avatar train` fine-tunes the bundled pipeline on a video of one speaker (frontal, one "
        "face, steady light; 1-5 minutes) into a pipeline folder that rest generate / rest serve load like any "
        "other; `rest avatar eval` scores it on the held-out end of the video. The avatar stays on this machine.",
    )
    sub2 = parser.add_subparsers(dest="avatar_command", required=True, metavar="train|eval")

    train = sub2.add_parser("train", help="video -> avatar pipeline folder (+ the report)")
    train.add_argument("--video", required=True, help="a video of one person speaking, with its audio")
    train.add_argument("--output", required=True, help="the avatar (pipeline) folder to write")
    train.add_argument("--base", default=None, help="the pipeline to fine-tune (default: the bundled rest-tiny)")
    train.add_argument("--work", default=None, help="stage state, for resuming (default: OUTPUT.work)")
    train.add_argument("--minutes", type=float, default=60.0, help="training time budget, both stages (60)")
    train.add_argument("--vae-steps", type=int, default=1000, help="VAE fine-tuning steps at most (1000)")
    train.add_argument("--student-steps", type=int, default=900, help="student fine-tuning steps at most (900)")
    train.add_argument("--holdout", type=float, default=0.2, help="share of the video's end held out (0.2)")
    train.add_argument("--video-is-crop", action="store_true", help="the video already is a face crop")
    train.add_argument("--max-seconds", type=float, default=None, help="use only the video's first seconds")
    train.add_argument(
        "--rollout-loss", action="store_true", help="also train the student from its own rollout (2x slower a step)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-eval", action="store_true", help="skip the held-out report")
    train.set_defaults(func=_train)

    evaluate = sub2.add_parser("eval", help="score an avatar on its held-out footage against the base pipeline")
    evaluate.add_argument("--avatar", required=True, help="the folder `rest avatar train` wrote")
    evaluate.add_argument("--base", default=None, help="the pipeline to compare with (default: the one fine-tuned)")
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from rest.avatar import AvatarOptions, train_avatar
    from rest.commands.generate import default_weights

    options = AvatarOptions(
        video=Path(args.video),
        output=Path(args.output),
        base=Path(args.base) if args.base else default_weights(),
        work=Path(args.work) if args.work else None,
        holdout=args.holdout,
        minutes=args.minutes,
        vae_steps=args.vae_steps,
        student_steps=args.student_steps,
        video_is_crop=args.video_is_crop,
        max_seconds=args.max_seconds,
        rollout_loss=args.rollout_loss,
        seed=args.seed,
    )
    train_avatar(options)
    if not args.no_eval:
        _report(options.output, None, "cpu")
    return 0


def _eval(args: argparse.Namespace) -> int:
    _report(Path(args.avatar), args.base, args.device)
    return 0


def _report(avatar: Path, base: str | None, device: str) -> None:
    from rest.avatar.report import evaluate_avatar, format_report

    report = evaluate_avatar(avatar, base, device)
    print(format_report(report))
    print(f"wrote {avatar / 'report.json'} and {avatar / 'report_strip.png'}")
