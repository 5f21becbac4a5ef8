"""Generation pipelines: portrait + speech -> frames, offline or live (rest/pipelines/talking_head.py)."""

from rest.pipelines.portrait import Paster, Portrait, crop_as_is, prepare_portrait
from rest.pipelines.talking_head import (
    StreamSession,
    TalkingHeadPipeline,
    export_pipeline,
    write_pipeline,
)

__all__ = [
    "Paster",
    "Portrait",
    "StreamSession",
    "TalkingHeadPipeline",
    "crop_as_is",
    "export_pipeline",
    "prepare_portrait",
    "write_pipeline",
]
