"""Semi-supervised methods: one file per method, each owning only its loss (docs/architecture.md §2)."""

from __future__ import annotations

from .base import SSLMethod
from .mean_teacher import MeanTeacherMethod, teacher_noise
from .supervised import SupervisedMethod

__all__ = ["SSLMethod", "SupervisedMethod", "MeanTeacherMethod", "teacher_noise"]
