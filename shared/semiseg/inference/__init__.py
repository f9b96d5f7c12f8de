"""Sliding-window 3-D inference with uncertainty maps; inference input checks and provenance records."""

from __future__ import annotations

from .checks import ReplaceNonFinited, find_images, inference_images
from .provenance import ProvenanceWriter, file_sha256
from .uncertainty import EntropyMapd, predict_with_uncertainty, sliding_window_inferer

__all__ = ["EntropyMapd", "predict_with_uncertainty", "sliding_window_inferer"]
__all__ += ["ProvenanceWriter", "ReplaceNonFinited", "file_sha256", "find_images", "inference_images"]
