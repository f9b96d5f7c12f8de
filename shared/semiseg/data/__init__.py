"""The data layer: read data sets in the MSD, BPL and SSL4MIS-h5 layouts, check them, and load their volumes.

``load_datalist`` turns a data set directory into labelled / unlabelled / validation / test item lists
(docs/architecture.md §4) that share no file or image content (``check_disjoint``); ``validate_datalist`` checks item
lists, reading every file whole; ``LoadVolumed`` (with ``H5Reader``) loads every supported format in MONAI transform
chains. Every data problem raises ``DataValidationError`` naming the file and what is wrong.
"""

from __future__ import annotations

from .datalist import load_datalist, select_labelled, select_validation
from .errors import DataValidationError
from .layouts import LAYOUTS, detect_layout, read_layout
from .readers import H5_SEPARATOR, H5Reader, LoadVolumed, split_h5_path
from .splits import SPLITS, check_disjoint, find_shared_files
from .validation import validate_datalist

# demo data: see semiseg.data.demo

__all__ = [
    "DataValidationError",
    "load_datalist",
    "select_labelled",
    "select_validation",
    "SPLITS",
    "check_disjoint",
    "find_shared_files",
    "validate_datalist",
    "LAYOUTS",
    "detect_layout",
    "read_layout",
    "H5_SEPARATOR",
    "H5Reader",
    "LoadVolumed",
    "split_h5_path",
]
