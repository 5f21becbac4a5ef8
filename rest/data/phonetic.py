"""A phonetic channel: phones decoded live from real speech by an acoustic model trained on real speech.

The mel audio encoders of this project learn from SynthTalk's synthetic voices, and on real human speech they hear
little of the mouth (docs/experiments.md, "real human speech"). `PhoneDecoder` runs pocketsphinx's US-English
acoustic model (CMU Sphinx, trained on hours of real recorded speech; the `pocketsphinx` wheel ships it, nothing is
downloaded) as a phone recogniser (`allphone` search with the wheel's phone language model, the settings of
CMU Sphinx's phoneme-recognition guide: language weight 2, beams 1e-20). It decodes 10 ms frames as audio
arrives; every 40 ms of audio (one video frame) it reads the best path so far and makes it final up to `settle_s`
before the newest decoded audio. What is final is never revised, so what a stream has been given never changes.

Determinism: the decoder consumes audio in fixed 640-sample steps and reads its best path only at those step
boundaries, so the phones it makes final do not depend on how the audio was split into pushes.

Bounded cost: the best path grows with the utterance, so once an utterance is `max_utterance_s` long the decoder
ends it where the final phones end (after a pause when one is final, else anywhere once it is twice that long) and
starts a new utterance there, re-decoding the audio after that point (max(`settle_s`, `DECODER_DELAY_S`), about 50 ms).
Memory and the cost per step do not grow with the stream.

`PhoneticExpert` turns the phones into the per-frame mouth opening through SynthTalk's viseme model
(rest.data.synth.visemes: ARPAbet -> IPA -> viseme, Cohen-Massaro coarticulation), the same labels SynthTalk's
faces are drawn from. Frame f is made final once the phones are final up to its centre plus `reach_s` (default
`READ_AHEAD_S`, 30 ms of the next phone's anticipation), so its look-ahead past the frame's centre is
`max(settle_s, DECODER_DELAY_S) + reach_s`: 80 ms by default, the mel audio encoder's. Reading 80 ms ahead instead
(all of a viseme's reach) changes the correlation with real speakers' mouths by 0.003 (docs/experiments.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from rest.data.synth.speech import Phone
from rest.data.synth.visemes import SIL, Segment, mouth_track, phones_to_segments
from rest.errors import RestError

SAMPLE_RATE = 16000
STEP_SAMPLES = 640  # one video frame at 25 fps: the decoder's read-out grid
FRAME_S = 0.01  # pocketsphinx's frame
COARTICULATION_S = 0.08  # a viseme's dominance reaches 2 of its standard deviations (at most 0.04 s) beyond it
READ_AHEAD_S = 0.03  # how far past a frame the phones must be final before it is computed
DECODER_DELAY_S = 0.05  # pocketsphinx's live front end holds 5 frames (the deltas' context) before they are searched
# A frame's channels: the mouth opening (0..1), the lip width relative to rest minus 1, and whether it is speech.
FRAME_CHANNELS: tuple[str, ...] = ("open", "width", "speech")

# pocketsphinx's en-us phone set (ARPAbet; stress is not decoded) -> IPA, read by the viseme model. AH is mostly the
# unstressed schwa in running speech; +NSN+ (noise) and +SPN+ (spoken noise) are not speech sounds: lips at rest.
ARPABET_IPA: dict[str, str] = {
    "AA": "ɑ", "AE": "æ", "AH": "ə", "AO": "ɔ", "AW": "aʊ", "AY": "aɪ", "B": "b", "CH": "tʃ", "D": "d", "DH": "ð",
    "EH": "ɛ", "ER": "ɝ", "EY": "eɪ", "F": "f", "G": "ɡ", "HH": "h", "IH": "ɪ", "IY": "i", "JH": "dʒ", "K": "k",
    "L": "l", "M": "m", "N": "n", "NG": "ŋ", "OW": "oʊ", "OY": "ɔɪ", "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ",
    "T": "t", "TH": "θ", "UH": "ʊ", "UW": "u", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
    "SIL": "", "+NSN+": "", "+SPN+": "",
}  # fmt: skip


def model_dir() -> str:
    """The en-us acoustic model and phone language model inside the installed pocketsphinx wheel."""
    try:
        import pocketsphinx
    except ImportError as e:
        raise RestError(
            "the phonetic channel needs pocketsphinx (its wheel ships the en-us acoustic model): "
            'pip install -e ".[metrics]"'
        ) from e
    root = os.path.join(pocketsphinx.get_model_path(), "en-us")
    for name in ("en-us", "en-us-phone.lm.bin"):
        if not os.path.exists(os.path.join(root, name)):
            raise RestError(f"{root}/{name} is missing: reinstall pocketsphinx, whose wheel ships it")
    return root


def phone_segments(phone: str, start: float, end: float) -> list[Segment]:
    """One decoded phone -> its viseme segments, as SynthTalk segments its phones (a diphthong glides)."""
    if phone not in ARPABET_IPA:
        raise RestError(f"pocketsphinx returned the phone {phone!r}, which is not in its en-us phone set")
    return phones_to_segments([Phone(ARPABET_IPA[phone], start, end)])


@dataclass
class _Utterance:
    start: float = 0.0  # stream time of the utterance's first sample, seconds
    samples: int = 0  # samples decoded in it


@dataclass
class PhoneDecoder:
    """Streaming phone recognition (module docstring). push() 16 kHz float samples, read the final segments."""

    settle_s: float = 0.2  # a phone is final once it ended this long before the audio decoded so far
    max_utterance_s: float = 8.0
    segments: list[Segment] = field(default_factory=list)  # final viseme segments, tiling [0, final_s)
    final_s: float = 0.0  # the stream time up to which the segments are final

    def __post_init__(self) -> None:
        if self.settle_s < 0 or self.max_utterance_s < 2 * self.settle_s + 1.0:
            raise ValueError(f"need settle_s >= 0 and max_utterance_s >= 2 settle_s + 1, got {self}")
        root = model_dir()  # first: a missing pocketsphinx is a RestError saying what to install
        from pocketsphinx import Decoder

        self._decoder = Decoder(
            hmm=os.path.join(root, "en-us"),
            allphone=os.path.join(root, "en-us-phone.lm.bin"),
            lw=2.0,
            beam=1e-20,
            pbeam=1e-20,
            loglevel="FATAL",
        )
        self._pending = np.zeros(0, np.int16)  # samples not yet a whole step
        self._tail = np.zeros(0, np.int16)  # decoded samples after final_s: re-decoded when an utterance restarts
        self._utt = _Utterance()
        self._decoder.start_utt()
        self.samples_in = 0

    @property
    def decoded_s(self) -> float:
        return self._utt.start + self._utt.samples / SAMPLE_RATE

    @property
    def pending_samples(self) -> int:
        """Pushed samples waiting for the rest of their 640-sample step."""
        return len(self._pending)

    @property
    def utterance_s(self) -> float:
        """Length of the utterance the decoder holds (bounded by the restarts)."""
        return self.decoded_s - self._utt.start

    def push(self, samples: np.ndarray) -> list[Segment]:
        """Decode `samples` (float in [-1, 1], 16 kHz); returns the segments that became final."""
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 1:
            raise ValueError(f"push 1-D mono samples, got shape {samples.shape}")
        if not np.isfinite(samples).all():
            raise ValueError("the samples contain NaN or infinity")
        self.samples_in += len(samples)
        pcm = np.concatenate([self._pending, (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)])
        steps = len(pcm) // STEP_SAMPLES
        self._pending = pcm[steps * STEP_SAMPLES :]
        new: list[Segment] = []
        for k in range(steps):
            new += self._step(pcm[k * STEP_SAMPLES : (k + 1) * STEP_SAMPLES])
        return new

    def flush(self) -> list[Segment]:
        """End of the stream: decode the last partial step and make every phone final (pauses fill the rest)."""
        if len(self._pending):
            self._decode(self._pending)
            self._pending = np.zeros(0, np.int16)
        self._decoder.end_utt()
        new = self._finalize(self.decoded_s, ended=True)
        self._decoder.start_utt()
        self._utt, self._tail = _Utterance(start=self.decoded_s), np.zeros(0, np.int16)
        return new

    def _decode(self, pcm: np.ndarray) -> None:
        self._decoder.process_raw(pcm.tobytes(), no_search=False, full_utt=False)
        self._utt.samples += len(pcm)
        self._tail = np.concatenate([self._tail, pcm])

    def _step(self, pcm: np.ndarray) -> list[Segment]:
        self._decode(pcm)
        new = self._finalize(self.decoded_s - self.settle_s, ended=False)
        length = self.utterance_s
        at_pause = bool(self.segments) and self.segments[-1].viseme == SIL
        if length >= self.max_utterance_s and (at_pause or length >= 2 * self.max_utterance_s):
            self._restart()
        return new

    def _finalize(self, horizon: float, ended: bool) -> list[Segment]:
        """Make the best path final up to `horizon` (a phone still going on there is cut at it; to the end when the
        utterance ended), so that no more than `settle_s` of the stream is ever undecided."""
        new = []
        for seg in self._decoder.seg() or ():  # None before the search has a hypothesis
            start = max(self._utt.start + seg.start_frame * FRAME_S, self.final_s)
            end = self._utt.start + (seg.end_frame + 1) * FRAME_S
            if not ended:
                end = min(end, horizon)
            if end > start + 1e-9:
                new += phone_segments(seg.word, start, end)
                self.final_s = end
            if not ended and end >= horizon - 1e-9:
                break
        if ended and self.decoded_s > self.final_s + 1e-9:  # frames the search left unlabelled: a pause
            new.append(Segment(SIL, self.final_s, self.decoded_s))
            self.final_s = self.decoded_s
        drop = round((self.final_s - self._utt.start) * SAMPLE_RATE) - (self._utt.samples - len(self._tail))
        self._tail = self._tail[max(drop, 0) :]
        self.segments += new
        return new

    def _restart(self) -> None:
        """End the utterance and start a new one at final_s, re-decoding the audio after it."""
        self._decoder.end_utt()
        tail = self._tail
        self._utt, self._tail = _Utterance(start=self.final_s), np.zeros(0, np.int16)
        self._decoder.start_utt()
        for k in range(0, len(tail), STEP_SAMPLES):
            self._decode(tail[k : k + STEP_SAMPLES])

    def forget_before(self, t: float) -> None:
        """Drop the final segments that ended before stream time `t` (a long stream keeps only what it reads)."""
        self.segments = [s for s in self.segments if s.end > t]


class PhoneticExpert:
    """Audio -> per-frame mouth opening (25 fps) from the phones of `PhoneDecoder` and SynthTalk's viseme model.

    Streaming: step(samples) returns the frames that became final; whole-file predict(samples) is the same stream
    pushed at once and flushed, with one value per 640 samples, the same count as `AudioExpert.predict`.
    """

    fps = 25

    def __init__(self, settle_s: float = 0.0, max_utterance_s: float = 8.0, reach_s: float = READ_AHEAD_S):
        self.settle_s, self.max_utterance_s, self.reach_s = settle_s, max_utterance_s, reach_s
        self.reset()

    @property
    def lookahead_s(self) -> float:
        """Audio needed beyond a frame's centre before that frame is final."""
        return max(self.settle_s, DECODER_DELAY_S) + self.reach_s

    def describe(self) -> str:
        return (
            f"pocketsphinx en-us allphone, phones final after {self.settle_s * 1000:.0f} ms, SynthTalk visemes read "
            f"{self.reach_s * 1000:.0f} ms ahead (look-ahead {self.lookahead_s * 1000:.0f} ms past a frame's centre)"
        )

    def reset(self) -> None:
        self.decoder = PhoneDecoder(self.settle_s, self.max_utterance_s)
        self.frames_out = 0

    def step(self, samples: np.ndarray) -> np.ndarray:
        """Push samples; the mouth opening of the frames that became final. A frame is computed from the phones
        final when its audio step completed, whatever the pushes, so the output does not depend on how the audio
        was split."""
        return self.step_frames(samples)[:, 0]

    def flush(self) -> np.ndarray:
        return self.flush_frames()[:, 0]

    def step_frames(self, samples: np.ndarray) -> np.ndarray:
        """As `step`, with every channel of a frame: (n, 3) float32, `FRAME_CHANNELS`."""
        samples = np.asarray(samples, np.float32)
        out, start = [np.zeros((0, len(FRAME_CHANNELS)), np.float32)], 0
        while start < len(samples):
            stop = start + STEP_SAMPLES - self.decoder.pending_samples
            self.decoder.push(samples[start:stop])
            # The frames whose centre lies reach_s or more before the end of the final phones.
            out.append(self._emit(int(np.floor((self.decoder.final_s - self.reach_s) * self.fps - 0.5)) + 1))
            start = stop
        return np.concatenate(out)

    def flush_frames(self) -> np.ndarray:
        """The end of the stream: the frames left, (n, 3) float32."""
        self.decoder.flush()
        return self._emit(self.decoder.samples_in // STEP_SAMPLES)

    def _emit(self, end: int) -> np.ndarray:
        """Frames [frames_out, end), not emitted yet: (n, 3) float32, `FRAME_CHANNELS`."""
        if end <= self.frames_out:
            return np.zeros((0, len(FRAME_CHANNELS)), np.float32)
        first = self.frames_out
        t0 = first / self.fps - 4 * COARTICULATION_S  # segments that can still reach the first frame
        segments = [s for s in self.decoder.segments if s.end > t0]
        track = mouth_track(_shifted(segments, first / self.fps), end - first, self.fps)
        self.decoder.forget_before(t0)
        self.frames_out = end
        return np.stack([track.open, track.width - 1.0, track.speech], axis=1).astype(np.float32)

    def predict(self, samples: np.ndarray) -> np.ndarray:
        """Whole file, as a new stream (the expert is reset first): float32 (len(samples) // 640,)."""
        return self.predict_frames(samples)[:, 0]

    def predict_frames(self, samples: np.ndarray) -> np.ndarray:
        """Whole file, every channel: float32 (len(samples) // 640, 3)."""
        self.reset()
        return np.concatenate([self.step_frames(samples), self.flush_frames()])


#################################################################################
#                  The phonetic channel as a streaming audio path               #
#################################################################################


@dataclass(frozen=True)
class PhoneticConfig:
    """What `StreamingSession` reads of an audio path's config."""

    sample_rate: int = SAMPLE_RATE
    fps: int = PhoneticExpert.fps
    out_dim: int = len(FRAME_CHANNELS)
    attn_window: int = 0  # frames of past audio the path attends to (the mel encoder's 50): none, it has no network


class PhoneticState:
    """One stream batch's decoders, and the frames an item has that the others do not have yet."""

    def __init__(self, batch_size: int, settle_s: float):
        self.experts = [PhoneticExpert(settle_s) for _ in range(batch_size)]
        self.pending = [np.zeros((0, len(FRAME_CHANNELS)), np.float32) for _ in range(batch_size)]

    def reset(self) -> None:
        for expert in self.experts:
            expert.reset()
        self.pending = [p[:0] for p in self.pending]

    def take(self, new: list[np.ndarray]) -> torch.Tensor:
        """Add each item's new frames; the frames every item has, (B, k, 3)."""
        self.pending = [np.concatenate([p, n]) for p, n in zip(self.pending, new, strict=True)]
        k = min(len(p) for p in self.pending)
        out = np.stack([p[:k] for p in self.pending])
        self.pending = [p[k:] for p in self.pending]
        return torch.from_numpy(out)


class PhoneticAudioEncoder(torch.nn.Module):
    """The phonetic channel with an audio encoder's streaming interface (`init_state`, `step`, `flush`), so that a
    `StreamingSession` takes it as its audio path: samples (B, n) -> per-frame features (B, k, 3), `FRAME_CHANNELS`
    (the mouth SynthTalk's viseme model draws for the decoded phones). Look-ahead: 80 ms past a frame's centre,
    as the mel encoder's (`PhoneticExpert.lookahead_s`). No parameters: the decoder runs on the CPU.

    As a module (the `audio_encoder` of a teacher or student, rest/training): `forward` takes samples (B, N) and
    decodes each row as a whole file, or features (B, F, 3) already decoded (`cache_phonetic`'s, what training
    windows carry, since decoding is not differentiable and costs 3 ms per 40 ms) and returns them as they are.
    `lookahead_frames` (2) is the look-ahead in whole frames of audio after a frame's own: what a stream must have
    pushed before the frame's features exist, as `AudioEncoder.lookahead_frames`.
    """

    def __init__(self, settle_s: float = 0.0):
        super().__init__()
        model_dir()  # fail now, with the install hint, if pocketsphinx is missing
        self.settle_s = settle_s
        self.config = PhoneticConfig()
        self.samples_per_frame = self.config.sample_rate // self.config.fps
        self.lookahead_s = PhoneticExpert(settle_s).lookahead_s
        # Past the frame's end (half a frame after its centre), rounded up to the decoder's 640-sample steps.
        self.lookahead_frames = math.ceil(round((self.lookahead_s - 0.5 / self.config.fps) * self.config.fps, 6))

    @property
    def latency_s(self) -> float:
        """Audio a frame waits for beyond its own: the look-ahead (as `AudioEncoder.latency_s`)."""
        return self.lookahead_s

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.samples_per_frame

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """samples (B, N) -> (B, N // 640, 3), each row decoded as one stream; or features (B, F, 3) -> the same."""
        if audio.ndim == 3 and audio.shape[-1] == self.config.out_dim:
            return audio
        if audio.ndim != 2:
            d = self.config.out_dim
            raise ValueError(f"expected samples (B, N) or features (B, F, {d}), got {tuple(audio.shape)}")
        rows = [self.encode(x) for x in audio.detach().float().cpu().numpy()]
        return torch.from_numpy(np.stack(rows)).to(audio.device)

    def init_state(self, batch_size: int = 1) -> PhoneticState:
        return PhoneticState(batch_size, self.settle_s)

    def step(self, samples: torch.Tensor, state: PhoneticState) -> tuple[torch.Tensor, PhoneticState]:
        """samples (B, n) float in [-1, 1] -> the features of the frames that became final (B, k, 3)."""
        if samples.ndim != 2 or samples.shape[0] != len(state.experts):
            raise ValueError(f"samples must be (B={len(state.experts)}, n), got {tuple(samples.shape)}")
        pcm = samples.detach().float().cpu().numpy()
        out = state.take([e.step_frames(x) for e, x in zip(state.experts, pcm, strict=True)])
        return out.to(samples.device), state

    def flush(self, state: PhoneticState) -> tuple[torch.Tensor, PhoneticState]:
        """The end of the streams: the frames left."""
        return state.take([e.flush_frames() for e in state.experts]), state

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """A whole file (n,) -> (n // 640, 3): the same frames as the stream."""
        return PhoneticExpert(self.settle_s).predict_frames(samples)


def _shifted(segments: list[Segment], t0: float) -> list[Segment]:
    return [Segment(s.viseme, s.start - t0, s.end - t0) for s in segments]


__all__ = [
    "ARPABET_IPA",
    "FRAME_CHANNELS",
    "PhoneticAudioEncoder",
    "PhoneticConfig",
    "COARTICULATION_S",
    "DECODER_DELAY_S",
    "READ_AHEAD_S",
    "PhoneDecoder",
    "PhoneticExpert",
    "model_dir",
    "phone_segments",
]
