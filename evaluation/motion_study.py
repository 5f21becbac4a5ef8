"""Face-motion study (rest/metrics/motion.py): the motion model on held-out SynthTalk identities and voices (mouth
against labels and shuffled audio, blink rate, head and gaze statistics, emotion accuracy), and on real speech (the
predicted jaw opening against the real speakers' landmark aperture). Prints a summary, writes JSON.

    python evaluation/motion_study.py --weights weights/rest-motion --data runs/motion/data \\
        --video-study runs/study_phonetic.json --output runs/motion_study.json

--calibrate first chooses the sampling temperature (motion.json's `noise_scale`, rest/metrics/motion.py) on clips of
the training split and writes it into --weights' motion.json: the last step of the recipe after train/motion.py's
student export.

The real clips of ../shared/data/video are for measurement only; they never train shipped weights.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from rest.data.synth.motion_set import load_motion_set
from rest.errors import RestError
from rest.metrics.heldout import write_study
from rest.metrics.landmarks import FaceLandmarks68
from rest.metrics.motion import calibrate_noise_scale, heldout_motion_study, real_motion_study
from rest.metrics.realspeech import read_real_clips
from rest.pipelines.motion import MotionPipeline

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    default_clips = sorted((SHARED / "video").glob("*.mp4")) if (SHARED / "video").is_dir() else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/rest-motion", help="motion model folder")
    parser.add_argument("--data", required=True, help="motion set (rest synth --motion) with held-out splits")
    parser.add_argument("--splits", nargs="*", default=["test_id", "test_voice"], help="held-out splits to score")
    parser.add_argument("--clips", nargs="*", default=[str(p) for p in default_clips], help="real talking videos")
    parser.add_argument("--video-study", default=None, help="a real_speech_study.py JSON: the video model's numbers")
    parser.add_argument("--vad", default="auto", choices=["auto", "silero", "energy"], help="voice activity detector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-blinks", action="store_true", help="held-out: without the blink process (the lids' own)")
    parser.add_argument("--saccades", action="store_true", help="held-out: with the gaze process (off as shipped)")
    parser.add_argument(
        "--calibrate", type=int, default=0, metavar="N", help="choose noise_scale on N training clips, write it"
    )
    parser.add_argument("--output", required=True, help="JSON file")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # one motion chunk is a few tokens (rest/commands/animate.py)
    pipe = MotionPipeline.from_pretrained(args.weights)
    train = load_motion_set(args.data, "train")
    held_out = [c for split in args.splits for c in load_motion_set(args.data, split)]
    if not held_out:
        raise RestError(f"{args.data} has no clips in {args.splits}")
    result = {"weights": args.weights, "data": args.data, "seed": args.seed}
    if args.calibrate:
        picked = train[:: max(len(train) // args.calibrate, 1)][: args.calibrate]
        result["calibration"] = calibrate_noise_scale(pipe, picked, seed=args.seed)
        scale = result["calibration"]["noise_scale"]
        dataclasses.replace(pipe.info, noise_scale=scale).write(args.weights)
        pipe.noise_scale.copy_(torch.tensor(scale))
        best = result["calibration"]["best"]
        print(f"noise_scale {best['scale']} (head speed mismatch {best['mismatch']:.3f}), written to {args.weights}")
    result["processes"] = {"blinks": not args.no_blinks, "saccades": args.saccades}
    result["heldout"] = heldout_motion_study(
        pipe, train, held_out, seed=args.seed, blinks=not args.no_blinks, saccades=args.saccades
    )
    if args.clips:
        clips = read_real_clips([Path(p) for p in args.clips], FaceLandmarks68(), args.vad)
        result["real"] = real_motion_study(pipe, clips, seed=args.seed)
    if args.video_study:
        video = json.loads(Path(args.video_study).read_text())["mean"]
        result["video_model"] = {k: video[k] for k in ("own", "shuffled", "loudness", "expert/phonetic") if k in video}
    h = result["heldout"]["mean"]
    print(
        f"held-out ({len(held_out)} clips): mouth corr {h['mouth/corr']:.3f} "
        f"(shuffled {h['mouth_shuffled/corr']:.3f}), "
        f"mae {h['mouth/mae']:.3f}; blinks/min {h['out/blink_per_min']:.1f} (labels {h['label/blink_per_min']:.1f}); "
        f"yaw std {h['out/head_yaw/std']:.3f} (labels {h['label/head_yaw/std']:.3f}), speed p50 "
        f"{h['out/head_yaw/speed_p50']:.3f} (labels {h['label/head_yaw/speed_p50']:.3f}); emotion accuracy "
        f"{result['heldout']['emotion_accuracy']:.2f} (labels {result['heldout']['emotion_accuracy_labels']:.2f})"
    )
    if "real" in result:
        r = result["real"]["mean"]
        print(
            f"real speech ({len(result['real']['clips'])} clips): jaw vs real aperture {r['own']:.3f} (shuffled "
            f"{r['shuffled']:.3f}, loudness {r['loudness']:.3f}), rest ratio {r['rest_ratio']:.2f}"
        )
        for row in result["real"]["clips"]:
            print(
                f"  {row['clip']}: {row['own']:.3f} (shuffled {row['shuffled']:.3f}, loudness {row['loudness']:.3f})"
            )
    if "video_model" in result:
        print(f"video model (same judge, {args.video_study}): {result['video_model']}")
    print(f"wrote {write_study(result, args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
