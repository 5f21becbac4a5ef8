"""Real-speech study: drive portraits with the audio of real talking-face clips and compare the generated mouth with
the real speaker's, read by dlib's 68 landmarks (rest/metrics/realspeech.py). Prints a table, writes JSON and a plot
of the two mouth curves for one clip. The real clips are for measurement only; they never train shipped weights.

    python evaluation/real_speech_study.py --weights weights/rest-tiny --portraits assets/demo/portrait.png \\
        --synthtalk runs/demo/synthtalk --synthtalk-portraits 2 --audio-expert new=runs/demo/audio_expert \\
        --phonetic-expert 0 --output runs/real_speech.json --plot docs/real_speech_curves.png

Defaults read the clips of ../shared/data/video and the Chinese and Japanese files of ../shared/data/audio, when
that folder exists, plus 8 s of digital silence.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rest.data.phonetic import PhoneticExpert
from rest.errors import RestError
from rest.media import read_audio, read_image
from rest.metrics.heldout import write_study
from rest.metrics.landmarks import FaceLandmarks68
from rest.metrics.realspeech import format_table, plot_curves, read_real_clips, real_speech_study
from rest.models.audio import AudioExpert
from rest.pipelines import TalkingHeadPipeline

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthtalk_portraits(data: str, count: int, landmarks: FaceLandmarks68) -> dict[str, np.ndarray]:
    """The first `count` held-out identities (test_id) whose portrait frame dlib finds."""
    from rest.metrics.heldout import heldout_clips

    out = {}
    for clip in heldout_clips(data, ("test_id",), seconds=2.0, max_clips=10_000):
        if len(out) == count:
            break
        identity = clip.clip_id.split("_")[0]
        if identity not in out and landmarks.detect(clip.portrait) is not None:
            out[identity] = clip.portrait
    if len(out) < count:
        raise RestError(f"{data}: only {len(out)} test_id portraits that dlib finds, asked for {count}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/rest-tiny", help="pipeline folder")
    parser.add_argument("--portraits", nargs="*", default=["assets/demo/portrait.png"], help="portrait images")
    parser.add_argument("--synthtalk", default=None, help="SynthTalk shard root: also take test_id portraits")
    parser.add_argument("--synthtalk-portraits", type=int, default=0, help="how many test_id portraits to add")
    default_clips = sorted((SHARED / "video").glob("*.mp4")) if (SHARED / "video").is_dir() else []
    parser.add_argument("--clips", nargs="*", default=[str(p) for p in default_clips], help="real talking videos")
    default_files = [SHARED / "audio" / f for f in ("chinese_news.wav", "japanese.wav")]
    parser.add_argument(
        "--audio-files", nargs="*", default=[str(p) for p in default_files if p.is_file()], help="speech files"
    )
    parser.add_argument("--silent-seconds", type=float, default=8.0, help="a silent file of this length (0: none)")
    parser.add_argument("--audio-expert", nargs="*", default=[], metavar="NAME=DIR", help="audio experts to score")
    parser.add_argument(
        "--phonetic-expert",
        type=float,
        default=None,
        metavar="SETTLE_S",
        help="also score the phonetic expert (pocketsphinx phones -> SynthTalk visemes), phones final after SETTLE_S",
    )
    parser.add_argument("--vad", default="auto", choices=["auto", "silero", "energy"], help="voice activity detector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="JSON file")
    parser.add_argument("--plot", default=None, help="PNG of the real and generated mouth of the first clip")
    args = parser.parse_args()
    if len(args.clips) < 2:
        raise RestError("give at least 2 real clips with --clips (../shared/data/video was not found)")

    torch.set_grad_enabled(False)
    landmarks = FaceLandmarks68()
    pipe = TalkingHeadPipeline.from_pretrained(args.weights)
    # Given images are cropped as `rest generate` crops them; SynthTalk frames already are the model's face crops.
    portraits = {Path(p).stem: pipe.prepare_portrait(read_image(p), name=Path(p).stem) for p in args.portraits}
    if args.synthtalk_portraits:
        if not args.synthtalk:
            raise RestError("--synthtalk-portraits needs --synthtalk DATA")
        for name, image in synthtalk_portraits(args.synthtalk, args.synthtalk_portraits, landmarks).items():
            portraits[name] = pipe.prepare_portrait(image, crop="as_is", name=name)
    experts = {}
    for spec in args.audio_expert:
        name, _, folder = spec.partition("=")
        if not folder:
            raise RestError(f"--audio-expert takes NAME=DIR, got {spec!r}")
        experts[name] = AudioExpert.load(folder)
    if args.phonetic_expert is not None:
        experts["phonetic"] = PhoneticExpert(settle_s=args.phonetic_expert)
    files = {Path(f).stem: read_audio(f) for f in args.audio_files}
    if args.silent_seconds > 0:
        files[f"silence_{args.silent_seconds:g}s"] = np.zeros(round(args.silent_seconds * 16000), np.float32)
    clips = read_real_clips([Path(p) for p in args.clips], landmarks, args.vad)
    result = real_speech_study(pipe, portraits, clips, landmarks, files, experts, seed=args.seed, vad=args.vad)
    result["weights"] = args.weights
    print(format_table(result))
    print(f"wrote {write_study(result, args.output)}")
    if args.plot:
        print(f"wrote {plot_curves(result, args.plot)}")
    out = Path(args.output).with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    for name, portrait in portraits.items():  # the crops that were animated, to look at
        Image.fromarray(portrait.crop).save(out / f"portrait_{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
