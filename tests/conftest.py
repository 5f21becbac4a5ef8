"""Shared test helpers: where the test media live, and a skip when they are absent (a user's machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# ../shared/data next to the repository (see its SOURCES.md); the project never commits these files.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_shared_data(*parts: str) -> Path:
    """Return `SHARED_DATA / parts`, skipping the calling test when it does not exist."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test media not found: {path}")
    return path


@pytest.fixture
def shared_data() -> Path:
    """The shared test media folder; skips the test when it is absent."""
    return require_shared_data()


class WhiteSquareFaces:
    """A face embedder for tests, with the interface of rest.metrics.identity.DlibFaceEmbedder: the 'face' is the
    box of the pixels brighter than 200 in every channel, and its embedding the box's mean colour plus (1, 2, 3)."""

    def align(self, image):
        ys, xs = np.nonzero((image > 200).all(axis=-1))
        return None if len(ys) == 0 else (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)

    def embed(self, image, box):
        y0, y1, x0, x1 = box
        return image[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0) + np.array([1.0, 2.0, 3.0])

    def __call__(self, image):
        box = self.align(image)
        return None if box is None else self.embed(image, box)


@pytest.fixture
def white_square_faces() -> WhiteSquareFaces:
    return WhiteSquareFaces()


@pytest.fixture(scope="session")
def test_pipeline(tmp_path_factory) -> Path:
    """A tiny random-weight pipeline folder (helpers.build_test_pipeline), built once per session."""
    from helpers import build_test_pipeline

    return build_test_pipeline(tmp_path_factory.mktemp("pipeline") / "tiny-random")


@pytest.fixture(scope="session")
def test_motion_model(tmp_path_factory) -> Path:
    """A tiny random-weight motion student folder (helpers.build_test_motion_model), built once per session."""
    from helpers import build_test_motion_model

    return build_test_motion_model(tmp_path_factory.mktemp("motion") / "tiny-random")


@pytest.fixture(scope="session")
def face_image():
    """A procedural SynthTalk face (uint8 (160, 160, 3)) that the face detector finds, mouth closed."""
    from rest.data.synth.generate import identity_face
    from rest.data.synth.render import FaceRenderer

    return FaceRenderer(identity_face(0, 3), 160).render()


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    """A 2.3 s 16 kHz mono WAV of a modulated tone (speech-like envelope)."""
    from rest.media import write_audio

    t = np.arange(int(2.3 * 16000)) / 16000
    signal = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    write_audio(path, signal.astype(np.float32), 16000)
    return path


@pytest.fixture(scope="session")
def tiny_models():
    """Small random models that run in milliseconds: (vae, audio_encoder, teacher, student). The VAE codes 32 x 32
    frames into 4 x 4 x 4 latents; the denoisers are `helpers.small_dit` (their blocks perturbed out of adaLN-zero's
    identity start, so their outputs depend on their inputs: audio, cache, portrait), the student block-causal."""
    import torch
    from helpers import small_dit

    from rest.models.audio import AudioEncoder
    from rest.models.vae import CausalVideoVAE

    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, patch_size=2, block_out_channels=(8, 16, 32)).eval()
    audio = AudioEncoder(
        conv_channels=16, num_conv_layers=1, dim=16, num_layers=1, num_heads=2, attn_window=4, lookahead_frames=2,
        out_dim=8,
    ).eval()  # fmt: skip
    teacher = small_dit(seed=1)
    student = small_dit(seed=2, attention_mode="block_causal")
    return vae, audio, teacher, student
