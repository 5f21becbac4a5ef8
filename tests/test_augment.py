"""Speech augmentation (rest/data/augment.py): each transform does what it says and keeps the labels' timing, the
chain is deterministic for a seed, and the datasets apply it when asked."""

import numpy as np
import pytest

from rest.data.augment import (
    AugmentConfig,
    SpeechAugment,
    band_limit,
    colored_noise,
    mu_law,
    reverb,
    speed,
    tilt,
)

SR = 16000


def _tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)


def _power(x: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spectrum[np.abs(f - hz) < 5].sum())


def test_speed_moves_audio_and_labels_together():
    labels = np.zeros(50, np.float32)
    labels[20:25] = 1.0
    audio = np.zeros(50 * 640, np.float32)
    audio[20 * 640 : 25 * 640] = 1.0  # a burst exactly where the labels are on
    fast, fast_labels = speed(audio, labels, 1.25, 640)
    assert len(fast) == 40 * 640 and len(fast_labels) == 40
    on = np.flatnonzero(fast_labels > 0.5)
    loud = np.flatnonzero(np.abs(fast.reshape(40, 640)).mean(1) > 0.5)
    assert on[0] == 16 and on[-1] == 19 and np.array_equal(on, loud)  # frame 20 / 1.25 = 16, still aligned
    slow_audio, slow_labels = speed(audio, labels, 0.8, 640)
    assert len(slow_labels) == 62 and np.flatnonzero(slow_labels > 0.5)[0] == 25


def test_reverb_keeps_the_onset_and_the_level():
    rng = np.random.default_rng(0)
    x = np.zeros(SR)
    x[4000:6000] = _tone(300, 2000 / SR)
    wet = reverb(x, SR, 0.6, rng)
    assert np.abs(wet[:3990]).max() < 1e-6  # nothing before the sound: the direct path is at time 0
    assert np.abs(wet[6500:9000]).max() > 1e-3  # a tail after it
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-6)


def test_band_limit_and_tilt_shape_the_spectrum():
    x = _tone(100) + _tone(1000) + _tone(6000)
    y = band_limit(x, SR, 300.0, 3000.0)
    assert _power(y, 1000) > 0.9 * _power(x, 1000)
    assert _power(y, 100) < 0.02 * _power(x, 100) and _power(y, 6000) < 0.01 * _power(x, 6000)
    bright = tilt(x, SR, 3.0)
    assert _power(bright, 6000) / _power(bright, 100) > 10 * _power(x, 6000) / _power(x, 100)


def test_noise_colours_and_mu_law():
    rng = np.random.default_rng(1)
    white, brown = colored_noise(SR, 0.0, rng), colored_noise(SR, 2.0, rng)
    assert np.sqrt(np.mean(white**2)) == pytest.approx(1.0, rel=1e-6)
    low = np.fft.rfftfreq(SR, 1 / SR) < 200
    assert (np.abs(np.fft.rfft(brown)) ** 2)[low].sum() > 0.9 * (np.abs(np.fft.rfft(brown)) ** 2).sum()
    x = 0.5 * _tone(440, 0.1)
    coded = mu_law(x)
    assert 0 < np.abs(coded - x).max() < 0.02  # quantised, but close


def test_chain_is_deterministic_bounded_and_keeps_length():
    x = (0.3 * _tone(200, 2.0)).astype(np.float32)
    aug = SpeechAugment(AugmentConfig())
    outs = [aug(x, np.random.default_rng(s)) for s in (0, 0, 1)]
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    for y in outs:
        assert y.dtype == np.float32 and len(y) == len(x) and np.abs(y).max() <= 1.0
    off = SpeechAugment(
        AugmentConfig(**{k: 0.0 for k in vars(AugmentConfig()) if k.endswith("_p")}, gain_db_range=(0, 0))
    )
    np.testing.assert_allclose(off(x, np.random.default_rng(0)), x / np.abs(x).max(), atol=1e-6)
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(noise_p=1.5)


def test_datasets_augment_the_audio_when_asked(tmp_path):
    from rest.data.dataset import TalkingClipDataset
    from rest.data.shards import ShardWriter

    writer = ShardWriter(tmp_path / "shards", resolution=32)
    audio = (0.3 * _tone(200, 2.0)).astype(np.float32)
    writer.write_clip("c0", np.zeros((50, 32, 32, 3), np.uint8), audio, split="train")

    def item(augment):
        data = TalkingClipDataset(writer.root, num_frames=9, temporal_compression=4, augment_audio=augment)
        return data[0]

    plain, noisy, again = item(None), item(AugmentConfig(noise_p=1.0)), item(AugmentConfig(noise_p=1.0))
    start = plain["start"] * 640
    np.testing.assert_array_equal(plain["audio"].numpy(), audio[start : start + 9 * 640])
    assert noisy["start"] == plain["start"] and noisy["ref_index"] == plain["ref_index"]  # same window and reference
    assert not np.allclose(noisy["audio"].numpy(), plain["audio"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(noisy["audio"].numpy(), again["audio"].numpy())  # deterministic per item
