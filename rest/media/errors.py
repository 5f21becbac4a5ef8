"""`MediaError`: every problem with a media file, as one line that names the file and the problem.

FFmpeg's own errors never reach the user: its log is kept quiet and its exceptions are turned into a `MediaError`.
"""

from __future__ import annotations

import av.logging

from rest.errors import RestError
from rest.media.types import PathLike

# FFmpeg prints a line for every damaged packet; our MediaError already says what went wrong, on one line.
# PyAV >= 13 keeps FFmpeg's log off by default (level None); older versions forward warnings, so quiet them.
if av.logging.get_level() is not None:
    av.logging.set_level(av.logging.PANIC)


class MediaError(RestError):
    """A media file cannot be read or written; the message names the file and says what is wrong, on one line."""


def _error(path: PathLike, problem: str) -> MediaError:
    return MediaError(f"{path}: {problem}")


def _reason(e: BaseException) -> str:
    """FFmpeg's short description of an error, without PyAV's errno and file name decorations."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
