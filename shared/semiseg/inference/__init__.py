"""Sliding-window 3-D inference with uncertainty maps."""

from __future__ import annotations

from .uncertainty import EntropyMapd, predict_with_uncertainty, sliding_window_inferer

__all__ = ["EntropyMapd", "predict_with_uncertainty", "sliding_window_inferer"]
