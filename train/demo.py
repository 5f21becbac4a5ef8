"""Reproduce the shipped demo model (weights/rest-tiny) from scratch: SynthTalk -> VAE (frames, then clips, then
clips with more motion weight, then with a mouth expert in the loss) -> latents -> teacher (then fine-tuned with an
audio encoder pretrained on the mouth) -> student (ASD, then fine-tuned with the mouth expert in the loss) -> mouth
regressor -> pipeline folder -> held-out study -> real-speech study (when ../shared/data/video is there).
Every stage is a documented command of the project, run in order; a finished stage (its output exists) is skipped,
and the training stages resume.

    python train/demo.py                          # everything, into runs/demo, then weights/rest-tiny
    python train/demo.py --stages teacher student # some stages only
    python train/demo.py --dry-run                # print the commands

Data, steps and timings of the shipped run are in weights/rest-tiny/README.md (the model card).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEO = REPO.parent / "shared" / "data" / "video"  # real talking clips, for the real-speech study only
PY = sys.executable


def stages(root: Path, weights: Path, identities: int, seconds: float) -> list[tuple[str, Path, list[str]]]:
    """(name, output that marks the stage done, command; empty for stages done in this script)."""
    data, vae, distilled = root / "synthtalk", root / "vae", root / "student"
    teacher = root / "teacher_audio"  # the teacher the student distils: stage 2b
    student = root / "student_mouth"  # the shipped student: stage 3 fine-tuned with the mouth expert (3b)
    rest, train = [PY, "-m", "rest.cli"], REPO / "train"
    sheet = str(root / "synthtalk_sheet.png")
    # The shipped weights were trained on espeak-ng speech with a plain audio expert. festival / flite voices and the
    # expert's augmentation (the defaults of `rest synth` and train/audio_expert.py since 2026-12-03) have been
    # measured on the expert alone, not yet through a teacher and student (docs/experiments.md), so the recipe pins
    # what the shipped model was trained with.
    synth = [*rest, "synth", "--output", str(data), "--identities", str(identities), "--seconds", str(seconds)]
    synth += ["--engines", "espeak"]

    def vae_stage(config: str, out: Path, init: Path | None = None, *extra: str) -> list[str]:
        """train/vae.py on the train split's clips, into `out`, optionally from the export of the stage before."""
        command = [PY, str(train / "vae.py"), "--config", f"configs/demo/{config}", "--resume", "latest", "--set"]
        command += [f"data.root={root / 'vae_videos'}", f"train.output_dir={out}", *extra]
        return command + ([f"init={init / 'export'}"] if init is not None else [])

    mouth = [PY, str(train / "mouth_regressor.py"), "--data", str(data), "--steps", "800", "--output"]
    expert_cmd = [*mouth, str(root / "mouth_expert"), "--seed", "1"]  # the VAE's; the study scores with seed 0
    frames_cmd = vae_stage("vae_images.yaml", root / "vae_images")  # stage 1a
    clips_cmd = vae_stage("vae.yaml", root / "vae_clips", init=root / "vae_images")  # stage 1b
    motion_cmd = vae_stage("vae_motion.yaml", root / "vae_motion", init=root / "vae_clips")  # stage 1c
    vae_cmd = vae_stage("vae_mouth.yaml", vae, root / "vae_motion", f"loss.mouth_expert={root / 'mouth_expert'}")
    teacher_cmd = [PY, str(train / "teacher.py"), "--config", "configs/demo/teacher.yaml", "--resume", "latest"]
    teacher_cmd += ["--set", f"data.root={data}", f"vae={vae / 'export'}", f"train.output_dir={root / 'teacher'}"]
    audio_cmd = [PY, str(train / "audio_expert.py"), "--data", str(data), "--output", str(root / "audio_expert")]
    audio_cmd += ["--no-augment"]
    teacher_audio_cmd = [PY, str(train / "teacher.py"), "--config", "configs/demo/teacher_audio.yaml"]
    teacher_audio_cmd += ["--resume", "latest", "--set", f"data.root={data}", f"vae={vae / 'export'}"]
    teacher_audio_cmd += [f"init={root / 'teacher' / 'export'}", f"audio_encoder_init={root / 'audio_expert'}"]
    teacher_audio_cmd += [f"train.output_dir={teacher}"]
    student_cmd = [PY, str(train / "student.py"), "--config", "configs/demo/student.yaml", "--resume", "latest"]
    student_cmd += ["--set", f"data.root={data}", f"teacher={teacher / 'export'}", f"train.output_dir={distilled}"]
    mouth_cmd = [PY, str(train / "student.py"), "--config", "configs/demo/student_mouth.yaml", "--resume", "latest"]
    mouth_cmd += ["--set", f"data.root={data}", f"teacher={teacher / 'export'}", f"init={distilled / 'export'}"]
    mouth_cmd += [f"asd.mouth_expert={root / 'mouth_expert'}", f"train.output_dir={student}"]
    tf_cmd = [PY, str(train / "student.py"), "--config", "configs/demo/student_tf.yaml", "--resume", "latest"]
    tf_cmd += [
        "--set",
        f"data.root={data}",
        f"teacher={teacher / 'export'}",
        f"train.output_dir={root / 'student_tf'}",
    ]
    drift = [
        PY,
        str(REPO / "evaluation" / "drift_study.py"),
        "--data",
        str(data),
        "--student",
        str(student / "export"),
    ]
    drift += ["--no-asd-student", str(root / "student_tf" / "export"), "--output", str(root / "drift")]
    probe = [PY, str(REPO / "evaluation" / "latent_probe.py"), "--data", str(data), "--vae", str(vae / "export")]
    probe += ["--output", str(root / "latent_probe.json")]
    study = [PY, str(REPO / "evaluation" / "heldout_study.py"), "--data", str(data), "--teacher"]
    study += [str(teacher / "export"), "--student", str(student / "export"), "--student-steps", "1", "2", "4"]
    study += ["--mouth-regressor", str(root / "mouth_regressor"), "--output", str(root / "heldout.json")]
    real = [PY, str(REPO / "evaluation" / "real_speech_study.py"), "--weights", str(weights), "--synthtalk", str(data)]
    real += ["--synthtalk-portraits", "2", "--audio-expert", f"shipped={root / 'audio_expert'}"]
    real += ["--output", str(root / "real_speech.json"), "--plot", str(root / "real_speech_curves.png")]
    return [
        ("synth", data / "manifest.jsonl", [*synth, "--contact-sheet", sheet]),
        ("vae_images", root / "vae_images" / "export" / "config.json", frames_cmd),  # stage 1a: frames
        ("vae_clips", root / "vae_clips" / "export" / "config.json", clips_cmd),  # stage 1b: clips, from 1a
        ("vae_motion", root / "vae_motion" / "export" / "config.json", motion_cmd),  # 1c: more motion weight
        ("mouth_expert", root / "mouth_expert" / "config.json", expert_cmd),
        ("vae", vae / "export" / "config.json", vae_cmd),  # stage 1d: 1c with the mouth expert in the loss
        ("probe", root / "latent_probe.json", probe),  # does the VAE's latent carry the mouth? (printed)
        (
            "latents",
            data / ".latents_done",
            [*rest, "preprocess", "--output", str(data), "--vae", str(vae / "export")],
        ),
        ("teacher", root / "teacher" / "export" / "teacher.json", teacher_cmd),  # stage 2: the image
        ("audio_expert", root / "audio_expert" / "metrics.json", audio_cmd),  # the audio encoder, on the labels
        ("teacher_audio", teacher / "export" / "teacher.json", teacher_audio_cmd),  # 2b: 2 with the expert's encoder
        ("student", distilled / "export" / "student.json", student_cmd),  # stage 3: ASD
        ("student_mouth", student / "export" / "student.json", mouth_cmd),  # 3b: 3 with the mouth expert
        ("mouth_regressor", root / "mouth_regressor" / "config.json", [*mouth, str(root / "mouth_regressor")]),
        (
            "export",
            weights / "pipeline.json",
            [*rest, "export-pipeline", "--student", str(student / "export"), "--output", str(weights)],
        ),
        ("assets", REPO / "assets" / "demo" / "speech.wav", []),
        ("study", root / "heldout.json", study),
        ("student_tf", root / "student_tf" / "export" / "student.json", tf_cmd),  # the "no ASD" ablation
        ("drift", root / "drift" / "drift.json", drift),
        ("real_speech", root / "real_speech.json", real),  # measurement only; skipped without the real clips
    ]


def write_assets(root: Path, seconds: float = 8.0) -> None:
    """The README's bundled inputs, made by the project: a held-out identity's portrait (assets/demo/portrait.png)
    and a held-out voice's speech (assets/demo/speech.wav), neither seen in training.

    The portrait is the held-out identity whose real mouth shows most in its pixels (`mouth_visibility` inside
    the student's mouth box), among those whose portrait dlib finds, as `rest generate` needs: a chosen property
    of the input, not of the model's output. With a face whose lips barely contrast with its skin, the demo's
    mouth would not show even when it moves.
    """
    from PIL import Image

    from rest.config import load_config
    from rest.data.face import FaceDetector
    from rest.media import write_audio
    from rest.metrics.heldout import heldout_clips
    from rest.metrics.lipsync_gt import mouth_visibility
    from rest.training.student import StudentExperiment

    box = load_config(StudentExperiment, REPO / "configs" / "demo" / "student_mouth.yaml").asd.mouth_box
    detector = FaceDetector("dlib-hog")
    faces = heldout_clips(root / "synthtalk", ("test_id",), seconds=seconds, max_clips=10_000)
    scored = {c.clip_id: mouth_visibility(c.frames, c.labels, box) for c in faces if detector.detect(c.portrait)}
    if not scored:
        raise SystemExit(f"[demo] assets: dlib finds no face in any test_id portrait of {root / 'synthtalk'}")
    face = max((c for c in faces if c.clip_id in scored), key=lambda c: scored[c.clip_id])
    voice = heldout_clips(root / "synthtalk", ("test_voice",), seconds=seconds, max_clips=1)[0]
    out = REPO / "assets" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(face.portrait).save(out / "portrait.png")
    write_audio(out / "speech.wav", voice.audio, 16000)
    (out / "SOURCE.md").write_text(
        f"Generated by `python train/demo.py --stages assets` from SynthTalk (`rest synth`, seed 0): the portrait is "
        f"a frame of {face.clip_id} (held-out identity; of the {len(scored)} held-out identities whose portrait dlib "
        f"finds, the one whose real mouth shows most: mouth_visibility {scored[face.clip_id]:.1f} grey levels), the "
        f"speech the first {seconds:g} s of {voice.clip_id} (held-out voice; espeak-ng). Procedural, no real person.\n"
    )


def link_vae_videos(root: Path) -> None:
    """The VAE trains on the train split only: links to its clips' frames.mp4 in root/vae_videos."""
    data, links = root / "synthtalk", root / "vae_videos"
    links.mkdir(parents=True, exist_ok=True)
    for line in (data / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        target = links / f"{record['clip_id']}.mp4"
        if record["split"] == "train" and not target.exists():
            os.symlink((data / "clips" / record["clip_id"] / "frames.mp4").resolve(), target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/demo", help="working folder")
    parser.add_argument("--weights", default="weights/rest-tiny", help="where the pipeline folder goes")
    parser.add_argument("--identities", type=int, default=160)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of video per identity")
    parser.add_argument("--stages", nargs="+", default=None, help="run only these stages")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    os.chdir(REPO)
    root, weights = Path(args.root), Path(args.weights)
    plan = stages(root, weights, args.identities, args.seconds)
    names = [name for name, _, _ in plan]
    unknown = sorted(set(args.stages or []) - set(names))
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}; stages: {', '.join(names)}")
    for name, done, command in plan:
        if args.stages is not None and name not in args.stages:
            continue
        if done.exists() and args.stages is None:
            print(f"[demo] {name}: done ({done})")
            continue
        if name == "real_speech" and not SHARED_VIDEO.is_dir():
            print(f"[demo] {name}: skipped ({SHARED_VIDEO} not found: the real clips are for measurement only)")
            continue
        if str(REPO / "train" / "vae.py") in command and not args.dry_run:  # the VAE stages
            link_vae_videos(root)
        if name == "assets" and not args.dry_run:
            write_assets(root)
            print(f"[demo] assets: wrote {REPO / 'assets' / 'demo'}")
        if command:
            print(f"[demo] {name}: {shlex.join(command)}", flush=True)
            if not args.dry_run:
                start = time.perf_counter()
                subprocess.run(command, check=True)
                print(f"[demo] {name}: {time.perf_counter() - start:.0f} s", flush=True)
        if name == "latents" and not args.dry_run:
            done.touch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
