"""`TalkingHeadPipeline`: a portrait and speech in, video frames out, from one pipeline folder.

A pipeline folder holds everything generation needs::

    folder/pipeline.json     rest.exports.PipelineConfig: {"format": "rest-pipeline", "version": 1, preset,
                              resolution, fps, sample_rate, steps, shift, context_timestep, chunk_latent_frames,
                              context_chunks, ...}
    folder/vae/              CausalVideoVAE (save_pretrained)
    folder/audio_encoder/    AudioEncoder (absent when pipeline.json's "audio" is "phonetic": the phonetic channel,
                              rest/data/phonetic.py, has no weights)
    folder/denoiser/         DenoiserDiT, block_causal (the distilled streaming student)

`export_pipeline` assembles one from a `train/student.py` export. There is one generation path: a streaming
session (`pipe.stream(portrait)`, then `push_audio` / `finish`; rest/streaming/session.py) runs the audio encoder's
streaming step, the student's chunk rollout against its ID-Context cache and the VAE's streaming decoder; calling
the pipeline on a whole file is that session run to the end. The same seed gives the same frames, however the
audio is split.
"""

from __future__ import annotations

import copy
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from rest.config import MAX_SEED
from rest.diffusion.flow import flow_sigmas
from rest.errors import RestError
from rest.exports import PipelineConfig, PipelineSource, load_pipeline, load_student, load_vae
from rest.media import tensor_to_frames
from rest.models.audio import AudioEncoder
from rest.models.dit import DenoiserDiT
from rest.models.loading import load_local
from rest.models.vae import CausalVideoVAE
from rest.pipelines.portrait import Portrait, crop_as_is, prepare_portrait
from rest.streaming.batch import step_sessions
from rest.streaming.session import StreamingSession


class StreamSession:
    """One live stream: `push_audio(samples) -> frames`, then `finish() -> frames` (uint8 (F, R, R, 3) each).

    The pipeline's models run in a `StreamingSession` (rest/streaming/session.py); this adds numpy in and out and
    the stream's timing. Frames come out whole chunks at a time, as soon as a chunk's audio (with the look-ahead)
    has arrived. `stats()` reports first-frame latency (wall time from the first audio pushed to the first frame
    returned), compute time and the real-time factor (compute time / media time of the frames produced).
    """

    def __init__(self, pipe: TalkingHeadPipeline, portrait: Portrait, seed: int, steps: int | None, emotion):
        self.pipe = pipe
        self.portrait = portrait
        cfg = pipe.config
        emotion_t = None if emotion is None else torch.tensor([int(emotion)], device=pipe.device)
        self.session = StreamingSession(
            pipe.denoiser,
            pipe.vae,
            pipe.portrait_latents(portrait),
            flow_sigmas(steps or cfg.steps, cfg.shift),
            audio_encoder=pipe.audio_encoder,
            context_timestep=cfg.context_timestep,
            seed=seed,
            emotion=emotion_t,
        )
        self.compute_s = 0.0
        self.first_push: float | None = None
        self.first_frame_latency_s: float | None = None

    @property
    def samples_in(self) -> int:
        """Audio samples pushed so far."""
        return self.session.samples_in

    @property
    def frames_out(self) -> int:
        """Frames returned so far."""
        return self.session.frames_out

    @property
    def finished(self) -> bool:
        return self.session.finished

    def push_audio(self, samples: np.ndarray) -> np.ndarray:
        """Float mono samples at the pipeline's rate (any length) -> the frames they complete."""
        if self.finished:
            raise RestError("this stream has finished; start a new one with pipe.stream(portrait)")
        samples = self._samples(samples)
        start = time.perf_counter()
        return self._out(self.session.push_audio(samples), start)

    def finish(self) -> np.ndarray:
        """End of speech: the remaining frames, so that the stream has exactly round(duration * fps) frames in all.

        The audio pushed so far is padded with silence to whole chunks and the models' streams are ended; frames past
        the audio's duration are cut. Calling it again returns no frames."""
        start = time.perf_counter()
        return self._out(self.session.finish(), start)

    def feed(self, samples: np.ndarray) -> None:
        """Buffer float mono samples without generating: the chunks they complete wait for `pipe.step`, which runs
        many streams' chunks at once (`has_chunk` says whether one is ready)."""
        if self.audio_ended:
            raise RestError("this stream's audio has ended; start a new one with pipe.stream(portrait)")
        samples = self._samples(samples)
        start = time.perf_counter()
        self.session.buffer_features(self.session.encode_audio(samples))
        self.compute_s += time.perf_counter() - start

    def end_audio(self) -> None:
        """No more audio (for `pipe.step`): the stream's last chunks become ready, and its frames stop at the audio's
        duration; once `has_chunk` is False, `finish()` closes it."""
        start = time.perf_counter()
        self.session.end_input()
        self.compute_s += time.perf_counter() - start

    @property
    def audio_ended(self) -> bool:
        """`end_audio()` (or `finish()`) was called."""
        return self.session.ending or self.finished

    @property
    def has_chunk(self) -> bool:
        """Whether the audio fed so far completes a chunk that has not run yet."""
        return self.session.pending()

    def flush(self) -> np.ndarray:
        """Deprecated name of `finish`. (It used to end the stream without padding, dropping up to a chunk of
        trailing frames; it now keeps every frame.)"""
        warnings.warn("StreamSession.flush() is deprecated: call finish()", FutureWarning, stacklevel=2)
        return self.finish()

    def _samples(self, samples: np.ndarray) -> torch.Tensor:
        """Pushed samples as the session takes them, (1, n) float32; the first push starts the latency clock."""
        samples = np.array(samples, np.float32).reshape(-1)  # a copy: torch needs writable memory
        if self.first_push is None:
            self.first_push = time.perf_counter()
        return torch.from_numpy(samples)[None]

    def _out(self, frames: torch.Tensor, start: float) -> np.ndarray:
        out = tensor_to_frames(frames[0])
        now = time.perf_counter()
        self.compute_s += now - start
        if len(out) and self.first_frame_latency_s is None:
            self.first_frame_latency_s = now - self.first_push
        return out

    def stats(self) -> dict:
        media_s = self.frames_out / self.pipe.fps
        return {
            "frames": self.frames_out,
            "audio_s": self.samples_in / self.pipe.sample_rate,
            "compute_s": self.compute_s,
            "rtf": self.compute_s / media_s if media_s else None,
            "first_frame_latency_s": self.first_frame_latency_s,
        }


class TalkingHeadPipeline:
    """VAE + audio encoder + streaming student from a pipeline folder (module docstring)."""

    def __init__(
        self,
        vae: CausalVideoVAE,
        audio_encoder: AudioEncoder,
        denoiser: DenoiserDiT,
        config: PipelineConfig,
        device: str | torch.device = "cpu",
    ):
        if denoiser.attention_mode != "block_causal":
            raise RestError("the pipeline's denoiser must be the block_causal streaming student")
        self.device = torch.device(device)
        self.dtype = torch.float32  # weights may be stored in float16; CPU inference runs in float32
        # torch's Module.to: diffusers' override warns about casting models that have no float32-only modules
        cast = lambda m: torch.nn.Module.to(m, self.device, self.dtype).eval().requires_grad_(False)  # noqa: E731
        self.vae, self.audio_encoder, self.denoiser = cast(vae), cast(audio_encoder), cast(denoiser)
        self.config = config
        self._detector = None

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> TalkingHeadPipeline:
        """The pipeline folder `folder` (module docstring), strictly read (rest/exports.py)."""
        return cls(*load_pipeline(folder), device)

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def fps(self) -> int:
        return self.config.fps

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    # ---------------------------------------------------------------- portraits
    def prepare_portrait(self, image: np.ndarray, crop: str = "face", name: str = "portrait") -> Portrait:
        """crop="face": detect and crop as training crops are cut; "as_is": the image already is a face crop."""
        if crop == "as_is":
            return crop_as_is(image, self.resolution, name)
        if self._detector is None:
            from rest.data.face import FaceDetector

            self._detector = FaceDetector("auto")
        return prepare_portrait(image, self.resolution, self._detector, name)

    @torch.no_grad()
    def portrait_latents(self, portrait: Portrait | np.ndarray) -> torch.Tensor:
        crop = portrait.crop if isinstance(portrait, Portrait) else portrait
        return self.vae.encode_portrait(np.ascontiguousarray(crop))

    # ---------------------------------------------------------------- generation
    def stream(
        self, portrait: Portrait | np.ndarray, seed: int = 0, steps: int | None = None, emotion: int | None = None
    ) -> StreamSession:
        """A live session for `portrait` (a prepared Portrait, or an image that gets `prepare_portrait`)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise RestError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}"[:200])
        if not isinstance(portrait, Portrait):
            portrait = self.prepare_portrait(portrait)
        n = self.config.num_emotions
        if emotion is not None and not 0 <= emotion < n:
            known = f"labels 0..{n - 1}" if n else "no emotion labels"
            raise RestError(f"emotion label {emotion} is out of range: this model has {known}")
        return StreamSession(self, portrait, seed, steps, emotion)

    def step(self, streams: list[StreamSession]) -> list[np.ndarray]:
        """The next chunk of every stream in `streams` that has one ready (`has_chunk`), in one batched rollout and
        decode (rest/streaming/batch.py): uint8 (F, R, R, 3) frames per stream, in order (no frames for a stream
        without a chunk ready). Each stream gets the frames it would get alone; the step's wall time counts as
        compute in each stream's stats, since each waited for all of it."""
        ready = [s for s in streams if s.has_chunk]
        if any(s.pipe is not self for s in ready):
            raise RestError("pipe.step runs the streams of this pipeline only (pipe.stream(...))")
        out = {}
        if ready:
            start = time.perf_counter()
            frames = step_sessions([s.session for s in ready])
            for s, chunk in zip(ready, frames, strict=True):
                out[id(s)] = s._out(chunk, start)
        empty = np.zeros((0, self.resolution, self.resolution, 3), np.uint8)
        return [out.get(id(s), empty) for s in streams]

    def frames_for(self, num_samples: int) -> int:
        """Frames a clip of `num_samples` audio samples gets: its duration in frames, rounded."""
        return round(num_samples * self.fps / self.sample_rate)

    def generate(
        self,
        portrait: Portrait | np.ndarray,
        audio: np.ndarray,
        seed: int = 0,
        steps: int | None = None,
        emotion: int | None = None,
        push_seconds: float = 1.0,
    ):
        """Yield (frames, session) for the whole `audio`: the streaming session fed `push_seconds` at a time and
        finished (`StreamSession.finish`), so there are as many frames as the audio lasts (rounded)."""
        session = self.stream(portrait, seed, steps, emotion)
        step = max(1, int(push_seconds * self.sample_rate))
        audio = np.asarray(audio, np.float32)
        for start in range(0, len(audio), step):
            yield session.push_audio(audio[start : start + step]), session
        yield session.finish(), session

    def __call__(
        self,
        portrait: Portrait | np.ndarray,
        audio: np.ndarray,
        seed: int = 0,
        steps: int | None = None,
        emotion: int | None = None,
    ) -> np.ndarray:
        """Whole-file generation: uint8 (F, R, R, 3), F = the audio's duration in frames."""
        blocks = [frames for frames, _ in self.generate(portrait, audio, seed, steps, emotion)]
        return np.concatenate(blocks)


#################################################################################
#                                Pipeline folders                               #
#################################################################################


def export_pipeline(
    student_export: str | Path,
    output: str | Path,
    vae: str | Path | None = None,
    preset: str = "tiny",
    audio_encoder: str | Path | None = None,
) -> Path:
    """Assemble a pipeline folder from a `train/student.py` export (student.json names the VAE unless `vae`).

    `audio_encoder` replaces the student's own encoder with another of the same architecture (an audio expert
    trained with `feature_teacher` set to the student's encoder, which keeps its feature space)."""
    denoiser, own_encoder, info = load_student(student_export)
    output = Path(output)
    replaced_by = None
    if audio_encoder is None:
        audio_encoder = own_encoder
    elif info.audio != "mel":
        raise RestError(f"--audio-encoder replaces a mel audio encoder; {student_export} reads the {info.audio} path")
    else:
        folder = Path(audio_encoder)
        audio_encoder = load_local(AudioEncoder, folder, "audio encoder")

        def arch(config):
            return {k: v for k, v in config.items() if not k.startswith("_")}

        if arch(audio_encoder.config) != arch(own_encoder.config):
            raise RestError(
                f"{folder}: this audio encoder's architecture differs from the student's own; the denoiser reads "
                "only features of its own encoder's shape (train it with --feature-teacher on that encoder)"
            )
        replaced_by = str(folder)
    vae_model = load_vae(vae or info.vae)
    from rest.config import get_preset

    spec = get_preset(preset)
    # The preset pins the resolution and the token grid; the VAE and the denoiser's patch may split the compression
    # between them (at tiny's 128 px, its 16x VAE at patch 1 and an 8x VAE at 2 x 2 patches both give 8 x 8 tokens).
    side = spec.resolution / (vae_model.spatial_compression * denoiser.config.patch_size)
    if side != spec.latent_size:
        raise RestError(
            f"the VAE compresses space {vae_model.spatial_compression}x and the denoiser patches "
            f"{denoiser.config.patch_size}x{denoiser.config.patch_size} latents: {side:g} tokens a side at the "
            f"{spec.resolution} px of preset {preset!r}, which has {spec.latent_size}; pass the preset the models "
            "were trained for (--preset)"
        )
    config = PipelineConfig(
        preset=preset,
        resolution=spec.resolution,
        steps=info.steps,
        shift=info.shift,
        fps=int(audio_encoder.config.fps),
        sample_rate=int(audio_encoder.config.sample_rate),
        context_timestep=info.context_timestep,
        chunk_latent_frames=denoiser.config.chunk_latent_frames,
        context_chunks=denoiser.config.context_chunks,
        num_emotions=int(denoiser.config.num_emotions),
        audio=info.audio,
        training=PipelineSource.of(info, replaced_by),
    )
    write_pipeline(output, vae_model, audio_encoder, denoiser, config)
    return output


def write_pipeline(
    output: str | Path,
    vae: CausalVideoVAE,
    audio_encoder: AudioEncoder,
    denoiser: DenoiserDiT,
    config: PipelineConfig,
    half: bool = True,
) -> Path:
    """Write a pipeline folder atomically (built beside `output`, then renamed over it). `half`: store the weights
    in float16 (half the size; loading casts them back to the pipeline's dtype)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        networks = [("vae", vae), ("denoiser", denoiser)]
        networks += [("audio_encoder", audio_encoder)] if config.audio == "mel" else []  # phonetic: no weights
        for name, model in networks:
            # torch's Module.to, as in TalkingHeadPipeline: diffusers' override warns about a cast that is safe here
            model = torch.nn.Module.to(copy.deepcopy(model), torch.float16) if half else model
            model.save_pretrained(tmp / name)
        config.write(tmp)
        keep = output / "README.md"  # a model card survives re-exports
        if keep.is_file():
            shutil.copy(keep, tmp / "README.md")
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


__all__ = [
    "StreamSession",
    "TalkingHeadPipeline",
    "export_pipeline",
    "write_pipeline",
]
