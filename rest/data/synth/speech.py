"""Speech for SynthTalk: three synthesizers with exact phone timings (espeak-ng through ctypes; festival and flite,
whose voices are built from recordings of real speakers, through their command-line programs), and a polyphase
resampler.

Every engine returns `Utterance`s whose phones are IPA symbols ("" for a pause) tiling the audio, so the viseme
model (`visemes.py`) treats them alike. festival and flite speak ARPAbet-style phone sets (`ARPABET_IPA` maps them);
symbols of other phone sets pass through unchanged and fall back to the viseme model's rules for unknown letters.

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


ENGINES = ("espeak", "festival", "flite")


@dataclass(frozen=True)
class Voice:
    """A voice of one engine: an espeak-ng language voice plus a variant (`espeak-ng --voices=variant`), a festival
    voice (`variant` is its name without `voice_`, e.g. "kal_diphone") or a flite voice ("awb", "rms", "slt")."""

    language: str  # the text's language: "en-us", "de", "cmn", ...
    variant: str = ""  # espeak variant ("m3", "f2", "Alex"; "" = the language's default), or the festival/flite voice
    engine: str = "espeak"  # one of ENGINES

    @property
    def name(self) -> str:
        """espeak: the name `espeak_SetVoiceByName` takes, e.g. "en-us+f2"; others: "festival:kal_diphone"."""
        if self.engine != "espeak":
            return f"{self.engine}:{self.variant}"
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
#                              festival and flite                               #
#################################################################################

FESTIVAL_HINT = "install it with `apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts`"
FLITE_HINT = "install it with `apt-get install flite`"

# festival's and flite's English phone sets (ARPAbet, lower case) -> IPA; "pau" is a pause.
ARPABET_IPA: dict[str, str] = {
    "aa": "ɑ", "ae": "æ", "ah": "ʌ", "ao": "ɔ", "aw": "aʊ", "ax": "ə", "ay": "aɪ", "eh": "ɛ", "er": "ɝ", "ey": "eɪ",
    "ih": "ɪ", "iy": "i", "ow": "oʊ", "oy": "ɔɪ", "uh": "ʊ", "uw": "u", "b": "b", "ch": "tʃ", "d": "d", "dh": "ð",
    "f": "f", "g": "g", "hh": "h", "jh": "dʒ", "k": "k", "l": "l", "m": "m", "n": "n", "ng": "ŋ", "p": "p", "r": "ɹ",
    "s": "s", "sh": "ʃ", "t": "t", "th": "θ", "v": "v", "w": "w", "y": "j", "z": "z", "zh": "ʒ",
    "pau": "", "h#": "", "sil": "", "#": "",
}  # fmt: skip
# Text encodings festival's voices read, by language (its lexicons predate UTF-8).
_FESTIVAL_ENCODING = {"it": "latin-1", "es": "latin-1", "fi": "latin-1", "ca": "latin-1", "cs": "iso-8859-2"}


def _ipa(symbol: str) -> str:
    """A festival / flite phone name -> IPA (stress digits dropped); unknown names pass through."""
    name = symbol.strip().lower().rstrip("012")
    return ARPABET_IPA.get(name, name)


def _phones_from_ends(ends: list[tuple[float, str]], duration: float) -> list[Phone]:
    """(end time, phone name) pairs in order -> IPA phones tiling [0, duration]; the last phone ends at `duration`."""
    phones, start = [], 0.0
    for i, (end, name) in enumerate(ends):
        end = duration if i == len(ends) - 1 else min(max(end, start), duration)
        if end > start:
            phones.append(Phone(unicodedata.normalize("NFC", _ipa(name)), start, end))
        start = end
    if start < duration:
        phones.append(Phone("", start, duration))
    return phones


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file -> float32 mono samples in [-1, 1] and the sample rate."""
    import wave

    with wave.open(path, "rb") as f:
        if f.getsampwidth() != 2:
            raise RestError(f"{path}: expected 16-bit PCM, got {8 * f.getsampwidth()}-bit")
        pcm = np.frombuffer(f.readframes(f.getnframes()), np.int16).reshape(-1, f.getnchannels())
        return pcm.mean(axis=1).astype(np.float32) / 32768.0, f.getframerate()


def _run(command: list[str], what: str, hint: str, stdin: bytes | None = None) -> str:
    import shutil
    import subprocess

    if shutil.which(command[0]) is None:
        raise RestError(f"{what} is not installed ({command[0]} not found); {hint}")
    done = subprocess.run(command, input=stdin, capture_output=True, timeout=600)
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RestError(f"{what} failed (exit {done.returncode}): {err[-1] if err else 'no message'}")
    return done.stdout.decode("utf-8", "replace")


class Festival:
    """The festival speech synthesizer, one batch process per request; segment end times from its Segment relation.

    Prosody: the rate sets festival's `Duration_Stretch` (175 wpm = 1.0); pitch is the voice's own (augmentation
    varies it in training).
    """

    def speak(self, voice: Voice, prosody: Prosody, texts: list[str], seed: int = 0) -> list[Utterance]:
        import tempfile

        del seed  # festival's synthesis is deterministic
        with tempfile.TemporaryDirectory(prefix="rest-festival-") as tmp:
            lines = [f"(voice_{voice.variant})", f"(Parameter.set 'Duration_Stretch {175.0 / prosody.rate:.4f})"]
            for i, text in enumerate(texts):
                quoted = text.replace("\\", " ").replace('"', " ")
                lines += [
                    f'(set! u (utt.synth (Utterance Text "{quoted}")))',
                    f'(utt.save.wave u "{tmp}/{i}.wav" \'riff)',
                    f'(utt.save.segs u "{tmp}/{i}.segs")',
                ]
            script = f"{tmp}/speak.scm"
            with open(script, "wb") as f:
                f.write(
                    "\n".join(lines).encode(_FESTIVAL_ENCODING.get(voice.language.split("-")[0], "latin-1"), "replace")
                )
            _run(["festival", "--batch", script], "festival", FESTIVAL_HINT)
            out = []
            for i, text in enumerate(texts):
                if not os.path.exists(f"{tmp}/{i}.wav"):
                    raise RestError(
                        f"festival has no voice {voice.variant!r} (or it failed on {text!r}); {FESTIVAL_HINT}"
                    )
                audio, rate = _read_wav(f"{tmp}/{i}.wav")
                ends = []
                with open(f"{tmp}/{i}.segs", encoding="latin-1") as f:
                    for line in f.read().split("#", 1)[-1].splitlines():
                        parts = line.split()
                        if len(parts) >= 3:
                            ends.append((float(parts[0]), parts[2]))
                out.append(Utterance(text, audio, rate, _phones_from_ends(ends, len(audio) / rate), []))
            return out


class Flite:
    """flite (CMU's small synthesizer; its awb / rms / slt voices are built from CMU ARCTIC recordings), one process
    per text; `-psdur` prints every segment's end time. Prosody: the rate sets `duration_stretch`."""

    def speak(self, voice: Voice, prosody: Prosody, texts: list[str], seed: int = 0) -> list[Utterance]:
        import tempfile

        del seed  # flite's synthesis is deterministic
        out = []
        with tempfile.TemporaryDirectory(prefix="rest-flite-") as tmp:
            for text in texts:
                command = ["flite", "-voice", voice.variant, "-psdur", "--setf"]
                command += [f"duration_stretch={175.0 / prosody.rate:.4f}", "-t", text, "-o", f"{tmp}/u.wav"]
                printed = _run(command, "flite", FLITE_HINT)
                audio, rate = _read_wav(f"{tmp}/u.wav")
                ends = [
                    (float(t), name) for name, t in (item.rsplit(":", 1) for item in printed.split() if ":" in item)
                ]
                out.append(Utterance(text, audio, rate, _phones_from_ends(ends, len(audio) / rate), []))
        return out


def check_voices(voices) -> None:
    """Speak one word with each festival / flite voice in `voices`, so that a missing program or voice fails before
    any work, with what to install."""
    for voice in sorted(voices, key=lambda v: v.name):
        if voice.engine == "espeak":
            continue
        hint = FESTIVAL_HINT if voice.engine == "festival" else FLITE_HINT
        try:
            get_engine(voice.engine).speak(voice, Prosody(), ["Hello."])
        except RestError as err:
            raise RestError(f"voice {voice.name} cannot speak: {err}; {hint} and the voice's package") from None


def get_engine(engine: str) -> Espeak | Festival | Flite:
    """The synthesizer that speaks a voice of `engine` (one of ENGINES)."""
    if engine == "espeak":
        return get_espeak()
    if engine == "festival":
        return Festival()
    if engine == "flite":
        return Flite()
    raise RestError(f"unknown speech engine {engine!r}; choose from {', '.join(ENGINES)}")


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
    "ARPABET_IPA",
    "ENGINES",
    "ESPEAK_LIBRARY",
    "Espeak",
    "EspeakError",
    "Festival",
    "Flite",
    "check_voices",
    "Phone",
    "Prosody",
    "Utterance",
    "Voice",
    "espeak_available",
    "get_engine",
    "get_espeak",
    "resample",
]
