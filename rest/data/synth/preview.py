"""Pictures to check SynthTalk by eye: a contact sheet of identities, a strip of one identity speaking, and a sheet of
identities across the emotions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rest.data.synth.emotion import EXPRESSIONS
from rest.data.synth.generate import (
    _STRIP,
    VOICES,
    SynthConfig,
    _rng,
    identity_face,
    is_test_identity,
    is_test_voice,
    render_frames,
)
from rest.data.synth.motion import make_motion
from rest.data.synth.render import FaceRenderer
from rest.data.synth.text import make_sentence
from rest.data.synth.visemes import VISEMES, mouth_track, phones_to_segments

_FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans when installed (it has the IPA letters), else Pillow's built-in font."""
    for name in _FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def _grid(tiles: Sequence[np.ndarray], columns: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return sheet


def _label(tile: np.ndarray, lines: Sequence[str], font, line_height: int) -> np.ndarray:
    """`tile` with text lines under it on white."""
    h, w = tile.shape[:2]
    canvas = Image.new("RGB", (w, h + line_height * len(lines) + 4), "white")
    canvas.paste(Image.fromarray(tile), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((3, h + 2 + i * line_height), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def contact_sheet(path: str | Path, identities: int | Sequence[int], cfg: SynthConfig, columns: int = 5) -> Path:
    """A PNG grid of identities (neutral pose, lips half open), each labelled with its index and split."""
    ids = list(range(identities)) if isinstance(identities, int) else list(identities)
    font = _font(max(10, cfg.resolution // 10))
    tiles = []
    for i in ids:
        frame = FaceRenderer(identity_face(cfg.seed, i), cfg.resolution).render(mouth_open=0.35)
        split = "test_id" if is_test_identity(i) else "train"
        tiles.append(_label(frame, [f"id{i:04d} {split}"], font, font.size + 2 if hasattr(font, "size") else 12))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_grid(tiles, columns)).save(path)
    return path


def speech_strip(
    path: str | Path,
    cfg: SynthConfig,
    identity: int = 0,
    language: str = "en-us",
    text: str | None = None,
    every: int = 2,
    columns: int = 12,
) -> Path:
    """A PNG of one identity saying one sentence: every `every`-th frame, with the phone and viseme under it.

    The sentence is `text` or a random one in `language`, spoken by the first training voice of that language,
    with 0.3 s of silence before and after (so the strip starts and ends with closed lips).
    """
    from rest.data.synth.speech import Phone, Prosody, get_espeak

    rng = _rng(cfg.seed, _STRIP, identity)
    voice = next(v for v in VOICES if v.language == language and not is_test_voice(v))
    text = text or make_sentence(language, rng)
    espeak = get_espeak()
    utt = espeak.speak(voice, Prosody(), [text])[0]
    lead = 0.3
    phones = [Phone("", 0.0, lead)] + [Phone(p.symbol, p.start + lead, p.end + lead) for p in utt.phones]
    total = lead + utt.duration + 0.3
    phones.append(Phone("", lead + utt.duration, total))
    num_frames = round(total * cfg.fps)
    face = identity_face(cfg.seed, identity)
    track = mouth_track(phones_to_segments(phones), num_frames, cfg.fps, articulation=face.articulation)
    motion = make_motion(num_frames, cfg.fps, rng, sway=face.sway, blink_interval=face.blink_interval)
    frames = render_frames(FaceRenderer(face, cfg.resolution), track, motion)
    zoom = max(1, 192 // cfg.resolution)  # small frames are shown enlarged (nearest neighbour: pixels stay honest)
    size = max(10, cfg.resolution * zoom // 9)
    font = _font(size)
    tiles = []
    for f in range(0, num_frames, every):
        t = (f + 0.5) / cfg.fps
        symbol = next((p.symbol for p in phones if p.start <= t < p.end), "")
        lines = [f"{f:3d} /{symbol or '_'}/", f"{VISEMES[track.viseme[f]].name} {track.open[f]:.2f}"]
        frame = frames[f].repeat(zoom, 0).repeat(zoom, 1)
        tiles.append(_label(frame, lines, font, size + 3))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet = _grid(tiles, min(columns, len(tiles)))
    title = _label(np.full((1, sheet.shape[1], 3), 255, np.uint8), [f"{voice.name}: {text}"], font, size + 3)
    Image.fromarray(np.concatenate([title, sheet], 0)).save(path)
    return path


def emotion_sheet(
    path: str | Path, cfg: SynthConfig, identities: Sequence[int] = (0, 1, 2), mouth_open: float = 0.1
) -> Path:
    """A PNG grid of identities (rows) across the emotions (columns), each at full intensity with its head pitch,
    lips `mouth_open` apart (plus the expression's jaw drop)."""
    font = _font(max(10, cfg.resolution // 10))
    tiles = []
    for i in identities:
        renderer = FaceRenderer(identity_face(cfg.seed, i), cfg.resolution)
        for e in EXPRESSIONS:
            smile, brow_inner, brow_outer, brow_down, lid, jaw = e.controls().tolist()
            frame = renderer.render(
                mouth_open=mouth_open,
                pitch=e.pitch,
                smile=smile,
                brow_inner=brow_inner,
                brow_outer=brow_outer,
                brow_down=brow_down,
                lid=lid,
                jaw=jaw,
            )
            tiles.append(_label(frame, [f"id{i:04d} {e.name}"], font, font.size + 2 if hasattr(font, "size") else 12))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_grid(tiles, len(EXPRESSIONS))).save(path, optimize=True)
    return path


__all__ = ["contact_sheet", "emotion_sheet", "speech_strip"]
