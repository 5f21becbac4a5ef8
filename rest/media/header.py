"""What a media file's header says, without decoding it: `probe`, and the stream helpers decoding shares."""

from __future__ import annotations

from pathlib import Path

import av

from rest.media.damage import _open_input
from rest.media.types import PathLike, VideoInfo


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """The first real video stream (cover art in audio files is a video stream too, flagged `attached_pic`)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _declared_duration(stream: av.stream.Stream, container: av.container.InputContainer) -> float | None:
    """Seconds the container declares for `stream`: its own duration, else the container's, else None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _stream_fps(stream: av.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe(path: PathLike) -> VideoInfo:
    """Read a media file's streams and durations from its header (no decoding); works for audio-only files."""
    with _open_input(path) as container:
        video = _video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_duration = _declared_duration(audio, container) if audio is not None else None
        if video is not None:
            fps = _stream_fps(video)
            duration = _declared_duration(video, container)
            num_frames = video.frames or _count_packets(container, video)
            if duration is None:
                duration = num_frames / fps if fps > 0 else 0.0
            width, height, codec = video.codec_context.width, video.codec_context.height, video.codec_context.name
        else:
            fps, num_frames, width, height, codec = 0.0, 0, 0, 0, ""
            duration = audio_duration or 0.0
        return VideoInfo(
            path=Path(path),
            width=width,
            height=height,
            fps=fps,
            num_frames=num_frames,
            duration=duration,
            codec=codec,
            has_audio=audio is not None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_duration=audio_duration,
            has_video=video is not None,
        )


def _count_packets(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Frames of a stream whose container does not store the count (Matroska, WebM): one packet per frame."""
    return sum(1 for packet in container.demux(stream) if packet.size > 0)
