"""MONAI loading for every supported volume format: :class:`H5Reader` for ``file.h5::dataset`` paths and
:class:`LoadVolumed`, a ``LoadImaged`` that knows it.

The ``"::"`` path syntax names one dataset inside an HDF5 file, e.g. ``"/data/LA/case_01/mri_norm2.h5::image"``
(SSL4MIS / UA-MT store a case's ``image`` and ``label`` in one ``.h5``). NIfTI, NRRD and ``.npy`` keep MONAI's own
readers (``NibabelReader``, ``ITKReader``, ``NumpyReader``), chosen by file suffix as usual.

Note:
    Channel handling, for the bundle configs: ``.h5`` and ``.npy`` volumes are stored without a channel dimension
    and their readers mark this in the metadata (``original_channel_dim`` is NaN, MONAI's "no_channel");
    multi-modal NIfTI (4-D, channels last) is marked ``-1`` by ``NibabelReader``. So
    ``LoadVolumed(keys, ensure_channel_first=True)`` or a following ``EnsureChannelFirstd(keys)`` with the default
    ``channel_dim=None`` yields ``(C, H, W, D)`` for every format. Do not pass ``channel_dim="no_channel"`` in
    configs: it would add a second channel axis to multi-modal NIfTI images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection, PathLike
from monai.data import ImageReader
from monai.transforms import LoadImaged
from monai.utils import MetaKeys, PostFix, SpaceKeys, ensure_tuple

__all__ = ["H5_SEPARATOR", "H5_SUFFIXES", "split_h5_path", "is_h5_path", "H5Reader", "LoadVolumed"]

H5_SEPARATOR = "::"
"""Separates an HDF5 file from the dataset inside it: ``"/abs/case.h5::image"``."""

H5_SUFFIXES = (".h5", ".hdf5")


def split_h5_path(path: PathLike, default_dataset: str | None = None) -> tuple[str, str | None]:
    """Split ``"file.h5::dataset"`` into the file and the dataset name.

    Args:
        path: a path, optionally followed by ``::`` and the name of a dataset in the file.
        default_dataset: returned as the dataset when ``path`` has no ``::`` part.

    Returns:
        ``(file, dataset)``; ``dataset`` is ``default_dataset`` when the path names none.
    """
    text = os.fspath(path)
    file, sep, dataset = text.rpartition(H5_SEPARATOR)
    if not sep:
        return text, default_dataset
    return file, dataset or default_dataset


def is_h5_path(path: PathLike) -> bool:
    """Whether ``path`` (with or without a ``::dataset`` part) names an HDF5 file by its suffix."""
    return split_h5_path(path)[0].lower().endswith(H5_SUFFIXES)


class H5Reader(ImageReader):
    """Read one dataset of an HDF5 file, addressed as ``"file.h5::dataset"``, as a numpy volume.

    Mirrors ``monai.data.NumpyReader``: the array is returned as stored, the metadata holds an identity ``affine``
    and ``original_affine``, ``spatial_shape`` and ``space`` (RAS), and ``original_channel_dim`` is NaN (MONAI's
    "no_channel") unless ``channel_dim`` says otherwise, so ``EnsureChannelFirstd`` adds the channel axis. Several
    paths are stacked along a new first axis, as MONAI's readers do.

    Args:
        channel_dim: the channel axis of the stored arrays, if any; ``None`` or ``"no_channel"`` for none (the
            SSL4MIS ``.h5`` volumes have none).
        dataset: the dataset read when a path has no ``::dataset`` part; ``None`` makes such paths unsupported.

    Raises:
        TypeError: from the constructor for unknown keyword arguments, so that ``LoadImage`` falls back to the
            defaults when it passes arguments meant for other readers.
    """

    def __init__(self, channel_dim: str | int | None = None, dataset: str | None = None) -> None:
        super().__init__()
        self.channel_dim: float | int = float("nan") if channel_dim in (None, "no_channel") else int(channel_dim)
        self.dataset = dataset

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file ends in ``.h5``/``.hdf5`` before its ``::dataset`` part (and names a dataset).

        Args:
            filename: one path or several.
        """
        names = ensure_tuple(filename)
        return bool(names) and all(
            isinstance(n, (str, os.PathLike)) and is_h5_path(n) and split_h5_path(n, self.dataset)[1] is not None
            for n in names
        )

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> np.ndarray | list[np.ndarray]:
        """Read the addressed datasets fully into memory.

        Args:
            data: one ``"file.h5::dataset"`` path or several.
            kwargs: unused, accepted for the ``ImageReader`` interface.

        Returns:
            The array, or a list of arrays for several paths.

        Raises:
            ValueError: if a path names no dataset, or the dataset does not exist.
            OSError: if the file cannot be opened as HDF5.
        """
        import h5py

        arrays: list[np.ndarray] = []
        for name in ensure_tuple(data):
            file, dataset = split_h5_path(name, self.dataset)
            if dataset is None:
                raise ValueError(f"H5Reader needs a dataset name: write '{file}{H5_SEPARATOR}<dataset>', got '{name}'.")
            with h5py.File(file, "r") as h5:
                if dataset not in h5:
                    raise ValueError(f"{file} has no dataset '{dataset}' (it has: {', '.join(sorted(h5.keys()))}).")
                arrays.append(np.asarray(h5[dataset][()]))
        return arrays if len(arrays) > 1 else arrays[0]

    def get_data(self, img: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, dict]:
        """Return the array (several are stacked on a new first axis) and its metadata.

        Args:
            img: an array from :meth:`read`, or a list of them.

        Returns:
            ``(array, meta)`` with ``affine``, ``original_affine`` (identity), ``spatial_shape``, ``space`` and
            ``original_channel_dim``.

        Raises:
            ValueError: if several arrays do not share one shape.
        """
        arrays = [img] if isinstance(img, np.ndarray) else list(img)
        shape = arrays[0].shape
        if any(a.shape != shape for a in arrays):
            raise ValueError(f"H5Reader can only stack arrays of one shape, got {[a.shape for a in arrays]}.")
        no_channel = not isinstance(self.channel_dim, int)
        spatial_shape = np.asarray(shape) if no_channel else np.delete(np.asarray(shape), self.channel_dim)
        meta: dict[str, Any] = {
            MetaKeys.AFFINE: np.eye(len(spatial_shape) + 1),
            MetaKeys.ORIGINAL_AFFINE: np.eye(len(spatial_shape) + 1),
            MetaKeys.SPATIAL_SHAPE: spatial_shape,
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: self.channel_dim,
        }
        if len(arrays) == 1:
            return arrays[0], meta
        if no_channel:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack(arrays, axis=0), meta
        return np.concatenate(arrays, axis=int(self.channel_dim)), meta


class LoadVolumed(LoadImaged):
    """``LoadImaged`` that also loads ``"file.h5::dataset"`` items through :class:`H5Reader`.

    Takes exactly ``LoadImaged``'s arguments. With ``reader=None`` MONAI still picks NIfTI, NRRD and ``.npy`` readers
    by suffix; the ``H5Reader`` is consulted first but claims only ``.h5``/``.hdf5`` paths. With an explicit
    ``reader`` the ``H5Reader`` is tried last.

    Example (bundle config)::

        {"_target_": "semiseg.data.LoadVolumed", "keys": ["image", "label"], "ensure_channel_first": true}

    Args:
        keys: keys of the items to load.
        reader: as for ``LoadImaged``.
        dtype: as for ``LoadImaged``.
        meta_keys: as for ``LoadImaged``.
        meta_key_postfix: as for ``LoadImaged``.
        overwriting: as for ``LoadImaged``.
        image_only: as for ``LoadImaged``.
        ensure_channel_first: as for ``LoadImaged``; works for every format (see the module note).
        simple_keys: as for ``LoadImaged``.
        prune_meta_pattern: as for ``LoadImaged``.
        prune_meta_sep: as for ``LoadImaged``.
        allow_missing_keys: as for ``LoadImaged``.
        expanduser: as for ``LoadImaged``.
        args: passed to the readers' constructors, as for ``LoadImaged``.
        kwargs: passed to the readers' constructors, as for ``LoadImaged``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: type[ImageReader] | ImageReader | str | Sequence[Any] | None = None,
        dtype: DtypeLike = np.float32,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = PostFix.meta(),
        overwriting: bool = False,
        image_only: bool = True,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        allow_missing_keys: bool = False,
        expanduser: bool = True,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            keys,
            reader,
            dtype,
            meta_keys,
            meta_key_postfix,
            overwriting,
            image_only,
            ensure_channel_first,
            simple_keys,
            prune_meta_pattern,
            prune_meta_sep,
            allow_missing_keys,
            expanduser,
            *args,
            **kwargs,
        )
        try:
            h5_reader = H5Reader(*args, **kwargs)
        except TypeError:  # arguments meant for another reader, as LoadImage does for its defaults
            h5_reader = H5Reader()
        if self._loader.auto_select:
            self.register(h5_reader)  # tried first, but its verify_suffix only claims .h5 paths
        else:
            self._loader.readers.insert(0, h5_reader)  # the user's readers keep priority
