"""Evaluation metrics: Frechet distance, Inception / I3D / SyncNet loaders on self-built weights, MFCC, offsets."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from rest.errors import RestError
from rest.metrics.fid import (
    FID_DIM,
    InceptionFeatures,
    InceptionV3FID,
    file_sha256,
    frechet_distance,
    frechet_distance_features,
    sqrtm_psd,
    trace_sqrt_product,
)
from rest.metrics.fvd import I3DFeatures, video_clips
from rest.metrics.lipsync_gt import lag_correlation
from rest.metrics.syncnet import SyncNetScorer, evaluate_sync, load_syncnet, offset_search
from rest.models.syncnet import SyncNet, mfcc, syncnet_mfcc

#################################################################################
#                               Frechet distance                                #
#################################################################################


def _spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_sqrtm_and_trace_match_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    s1, s2 = _spd(12, rng), _spd(12, rng)
    np.testing.assert_allclose(sqrtm_psd(s1), np.real(scipy_linalg.sqrtm(s1)), atol=1e-10)
    expected = np.trace(np.real(scipy_linalg.sqrtm(s1 @ s2)))
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_identical_sets_is_zero():
    rng = np.random.default_rng(1)
    full_rank = rng.normal(size=(300, 16)) * 3 + 1
    assert abs(frechet_distance_features(full_rank, full_rank)) < 1e-6
    few = rng.normal(size=(20, 64)) * 3  # fewer samples than dimensions: singular covariances
    assert abs(frechet_distance_features(few, few)) < 1e-6
    assert frechet_distance_features(few, few + 0.5) > 1.0  # and not zero for everything


def test_frechet_distance_of_shifted_and_scaled_gaussians_has_the_closed_form():
    rng = np.random.default_rng(2)
    mu, delta = rng.normal(size=8), rng.normal(size=8)
    s = _spd(8, rng)
    assert frechet_distance(mu, s, mu + delta, s) == pytest.approx(delta @ delta, rel=1e-9)
    a, b = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)  # diagonal covariances: sum (sqrt a - sqrt b)^2
    expected = delta @ delta + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu, np.diag(a), mu + delta, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # and from samples of the two Gaussians, within sampling error
    x = rng.normal(size=(20000, 8)) * np.sqrt(a) + mu
    y = rng.normal(size=(20000, 8)) * np.sqrt(b) + mu + delta
    assert frechet_distance_features(x, y) == pytest.approx(expected, rel=0.05)


def test_frechet_sample_route_agrees_with_covariance_route():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 10)), rng.normal(size=(50, 10)) * 1.5 + 0.3
    stats = frechet_distance_features(x, y, method="stats")
    samples = frechet_distance_features(x, y, method="samples")
    assert samples == pytest.approx(stats, rel=1e-9)


#################################################################################
#                                  Inception                                    #
#################################################################################


def test_fid_inception_layout_and_keys_match_pytorch_fid():
    model = InceptionV3FID()
    # torchvision's inception_v3: 27,161,264 parameters; minus the aux classifier (3,326,696), plus 8 classes of
    # the TF graph's 1008-way fc (8 * 2048 + 8): the pytorch-fid FID Inception.
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 8 * 2048 + 8
    keys = model.state_dict().keys()
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch1x1.conv.weight", "Mixed_6b.branch7x7dbl_5.bn.bias",
                "Mixed_7c.branch3x3dbl_3b.conv.weight", "fc.weight", "fc.bias"):  # fmt: skip
        assert key in keys
    assert model.Mixed_7b.pool == "avg" and model.Mixed_7c.pool == "max"


def test_tf_average_pool_ignores_padding():
    from rest.metrics.fid import _tf_avg_pool

    out = _tf_avg_pool(torch.ones(1, 1, 4, 4))
    assert torch.allclose(out, torch.ones_like(out))  # count_include_pad=True would give 4/9 in the corners


def test_pytorch_fid_state_dict_loads_and_gives_pool_features(tmp_path):
    torch.manual_seed(0)
    state = {k: v for k, v in InceptionV3FID().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    feats = InceptionFeatures(path)
    assert not feats.torchscript and feats.extractor.sha256 == file_sha256(path)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    out = feats(frames)
    assert out.shape == (2, FID_DIM) and out.dtype == np.float64
    x = torch.nn.functional.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, size=(299, 299), mode="bilinear"
    )
    with torch.no_grad():
        expected = feats.model(2 * x - 1).double().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_wrong_inception_files_are_refused(tmp_path):
    bad_keys = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad_keys)
    with pytest.raises(RestError, match="not pytorch-fid's Inception state dict"):
        InceptionFeatures(bad_keys)
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(RestError, match="cannot read"):
        InceptionFeatures(text)
    with pytest.raises(RestError, match="not found"):
        InceptionFeatures(tmp_path / "missing.pt")


class _ToyInceptionScript(nn.Module):
    """The TorchScript Inception's call interface: (N, 3, H, W) in [0, 255], return_features -> (N, 2048)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        per_channel = x.mean(dim=(2, 3))  # (N, 3)
        feats = torch.cat([per_channel, x.amax(dim=(1, 2, 3))[:, None]], dim=1).repeat(1, 512)  # (N, 2048)
        return feats if return_features else feats[:, :1008]


def test_torchscript_inception_gets_uint8_range_input_at_299(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(_ToyInceptionScript()), str(path))
    feats = InceptionFeatures(path)
    assert feats.torchscript
    frames = np.full((3, 32, 32, 3), 200, np.uint8)
    out = feats(frames)
    assert out.shape == (3, FID_DIM)
    np.testing.assert_allclose(out[:, :4], 200.0, rtol=1e-5)  # [0, 255] range kept, resize preserves a flat image


#################################################################################
#                                     I3D                                       #
#################################################################################


class _ToyI3D(nn.Module):
    """StyleGAN-V's I3D TorchScript interface; checks the pinned input convention and returns 400-d features."""

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
        assert not rescale and not resize and return_features
        assert x.shape[1:] == (3, 16, 224, 224)
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        stats = torch.stack([x.mean(dim=(1, 3, 4)), x.std(dim=(1, 3, 4))], dim=2).flatten(1)  # (B, 32)
        return torch.cat([stats, torch.zeros(x.shape[0], 368)], dim=1)  # (B, 400)


def test_i3d_torchscript_is_called_with_the_pinned_convention(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_ToyI3D()), str(path))
    i3d = I3DFeatures(path)
    video = np.random.default_rng(0).integers(0, 256, (40, 36, 36, 3), dtype=np.uint8)
    clips = video_clips(video)
    assert clips.shape == (2, 16, 36, 36, 3)  # 40 frames -> 2 non-overlapping 16-frame clips
    feats = i3d(clips)
    assert feats.shape == (2, 400)
    assert abs(frechet_distance_features(feats, feats)) < 1e-6
    assert len(video_clips(video[:15])) == 0


def test_non_i3d_files_are_refused(tmp_path):
    state = tmp_path / "i3d.pth"
    torch.save({"w": torch.zeros(2)}, state)
    with pytest.raises(RestError, match="not a TorchScript"):
        I3DFeatures(state)
    wrong = tmp_path / "wrong.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(wrong))
    with pytest.raises(RestError, match="I3D's call"):
        I3DFeatures(wrong)(np.zeros((1, 16, 8, 8, 3), np.uint8))


#################################################################################
#                                   SyncNet                                     #
#################################################################################


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    for n in (300, 400, 401, 16000, 12345):
        x = np.round(rng.normal(0, 3000, n))
        np.testing.assert_allclose(mfcc(x), psf.mfcc(x, 16000), rtol=1e-9, atol=1e-8)
    audio = rng.uniform(-0.5, 0.5, 8000).astype(np.float32)
    expected = psf.mfcc(np.clip(np.round(audio.astype(np.float64) * 32768.0), -32768, 32767), 16000).T
    np.testing.assert_allclose(syncnet_mfcc(audio), expected, rtol=1e-9, atol=1e-8)


def test_syncnet_v2_state_dict_loads_with_syncnet_python_keys_and_shapes(tmp_path):
    torch.manual_seed(0)
    # a 2017-style file: syncnet_python's key names, no BatchNorm num_batches_tracked counters
    state = {k: v for k, v in SyncNet().state_dict().items() if not k.endswith("num_batches_tracked")}
    shapes = {  # from syncnet_python's SyncNetModel.S
        "netcnnaud.0.weight": (64, 1, 3, 3),
        "netcnnaud.18.weight": (512, 256, 5, 4),
        "netfcaud.3.weight": (1024, 512),
        "netcnnlip.0.weight": (96, 3, 5, 7, 7),
        "netcnnlip.4.weight": (256, 96, 1, 5, 5),
        "netcnnlip.18.weight": (512, 256, 1, 6, 6),
        "netfclip.1.running_var": (512,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    model, extractor = load_syncnet(path)
    assert extractor.sha256 == file_sha256(path) and "syncnet_v2" in extractor.name
    assert torch.equal(model.state_dict()["netcnnlip.0.weight"], state["netcnnlip.0.weight"])
    lip = model.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255)
    aud = model.forward_aud(torch.randn(2, 1, 13, 20))
    assert lip.shape == aud.shape == (2, 1024)


def test_wrong_syncnet_files_are_refused(tmp_path):
    state = SyncNet().state_dict()
    state["netcnnaud.extra"] = torch.zeros(1)
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    with pytest.raises(RestError, match="not syncnet_python's SyncNet state dict"):
        load_syncnet(path)
    small = SyncNet(embed_dim=256).state_dict()
    torch.save(small, path)
    with pytest.raises(RestError, match="shapes do not match"):
        load_syncnet(path)


def test_offset_search_finds_a_known_shift():
    rng = torch.Generator().manual_seed(0)
    content = torch.randn(80, 16, generator=rng)
    for delay in (5, -3, 0):
        video = content[20:60]
        audio = content[20 - delay : 60 - delay]  # audio window i holds the content of video window i - delay
        result = offset_search(video, audio, vshift=15)
        assert result.offset == -delay  # syncnet_python's sign: delayed audio -> negative offset
        # windows whose partner falls outside the clip meet syncnet_python's zero padding: distance |video_i|
        edge = video[40 - delay :] if delay > 0 else video[:-delay]
        expected = float(torch.linalg.vector_norm(edge, dim=1).sum()) / 40
        assert result.lse_d == pytest.approx(expected, abs=1e-4) and result.lse_c > 1.0 and result.windows == 40


def test_face_crop_follows_syncnet_python_geometry():
    from rest.metrics.syncnet import _median_filter, syncnet_face_crops

    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(1).random(30) * 100
    np.testing.assert_array_equal(_median_filter(x, 13), signal.medfilt(x, 13))  # run_pipeline's smoothing

    frames = np.random.default_rng(0).integers(0, 256, (20, 200, 200, 3), dtype=np.uint8)
    boxes = np.tile([80.0, 80.0, 120.0, 120.0], (20, 1))  # half-size s = 20, centre (100, 100)
    crops = syncnet_face_crops(frames, boxes, size=56)
    # rows [cy - s, cy + 1.8 s), columns [cx - 1.4 s, cx + 1.4 s): a 56 x 56 square, no resize needed
    np.testing.assert_array_equal(crops, frames[:, 80:136, 72:128])
    # a face at the left and bottom edges: rows [150, 206), columns [-8, 48); outside the frame is grey 110
    near_edge = syncnet_face_crops(frames, np.tile([0.0, 150.0, 40.0, 190.0], (20, 1)), size=56)
    np.testing.assert_array_equal(near_edge[:, :50, 8:], frames[:, 150:200, 0:48])
    assert (near_edge[:, 50:] == 110).all() and (near_edge[:, :, :8] == 110).all()


class _ToySync(nn.Module):
    """Stands in for SyncNet: lip embedding = mean brightness of the window, audio = fraction of loud MFCC frames."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(
            image_size=16, window_frames=5, mfcc_frames=20, crop="center", crop_fraction=1.0
        )
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, 5, S, S) BGR [0, 255]
        return video.mean(dim=(1, 3, 4)) / 255.0  # (B, 5): brightness of each frame

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:  # (B, 1, 13, 20)
        loud = (mfcc[:, 0, 0] > 10.0).float()  # c0 = log energy
        return loud.reshape(-1, 5, 4).mean(dim=2)  # (B, 5): per video frame


def test_scorer_aligns_mfcc_and_video_windows_and_finds_a_5_frame_audio_delay():
    from rest.metrics.fid import Extractor

    rng = np.random.default_rng(0)
    on = rng.random(100) < 0.5  # per frame: mouth open (bright) with sound, or closed and silent
    frames = np.where(on[:, None, None, None], 255, 0).astype(np.uint8) * np.ones((1, 16, 16, 3), np.uint8)
    audio = np.repeat(np.where(on, 0.5, 0.0), 640).astype(np.float32) * rng.uniform(-1, 1, 64000).astype(np.float32)
    scorer = SyncNetScorer(_ToySync(), Extractor("toy", "", ""))
    synced = scorer.score(frames, audio)
    assert synced.offset == 0 and synced.windows == 95  # min(100 frames, 64000 // 640) - 5
    delayed = scorer.score(frames, np.concatenate([np.zeros(5 * 640, np.float32), audio[: -5 * 640]]))
    assert delayed.offset == -5
    assert "too short" in scorer.score(frames[:5], audio)
    assert scorer.score(frames, None) == "no audio track"


#################################################################################
#                            Lip sync vs labels                                 #
#################################################################################


def test_lag_correlation_finds_offset_and_drops_for_unrelated_series():
    rng = np.random.default_rng(0)
    labels = np.convolve(rng.random(300), np.ones(5) / 5, mode="same")
    assert lag_correlation(labels, labels) == {
        "corr": pytest.approx(1.0),
        "offset": 0,
        "best_corr": pytest.approx(1.0),
        "frames": 300,
    }
    late = np.concatenate([np.zeros(3), labels[:-3]])  # generated mouth 3 frames late
    r = lag_correlation(late, labels)
    assert r["offset"] == 3 and r["best_corr"] > 0.99 and r["corr"] < r["best_corr"]
    unrelated = lag_correlation(rng.permutation(labels), labels)
    assert abs(unrelated["corr"]) < 0.2
    with pytest.raises(ValueError, match="at least 45"):
        lag_correlation(labels[:20], labels[:20])


#################################################################################
#                                    CSIM                                       #
#################################################################################


def test_dlib_csim_on_real_portraits(shared_data):
    from rest.media import read_image
    from rest.metrics.identity import DlibFaceEmbedder, dlib_models_dir, identity_similarity

    if dlib_models_dir() is None:
        pytest.skip("face-recognition-models not installed")
    portraits = shared_data / "portraits"
    embed = DlibFaceEmbedder()
    statue, girl = read_image(portraits / "statue.jpg"), read_image(portraits / "painted_girl.jpg")
    same = identity_similarity(embed, statue, statue[None])
    assert same["value"] == pytest.approx(1.0, abs=1e-6) and same["frames_scored"] == 1
    other = identity_similarity(embed, statue, girl[None])
    assert other["value"] < 0.95
    blank = identity_similarity(embed, statue, np.zeros((2, 64, 64, 3), np.uint8))
    assert blank == {"value": None, "frames_scored": 0, "frames_without_face": 2}
    with pytest.raises(RestError, match="no face found in the reference"):
        identity_similarity(embed, np.zeros((64, 64, 3), np.uint8), statue[None])


def test_dlib_csim_at_the_portraits_alignment_scores_every_frame():
    """A frame too blurred for the detector is left out of the usual score but scored at the portrait's alignment;
    a face moved away from where the portrait's was scores lower there than where the detector finds it."""
    from rest.data.synth.generate import identity_face
    from rest.data.synth.render import FaceRenderer
    from rest.metrics.identity import DlibFaceEmbedder, dlib_models_dir, identity_similarity

    if dlib_models_dir() is None:
        pytest.skip("face-recognition-models not installed")
    embed = DlibFaceEmbedder()
    face = FaceRenderer(identity_face(0, 0), 160).render()  # a SynthTalk face dlib's HOG finds
    blurred = face.astype(np.float32)
    for _ in range(12):  # a wide box blur: the HOG detector finds no face in it
        blurred = (blurred + np.roll(blurred, 4, 0) + np.roll(blurred, -4, 0) + np.roll(blurred, 4, 1)) / 4
    blurred = blurred.astype(np.uint8)
    moved = np.roll(face, 40, axis=1)
    assert identity_similarity(embed, face, blurred[None])["frames_without_face"] == 1
    at = identity_similarity(embed, face, np.stack([face, blurred, moved]), at_reference=True)
    assert at["frames_scored"] == 3 and at["frames_without_face"] == 0
    assert identity_similarity(embed, face, face[None], at_reference=True)["value"] == pytest.approx(1.0, abs=1e-6)
    assert embed(moved) is not None
    found = identity_similarity(embed, face, moved[None])["value"]
    assert identity_similarity(embed, face, moved[None], at_reference=True)["value"] < found - 0.02
    with pytest.raises(RestError, match="needs the dlib embedder"):
        identity_similarity(lambda image: np.ones(3), face, face[None], at_reference=True)


def test_arcface_without_weights_says_where_to_put_them(tmp_path):
    from rest.metrics.identity import load_face_embedder

    with pytest.raises(RestError, match=r"w600k_r50.onnx .*buffalo_l"):
        load_face_embedder("arcface", tmp_path)


#################################################################################
#                            Trainers (smoke tests)                             #
#################################################################################


def _tiny_shards(root: Path, clips: int = 2, frames: int = 48, size: int = 32) -> None:
    from rest.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    writer = ShardWriter(root, resolution=size)
    for i in range(clips):
        video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
        audio = rng.uniform(-0.3, 0.3, frames * 640).astype(np.float32)
        meta = {"mouth_open": rng.random(frames).astype(np.float32)}
        writer.write_clip(f"clip{i}", video, audio, meta=meta, split="train" if i else "test_voice")


def test_sync_losses_reward_the_in_sync_window():
    from rest.training.syncnet import sync_loss

    video = torch.zeros(3, 4)
    audio = torch.ones(3, 5, 4) * 3.0
    audio[:, 0] = 0.0  # the in-sync window sits on the lip embedding, the 4 others 6 away
    good = sync_loss(video, audio, "infonce", margin=10.0)
    assert good["acc"] == 1.0 and good["loss"] < 0.02
    bad = sync_loss(video, audio.flip(1), "infonce", margin=10.0)
    assert bad["acc"] == 0.0 and bad["loss"] > 5.0
    pairwise = sync_loss(video, audio, "pairwise", margin=10.0)
    assert pairwise["loss"].item() == pytest.approx((10.0 - 6.0) ** 2, rel=1e-4)  # d_sync 0, d_off 6 < margin
    with pytest.raises(RestError, match="unknown SyncNet loss"):
        sync_loss(video, audio, "bce", margin=10.0)


def test_train_syncnet_smoke_exports_a_loadable_model(tmp_path, capsys):
    from rest.training.syncnet import SyncNetTrainConfig, train_syncnet

    _tiny_shards(tmp_path / "shards")
    cfg = SyncNetTrainConfig(
        data=str(tmp_path / "shards"),
        output=str(tmp_path / "run"),
        steps=3,
        batch_size=2,
        warmup_steps=1,
        log_every=1,
        model={"image_size": 64, "embed_dim": 32, "fc_dim": 32},
    )
    export = train_syncnet(cfg, evaluate=evaluate_sync)  # the held-out check with the metric's pipeline
    out = capsys.readouterr().out
    assert "step 3" in out and "held-out sync:" in out and "clip0/delayed_5" in out
    model, extractor = load_syncnet(export)
    assert model.config.image_size == 64 and model.config.crop == "center" and "project-trained" in extractor.name
    assert (tmp_path / "run" / "checkpoints" / "step_0000003" / "trainer_state.json").is_file()
    cfg.steps = 4
    train_syncnet(cfg, resume="latest")
    assert "resumed from" in capsys.readouterr().out


def test_train_mouth_regressor_smoke(tmp_path):
    from rest.metrics.lipsync_gt import load_mouth_regressor
    from rest.training.mouth_regressor import train_mouth_regressor

    _tiny_shards(tmp_path / "shards")
    train_mouth_regressor(tmp_path / "shards", steps=2, output=tmp_path / "mouth", batch_size=4, log_every=0)
    model, extractor = load_mouth_regressor(tmp_path / "mouth")
    assert model.predict(np.zeros((3, 32, 32, 3), np.uint8)).shape == (3,)
    assert extractor.sha256 == file_sha256(tmp_path / "mouth" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_mouth_regressor_tracks_synthtalk_labels(tmp_path):
    """A short training on a tiny SynthTalk set: predictions on the frames correlate strongly with the labels."""
    from rest.data.synth.generate import SynthConfig, generate_dataset
    from rest.data.synth.speech import espeak_available
    from rest.training.mouth_regressor import train_mouth_regressor

    if not espeak_available():
        pytest.skip("espeak-ng not installed")
    from rest.data.shards import ShardReader

    cfg = SynthConfig(resolution=128, seconds=12.0, clip_seconds=(12.0, 12.0), languages=("en",), seed=3)
    generate_dataset(tmp_path / "st", 1, cfg, workers=0, progress=False)
    torch.manual_seed(0)
    model = train_mouth_regressor(tmp_path / "st", steps=150, split=None, log_every=0)
    reader = ShardReader(tmp_path / "st")
    clip = reader.records[0].clip_id
    r = lag_correlation(model.predict(reader.frames(clip)), reader.meta(clip)["mouth_open"])
    assert r["corr"] > 0.8 and r["offset"] == 0
