"""Finding what is wrong with an input file before and after decoding it, and opening it with PyAV.

A damaged file is never decoded "as far as it goes" in silence: a truncated file is detected from its structure
(MP4 boxes, the WAV header) before FFmpeg opens it, and from comparing what was decoded with the duration the
container declares (`_check_complete`), since FFmpeg often stops early at a cut without an error.
"""

from __future__ import annotations

import struct
from pathlib import Path

import av
import av.error

from rest.media.errors import _error, _reason
from rest.media.types import PathLike

#################################################################################
#                          Before FFmpeg opens a file                           #
#################################################################################


def check_input_file(path: PathLike) -> Path:
    """Fail with a clear message for the problems we can see before FFmpeg looks at the file."""
    p = Path(path)
    if not p.exists():
        raise _error(path, "file not found")
    if p.is_dir():
        raise _error(path, "is a directory, not a media file")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except PermissionError:
        raise _error(path, "permission denied") from None
    except OSError as e:
        raise _error(path, f"cannot be read ({e.strerror})") from None
    if p.stat().st_size == 0:
        raise _error(path, "file is empty")
    return p


# Top-level box types of ISO base media (mp4 / mov / m4a) files; used to recognise one and walk its boxes.
_ISO_BOXES = frozenset(
    [b"ftyp", b"styp", b"moov", b"moof", b"mdat", b"free", b"skip", b"wide", b"pnot", b"pdin", b"uuid", b"meta"]
)


def _find_damage(path: Path) -> str | None:
    """The problem with the file's structure when it is cut short (MP4 boxes, the WAV header), else None.

    FFmpeg decodes a truncated file as far as its data goes and often stops without an error, and for WAV it
    even re-estimates the duration from the file size, so the cut is invisible to it. The headers still say
    how long the file should be.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _find_wav_damage(f, size)
        if len(head) >= 8 and head[4:8] in _ISO_BOXES:
            return _find_iso_damage(f, size)
    return None


def _find_wav_damage(f, size: int) -> str | None:
    """A WAV whose `data` chunk runs past the end of the file."""
    offset, byte_rate = 12, 0
    while offset + 8 <= size:
        f.seek(offset)
        chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
        if chunk_id == b"fmt " and chunk_size >= 12:
            fmt = f.read(12)
            if len(fmt) < 12:
                return "file is truncated: it ends inside its header"
            byte_rate = struct.unpack("<HHII", fmt)[3]
        if chunk_id == b"data":
            if chunk_size in (0, 0xFFFFFFFF):  # written by a streaming writer that never filled in the size
                return None
            present = size - (offset + 8)
            if present >= chunk_size:
                return None
            if byte_rate > 0:
                return (
                    f"file is truncated: it holds {present / byte_rate:.2f} s of audio "
                    f"of the {chunk_size / byte_rate:.2f} s its header declares"
                )
            return f"file is truncated: it holds {present} bytes of audio of the {chunk_size} its header declares"
        offset += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
    return None


def _find_iso_damage(f, size: int) -> str | None:
    """An MP4/MOV whose top-level boxes run past the end of the file, or that never got its index (`moov`)."""
    offset, seen = 0, set()
    while offset + 8 <= size:
        f.seek(offset)
        box_size, box_type = struct.unpack(">I4s", f.read(8))
        if box_size == 1:  # 64-bit size follows the type
            if offset + 16 > size:
                return f"file is truncated: it ends inside the header of its '{box_type.decode('latin-1')}' box"
            box_size = struct.unpack(">Q", f.read(8))[0]
        elif box_size == 0:  # the box runs to the end of the file
            box_size = size - offset
        if box_size < 8 or not all(32 <= c < 127 for c in box_type):
            return None  # not a box layout we understand; leave it to FFmpeg
        seen.add(box_type)
        if offset + box_size > size:
            name = box_type.decode("latin-1")
            return f"file is truncated: it has {size:,} bytes but its '{name}' box ends at byte {offset + box_size:,}"
        offset += box_size
    if b"mdat" in seen and b"moov" not in seen and b"moof" not in seen:
        return "file is truncated or was never finalized: it has no 'moov' index box"
    return None


def _open_input(path: PathLike) -> av.container.InputContainer:
    """Open a media file with PyAV, or raise MediaError saying why it cannot be read."""
    p = check_input_file(path)
    damage = _find_damage(p)
    if damage is not None:
        raise _error(path, damage)
    try:
        container = av.open(str(p), mode="r")
    except av.error.FFmpegError as e:
        raise _error(path, f"not a readable media file ({_reason(e)})") from None
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise _error(path, "not a readable media file (no audio or video stream)")
    return container


#################################################################################
#                   After decoding: less decoded than declared                  #
#################################################################################


def _check_complete(
    path: PathLike, kind: str, decoded: float, declared: float | None, own: bool, tolerance: float
) -> None:
    """Raise when a stream decoded to its end holds clearly less than the container declares.

    `own` says the duration is the stream's own (MP4, WAV). Otherwise it is the whole file's (Matroska / WebM
    store no per-stream length): the longest stream, so a shorter one is only truncated if every stream ends
    early, which we check by reading the packets' timestamps (no decoding).
    """
    if declared is None or decoded >= declared - tolerance:
        return
    if not own and _packets_end(path) >= declared - tolerance:
        return
    raise _error(path, f"file is truncated: decoded {decoded:.2f} s of {declared:.2f} s of {kind} declared")


def _packets_end(path: PathLike) -> float:
    """Seconds from the start of the file to the end of its last packet, over all audio and video streams."""
    with av.open(str(path)) as container:
        streams = [*container.streams.video, *container.streams.audio]
        start = min((s.start_time * s.time_base for s in streams if s.start_time is not None), default=0)
        end = start
        try:
            for packet in container.demux(streams):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, (packet.pts + (packet.duration or 0)) * packet.time_base)
        except av.error.FFmpegError:
            pass  # damaged past this point: what was read so far is where the data ends
    return float(end - start)
