"""Deterministic 3D phantom data set for the semiseg demo (MSD-style NIfTI + ``dataset.json``).

Every case is a torso-like phantom imaged with an MR-like forward model:

- anatomy: an air background, an elliptical body with a bright fat rim, a large smoothly deformed *organ*
  (class 1, a union of rotated ellipsoids warped by a smooth random displacement field), one to three *lesions*
  (class 2, small ellipsoids inside, straddling or next to the organ), and two non-target distractors: a bright
  tubular *vessel* running past (sometimes indenting) the organ, with lesion-like intensity, and a *spleen*-like
  blob with organ-like intensity elsewhere in the body;
- appearance: per-tissue means with correlated multiplicative texture, a point-spread blur (partial volume), a gamma
  curve, a multiplicative smooth bias field, Rician noise and an arbitrary global scale (MR units).

Following docs/architecture.md §4, the first ``num_reference`` training cases come from a narrow *reference protocol*
(nearly fixed contrast, gamma, bias, noise, blur, organ size and position, one lesion inside the organ), while all
other training cases and every test case are drawn from the *full* protocol, which spans wide ranges of all of these.
A labelled budget taken from the start of ``training`` therefore does not span the variation that the unlabelled and
test cases show. See ``docs/data.md`` for the calibration that measures this.

Randomness is sampled in one place (:func:`sample_case_params`) and applied by a pure function
(:func:`render_case`), so a case is fully determined by its :class:`CaseParams`.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "FULL_PROTOCOL",
    "GENERATOR_VERSION",
    "LABELS",
    "REFERENCE_PROTOCOL",
    "SCENARIOS",
    "SITE_A_PROTOCOL",
    "SITE_B_PROTOCOL",
    "SPACING_MM",
    "CaseParams",
    "LesionParams",
    "Protocol",
    "case_params_dict",
    "make_demo_dataset",
    "make_scenario",
    "make_two_site_dataset",
    "render_case",
    "sample_case_params",
]

GENERATOR_VERSION = 3
"""Bumped whenever the generator's output changes for a given seed; stored in ``dataset.json``."""

LABELS: dict[str, str] = {"0": "background", "1": "organ", "2": "lesion"}
SPACING_MM = 1.5
REFERENCE_SHAPE = 64
"""Geometric sizes below are in voxels of a 64-voxel volume; other shapes scale them by ``min(shape) / 64``."""

_TRAIN, _TEST = 0, 1
_PLACEMENTS = ("inside", "touching", "adjacent")

Range = tuple[float, float]


@dataclass(frozen=True)
class Protocol:
    """Ranges from which one acquisition protocol draws its per-case parameters (uniformly).

    Intensities are on the phantom's signal scale, where the body (soft tissue) sits near 0.3 and the brightest
    tissue near 1 before gamma, bias field and global scaling.
    """

    organ_contrast: Range
    """Organ mean minus body mean."""
    lesion_contrast: Range
    """Lesion mean minus organ mean."""
    spleen_delta: Range
    """Spleen mean minus organ mean (the organ-like distractor)."""
    vessel_factor: Range
    """Vessel mean as a multiple of the lesion mean (the lesion-like distractor)."""
    texture_scale: Range
    blur_sigma: Range
    """Point-spread Gaussian sigma in voxels."""
    gamma: Range
    bias_strength: Range
    """Standard deviation of the log bias field."""
    noise_sigma: Range
    """Rician noise sigma on the signal scale."""
    organ_scale: Range
    organ_shift: float
    """Maximum organ-centre offset from the body centre per axis, in voxels (64-voxel units)."""
    organ_rotation_deg: float
    lobe_count: tuple[int, int]
    """Inclusive range of the number of extra lobes (ellipsoids) united with the organ's main ellipsoid."""
    lobe_jitter: float
    warp_amplitude: Range
    """Maximum displacement of the smooth warp, in voxels (64-voxel units)."""
    lesion_count: tuple[int, int]
    """Inclusive range of the number of lesions."""
    lesion_radius: Range
    """Mean lesion radius, in voxels (64-voxel units)."""
    lesion_placements: tuple[str, ...]
    """Placements drawn from: ``inside`` the organ, ``touching`` (straddling its boundary), ``adjacent`` (outside)."""
    vessel_radius: Range
    vessel_gap: Range
    """Distance from the organ surface to the vessel surface, in voxels; negative values indent the organ."""
    rim_mean: Range = (0.85, 0.95)
    """Mean of the fat rim under the body surface (the brightest tissue of the default protocols)."""
    spacing_mm: Range = (SPACING_MM, SPACING_MM)
    """Isotropic voxel spacing in mm. Anatomy has a fixed physical size: at a finer spacing every structure spans
    more voxels (lengths above are in voxels at 1.5 mm)."""


REFERENCE_PROTOCOL = Protocol(
    organ_contrast=(0.22, 0.24),
    lesion_contrast=(0.30, 0.32),
    spleen_delta=(-0.10, -0.09),
    vessel_factor=(1.05, 1.10),
    texture_scale=(0.9, 1.0),
    blur_sigma=(0.5, 0.6),
    gamma=(0.97, 1.03),
    bias_strength=(0.04, 0.06),
    noise_sigma=(0.015, 0.020),
    organ_scale=(0.97, 1.03),
    organ_shift=1.0,
    organ_rotation_deg=4.0,
    lobe_count=(1, 1),
    lobe_jitter=0.1,
    warp_amplitude=(1.5, 2.0),
    lesion_count=(1, 1),
    lesion_radius=(5.0, 5.5),
    lesion_placements=("inside",),
    vessel_radius=(2.2, 2.5),
    vessel_gap=(3.5, 4.5),
)
"""The narrow protocol of the first ``num_reference`` training cases (the labelled budget)."""

FULL_PROTOCOL = Protocol(
    organ_contrast=(0.12, 0.32),
    lesion_contrast=(0.12, 0.40),
    spleen_delta=(-0.08, 0.08),
    vessel_factor=(0.85, 1.15),
    texture_scale=(0.5, 2.0),
    blur_sigma=(0.3, 1.2),
    gamma=(0.75, 1.35),
    bias_strength=(0.0, 0.25),
    noise_sigma=(0.01, 0.04),
    organ_scale=(0.75, 1.25),
    organ_shift=7.0,
    organ_rotation_deg=35.0,
    lobe_count=(1, 2),
    lobe_jitter=1.0,
    warp_amplitude=(1.0, 5.0),
    lesion_count=(1, 3),
    lesion_radius=(3.0, 7.5),
    lesion_placements=_PLACEMENTS,
    vessel_radius=(1.5, 3.0),
    vessel_gap=(-1.5, 5.0),
)
"""The full protocol of the other training cases and of all test cases."""

SITE_A_PROTOCOL = FULL_PROTOCOL
"""Scenario ``two_site``, site A (where the labels come from): the full protocol's anatomy and appearance."""

SITE_B_PROTOCOL = replace(
    FULL_PROTOCOL,
    organ_contrast=(0.24, 0.32),
    lesion_contrast=(-0.16, -0.10),
    vessel_factor=(1.7, 2.1),
    rim_mean=(0.50, 0.62),
    bias_strength=(0.30, 0.45),
    noise_sigma=(0.04, 0.06),
    spacing_mm=(1.20, 1.35),
)
"""Scenario ``two_site``, site B (another scanner: the unlabelled and test cases): the same anatomy generator and
ranges, another mapping of tissues to intensities and another acquisition:

- lesions darker than the organ (lesion minus organ -0.16..-0.10, where site A's are brighter, +0.12..+0.40: the
  pair whose order of brightness flips), still brighter than the body (+0.08..+0.22);
- the vessel (the lesion-like distractor on site A) bright, 1.7-2.1 times the lesion mean; the fat rim darker
  (0.50-0.62 against 0.85-0.95);
- a stronger smooth multiplicative bias field (log-field standard deviation 0.30-0.45 against 0-0.25);
- more noise (Rician sigma 0.04-0.06 against 0.01-0.04);
- a finer voxel spacing, 1.20-1.35 mm isotropic against 1.5 mm, so every structure spans 11-25% more voxels.
"""


@dataclass(frozen=True)
class LesionParams:
    """One lesion: where it goes, its size, and the uniform draw that picks its voxel among the candidates."""

    placement: str
    radii: tuple[float, float, float]
    pick: float


@dataclass(frozen=True)
class CaseParams:
    """Everything that determines one case; :func:`render_case` is a pure function of it.

    Lengths are in voxels of the rendered shape (already scaled).
    """

    shape: tuple[int, int, int]
    noise_seed: int
    body_center: tuple[float, float, float]
    body_radii: tuple[float, float, float]
    rim_thickness: float
    organ_center: tuple[float, float, float]
    organ_radii: tuple[float, float, float]
    organ_angles: tuple[float, float, float]
    lobe_offsets: tuple[tuple[float, float, float], ...]
    lobe_radii: tuple[tuple[float, float, float], ...]
    warp_amplitude: float
    lesions: tuple[LesionParams, ...]
    vessel_radius: float
    vessel_gap: float
    vessel_pick: float
    vessel_tilt: tuple[float, float]
    vessel_wiggle: float
    vessel_phase: float
    spleen_radii: tuple[float, float, float]
    spleen_pick: float
    body_mean: float
    organ_contrast: float
    lesion_contrast: float
    spleen_delta: float
    vessel_factor: float
    rim_mean: float
    texture_scale: float
    blur_sigma: float
    gamma: float
    bias_strength: float
    noise_sigma: float
    intensity_scale: float
    spacing_mm: float = SPACING_MM


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _vec3(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def sample_case_params(rng: np.random.Generator, protocol: Protocol, shape: Sequence[int]) -> CaseParams:
    """Draws all random parameters of one case from ``protocol``.

    Args:
        rng: the case's random generator (consumed).
        protocol: ranges to draw from (:data:`REFERENCE_PROTOCOL` or :data:`FULL_PROTOCOL`).
        shape: spatial shape of the volume, three ints >= 16.

    Returns:
        The case's parameters, lengths scaled to ``shape``.

    Raises:
        ValueError: if ``shape`` is not three ints >= 16.
    """
    shape3 = tuple(int(s) for s in shape)
    if len(shape3) != 3 or min(shape3) < 16:
        raise ValueError(f"shape must be three ints >= 16, got {shape!r} ({type(shape).__name__})")
    spacing = SPACING_MM
    if protocol.spacing_mm[0] != protocol.spacing_mm[1]:
        spacing = _uniform(rng, protocol.spacing_mm)  # drawn first; protocols with one spacing draw nothing
    elif protocol.spacing_mm[0] != SPACING_MM:
        spacing = float(protocol.spacing_mm[0])
    scale = min(shape3) / REFERENCE_SHAPE
    length = scale * SPACING_MM / spacing  # anatomy in voxels of this spacing (the body fills the field of view)
    centre = (np.asarray(shape3, dtype=np.float64) - 1.0) / 2.0

    body_radii = np.asarray(shape3, dtype=np.float64) * np.array([0.40, 0.44, 0.44]) * rng.uniform(0.95, 1.03, 3)
    body_center = centre + rng.uniform(-1.0, 1.0, 3) * scale
    organ_scale = _uniform(rng, protocol.organ_scale)
    organ_radii = np.array([12.0, 15.0, 13.0]) * length * organ_scale * rng.uniform(0.93, 1.07, 3)
    organ_center = body_center + (np.array([0.0, -3.0, -5.0]) + rng.uniform(-1, 1, 3) * protocol.organ_shift) * length
    organ_angles = rng.uniform(-1.0, 1.0, 3) * math.radians(protocol.organ_rotation_deg)
    canonical_lobes = np.array([[0.3, 0.7, 0.6], [-0.4, -0.6, 0.7]])
    num_lobes = int(rng.integers(protocol.lobe_count[0], protocol.lobe_count[1] + 1))
    lobe_offsets, lobe_radii = [], []
    for k in range(num_lobes):
        direction = canonical_lobes[k] + protocol.lobe_jitter * rng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-12
        lobe_offsets.append(_vec3(direction * organ_radii.mean() * rng.uniform(0.55, 0.75)))
        lobe_radii.append(_vec3(organ_radii * rng.uniform(0.5, 0.7, 3)))

    num_lesions = int(rng.integers(protocol.lesion_count[0], protocol.lesion_count[1] + 1))
    lesions = []
    for _ in range(num_lesions):
        placement = str(protocol.lesion_placements[int(rng.integers(len(protocol.lesion_placements)))])
        radius = _uniform(rng, protocol.lesion_radius) * length
        radii = radius * rng.uniform(0.8, 1.2, 3)
        lesions.append(LesionParams(placement=placement, radii=_vec3(radii), pick=float(rng.uniform())))

    return CaseParams(
        shape=(shape3[0], shape3[1], shape3[2]),
        noise_seed=int(rng.integers(2**31 - 1)),
        body_center=_vec3(body_center),
        body_radii=_vec3(body_radii),
        rim_thickness=float(rng.uniform(1.8, 2.8) * length),
        organ_center=_vec3(organ_center),
        organ_radii=_vec3(organ_radii),
        organ_angles=_vec3(organ_angles),
        lobe_offsets=tuple(lobe_offsets),
        lobe_radii=tuple(lobe_radii),
        warp_amplitude=_uniform(rng, protocol.warp_amplitude) * length,
        lesions=tuple(lesions),
        vessel_radius=_uniform(rng, protocol.vessel_radius) * max(length, 0.75),
        vessel_gap=_uniform(rng, protocol.vessel_gap) * length,
        vessel_pick=float(rng.uniform()),
        vessel_tilt=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
        vessel_wiggle=float(rng.uniform(0.5, 2.5) * length),
        vessel_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        spleen_radii=_vec3(np.array([6.5, 5.5, 7.0]) * length * rng.uniform(0.85, 1.15, 3)),
        spleen_pick=float(rng.uniform()),
        body_mean=float(rng.uniform(0.29, 0.31)),
        organ_contrast=_uniform(rng, protocol.organ_contrast),
        lesion_contrast=_uniform(rng, protocol.lesion_contrast),
        spleen_delta=_uniform(rng, protocol.spleen_delta),
        vessel_factor=_uniform(rng, protocol.vessel_factor),
        rim_mean=_uniform(rng, protocol.rim_mean),
        texture_scale=_uniform(rng, protocol.texture_scale),
        blur_sigma=_uniform(rng, protocol.blur_sigma),
        gamma=_uniform(rng, protocol.gamma),
        bias_strength=_uniform(rng, protocol.bias_strength),
        noise_sigma=_uniform(rng, protocol.noise_sigma),
        intensity_scale=float(rng.uniform(300.0, 1500.0)),
        spacing_mm=spacing,
    )


def _rotation(angles: Sequence[float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid_q(
    coords: np.ndarray, center: Sequence[float], radii: Sequence[float], rotation: np.ndarray | None = None
) -> np.ndarray:
    """Implicit ellipsoid function, < 1 inside, evaluated at ``coords`` (3, D, H, W)."""
    d = coords - np.asarray(center, dtype=np.float32)[:, None, None, None]
    if rotation is not None:
        d = np.tensordot(rotation.astype(np.float32), d, axes=1)
    r = np.asarray(radii, dtype=np.float32)[:, None, None, None]
    return np.sum((d / r) ** 2, axis=0)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], grid: int) -> np.ndarray:
    """Zero-mean, unit-std random field varying on the scale of ``shape / grid``.

    Random coefficients on a coarse ``grid**3`` lattice are spread with separable Gaussian kernels (width one lattice
    spacing), which is smooth and much faster than spline zooming.
    """
    coarse = rng.normal(size=(grid + 2, grid + 2, grid + 2))
    kernels = []
    for size in shape:
        x = (np.arange(size) + 0.5) / size * grid + 0.5  # lattice units; the lattice overhangs by one node per side
        nodes = np.arange(grid + 2, dtype=np.float64)
        kernels.append(np.exp(-0.5 * (x[:, None] - nodes[None, :]) ** 2))
    field = np.einsum("ai,bj,ck,ijk->abc", kernels[0], kernels[1], kernels[2], coarse, optimize=True)
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _pick(candidates: np.ndarray, u: float) -> np.ndarray | None:
    if len(candidates) == 0:
        return None
    return candidates[min(int(u * len(candidates)), len(candidates) - 1)]


def render_case(params: CaseParams) -> tuple[np.ndarray, np.ndarray]:
    """Renders one case.

    Args:
        params: the case's parameters (from :func:`sample_case_params`).

    Returns:
        ``(image, label)``: float32 image of shape ``params.shape`` on an arbitrary (MR-like) intensity scale, and
        uint8 label with 0 background, 1 organ, 2 lesion; both foreground classes are present.

    Raises:
        RuntimeError: if a foreground class ends up empty (does not happen for shapes >= 16).
    """
    shape = params.shape
    rng = np.random.default_rng(params.noise_seed)
    coords = np.indices(shape, dtype=np.float32)

    # Smooth deformation shared by all structures: evaluate implicit shapes at warped coordinates.
    warp = np.stack([_smooth_field(rng, shape, 6) for _ in range(3)])
    warp *= params.warp_amplitude / (np.abs(warp).max() + 1e-12)
    warped = coords + warp

    body = _ellipsoid_q(warped, params.body_center, params.body_radii) < 1.0
    body_depth = ndimage.distance_transform_edt(body)
    rim = body & (body_depth <= params.rim_thickness)

    rotation = _rotation(params.organ_angles)
    organ_q = _ellipsoid_q(warped, params.organ_center, params.organ_radii, rotation)
    for offset, radii in zip(params.lobe_offsets, params.lobe_radii):
        lobe_center = np.asarray(params.organ_center) + rotation.T @ np.asarray(offset)
        organ_q = np.minimum(organ_q, _ellipsoid_q(warped, lobe_center, radii, rotation))
    organ = (organ_q < 1.0) & (body_depth > params.rim_thickness + 1.5)
    organ_depth = ndimage.distance_transform_edt(organ)
    organ_dist = ndimage.distance_transform_edt(~organ)

    # Vessel: a gently curved, slightly tilted tube along axis 0, passing the organ at a given gap (or indenting it).
    organ_idx = np.argwhere(organ)
    z0 = int(round(float(organ_idx[:, 0].mean())))
    target = params.vessel_radius + params.vessel_gap
    if target >= 0:
        ring = np.abs(organ_dist[z0] - target) <= 0.75
    else:
        ring = np.abs(organ_depth[z0] + target) <= 0.75
    ring &= body_depth[z0] > params.rim_thickness + params.vessel_radius + 1.0
    start = _pick(np.argwhere(ring), params.vessel_pick)
    if start is None:
        start = np.asarray(shape[1:], dtype=np.float64) / 2.0
    t = np.linspace(-1.0, shape[0], 4 * shape[0] + 8)
    angle = 2 * np.pi * t / shape[0] + params.vessel_phase
    curve = np.stack(
        [
            t,
            start[0] + params.vessel_tilt[0] * (t - z0) + params.vessel_wiggle * np.sin(angle),
            start[1] + params.vessel_tilt[1] * (t - z0) + params.vessel_wiggle * np.cos(angle),
        ],
        axis=1,
    )
    max_lesion_radius = max((max(les.radii) for les in params.lesions), default=0.0)
    vessel_dist, _ = cKDTree(curve).query(
        coords.reshape(3, -1).T, k=1, distance_upper_bound=params.vessel_radius + max_lesion_radius + 2.0
    )
    vessel_dist = vessel_dist.reshape(shape)
    vessel = (vessel_dist < params.vessel_radius) & body & ~rim

    # Spleen: an organ-like ellipsoid elsewhere in the body, clear of the organ.
    spleen_r = max(params.spleen_radii)
    spleen_room = (organ_dist > spleen_r + 1.0) & (body_depth > 0.8 * spleen_r + params.rim_thickness + 1.0) & ~vessel
    spleen_at = _pick(np.argwhere(spleen_room), params.spleen_pick)
    spleen = np.zeros(shape, dtype=bool)
    if spleen_at is not None:
        spleen_center = warped[:, spleen_at[0], spleen_at[1], spleen_at[2]]
        spleen = (_ellipsoid_q(warped, spleen_center, params.spleen_radii) < 1.0) & body & ~rim & ~organ & ~vessel

    # Lesions: centred on a chosen voxel's warped position, so that voxel is always lesion.
    lesion = np.zeros(shape, dtype=bool)
    centres: list[tuple[np.ndarray, float]] = []
    for les in params.lesions:
        r = max(les.radii)
        inside_ok = organ_depth >= r + 1.0
        options = {
            "inside": inside_ok,
            "touching": organ & (organ_depth <= 1.5),
            "adjacent": ~organ & (organ_dist >= 0.7 * r) & (organ_dist <= r + 1.5),
        }
        room = options[les.placement] if options[les.placement].any() else options["touching"]
        room = room & (body_depth > r + params.rim_thickness + 1.0) & (vessel_dist > r + 0.5)
        cand = np.argwhere(room)
        for centre, r_prev in centres:
            cand = cand[np.linalg.norm(cand - centre, axis=1) > r + r_prev + 1.0]
        at = _pick(cand, les.pick)
        if at is None:
            continue
        centres.append((at, r))
        lesion_center = warped[:, at[0], at[1], at[2]]
        lesion |= (_ellipsoid_q(warped, lesion_center, les.radii) < 1.0) & body & ~rim
        lesion[at[0], at[1], at[2]] = True

    label = np.zeros(shape, dtype=np.uint8)
    label[organ & ~vessel] = 1
    label[lesion] = 2
    if not (label == 1).any() or not (label == 2).any():
        raise RuntimeError(f"empty foreground class in a case with shape {shape} (params {params})")

    # Appearance: tissue means with texture, blur (partial volume), gamma, bias field, Rician noise, global scale.
    organ_mean = params.body_mean + params.organ_contrast
    lesion_mean = organ_mean + params.lesion_contrast
    tissue = np.zeros(shape, dtype=np.float32)
    amplitude = np.zeros(shape, dtype=np.float32)
    layers = [
        (body, params.body_mean, 0.06),
        (spleen, organ_mean + params.spleen_delta, 0.04),
        (label == 1, organ_mean, 0.05),
        (vessel, lesion_mean * params.vessel_factor, 0.02),
        (rim, params.rim_mean, 0.05),
        (lesion, lesion_mean, 0.12),
    ]
    for mask, mean, amp in layers:
        tissue[mask] = mean
        amplitude[mask] = amp * params.texture_scale
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.0)
    texture /= texture.std() + 1e-12
    signal = tissue * (1.0 + amplitude * texture)
    signal = ndimage.gaussian_filter(signal, params.blur_sigma)
    signal = np.clip(signal, 0.0, None) ** params.gamma
    signal *= np.exp(params.bias_strength * _smooth_field(rng, shape, 3))
    real = signal + params.noise_sigma * rng.normal(size=shape).astype(np.float32)
    imag = params.noise_sigma * rng.normal(size=shape).astype(np.float32)
    image = np.sqrt(real**2 + imag**2) * params.intensity_scale
    return image.astype(np.float32), label


def _affine(spacing_mm: float = SPACING_MM) -> np.ndarray:
    return np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])


def _save(array: np.ndarray, path: pathlib.Path, dtype: type, spacing_mm: float = SPACING_MM) -> None:
    affine = _affine(spacing_mm)
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))


def _is_complete(json_path: pathlib.Path, generator: dict[str, object]) -> bool:
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("generator") != generator:
        return False
    root = json_path.parent
    entries = list(meta.get("training", [])) + list(meta.get("test", []))
    if len(entries) != int(generator["num_train"]) + int(generator["num_test"]):  # type: ignore[call-overload]
        return False
    return all((root / e[key]).is_file() for e in entries for key in ("image", "label"))


def make_demo_dataset(
    out_dir: str | pathlib.Path,
    seed: int = 0,
    num_train: int = 20,
    num_reference: int = 4,
    num_test: int = 8,
    shape: Sequence[int] = (64, 64, 64),
    overwrite: bool = False,
) -> pathlib.Path:
    """Generates the demo data set (MSD layout) under ``out_dir``.

    Writes ``imagesTr/case_XXX.nii.gz``, ``labelsTr/case_XXX.nii.gz`` (all training cases are labelled; the first
    ``num_reference`` use the reference protocol), ``imagesTs/test_XXX.nii.gz`` and ``labelsTs/test_XXX.nii.gz``
    (held-out cases with labels), and ``dataset.json`` last. Case ``i`` of a split depends only on ``(seed, split, i)``
    and on whether it is a reference case, so changing ``num_train`` keeps the other cases.

    Args:
        out_dir: output folder (created if needed).
        seed: data set seed.
        num_train: number of training cases (>= 1).
        num_reference: how many of the first training cases use the reference protocol (0..num_train).
        num_test: number of test cases (>= 1).
        shape: spatial shape, three ints >= 16; spacing is 1.5 mm isotropic.
        overwrite: regenerate even when a complete data set with the same generation parameters exists.

    Returns:
        Path of ``dataset.json``. If it exists, lists only existing files and was made with the same parameters
        (and ``overwrite`` is False), it is returned as is; otherwise the data set is regenerated.

    Raises:
        ValueError: on invalid counts or shape.
    """
    counts = (("num_train", num_train, 1), ("num_test", num_test, 1), ("num_reference", num_reference, 0))
    for name, value, low in counts:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r} ({type(value).__name__})")
    if num_reference > num_train:
        raise ValueError(f"num_reference ({num_reference}) must not exceed num_train ({num_train})")
    shape3 = tuple(int(s) for s in shape)
    if len(shape3) != 3 or min(shape3) < 16:
        raise ValueError(f"shape must be three ints >= 16, got {shape!r} ({type(shape).__name__})")

    root = pathlib.Path(out_dir)
    json_path = root / "dataset.json"
    generator: dict[str, object] = {
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_reference": int(num_reference),
        "num_test": int(num_test),
        "shape": list(shape3),
    }
    if not overwrite and _is_complete(json_path, generator):
        return json_path

    json_path.unlink(missing_ok=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        folder = root / sub
        if folder.is_dir():
            for old in list(folder.glob("case_*.nii.gz")) + list(folder.glob("test_*.nii.gz")):
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)

    training, test = [], []
    for split, count, prefix, img_dir, lbl_dir, entries in (
        (_TRAIN, num_train, "case", "imagesTr", "labelsTr", training),
        (_TEST, num_test, "test", "imagesTs", "labelsTs", test),
    ):
        for i in range(count):
            reference = split == _TRAIN and i < num_reference
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), split, i, int(reference)]))
            params = sample_case_params(rng, REFERENCE_PROTOCOL if reference else FULL_PROTOCOL, shape3)
            image, label = render_case(params)
            name = f"{prefix}_{i:03d}.nii.gz"
            _save(image, root / img_dir / name, np.float32)
            _save(label, root / lbl_dir / name, np.uint8)
            entries.append({"image": f"./{img_dir}/{name}", "label": f"./{lbl_dir}/{name}"})

    meta = {
        "name": "semiseg-demo-phantom",
        "description": (
            "Deterministic synthetic 3D MR-like torso phantom (organ, lesions, vessel and spleen distractors, bias "
            f"field, Rician noise). The first {num_reference} training cases use a narrow reference protocol; the "
            "other training cases and all test cases span the full appearance and shape variation. Generated by "
            "semiseg.data.demo.make_demo_dataset."
        ),
        "reference": "semiseg docs/data.md",
        "licence": "Apache-2.0",
        "release": f"generator v{GENERATOR_VERSION}",
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        "labels": dict(LABELS),
        "numTraining": num_train,
        "numTest": num_test,
        "numReference": num_reference,
        "spacing_mm": [SPACING_MM] * 3,
        "generator": generator,
        "training": training,
        "test": test,
    }
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    shutil.move(str(tmp), str(json_path))
    return json_path


def case_params_dict(params: CaseParams) -> dict[str, object]:
    """Returns ``params`` as a JSON-serialisable dict (for logging and docs)."""
    return asdict(params)


SCENARIOS = ("default", "two_site")
"""The demo's scenarios: ``default`` (:func:`make_demo_dataset`) and ``two_site`` (:func:`make_two_site_dataset`)."""

_SITE_A, _SITE_B = 2, 3  # seed-sequence tags of the two_site scenario's sites (the default demo uses 0/1 for splits)


def _render_entries(
    root: pathlib.Path, items: list[tuple[str, str, str | None, int, int, Protocol]], shape: tuple[int, int, int],
    seed: int,
) -> list[dict[str, str]]:
    """Render ``(name, image_dir, label_dir or None, site tag, index, protocol)`` items; returns MSD entries."""
    entries = []
    for name, img_dir, lbl_dir, site, index, protocol in items:
        # Hashed entropy: seed sequences of consecutive integers gave correlated first draws (the spacing).
        digest = hashlib.sha256(f"two_site/{int(seed)}/{site}/{index}".encode()).digest()
        rng = np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))
        params = sample_case_params(rng, protocol, shape)
        image, label = render_case(params)
        for folder in (img_dir, lbl_dir):
            if folder is not None:
                (root / folder).mkdir(parents=True, exist_ok=True)
        _save(image, root / img_dir / name, np.float32, params.spacing_mm)
        entry = {"image": f"./{img_dir}/{name}"}
        if lbl_dir is not None:
            _save(label, root / lbl_dir / name, np.uint8, params.spacing_mm)
            entry["label"] = f"./{lbl_dir}/{name}"
        entries.append(entry)
    return entries


def _write_dataset_json(root: pathlib.Path, meta: dict) -> pathlib.Path:
    path = root / "dataset.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    shutil.move(str(tmp), str(path))
    return path


def _complete(json_path: pathlib.Path, generator: dict[str, object]) -> bool:
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    entries = [e for key in ("training", "unlabeled", "test") for e in meta.get(key, [])]
    return meta.get("generator") == generator and all(
        (json_path.parent / e[k]).is_file() for e in entries for k in ("image", "label") if k in e
    )


def make_two_site_dataset(
    out_dir: str | pathlib.Path,
    oracle_dir: str | pathlib.Path | None = None,
    seed: int = 0,
    num_labelled: int = 2,
    num_val: int = 2,
    num_unlabelled: int = 20,
    num_oracle_val: int = 2,
    num_test: int = 8,
    shape: Sequence[int] = (64, 64, 64),
    overwrite: bool = False,
) -> pathlib.Path:
    """The ``two_site`` scenario: labels from one scanner (site A), unlabelled and new cases from another (site B).

    Both sites draw anatomy from the same generator and ranges (:data:`SITE_A_PROTOCOL`, :data:`SITE_B_PROTOCOL`
    differ in appearance and spacing only). Writes, under ``out_dir`` (MSD layout):

    - ``training``: exactly the labelled budget plus the validation cases, all site A (``imagesTr``/``labelsTr``,
      ``a_case_XXX``): a bundle run with ``num_labelled = num_labelled`` and ``num_val = num_val`` labels and
      validates on site A only, as a user with no labels on B would;
    - ``unlabeled``: ``num_unlabelled`` site-B images (``imagesUn/b_case_XXX``), no labels;
    - ``test``: ``num_test`` site-B cases with labels (``imagesTs``/``labelsTs``, ``b_test_XXX``).

    and, under ``oracle_dir`` (default: ``<out_dir>_oracle``), the calibration-only oracle: the same site-B images
    with their labels in ``training`` (the ``num_unlabelled`` cases, then ``num_oracle_val`` more site-B cases for
    validation) and the same site-B test cases. No site-A case is in any unlabelled, test or oracle list.

    Args:
        out_dir: the scenario's folder.
        oracle_dir: the oracle's folder.
        seed: data set seed; case ``i`` of a site depends only on ``(seed, site, i)``.
        num_labelled: site-A labelled cases.
        num_val: site-A validation cases (after the labelled ones in ``training``).
        num_unlabelled: site-B unlabelled training images.
        num_oracle_val: extra labelled site-B cases, the oracle's validation cases.
        num_test: site-B test cases.
        shape: spatial shape in voxels.
        overwrite: regenerate even when complete data sets with the same parameters exist.

    Returns:
        The scenario's ``dataset.json``.

    Raises:
        ValueError: on invalid counts or shape.
    """
    counts = (("num_labelled", num_labelled, 1), ("num_val", num_val, 0), ("num_unlabelled", num_unlabelled, 1),
              ("num_oracle_val", num_oracle_val, 0), ("num_test", num_test, 1))
    for name, value, low in counts:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r} ({type(value).__name__})")
    shape3 = tuple(int(v) for v in shape)
    if len(shape3) != 3 or min(shape3) < 16:
        raise ValueError(f"shape must be three ints >= 16, got {shape!r} ({type(shape).__name__})")
    root = pathlib.Path(out_dir)
    oracle = pathlib.Path(oracle_dir) if oracle_dir is not None else root.with_name(root.name + "_oracle")
    generator: dict[str, object] = {
        "scenario": "two_site", "version": GENERATOR_VERSION, "seed": int(seed), "num_labelled": int(num_labelled),
        "num_val": int(num_val), "num_unlabelled": int(num_unlabelled), "num_oracle_val": int(num_oracle_val),
        "num_test": int(num_test), "shape": list(shape3),
    }
    if not overwrite and _complete(root / "dataset.json", generator) and _complete(oracle / "dataset.json",
                                                                                     generator):
        return root / "dataset.json"
    for folder in (root, oracle):
        (folder / "dataset.json").unlink(missing_ok=True)
        for sub in ("imagesTr", "labelsTr", "imagesUn", "imagesTs", "labelsTs"):
            if (folder / sub).is_dir():
                shutil.rmtree(folder / sub)

    a, b = SITE_A_PROTOCOL, SITE_B_PROTOCOL
    training = _render_entries(root, [(f"a_case_{i:03d}.nii.gz", "imagesTr", "labelsTr", _SITE_A, i, a)
                                      for i in range(num_labelled + num_val)], shape3, seed)
    b_train = [(f"b_case_{i:03d}.nii.gz", "imagesTr", "labelsTr", _SITE_B, i, b)
               for i in range(num_unlabelled + num_oracle_val)]
    oracle_training = _render_entries(oracle, b_train, shape3, seed)
    (root / "imagesUn").mkdir(parents=True, exist_ok=True)
    unlabeled = []
    for name, *_ in b_train[:num_unlabelled]:  # the same site-B images, without their labels
        shutil.copyfile(oracle / "imagesTr" / name, root / "imagesUn" / name)
        unlabeled.append({"image": f"./imagesUn/{name}"})
    b_test = [(f"b_test_{i:03d}.nii.gz", "imagesTs", "labelsTs", _SITE_B, 10_000 + i, b) for i in range(num_test)]
    test = _render_entries(root, b_test, shape3, seed)
    for sub in ("imagesTs", "labelsTs"):
        shutil.copytree(root / sub, oracle / sub, dirs_exist_ok=True)
    oracle_test = test

    common = {
        "tensorImageSize": "3D", "modality": {"0": "MR"}, "labels": dict(LABELS), "licence": "Apache-2.0",
        "reference": "semiseg docs/data.md, scenario two_site", "release": f"generator v{GENERATOR_VERSION}",
        "generator": generator, "sites": {"A": asdict(a), "B": asdict(b)},
    }
    _write_dataset_json(oracle, {
        "name": "semiseg-demo-two-site-oracle",
        "description": (
            "Calibration only: the two_site scenario's site-B images with their labels (training: the unlabelled "
            f"images of the scenario, then {num_oracle_val} site-B validation cases) and its site-B test cases."
        ),
        **common, "numTraining": len(oracle_training), "numTest": num_test, "training": oracle_training,
        "test": oracle_test,
    })
    return _write_dataset_json(root, {
        "name": "semiseg-demo-two-site",
        "description": (
            f"Labels from one scanner, images from another: training holds {num_labelled} labelled and {num_val} "
            f"validation cases from site A only; unlabeled holds {num_unlabelled} site-B images; test holds "
            f"{num_test} site-B cases. Site B maps tissues to other intensities (lesions darker than the organ, "
            "brighter on A), with a stronger bias field, more noise and a finer spacing. Generated by "
            "semiseg.data.demo.make_two_site_dataset."
        ),
        **common, "numTraining": len(training), "numTest": num_test, "training": training, "unlabeled": unlabeled,
        "test": test,
    })


def make_scenario(scenario: str, out_dir: str | pathlib.Path, **kwargs: object) -> pathlib.Path:
    """Generate one of :data:`SCENARIOS` under ``out_dir`` (keyword arguments go to its generator).

    Args:
        scenario: ``"default"`` or ``"two_site"``.
        out_dir: the data set's folder.
        kwargs: passed to :func:`make_demo_dataset` or :func:`make_two_site_dataset`.

    Returns:
        The data set's ``dataset.json``.

    Raises:
        ValueError: for an unknown scenario, naming the ones there are.
    """
    if scenario == "default":
        return make_demo_dataset(out_dir, **kwargs)  # type: ignore[arg-type]
    if scenario == "two_site":
        return make_two_site_dataset(out_dir, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
