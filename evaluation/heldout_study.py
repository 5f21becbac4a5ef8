"""Held-out SynthTalk study: lip-sync against ground truth (vs a shuffled-audio control), identity similarity and
speed, for the teacher (offline) and the streaming student at several step counts (rest/metrics/heldout.py).

    python evaluation/heldout_study.py --data runs/demo/synthtalk --teacher runs/demo/teacher/export \\
        --student runs/demo/student/export --student-steps 1 2 4 \\
        --mouth-regressor runs/demo/mouth_regressor --output runs/demo/heldout.json
"""

import argparse

import torch

from rest.diffusion.flow import Guidance, flow_sigmas
from rest.errors import RestError
from rest.exports import load_student, load_teacher, load_vae
from rest.metrics.heldout import Models, format_summary, heldout_clips, heldout_study, write_study
from rest.metrics.lipsync_gt import PixelRidgeMouth, load_mouth_regressor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SynthTalk shard root (with test_id / test_voice clips)")
    parser.add_argument("--teacher", default=None, help="export/ of train/teacher.py")
    parser.add_argument("--teacher-steps", type=int, default=20)
    parser.add_argument("--guidance-audio", type=float, default=4.0, help="teacher CFG audio scale")
    parser.add_argument(
        "--guidance-portrait",
        type=float,
        default=2.0,
        help="teacher CFG portrait scale (the defaults are the scales configs/demo/student.yaml distils)",
    )
    parser.add_argument(
        "--teacher-window",
        type=int,
        default=None,
        help="latent frames per sampling pass (default: teacher.json's train_latent_frames; 0 = the whole clip)",
    )
    parser.add_argument("--student", default=None, help="export/ of train/student.py")
    parser.add_argument(
        "--student-steps", type=int, nargs="+", default=None, help="K values (default: student.json's)"
    )
    parser.add_argument("--mouth-regressor", required=True, help="folder written by train/mouth_regressor.py")
    parser.add_argument("--splits", nargs="+", default=["test_id", "test_voice"])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--no-csim", action="store_true", help="skip identity similarity (dlib)")
    parser.add_argument(
        "--pixel-judge-clips",
        type=int,
        default=60,
        help="training-split clips to fit the second, CNN-free judge on (PixelRidgeMouth; 0 = no second judge)",
    )
    parser.add_argument(
        "--landmarks",
        action="store_true",
        help="a third judge: dlib's 68-point inner-lip aperture against the labels (the real-speech study's judge)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="JSON file")
    args = parser.parse_args()
    if args.teacher is None and args.student is None:
        raise RestError("give --teacher and/or --student")

    torch.set_grad_enabled(False)
    methods = {}
    if args.teacher is not None:
        denoiser, audio_encoder, info = load_teacher(args.teacher)
        vae = load_vae(info.vae).eval()
        models = Models(vae, audio_encoder.eval(), denoiser.eval(), info.shift)
        guidance = Guidance(audio=args.guidance_audio, portrait=args.guidance_portrait)
        window = info.train_latent_frames if args.teacher_window is None else args.teacher_window or None
        spec = {"kind": "teacher", "steps": args.teacher_steps, "guidance": guidance, "window": window}
        methods["teacher"] = (models, spec)
    if args.student is not None:
        denoiser, audio_encoder, info = load_student(args.student)
        vae = load_vae(info.vae).eval()
        models = Models(vae, audio_encoder.eval(), denoiser.eval(), info.shift)
        for k in args.student_steps or [info.steps]:
            sigmas = flow_sigmas(k, info.shift)
            spec = {"kind": "student", "sigmas": sigmas, "context_timestep": info.context_timestep}
            methods[f"student_K{k}"] = (models, spec)

    regressor, _ = load_mouth_regressor(args.mouth_regressor)
    embedder = None
    if not args.no_csim:
        from rest.metrics.identity import load_face_embedder

        embedder = load_face_embedder("dlib")
    clips = heldout_clips(args.data, tuple(args.splits), args.seconds, args.clips)
    pixel_judge = None
    if args.pixel_judge_clips > 0:
        train = heldout_clips(args.data, ("train",), args.seconds, args.pixel_judge_clips)
        pixel_judge = PixelRidgeMouth().fit([c.frames for c in train], [c.labels for c in train])
    vae = next(iter(methods.values()))[0].vae
    landmarks = None
    if args.landmarks:
        from rest.metrics.landmarks import FaceLandmarks68

        landmarks = FaceLandmarks68()
    result = heldout_study(
        clips, methods, regressor, embedder, args.seed, vae=vae, pixel_judge=pixel_judge, landmarks=landmarks
    )
    result["settings"] = {k: v for k, v in vars(args).items()}
    path = write_study(result, args.output)
    print(format_summary(result["summary"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
