"""Weight schedules used by consistency-based semi-supervised methods.

All functions are pure: they map a position ``current`` on a ramp of ``length`` units to a factor in [0, 1].
The unit (epochs, or iterations // k) is chosen by the caller; see :class:`semiseg.handlers.ConsistencyRampUp`.
"""

from __future__ import annotations

import math

__all__ = ["sigmoid_rampup", "linear_rampup", "cosine_rampdown"]


def _check_length(length: float) -> None:
    if length < 0:
        raise ValueError(f"ramp length must be >= 0, got {length!r} ({type(length).__name__}).")


def sigmoid_rampup(current: float, length: float) -> float:
    """Exponential ("sigmoid-shaped") ramp-up ``exp(-5 (1 - t/L)^2)``.

    Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017, Sec. 3 (ramp-up);
    SSL4MIS ``utils/ramps.py::sigmoid_rampup``. docs/architecture.md §3.

    Args:
        current: position on the ramp, clipped to ``[0, length]``.
        length: ramp length in the same unit; ``0`` means no ramp (always 1).

    Returns:
        ``1.0`` if ``length == 0`` else ``exp(-5 (1 - clip(current, 0, length) / length)^2)``.

    Raises:
        ValueError: if ``length`` is negative.
    """
    _check_length(length)
    if length == 0:
        return 1.0
    current = min(max(float(current), 0.0), float(length))
    phase = 1.0 - current / length
    return float(math.exp(-5.0 * phase * phase))


def linear_rampup(current: float, length: float) -> float:
    """Linear ramp-up ``clip(t / L, 0, 1)`` (SSL4MIS ``utils/ramps.py::linear_rampup``).

    Args:
        current: position on the ramp.
        length: ramp length; ``0`` means no ramp (always 1).

    Returns:
        The factor in [0, 1].

    Raises:
        ValueError: if ``length`` is negative.
    """
    _check_length(length)
    if length == 0:
        return 1.0
    return min(max(float(current) / float(length), 0.0), 1.0)


def cosine_rampdown(current: float, length: float) -> float:
    """Cosine ramp-down ``0.5 (cos(pi t / L) + 1)`` (Loshchilov & Hutter, SGDR, ICLR 2017; SSL4MIS ``ramps.py``).

    Args:
        current: position on the ramp, clipped to ``[0, length]``.
        length: ramp length, must be > 0.

    Returns:
        The factor, 1 at ``current == 0`` and 0 at ``current == length``.

    Raises:
        ValueError: if ``length`` is not positive.
    """
    if length <= 0:
        raise ValueError(f"cosine_rampdown needs length > 0, got {length!r} ({type(length).__name__}).")
    current = min(max(float(current), 0.0), float(length))
    return float(0.5 * (math.cos(math.pi * current / length) + 1.0))
