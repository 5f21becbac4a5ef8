"""`rest generate` as a careless or hostile user runs it: every bad option, output path and job line is one line on
stderr (exit 2) before the model loads; a batch runs every valid job and sums up; SIGTERM and SIGHUP clean up like
Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rest.cli import main
from rest.media import read_audio, write_audio

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def inputs(tmp_path, face_image, speech):
    """A portrait with a face, a blank image the detector finds no face in, and a 0.5 s clip of the test speech."""
    Image.fromarray(face_image).save(tmp_path / "face.png")
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(tmp_path / "blank.png")
    write_audio(tmp_path / "short.wav", read_audio(speech)[:8000])
    return tmp_path


def generate(*args: str, weights) -> list[str]:
    return ["generate", "--weights", str(weights), "--no-progress", *args]


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    """Files a run may have left: outputs and the writers' hidden temporary files."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in (".mp4", ".tmp"))


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch) -> Path:
    """A folder nobody may write into. As root permission bits do not bind, so there the test sees the folder as
    any other user would: os.access (what `check_output_file` asks) says no for it."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    yield folder
    folder.chmod(0o755)


# ------------------------------------------------------------------ options and outputs: exit 2, nothing loaded


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
@pytest.mark.parametrize("command", [["serve", "--device", "cuda:3"], ["bench", "stream", "--device", "cuda:3"]])
def test_serve_and_bench_check_the_device_the_same_way(capsys, command):
    code, _, err = run_cli(capsys, command)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --device cuda:3: "), err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "-1"], "--steps -1: must be an integer >= 1"),
        (["--steps", "0"], "--steps 0: must be an integer >= 1"),
        (["--max-seconds", "nan"], "--max-seconds nan: must be a positive number of seconds"),
        (["--max-seconds", "-5"], "--max-seconds -5: must be a positive number of seconds"),
        (["--max-seconds", "inf"], "--max-seconds inf: must be a positive number of seconds"),
        (["--seed", "-1"], "--seed -1: must be an integer from 0 to 18446744073709551615"),
        (["--seed", str(2**64)], "--seed 18446744073709551616: must be an integer from 0"),
        (["--emotion", "-1"], "--emotion -1: must be an emotion label"),
        (["--device", "gpu"], "--device gpu: not a device; use cpu, cuda or cuda:N"),
        (["--device", "mps"], "--device mps: REST runs on cpu, cuda or cuda:N"),
    ],
)
def test_bad_options_are_one_line_before_the_model_loads(inputs, capsys, extra, message):
    """The weights folder does not exist: a check that ran after loading would say so instead."""
    args = ["--portrait", str(inputs / "face.png"), "--audio", str(inputs / "short.wav")]
    code, out, err = run_cli(capsys, generate(*args, "--output", str(inputs / "out.mp4"), *extra, weights="none"))
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert leftovers(inputs) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_device_cuda_without_cuda_says_what_to_install(inputs, capsys):
    args = ["--portrait", str(inputs / "face.png"), "--audio", str(inputs / "short.wav"), "--device", "cuda"]
    code, _, err = run_cli(capsys, generate(*args, "--output", str(inputs / "out.mp4"), weights="none"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --device cuda: ")
    if torch.backends.cuda.is_built():
        assert "torch sees no CUDA device" in err
    else:
        assert "is built without CUDA; install a CUDA build of torch" in err and "--device cpu" in err


@pytest.mark.parametrize(
    "output, message",
    [
        ("folder", "is a folder; name the file to write in it"),
        ("read-only/out.mp4", "cannot write: the folder"),
        ("read-only/new/out.mp4", "cannot create the folder"),
        ("a-file.txt/out.mp4", "a-file.txt is a file, not a folder"),
        ("out.avi", "the output must be a .mp4 or .mov file"),
        ("face.png", "the output must be a .mp4 or .mov file"),
    ],
)
def test_unwritable_outputs_are_one_line_before_the_model_loads(inputs, read_only_folder, capsys, output, message):
    (inputs / "folder").mkdir()
    (inputs / "a-file.txt").write_text("x")
    args = ["--portrait", str(inputs / "face.png"), "--audio", str(inputs / "short.wav")]
    code, _, err = run_cli(capsys, generate(*args, "--output", str(inputs / output), weights="none"))
    assert code == 2 and err.startswith(f"error: --output {inputs / output}: ") and message in err, err
    assert err.count("\n") == 1 and leftovers(inputs) == []


def test_output_that_is_an_input_is_refused(inputs, capsys):
    video = inputs / "talk.mp4"
    video.write_bytes(b"an input video")
    args = ["--portrait", str(inputs / "face.png"), "--audio", str(video), "--output", str(video)]
    code, _, err = run_cli(capsys, generate(*args, weights="none"))
    assert code == 2 and f"--output {video}: is the input --audio; writing it would replace it" in err
    assert video.read_bytes() == b"an input video"


def test_missing_input_is_found_before_the_model_loads(inputs, capsys):
    args = ["--portrait", str(inputs / "nobody.png"), "--audio", str(inputs / "short.wav")]
    code, _, err = run_cli(capsys, generate(*args, "--output", str(inputs / "out.mp4"), weights="none"))
    assert code == 2 and err == f"error: --portrait {inputs / 'nobody.png'}: file not found\n"


# ------------------------------------------------------------------ checks against the model, then generation


def test_more_steps_than_distilled_warn_once_with_the_cost(test_pipeline, inputs, capsys):
    out = inputs / "out.mp4"
    args = ["--portrait", str(inputs / "face.png"), "--audio", str(inputs / "short.wav"), "--output", str(out)]
    code, _, err = run_cli(capsys, generate(*args, "--steps", "4", weights=test_pipeline))
    assert code == 0 and out.is_file()
    assert err.count("warning:") == 1 and "--steps 4: this model was distilled for 1 step(s)" in err
    assert "4x as often (that much slower)" in err
    code, _, err = run_cli(capsys, generate(*args, "--steps", "1", weights=test_pipeline))
    assert code == 0 and "warning" not in err


def test_emotion_out_of_the_models_range(test_pipeline, inputs, capsys):
    args = ["--portrait", str(inputs / "face.png"), "--audio", str(inputs / "short.wav")]
    code, _, err = run_cli(
        capsys, generate(*args, "--output", str(inputs / "o.mp4"), "--emotion", "2", weights=test_pipeline)
    )
    assert code == 2 and err == "error: --emotion 2: out of range; this model has no emotion labels\n"
    assert leftovers(inputs) == []


def test_no_face_found_suggests_portrait_is_crop_which_works(test_pipeline, inputs, capsys):
    out = inputs / "out.mp4"
    args = ["--portrait", str(inputs / "blank.png"), "--audio", str(inputs / "short.wav"), "--output", str(out)]
    code, _, err = run_cli(capsys, generate(*args, weights=test_pipeline))
    assert code == 2 and err.count("\n") == 1 and "no face found" in err and "pass --portrait-is-crop" in err
    assert leftovers(inputs) == []
    code, _, err = run_cli(capsys, generate(*args, "--portrait-is-crop", weights=test_pipeline))
    assert code == 0 and out.is_file()


# ------------------------------------------------------------------ batches


def write_jobs(folder: Path, jobs: list) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs))
    return path


def test_every_bad_job_line_is_reported_before_any_job_runs(inputs, capsys):
    face, audio = str(inputs / "face.png"), str(inputs / "short.wav")
    job = lambda name, **kw: {"portrait": face, "audio": audio, "output": str(inputs / name), **kw}  # noqa: E731
    jobs = write_jobs(
        inputs,
        [
            job("ok.mp4"),
            job("a.mp4", seed="abc"),
            job("b.mp4", steps="2"),
            job("c.mp4", steps=0),
            job("d.mp4", crop_only="yes"),
            job("e.mp4", speed=2),
            "{not json",
            {"portrait": face, "output": str(inputs / "f.mp4")},
            job("g.mp4", audio=str(inputs / "missing.wav")),
            job("ok.mp4"),
            job("h.mp4", seed=2**70),
            job("folder"),
        ],
    )
    (inputs / "folder").mkdir()
    code, out, err = run_cli(capsys, ["generate", "--weights", "none", "--jobs", str(jobs), "--no-progress"])
    expected = [
        f'{jobs}:2: seed "abc": must be an integer from 0 to 18446744073709551615',
        f'{jobs}:3: steps "2": must be an integer >= 1',
        f"{jobs}:4: steps 0: must be an integer >= 1",
        f'{jobs}:5: crop_only "yes": must be true or false',
        f"{jobs}:6: unknown key 'speed'",
        f"{jobs}:7: not valid JSON",
        f"{jobs}:8: missing 'audio'",
        f"{jobs}:9: audio {inputs / 'missing.wav'}: file not found",
        f"{jobs}:10: output {inputs / 'ok.mp4'}: {jobs}:1 writes this file too; give each job its own output",
        f"{jobs}:11: seed {2**70}: must be an integer from 0",
        f"{jobs}:12: output {inputs / 'folder'}: is a folder",
    ]
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == len(expected), err
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(f"error: {start}"), (line, start)
    assert leftovers(inputs) == []  # not even the valid first job ran


def test_a_batch_runs_every_valid_job_and_sums_up(test_pipeline, inputs, capsys):
    audio = str(inputs / "short.wav")
    jobs = write_jobs(
        inputs,
        [
            {"portrait": str(inputs / "face.png"), "audio": audio, "output": str(inputs / "one.mp4"), "steps": 2},
            {"portrait": str(inputs / "blank.png"), "audio": audio, "output": str(inputs / "new" / "two.mp4")},
            {"portrait": str(inputs / "face.png"), "audio": audio, "output": str(inputs / "three.mp4"), "steps": 3},
        ],
    )
    code, out, err = run_cli(capsys, generate("--jobs", str(jobs), weights=test_pipeline))
    lines = err.splitlines()
    assert code == 1 and len(lines) == 3, err
    assert lines[0].startswith(f"warning: {jobs}:3: steps 3: this model was distilled for 1 step(s)")
    assert lines[1].startswith(f"error: {jobs}:2 ({inputs / 'new' / 'two.mp4'}): ") and "no face found" in lines[1]
    assert 'pass "portrait_is_crop": true in its job line' in lines[1]
    assert lines[2] == f"error: 1 of 3 jobs failed ({jobs}:2); 2 written"
    assert out.count("wrote ") == 2 and leftovers(inputs) == ["one.mp4", "three.mp4"]
    assert not (inputs / "new").exists()


# ------------------------------------------------------------------ SIGTERM and SIGHUP


@pytest.mark.parametrize("signum, output", [(signal.SIGTERM, "out.mp4"), (signal.SIGHUP, "new/folder/out.mp4")])
def test_a_signal_mid_generation_leaves_nothing_behind(test_pipeline, inputs, signum, output):
    """`kill` while the video is being written: exit 128 + signal, no temporary file, no output, no new folder, and
    an existing output untouched."""
    long = inputs / "long.wav"
    write_audio(long, np.zeros(16000 * 120, np.float32))
    out = inputs / output
    if out.parent.is_dir():
        out.write_bytes(b"the previous video")
    args = ["--portrait", str(inputs / "face.png"), "--audio", str(long), "--output", str(out), "--crop-only"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rest", *generate(*args, weights=test_pipeline)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while not list(inputs.rglob(".out.mp4.*.tmp")):  # the writer's temporary file: generation is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert err.endswith(f"terminated ({signal.Signals(signum).name})\n"), err
    assert not list(inputs.rglob("*.tmp"))
    if output == "out.mp4":
        assert out.read_bytes() == b"the previous video"
    else:
        assert not (inputs / "new").exists()
