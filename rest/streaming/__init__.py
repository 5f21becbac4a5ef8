"""Streaming generation: the ID-Context KV cache, the one chunk-rollout function, the streaming session, and the
batched step of many sessions."""

from rest.streaming.batch import CacheBatch, step_sessions
from rest.streaming.cache import IDContextCache
from rest.streaming.rollout import (
    chunk_audio_span,
    chunk_latent_index,
    chunk_velocity,
    chunk_video_frames,
    rollout_chunk,
    write_chunk,
    write_sink,
)
from rest.streaming.session import StreamingSession

__all__ = [
    "CacheBatch",
    "IDContextCache",
    "StreamingSession",
    "chunk_audio_span",
    "chunk_latent_index",
    "chunk_video_frames",
    "chunk_velocity",
    "rollout_chunk",
    "step_sessions",
    "write_chunk",
    "write_sink",
]
