"""Ignite handlers for semi-supervised training: one handler, one file, state written to ``engine.state``."""

from __future__ import annotations

from .case_metrics import CaseMetricsWriter
from .checkpoint import AtomicCheckpointSaver
from .ema_teacher import BUFFER_POLICIES, EMATeacher
from .rampup import RAMPS, ConsistencyRampUp, RampScheduler

__all__ = [
    "AtomicCheckpointSaver",
    "CaseMetricsWriter", "EMATeacher", "BUFFER_POLICIES", "ConsistencyRampUp", "RampScheduler", "RAMPS"]
