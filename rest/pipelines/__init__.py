"""Generation pipelines: portrait + speech -> frames, offline or live (rest/pipelines/talking_head.py)."""

from rest.pipelines.portrait import Paster, Portrait, crop_as_is, prepare_portrait
from rest.pipelines.talking_head import (
    PIPELINE_FILE,
    PipelineConfig,
    StreamSession,
    TalkingHeadPipeline,
    export_pipeline,
    write_pipeline,
)

__all__ = [
    "PIPELINE_FILE",
    "Paster",
    "PipelineConfig",
    "Portrait",
    "StreamSession",
    "TalkingHeadPipeline",
    "crop_as_is",
    "export_pipeline",
    "prepare_portrait",
    "write_pipeline",
]
