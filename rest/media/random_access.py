"""Random access to a video's frames through decord, for sampling training windows."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rest.media.errors import _error
from rest.media.header import probe
from rest.media.types import PathLike


class RandomAccessVideo:
    """Random access to a video's frames through decord, for sampling training windows.

    decord decodes with the same FFmpeg conversion as `read_video` (identical frames at the source rate); it
    seeks to the keyframe before each requested frame, so scattered windows are cheap.
    """

    def __init__(self, path: PathLike, size: int | None = None):
        """Open `path`; `size` resizes square frames to `size` x `size` at decode (non-square video is refused:
        resizing would stretch it; crop it first, e.g. with `center_crop_resize`)."""
        decord = _decord()
        self.path = Path(path)
        info = probe(path)  # the clear MediaError for missing, empty, truncated or non-media files
        if not info.has_video:
            raise _error(path, "has no video track")
        if size is not None and info.width != info.height:
            raise ValueError(
                f"RandomAccessVideo: {path} is {info.width}x{info.height}; resizing to {size}x{size} at decode "
                "would stretch it: open it with size=None and use center_crop_resize"
            )
        resize = {} if size is None else {"width": size, "height": size}
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), **resize)
        except (decord.DECORDError, RuntimeError) as e:
            raise _error(path, f"decord cannot open it ({_decord_reason(e)})") from None

    def __len__(self) -> int:
        return len(self._reader)

    @property
    def fps(self) -> float:
        return float(self._reader.get_avg_fps())

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as uint8 `(N, H, W, 3)`."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"{self.path}: frame {i} out of range (the video has {len(self)} frames)")
        decord = _decord()
        try:
            return self._reader.get_batch(indices).asnumpy()
        except (decord.DECORDError, RuntimeError) as e:
            raise _error(self.path, f"file is corrupt: decord failed to decode frames ({_decord_reason(e)})") from None


def _decord():
    """decord, imported on first use: only training needs it, and it loads its own copy of FFmpeg."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg logs to stderr by default
    return decord


def _decord_reason(e: BaseException) -> str:
    """decord's message without its timestamp and C++ source location ("[12:00:00] src/x.cc:83: ...")."""
    lines = [re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line).strip() for line in str(e).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Stack trace")]
    return lines[0] if lines else type(e).__name__
