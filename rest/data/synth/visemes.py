"""Phonemes -> visemes -> per-frame mouth shapes, with Cohen-Massaro coarticulation.

A viseme is a mouth shape shared by several phonemes. We use the 15 visemes of the MPEG-4 / Oculus lip-sync
set. Each has a target mouth opening (0 = lips together, 1 = widest "aa") and width (1 = the rest width), and a
dominance: how strongly it holds its target against its neighbours. The mouth trajectory is the
dominance-weighted mean of the targets (Cohen & Massaro 1993, "Modeling coarticulation in synthetic visual
speech"), with one change: a segment's dominance is flat over its own interval and decays as a Gaussian of the
distance outside it, so a long pause is fully closed inside and a bilabial (high dominance, short reach) closes
the lips even between two open vowels.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rest.data.synth.speech import Phone


@dataclass(frozen=True)
class Viseme:
    """A mouth shape: its targets and how it coarticulates."""

    name: str
    open: float  # target opening, 0 (closed) .. 1 (widest)
    width: float  # target width relative to the rest width
    strength: float  # dominance inside its own interval
    reach: float  # seconds: standard deviation of the Gaussian dominance fall-off outside the interval


VISEMES: tuple[Viseme, ...] = (
    Viseme("sil", 0.00, 1.00, 3.0, 0.030),  # pause: lips together, relaxed (strong: speech does not leak far)
    Viseme("PP", 0.00, 0.94, 30.0, 0.012),  # p b m: lips pressed, must close whatever the neighbours
    Viseme("FF", 0.07, 0.98, 6.0, 0.015),  # f v: lower lip against the upper teeth
    Viseme("TH", 0.22, 1.00, 1.0, 0.025),  # th: tongue between the teeth
    Viseme("DD", 0.24, 1.02, 0.4, 0.030),  # t d: tongue tip, lips free
    Viseme("kk", 0.30, 1.00, 0.3, 0.030),  # k g h: back of the tongue, lips free
    Viseme("CH", 0.20, 0.82, 2.0, 0.030),  # sh ch j: lips pushed forward
    Viseme("SS", 0.12, 1.08, 1.5, 0.025),  # s z: teeth nearly together, lips spread
    Viseme("nn", 0.18, 1.00, 0.4, 0.030),  # n l: tongue tip, lips free
    Viseme("RR", 0.22, 0.84, 0.8, 0.030),  # r: lips slightly rounded
    Viseme("aa", 0.92, 1.04, 1.0, 0.040),  # a: jaw wide open
    Viseme("E", 0.55, 1.14, 1.0, 0.040),  # e, schwa: half open, spread
    Viseme("ih", 0.38, 1.16, 1.0, 0.040),  # i: narrow opening, spread
    Viseme("oh", 0.62, 0.80, 1.0, 0.040),  # o: open, rounded
    Viseme("ou", 0.28, 0.68, 1.2, 0.040),  # u w: small rounded opening
)
VISEME_IDS: dict[str, int] = {v.name: i for i, v in enumerate(VISEMES)}
SIL = VISEME_IDS["sil"]

# IPA base letters (diacritics, length and stress marks removed) -> viseme name.
_CONSONANTS = {
    **dict.fromkeys("pbmɓβ", "PP"),
    **dict.fromkeys("fvʋɱɸ", "FF"),
    **dict.fromkeys("θð", "TH"),
    **dict.fromkeys("tdɗʈɖɾɽc", "DD"),
    **dict.fromkeys("kgɡxɣqɢhɦʔχħʕɟ", "kk"),
    **dict.fromkeys("ʃʒɕʑçʂʐʝ", "CH"),
    **dict.fromkeys("sz", "SS"),
    **dict.fromkeys("nlɲɳɭʎŋɴɫɬɮ", "nn"),
    **dict.fromkeys("rɹɻʀʁɺ", "RR"),
    **dict.fromkeys("wɥʍ", "ou"),
    **dict.fromkeys("jʲ", "ih"),
}
_VOWELS = {
    **dict.fromkeys("aɑäæɐʌ", "aa"),
    **dict.fromkeys("eɛəɚɜɘɝ", "E"),
    **dict.fromkeys("iɪɨɯᵻ", "ih"),
    **dict.fromkeys("oɔɒøœɞɵ", "oh"),
    **dict.fromkeys("uʊyʏʉ", "ou"),
}
_AFFRICATES = {"ts": "SS", "dz": "SS", "tʃ": "CH", "dʒ": "CH", "tɕ": "CH", "dʑ": "CH", "tʂ": "CH", "dʐ": "CH"}


def _base_letters(symbol: str) -> str:
    """IPA symbol -> its letters only (no combining marks, length/stress marks, tone letters, dots or digits)."""
    decomposed = unicodedata.normalize("NFD", symbol)
    return "".join(c for c in decomposed if c in _CONSONANTS or c in _VOWELS)


def phone_visemes(symbol: str) -> list[int]:
    """Viseme ids of one phone: usually one; a diphthong ("aɪ", "oʊ") gives its two vowels; a pause gives [SIL]."""
    if not symbol.strip():
        return [SIL]
    letters = _base_letters(symbol)
    if not letters:  # a symbol we do not know: speech with free lips
        return [VISEME_IDS["DD"]]
    if letters[:2] in _AFFRICATES:
        return [VISEME_IDS[_AFFRICATES[letters[:2]]]]
    vowels = [c for c in letters if c in _VOWELS]
    if len(vowels) >= 2:  # diphthong or vowel + rhotic vowel: glide from the first vowel to the second
        return [VISEME_IDS[_VOWELS[vowels[0]]], VISEME_IDS[_VOWELS[vowels[-1]]]]
    if vowels:  # one vowel (possibly with a glide letter): the vowel shapes the lips
        return [VISEME_IDS[_VOWELS[vowels[0]]]]
    return [VISEME_IDS[_CONSONANTS[letters[0]]]]


@dataclass(frozen=True)
class Segment:
    """A viseme held over [start, end) seconds."""

    viseme: int
    start: float
    end: float


def phones_to_segments(phones: Sequence[Phone]) -> list[Segment]:
    """Viseme segments of a phone timeline; a two-viseme phone is split 60 / 40 between its parts."""
    segments = []
    for p in phones:
        ids = phone_visemes(p.symbol)
        if len(ids) == 1:
            segments.append(Segment(ids[0], p.start, p.end))
        else:
            mid = p.start + 0.6 * (p.end - p.start)
            segments += [Segment(ids[0], p.start, mid), Segment(ids[1], mid, p.end)]
    return segments


@dataclass
class MouthTrack:
    """Per-frame mouth ground truth (frame f is the audio window [f / fps, (f + 1) / fps), sampled at its centre)."""

    open: np.ndarray  # float32 (F,), 0 = closed .. about 1 = widest
    width: np.ndarray  # float32 (F,), relative to the rest width
    viseme: np.ndarray  # int16 (F,), id into VISEMES of the segment at the frame centre
    speech: np.ndarray  # bool (F,), the frame centre lies inside a phoneme (not a pause)


def mouth_track(segments: Sequence[Segment], num_frames: int, fps: int, articulation: float = 1.0) -> MouthTrack:
    """Sample the coarticulated mouth trajectory of `segments` at the frame centres.

    `segments` should tile the clip, pauses included (as "sil" segments). `articulation` scales the opening (a
    speaker who opens wide or barely moves the lips); the width moves towards 1 by the same factor.
    """
    times = (np.arange(num_frames) + 0.5) / fps  # (F,)
    open_ = np.zeros(num_frames)
    width = np.ones(num_frames)
    viseme = np.full(num_frames, SIL, dtype=np.int16)
    if segments:
        starts = np.array([s.start for s in segments])  # (S,)
        ends = np.array([s.end for s in segments])
        ids = np.array([s.viseme for s in segments])
        table = np.array([(v.open, v.width, v.strength, v.reach) for v in VISEMES])  # (V, 4)
        t_open, t_width, strength, reach = table[ids].T  # (S,) each
        # Dominance: flat inside a segment, Gaussian fall-off outside.
        dist = np.maximum(starts[None, :] - times[:, None], 0) + np.maximum(times[:, None] - ends[None, :], 0)
        dom = strength * np.exp(-0.5 * (dist / reach) ** 2)  # (F, S)
        # A whisper of silence everywhere keeps the mean defined where every segment's dominance has vanished.
        eps = 1e-6
        total = dom.sum(1) + eps  # (F,)
        open_ = (dom @ t_open + eps * VISEMES[SIL].open) / total
        width = (dom @ t_width + eps * VISEMES[SIL].width) / total
        inside = (times[:, None] >= starts[None, :]) & (times[:, None] < ends[None, :])  # (F, S)
        hit = inside.any(1)
        viseme[hit] = ids[inside[hit].argmax(1)]
    open_ = np.clip(open_ * articulation, 0.0, 1.0)
    width = 1.0 + (width - 1.0) * articulation
    return MouthTrack(
        open=open_.astype(np.float32),
        width=width.astype(np.float32),
        viseme=viseme,
        speech=viseme != SIL,
    )


__all__ = [
    "MouthTrack",
    "SIL",
    "Segment",
    "VISEMES",
    "VISEME_IDS",
    "Viseme",
    "mouth_track",
    "phone_visemes",
    "phones_to_segments",
]
