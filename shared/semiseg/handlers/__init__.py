"""Ignite handlers for semi-supervised training: one handler, one file, state written to ``engine.state``."""

from __future__ import annotations

from .best_weights import BEST_FILENAME, BestWeightsSaver, check_best_weights
from .budget import BudgetLrScheduleHandler, run_budget
from .case_metrics import CaseMetricsWriter
from .checkpoint import RUN_FILES, AtomicCheckpointSaver, clean_stale_temp_files, prepare_checkpoint_dir
from .checkpoint_dir import CheckpointDirGuard, CheckpointDirInUse
from .distance_metrics import HausdorffDistanceMM, MissedStructures, SurfaceDistanceMM
from .ema_teacher import BUFFER_POLICIES, EMATeacher
from .progress import TerminalProgressBar
from .rampup import RAMPS, ConsistencyRampUp, RampScheduler
from .random_state import RandomStates
from .run_record import MAY_CHANGE, RunRecord, check_resume
from .threshold_trajectory import ThresholdTrajectory, plot_threshold_trajectory
from .tracking import track_loss_terms
from .training_record import TrainingRecordWriter

__all__ = [
    "AtomicCheckpointSaver", "BEST_FILENAME", "BestWeightsSaver", "BudgetLrScheduleHandler", "check_best_weights",
    "RandomStates", "clean_stale_temp_files", "prepare_checkpoint_dir", "run_budget", "RunRecord", "MAY_CHANGE",
    "check_resume", "RUN_FILES", "CheckpointDirGuard", "CheckpointDirInUse", "TrainingRecordWriter",
    "HausdorffDistanceMM", "MissedStructures", "SurfaceDistanceMM",
    "CaseMetricsWriter", "EMATeacher", "BUFFER_POLICIES", "ConsistencyRampUp", "RampScheduler", "RAMPS",
    "TerminalProgressBar", "track_loss_terms", "ThresholdTrajectory", "plot_threshold_trajectory"]
