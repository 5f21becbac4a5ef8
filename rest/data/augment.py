"""Speech augmentation for training on synthetic voices: what real recordings do to speech that a synthesizer does not.

A model that learns mouth motion from espeak-ng, festival and flite hears clean, level, dry, full-band speech with a
digital-silence floor. Users bring microphones, rooms, phone lines and compressed files. Each transform below is
one of those differences; `SpeechAugment` draws a random chain of them per training window. Every transform keeps
the audio's timing, so the per-frame labels stay aligned, except `speed`, which resamples audio and labels together.

- speed: play the window faster or slower by a factor (pitch, formants and tempo move together, as in the speed
  perturbation of Ko et al., Interspeech 2015, which also approximates vocal-tract-length perturbation);
- reverb: a synthetic room impulse response (direct path + exponentially decaying noise for a drawn RT60);
- band: high-pass and low-pass edges (telephone, cheap microphones, band-limited codecs);
- tilt: a spectral slope in dB per octave (microphone and room colour);
- noise: white-to-brown coloured noise at a drawn signal-to-noise ratio, and sometimes another window's speech
  quietly underneath (babble);
- codec: 8-bit mu-law companding (telephony) as a cheap stand-in for lossy coding;
- gain: the level anywhere from quiet to slightly clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of `SpeechAugment`'s transforms (a probability of 0 turns one off)."""

    speed_p: float = 0.5
    speed_range: tuple[float, float] = (0.85, 1.15)  # playback rate: > 1 is faster and higher
    reverb_p: float = 0.4
    rt60_range: tuple[float, float] = (0.15, 0.8)  # seconds
    band_p: float = 0.4
    highpass_range: tuple[float, float] = (60.0, 400.0)  # Hz
    lowpass_range: tuple[float, float] = (2800.0, 7500.0)  # Hz
    tilt_p: float = 0.4
    tilt_range: tuple[float, float] = (-4.0, 3.0)  # dB per octave around 1 kHz
    noise_p: float = 0.6
    snr_range: tuple[float, float] = (5.0, 35.0)  # dB, speech RMS over noise RMS
    babble_p: float = 0.15
    babble_snr_range: tuple[float, float] = (12.0, 25.0)  # dB
    codec_p: float = 0.15
    gain_db_range: tuple[float, float] = (-30.0, 3.0)  # dB relative to a peak of 1 (above 0 clips)

    def __post_init__(self):
        for name, value in vars(self).items():
            if name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} is a probability, got {value}")
            if name.endswith("_range") and not value[0] <= value[1]:
                raise ValueError(f"augment.{name} must be (low, high) with low <= high, got {value}")
        if self.speed_range[0] <= 0:
            raise ValueError(f"augment.speed_range must be positive, got {self.speed_range}")


def _spectrum_filter(audio: np.ndarray, sample_rate: int, gain_of_hz) -> np.ndarray:
    """Zero-phase filtering by a real gain curve over frequency (FFT of the whole window)."""
    n = len(audio)
    size = 1 << int(np.ceil(np.log2(max(n, 2))))
    spectrum = np.fft.rfft(audio, size)
    hz = np.fft.rfftfreq(size, 1.0 / sample_rate)
    return np.fft.irfft(spectrum * gain_of_hz(hz), size)[:n]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def speed(
    audio: np.ndarray, labels: np.ndarray, factor: float, samples_per_frame: int
) -> tuple[np.ndarray, np.ndarray]:
    """Play audio (N,) with per-frame labels (F,) `factor` times faster: (N / factor,), (F / factor,) by interpolation.

    Output sample i takes the input at i * factor (linear interpolation; the small aliasing of rates near 1 is one
    more imperfection of real recordings); label j is the input's label track at time j * factor.
    """
    n_out = int(len(audio) / factor)
    f_out = n_out // samples_per_frame
    audio_out = np.interp(np.arange(n_out) * factor, np.arange(len(audio)), audio).astype(np.float32)
    labels_out = np.interp(np.arange(f_out) * factor, np.arange(len(labels)), labels).astype(np.float32)
    return audio_out, labels_out


def reverb(audio: np.ndarray, sample_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room: a unit direct path, then noise decaying by 60 dB in `rt60` seconds.

    The direct path is at time 0, so the speech keeps its timing; the tail's level relative to the direct path is
    drawn (close or far microphone).
    """
    length = int(min(rt60, 1.0) * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.normal(0.0, 1.0, length) * np.exp(-6.9078 * t / rt60)  # 60 dB = e^-6.9078 in amplitude
    tail[: int(0.002 * sample_rate)] = 0.0  # first reflections arrive after a couple of ms
    ratio_db = rng.uniform(-6.0, 12.0)  # direct-to-reverberant energy ratio
    tail *= 10 ** (-ratio_db / 20) / np.sqrt(np.sum(tail**2) + 1e-12)
    tail[0] = 1.0
    size = 1 << int(np.ceil(np.log2(len(audio) + length)))
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(tail, size), size)[: len(audio)]
    return wet * (_rms(audio) / _rms(wet))


def band_limit(audio: np.ndarray, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """High-pass at `low_hz` and low-pass at `high_hz`, each a 4th-order Butterworth magnitude (zero phase)."""

    def gain(hz):
        hp = 1.0 / np.sqrt(1.0 + (low_hz / np.maximum(hz, 1e-3)) ** 8)
        lp = 1.0 / np.sqrt(1.0 + (hz / high_hz) ** 8)
        return hp * lp

    return _spectrum_filter(audio, sample_rate, gain)


def tilt(audio: np.ndarray, sample_rate: int, db_per_octave: float) -> np.ndarray:
    """A spectral slope of `db_per_octave` around 1 kHz (limited to +-18 dB), level kept."""

    def gain(hz):
        octaves = np.log2(np.maximum(hz, 20.0) / 1000.0)
        return 10 ** (np.clip(db_per_octave * octaves, -18.0, 18.0) / 20)

    out = _spectrum_filter(audio, sample_rate, gain)
    return out * (_rms(audio) / _rms(out))


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power falls as 1 / f^exponent (0 white, 1 pink, 2 brown)."""
    size = 1 << int(np.ceil(np.log2(max(n, 2))))
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, size))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), size)[:n]
    return noise / _rms(noise)


def mu_law(audio: np.ndarray, bits: int = 8) -> np.ndarray:
    """Mu-law companding and quantisation to `bits` bits, then expansion (G.711-style telephony)."""
    mu = 2**bits - 1
    x = np.clip(audio, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    y = np.round((y + 1) / 2 * mu) / mu * 2 - 1
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


class SpeechAugment:
    """Draws a random chain of the transforms (module docstring) for each training window."""

    def __init__(self, config: AugmentConfig | None = None, sample_rate: int = 16000):
        self.config = config or AugmentConfig()
        self.sample_rate = sample_rate

    def speed_factor(self, rng: np.random.Generator) -> float:
        """The playback rate of the next window (1.0 when speed is not drawn); the sampler cuts the source for it."""
        c = self.config
        return float(rng.uniform(*c.speed_range)) if rng.random() < c.speed_p else 1.0

    def __call__(self, audio: np.ndarray, rng: np.random.Generator, babble: np.ndarray | None = None) -> np.ndarray:
        """One window (N,) float -> its augmented copy (N,) float32; `babble`: other speech of at least N samples."""
        c, sr = self.config, self.sample_rate
        x = np.asarray(audio, np.float64)
        if rng.random() < c.reverb_p:
            x = reverb(x, sr, rng.uniform(*c.rt60_range), rng)
        if rng.random() < c.tilt_p:
            x = tilt(x, sr, rng.uniform(*c.tilt_range))
        level = _rms(x)
        if babble is not None and rng.random() < c.babble_p:
            other = np.asarray(babble[: len(x)], np.float64)
            x = x + other * (level / _rms(other)) * 10 ** (-rng.uniform(*c.babble_snr_range) / 20)
        if rng.random() < c.noise_p:
            noise = colored_noise(len(x), rng.uniform(0.0, 2.0), rng)
            x = x + noise * level * 10 ** (-rng.uniform(*c.snr_range) / 20)
        if rng.random() < c.band_p:
            x = band_limit(x, sr, rng.uniform(*c.highpass_range), rng.uniform(*c.lowpass_range))
        peak = float(np.abs(x).max()) or 1.0
        x = x / peak * 10 ** (rng.uniform(*c.gain_db_range) / 20)
        if rng.random() < c.codec_p:
            x = mu_law(x)
        return np.clip(x, -1.0, 1.0).astype(np.float32)


__all__ = [
    "AugmentConfig",
    "SpeechAugment",
    "band_limit",
    "colored_noise",
    "mu_law",
    "reverb",
    "speed",
    "tilt",
]
