"""`rest avatar eval`: an avatar scored on the held-out part of its video, against the base pipeline.

Both pipelines animate the avatar's portrait (a training frame) with the held-out part's own audio, and with
shuffled audio (the same length of the person's speech from the start of the training part: other words, same
voice). The real held-out frames are the reference:

    psnr, ssim     generated vs real frames (torchmetrics, all frames at once)
    vae_psnr       the pipeline's VAE reconstruction of the real frames: the ceiling of the generated psnr
    m_lmd, f_lmd   dlib 68-point landmarks, mouth / whole face, each frame centred and divided by its eye-corner
                   distance (rest/metrics/landmarks.py)
    mouth_corr     correlation of the generated and the real inner-lip aperture at the best lag within +-2
                   frames
    identity       dlib face-embedding cosine similarity of the generated frames to the real held-out frame at
                   the same index (every 5th frame); the real frames against the portrait give the scale
    rtf            generation time / audio duration (< 1: faster than real time; `rest bench stream` times it
                   properly)

each under "own" (the held-out audio) and "shuffled" (the control) for "avatar" and "base". The report is
report.json and report_strip.png (real / avatar / base rows) in the avatar folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rest.avatar.recipe import AVATAR_FILE
from rest.data.shards import ShardReader
from rest.errors import RestError
from rest.exports import PipelineConfig
from rest.media import read_image
from rest.metrics.reconstruction import reconstruction_metrics
from rest.models.vae import reconstruct
from rest.pipelines.portrait import crop_as_is
from rest.pipelines.talking_head import TalkingHeadPipeline

IDENTITY_STRIDE = 5


def _landmarks():
    from rest.metrics.landmarks import FaceLandmarks68

    try:
        return FaceLandmarks68()
    except RestError as err:
        print(f"landmark metrics skipped: {err}")
        return None


def _embedder():
    from rest.metrics.identity import load_face_embedder

    try:
        return load_face_embedder("dlib")
    except RestError as err:
        print(f"identity similarity skipped: {err}")
        return None


def _embeddings(embedder, frames: np.ndarray) -> list:
    """Face embeddings of every IDENTITY_STRIDE-th frame (None where no face is found)."""
    return [embedder(frame) for frame in frames[::IDENTITY_STRIDE]]


def _identity(reference: list, embeddings: list) -> float | None:
    """Mean cosine similarity of paired embeddings where both have a face."""
    from rest.metrics.identity import cosine

    sims = [cosine(a, b) for a, b in zip(reference, embeddings, strict=False) if a is not None and b is not None]
    return float(np.mean(sims)) if sims else None


def _mouth_scores(landmarks, real_track: np.ndarray, frames: np.ndarray) -> dict:
    from rest.metrics.landmarks import aperture, landmark_distance, lipsync_landmarks

    try:
        points, found = landmarks.track(frames)
    except RestError as err:
        return {"landmarks": str(err)}
    n = min(len(points), len(real_track))
    return {
        **{k: v for k, v in landmark_distance(points[:n], real_track[:n]).items() if k != "frames"},
        "mouth_corr": lipsync_landmarks(aperture(points[:n]), aperture(real_track[:n]))["corr"],
        "frames_with_face": found,
    }


def _generate(pipe: TalkingHeadPipeline, portrait, audio: np.ndarray, frames: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = pipe(portrait, audio, seed=0)
    rtf = (time.perf_counter() - t0) / (len(audio) / pipe.sample_rate)
    return out[:frames], rtf


def evaluate_avatar(avatar: str | Path, base: str | Path | None = None, device: str = "cpu") -> dict:
    """Score the avatar folder (module docstring); writes report.json and report_strip.png there; returns the
    report."""
    avatar = Path(avatar)
    info_path = avatar / AVATAR_FILE
    if not info_path.is_file():
        raise RestError(f"{avatar} is not an avatar folder (no {AVATAR_FILE}); make one with `rest avatar train`")
    info = json.loads(info_path.read_text())
    base = Path(base or info["base"])
    for folder in (Path(info["heldout"]), Path(info["data"])):
        if not folder.is_dir():
            raise RestError(f"{folder} not found: the report needs the work folder of `rest avatar train`")
    heldout = ShardReader(info["heldout"])
    real, audio = heldout.frames("heldout"), heldout.audio("heldout")
    data = ShardReader(info["data"])
    train_audio = np.concatenate([data.audio(r.clip_id) for r in data.records])
    if len(train_audio) < len(audio):
        raise RestError("the training part is shorter than the held-out part: no shuffled-audio control")
    shuffled = train_audio[: len(audio)]
    config = PipelineConfig.read(avatar)
    portrait = crop_as_is(read_image(avatar / info["portrait"]), config.resolution, info["portrait"])
    landmarks, embedder = _landmarks(), _embedder()
    real_faces = _embeddings(embedder, real) if embedder is not None else None
    real_track = None
    if landmarks is not None:
        try:
            real_track = landmarks.track(real)[0]
        except RestError as err:
            print(f"landmark metrics skipped: the real held-out frames: {err}")

    rows, shown = {}, {}
    for name, folder in (("avatar", avatar), ("base", base)):
        pipe = TalkingHeadPipeline.from_pretrained(folder, device)
        own, rtf = _generate(pipe, portrait, audio, len(real))
        other, _ = _generate(pipe, portrait, shuffled, len(real))
        recon = reconstruct(pipe.vae, real)
        row = {"vae_psnr": reconstruction_metrics(real[: len(recon)], recon)["psnr"], "rtf": rtf}
        for key, frames in (("own", own), ("shuffled", other)):
            n = min(len(frames), len(real))
            scores = {k: v for k, v in reconstruction_metrics(real[:n], frames[:n]).items() if k != "frames"}
            if real_track is not None:
                scores.update(_mouth_scores(landmarks, real_track, frames))
            if embedder is not None:
                scores["identity"] = _identity(real_faces, _embeddings(embedder, frames))
            row[key] = scores
        rows[name], shown[name] = row, own
    report = {
        "avatar": str(avatar),
        "base": str(base),
        "heldout_frames": len(real),
        "heldout_seconds": len(real) / heldout.fps,
        "real_identity_to_portrait": _identity([embedder(portrait.crop)] * len(real_faces), real_faces)
        if embedder is not None
        else None,  # the same measure between two photos of the person: how high "the same person" scores
        **rows,
    }
    (avatar / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_strip(avatar / "report_strip.png", {"real": real, **shown})
    return report


def write_strip(path: Path, rows: dict[str, np.ndarray], columns: int = 8) -> Path:
    """A grid of `columns` evenly spaced frames per row, each row labelled."""
    n = min(len(v) for v in rows.values())
    picks = np.linspace(0, n - 1, columns).round().astype(int)
    size = next(iter(rows.values())).shape[1]
    label = 60
    sheet = Image.new("RGB", (label + columns * size, len(rows) * size), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, frames) in enumerate(rows.items()):
        draw.text((4, r * size + size // 2 - 6), name, fill="black")
        for c, i in enumerate(picks):
            sheet.paste(Image.fromarray(frames[i]), (label + c * size, r * size))
    sheet.save(path)
    return path


def format_report(report: dict) -> str:
    """The report as a table: one row per pipeline and audio."""
    keys = ("psnr", "ssim", "m_lmd", "f_lmd", "mouth_corr", "identity")
    lines = ["| pipeline | audio | " + " | ".join(keys) + " | vae_psnr |", "|---" * (len(keys) + 3) + "|"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for name in ("avatar", "base"):
        for audio in ("own", "shuffled"):
            row = report[name][audio]
            cells = [fmt(row.get(k, "-")) for k in keys] + [fmt(report[name]["vae_psnr"]) if audio == "own" else ""]
            lines.append(f"| {name} | {audio} | " + " | ".join(cells) + " |")
    scale = report.get("real_identity_to_portrait")
    if scale is not None:
        lines.append(f"identity scale: the real held-out frames against the portrait score {scale:.3f}")
    return "\n".join(lines)


__all__ = ["evaluate_avatar", "format_report", "write_strip"]
