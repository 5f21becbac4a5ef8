"""Media I/O: decode video, audio and images into the project's conventions, and write H.264 + AAC mp4 files.

Conventions (docs/design.md, "Conventions"): video at 25 fps by default; audio 16 kHz mono float32 in [-1, 1];
pixels as uint8 numpy `(F, H, W, 3)` at the I/O boundary and float `(3, F, H, W)` in [-1, 1] inside the models
(`frames_to_tensor` / `tensor_to_frames` convert).

Decoding goes through PyAV (FFmpeg); `RandomAccessVideo` uses decord for random windows of frames in training.
Every problem with an input file raises `MediaError` with a one-line message that names the file and the
problem; FFmpeg's own errors never reach the user. A damaged file is never decoded "as far as it goes" in
silence: a truncated file is detected from its structure (MP4 boxes, the WAV header) and from comparing what
was decoded with the duration the container declares, since FFmpeg often stops early at a cut without an error.

One module per concern, each importing only those above it:

    types.py          conventions (SAMPLE_RATE, FPS) and the data types (Audio, Video, VideoInfo)
    errors.py         MediaError; FFmpeg's log kept quiet
    damage.py         checks on an input file before FFmpeg opens it and after decoding (truncation)
    header.py         `probe`: what the header says, without decoding
    decode.py         read_video, read_audio, read_image
    pixels.py         uint8 frames <-> float tensors, centre crop and resize
    encode.py         write_video / VideoWriter, write_audio, check_output_file (atomic writes)
    random_access.py  RandomAccessVideo (decord), for training windows
"""

from rest.media.damage import check_input_file
from rest.media.decode import read_audio, read_image, read_video
from rest.media.encode import VideoWriter, check_output_file, write_audio, write_video
from rest.media.errors import MediaError
from rest.media.header import probe
from rest.media.pixels import center_crop_resize, frames_to_tensor, tensor_to_frames
from rest.media.random_access import RandomAccessVideo
from rest.media.types import FPS, SAMPLE_RATE, Audio, PathLike, Video, VideoInfo

__all__ = [
    "FPS",
    "SAMPLE_RATE",
    "Audio",
    "MediaError",
    "PathLike",
    "RandomAccessVideo",
    "Video",
    "VideoInfo",
    "VideoWriter",
    "center_crop_resize",
    "check_input_file",
    "check_output_file",
    "frames_to_tensor",
    "probe",
    "read_audio",
    "read_image",
    "read_video",
    "tensor_to_frames",
    "write_audio",
    "write_video",
]
