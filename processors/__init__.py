"""mmreason.processors: media in, model inputs out.

Images (path, bytes, data URI, PIL) are loaded upright in RGB and resized to the model's pixel budget with
qwen-vl-utils' `smart_resize`, or to the fixed square of a model family that takes one; videos are sampled (PyAV with
keyframe-aware seeking, decord as fallback) by qwen-vl-utils' frame rules under a total-pixel budget; `build_inputs`
runs the HF processor's chat template on the already-resized media (the vision grid is then exactly model_size /
patch size) and can mask a gold assistant turn for SFT; `collate` pads a batch. Jigsaw puzzles are made and
reassembled here too, since they are pure image operations. Bad media raise `MediaError` ("<source>: <problem>").
"""

from .errors import MediaError
from .images import (
    FACTOR,
    ImageSource,
    ResizedImage,
    fetch_image,
    load_image,
    model_size_for,
    resize_image,
)
from .inputs import MEDIA_KEYS, SEQUENCE_KEYS, TOKEN_TYPE_KEYS, build_inputs, collate, processor_inputs, render_prompt
from .jigsaw import assemble_jigsaw, crop_to_grid, make_jigsaw, shuffle_order
from .video import VideoClip, frame_pixel_budget, load_video, sample_indices

__all__ = [
    "FACTOR",
    "MEDIA_KEYS",
    "SEQUENCE_KEYS",
    "TOKEN_TYPE_KEYS",
    "ImageSource",
    "MediaError",
    "ResizedImage",
    "VideoClip",
    "assemble_jigsaw",
    "build_inputs",
    "collate",
    "crop_to_grid",
    "fetch_image",
    "frame_pixel_budget",
    "load_image",
    "load_video",
    "make_jigsaw",
    "model_size_for",
    "processor_inputs",
    "render_prompt",
    "resize_image",
    "sample_indices",
    "shuffle_order",
]
