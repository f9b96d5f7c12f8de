""":func:`load_datalist`: a data set directory in, the labelled / unlabelled / test item lists out, checked."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import DataValidationError
from .layouts import LabelledCase, LayoutCases, read_layout
from .validation import collect_problems

__all__ = ["load_datalist", "select_labelled"]


def load_datalist(
    dataset_dir: str | os.PathLike[str],
    layout: str = "auto",
    num_labelled: int | None = None,
    labelled_ids: Sequence[str] | None = None,
    num_classes: int | None = None,
    validate: bool = True,
    require_unlabelled: bool = False,
) -> dict[str, list[dict[str, str]]]:
    """Read a data set in any supported layout and split it into labelled, unlabelled and test items.

    The labelled/unlabelled split is a config value: the first ``num_labelled`` labelled cases in the layout's order
    (``dataset.json`` order for ``"msd"``, natural file-name order for ``"bpl"``, ``train.list`` order for
    ``"la_h5"``, as SSL4MIS ``labelnum``), or the cases named in ``labelled_ids``. The labelled cases not selected
    join the unlabelled set (their labels dropped), ahead of the layout's own unlabelled images.

    Args:
        dataset_dir: the data set directory.
        layout: ``"auto"`` (``dataset.json`` -> ``"msd"``, ``labelled/`` -> ``"bpl"``, ``train.list`` ->
            ``"la_h5"``), or one of these names.
        num_labelled: how many labelled cases to keep labelled; ``None`` keeps all (unless ``labelled_ids``).
        labelled_ids: the cases to keep labelled, by image file name (with or without suffix) or list id.
        num_classes: classes including background, to check label values against; ``None`` skips the upper bound.
        validate: check every file (:func:`~semiseg.data.validation.validate_datalist` on labelled and test items, a
            header check on unlabelled images) before returning.
        require_unlabelled: fail if the unlabelled set is empty (for semi-supervised methods).

    Returns:
        ``{"labelled": [{"image", "label"}, ...], "unlabelled": [{"image"}, ...], "test": [{"image", "label"}, ...]}``
        with absolute paths (``"file.h5::image"`` for HDF5), in a deterministic order.

    Raises:
        DataValidationError: for an unreadable or unknown layout, an impossible split, an empty unlabelled set when
            it is required, or (with ``validate``) any problem with the files, all of them listed.
    """
    cases = read_layout(os.fspath(dataset_dir), layout)
    chosen, rest = select_labelled(cases, num_labelled=num_labelled, labelled_ids=labelled_ids)
    datalist = {
        "labelled": [{"image": case.image, "label": case.label} for case in chosen],
        "unlabelled": [{"image": case.image} for case in rest] + [dict(item) for item in cases.unlabelled],
        "test": [dict(item) for item in cases.test],
    }
    if require_unlabelled and not datalist["unlabelled"]:
        raise DataValidationError(
            f"the method needs unlabelled data, but data set {cases.dataset_dir} (layout '{cases.layout}') has none: "
            f"looked in {cases.unlabelled_sources}"
        )
    if validate:
        problems = [
            *collect_problems(datalist["labelled"], num_classes=num_classes, require_label=True),
            *collect_problems(datalist["test"], num_classes=num_classes, require_label=True),
            *collect_problems(datalist["unlabelled"], require_label=False),
        ]
        if problems:
            raise DataValidationError(problems)
    return datalist


def select_labelled(
    cases: LayoutCases, num_labelled: int | None = None, labelled_ids: Sequence[str] | None = None
) -> tuple[list[LabelledCase], list[LabelledCase]]:
    """Split a layout's labelled cases into those kept labelled and the rest, both in the layout's order.

    Args:
        cases: what the layout reader found.
        num_labelled: keep the first ``num_labelled`` cases; ``None`` keeps all (or those of ``labelled_ids``).
        labelled_ids: keep the cases with these ids; if ``num_labelled`` is given too it must equal their number.

    Returns:
        ``(labelled, rest)``.

    Raises:
        DataValidationError: if ``num_labelled`` is not in ``1..available``, an id is unknown, or both arguments
            disagree.
    """
    where = f"data set {cases.dataset_dir} (layout '{cases.layout}')"
    available = len(cases.labelled)
    if num_labelled is not None:
        if isinstance(num_labelled, bool) or not isinstance(num_labelled, int):
            raise DataValidationError(
                f"num_labelled must be an integer, got {num_labelled!r} ({type(num_labelled).__name__})"
            )
        if num_labelled < 1:
            raise DataValidationError(f"num_labelled must be at least 1, got {num_labelled}")
        if num_labelled > available:
            raise DataValidationError(f"num_labelled={num_labelled} but {where} has only {available} labelled cases")
    if labelled_ids is None:
        count = available if num_labelled is None else num_labelled
        return cases.labelled[:count], cases.labelled[count:]

    wanted = [labelled_ids] if isinstance(labelled_ids, str) else [str(i) for i in labelled_ids]
    if not wanted:
        raise DataValidationError(f"labelled_ids is empty; name at least one labelled case of {where}")
    known = set().union(*(case.names for case in cases.labelled))
    unknown = [i for i in wanted if i not in known]
    if unknown:
        examples = sorted(min(case.names, key=len) for case in cases.labelled)[:10]
        raise DataValidationError(
            f"labelled_ids {unknown} are not labelled cases of {where}; its case ids include {examples}"
        )
    chosen = [case for case in cases.labelled if case.names & set(wanted)]
    if num_labelled is not None and num_labelled != len(chosen):
        raise DataValidationError(
            f"num_labelled={num_labelled} disagrees with labelled_ids, which select {len(chosen)} cases of {where}"
        )
    return chosen, [case for case in cases.labelled if not case.names & set(wanted)]
