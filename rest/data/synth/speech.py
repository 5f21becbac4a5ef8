"""Speech for SynthTalk: espeak-ng through ctypes (audio + timed phonemes), and a polyphase resampler.

espeak-ng keeps global synthesis state between calls (phase accumulators, noise generators, the length of the
final pause), so the same text can come out a few samples different depending on what was spoken before. To
make a clip depend only on its own text and voice, `Espeak` initialises the library once and speaks a fixed
warm-up sentence; every later request runs in a forked child that starts from exactly that state and is
thrown away afterwards. A request is one clip's utterances, so a fork costs a few ms per clip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import unicodedata
from dataclasses import dataclass

import numpy as np

from rest.errors import RestError

ESPEAK_LIBRARY = "libespeak-ng.so.1"
INSTALL_HINT = "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or your system's espeak-ng package"

# espeak_AUDIO_OUTPUT / espeakINITIALIZE_* / espeak_EVENT_TYPE / espeak_PARAMETER values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x1
_INIT_PHONEME_IPA = 0x2
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_WARM_UP = ("en-us", "Warming up the speech synthesizer.")


class EspeakError(RestError):
    """espeak-ng is missing or refused a request."""


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: a language voice plus a variant (`espeak-ng --voices=variant`)."""

    language: str  # espeak voice name: "en-us", "de", "cmn", ...
    variant: str = ""  # variant file name: "m3", "f2", "Alex", ... ("" = the language's default)

    @property
    def name(self) -> str:
        """The name `espeak_SetVoiceByName` takes, e.g. "en-us+f2"."""
        return f"{self.language}+{self.variant}" if self.variant else self.language


@dataclass(frozen=True)
class Prosody:
    """Speaking style of one request, in espeak-ng's units."""

    rate: int = 175  # words per minute (espeak accepts 80..450)
    pitch: int = 50  # base pitch, 0..100
    pitch_range: int = 50  # intonation range, 0 (monotone)..100


@dataclass(frozen=True)
class Phone:
    """One phoneme event: IPA symbol ("" for a pause) and its interval in seconds from the utterance start."""

    symbol: str
    start: float
    end: float


@dataclass
class Utterance:
    """One synthesized text: mono audio and the phoneme intervals that tile it."""

    text: str
    audio: np.ndarray  # float32 (N,) in [-1, 1] at `sample_rate`
    sample_rate: int
    phones: list[Phone]  # sorted, non-overlapping, covering [0, N / sample_rate]
    switches: list[str]  # language switches espeak made ("(en)" ...): words it did not know in this language

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


#################################################################################
#                                  espeak-ng                                    #
#################################################################################


class _Event(ctypes.Structure):
    """`espeak_EVENT` of speak_lib.h (the `id` union read as its 8-byte phoneme-name member)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms, rounded down
        ("sample", ctypes.c_int),  # samples from the start of this synthesis
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def espeak_available(library: str = ESPEAK_LIBRARY) -> bool:
    """Whether the espeak-ng shared library can be loaded."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


class Espeak:
    """espeak-ng (synchronous mode, IPA phoneme events) for this process; get it with `get_espeak()`.

    The library has one global state per process, so there is one instance per process. `speak` runs each
    request in a forked child started from the same post-warm-up state (see the module docstring), which makes
    the output a function of the request alone.
    """

    def __init__(self, library: str = ESPEAK_LIBRARY):
        if _ESPEAK is not None:
            raise EspeakError("espeak-ng is already initialised in this process: use get_espeak()")
        try:
            self._lib = ctypes.CDLL(library)
        except OSError:
            raise EspeakError(f"espeak-ng is not installed ({library} not found); {INSTALL_HINT}") from None
        libc_name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc_name) if libc_name else None
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size in bytes (including the terminating NUL)
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier out
            ctypes.c_void_p,  # user data
        ]
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA
        )
        if self.sample_rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({self.sample_rate}); is espeak-ng-data installed?")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []  # (sample, IPA name)
        self._callback = _SynthCallback(self._on_audio)  # keep a reference: espeak holds the raw pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._synthesize(Voice(_WARM_UP[0]), Prosody(), _WARM_UP[1])  # the first synthesis differs from later ones

    def _on_audio(self, wav, num_samples: int, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                self._events.append((event.sample, bytes(event.id).rstrip(b"\0").decode("utf-8", "replace")))
            i += 1
        return 0  # 0 = continue synthesis

    def _synthesize(self, voice: Voice, prosody: Prosody, text: str) -> Utterance:
        """Speak one text in this process (changes espeak's state; `speak` calls it in a child)."""
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice.name!r}; list them with `espeak-ng --voices`")
        self._lib.espeak_SetParameter(_PARAM_RATE, int(prosody.rate), 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(prosody.pitch), 0)
        self._lib.espeak_SetParameter(_PARAM_RANGE, int(prosody.pitch_range), 0)
        self._chunks, self._events = [], []
        data = ctypes.create_string_buffer(text.encode("utf-8"))
        err = self._lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise EspeakError(f"espeak_Synth failed with code {err} on {text!r}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        audio = pcm.astype(np.float32) / 32768.0
        phones = _phones_from_events(self._events, len(audio), self.sample_rate)
        switches = [name for _, name in self._events if name.startswith("(")]
        return Utterance(text, audio, self.sample_rate, phones, switches)

    def speak(self, voice: Voice, prosody: Prosody, texts: list[str], seed: int = 0) -> list[Utterance]:
        """Synthesize `texts` in order with one voice, in a child forked from the clean state.

        `seed` seeds the C library's `rand()`, which some voices use for noise and jitter. The result depends
        only on the arguments, not on anything synthesized before in this process.
        """
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesize, send the pickled result (or the error), exit without cleanup
            os.close(read_fd)
            code = 0
            try:
                if self._libc is not None:
                    self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
                result: object = [self._synthesize(voice, prosody, t) for t in texts]
            except BaseException as err:  # anything, KeyboardInterrupt included, must reach the parent
                result, code = EspeakError(f"speech synthesis failed: {err}"), 1
            try:
                with os.fdopen(write_fd, "wb") as f:
                    f.write(pickle.dumps(result))
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            raise EspeakError(f"the espeak-ng child process died (wait status {status}) speaking {texts[:1]!r}")
        result = pickle.loads(data)
        if isinstance(result, BaseException):
            raise result
        return result


def _phones_from_events(events: list[tuple[int, str]], num_samples: int, sample_rate: int) -> list[Phone]:
    """Turn (start sample, name) phoneme events into intervals that tile [0, num_samples].

    Language-switch markers such as "(en)" are dropped; a phone ends where the next one starts, the last one at
    the end of the audio; zero-length phones are dropped; audio before the first event is a pause.
    """
    marks = [(min(max(s, 0), num_samples), name) for s, name in events if not name.startswith("(")]
    if not marks or marks[0][0] > 0:
        marks.insert(0, (0, ""))
    phones = []
    for (start, name), (end, _) in zip(marks, marks[1:] + [(num_samples, "")], strict=True):
        if end > start:
            phones.append(Phone(unicodedata.normalize("NFC", name), start / sample_rate, end / sample_rate))
    return phones


_ESPEAK: Espeak | None = None


def get_espeak() -> Espeak:
    """This process's `Espeak`, created and warmed up on first use.

    A process forked from one that has it keeps using it: the inherited library state is the clean post-warm-up
    state (nothing is ever synthesized in it directly), and initialising the library twice is not supported.
    """
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = Espeak()
    return _ESPEAK


#################################################################################
#                                  Resampling                                   #
#################################################################################


def resample(audio: np.ndarray, sr_in: int, sr_out: int, zero_crossings: int = 16, beta: float = 8.6) -> np.ndarray:
    """Band-limited resampling by a rational factor: a Kaiser-windowed sinc evaluated as a polyphase filter bank.

    Output sample n sits at input time n * sr_in / sr_out; its value is the input convolved with a low-pass sinc
    (cut-off at 0.95 of the lower Nyquist frequency) at that fractional position. With up / down = L / M in lowest
    terms there are L distinct fractional positions, so the filter is precomputed as L phases.

    Args:
        audio: float (N,) mono.
        sr_in, sr_out: sample rates in Hz.
        zero_crossings: half-length of the sinc, in zero crossings of the cut-off frequency.
        beta: Kaiser window shape (8.6: about 90 dB stop-band attenuation).
    Returns:
        float32 (ceil(N * sr_out / sr_in),).
    """
    audio = np.asarray(audio, dtype=np.float64)
    if sr_in == sr_out:
        return audio.astype(np.float32)
    g = np.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g  # output sample n is at input position n * down / up
    cutoff = 0.5 * min(1.0, up / down) * 0.95  # cycles per input sample
    half = int(np.ceil(zero_crossings / (2 * cutoff)))  # taps on each side, in input samples
    taps = np.arange(-half, half + 1)  # (T,)
    phases = np.arange(up) * down % up / up  # fractional offset of each phase (P,)
    t = taps[None, :] - phases[:, None]  # (P, T) tap position relative to the output instant
    bank = 2 * cutoff * np.sinc(2 * cutoff * t) * np.i0(beta * np.sqrt(np.clip(1 - (t / (half + 1)) ** 2, 0, 1)))
    bank /= np.i0(beta)
    n_out = int(np.ceil(len(audio) * up / down))
    padded = np.concatenate([np.zeros(half), audio, np.zeros(half + down + 1)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, len(taps))  # (N + ..., T), a view
    out = np.empty(n_out)
    for r in range(min(up, n_out)):  # outputs r, r + up, r + 2 up, ... share one phase
        base = r * down // up  # input index at or before output r; + down for every + up outputs
        count = len(range(r, n_out, up))
        out[r::up] = windows[base : base + count * down : down] @ bank[r]
    return out.astype(np.float32)


__all__ = [
    "ESPEAK_LIBRARY",
    "Espeak",
    "EspeakError",
    "Phone",
    "Prosody",
    "Utterance",
    "Voice",
    "espeak_available",
    "get_espeak",
    "resample",
]
