""":func:`load_datalist`: a data set directory in, the labelled / unlabelled / validation / test item lists out,
disjoint and checked."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import DataValidationError
from .layouts import LabelledCase, LayoutCases, read_layout
from .splits import find_repeated, find_shared_files
from .validation import collect_problems

__all__ = ["load_datalist", "repeated_cases", "select_labelled", "select_validation"]


def load_datalist(
    dataset_dir: str | os.PathLike[str],
    layout: str = "auto",
    num_labelled: int | None = None,
    labelled_ids: Sequence[str] | None = None,
    num_classes: int | None = None,
    validate: bool = True,
    require_unlabelled: bool = False,
    num_val: int = 0,
    in_channels: int | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Read a data set in any supported layout and split it into labelled, unlabelled, validation and test items.

    The labelled/unlabelled split is a config value: the first ``num_labelled`` labelled cases in the layout's order
    (``dataset.json`` order for ``"msd"``, natural file-name order for ``"bpl"``, ``train.list`` order for
    ``"la_h5"``, as SSL4MIS ``labelnum``), or the cases named in ``labelled_ids``. The validation cases (what
    training watches and model selection may use) are the last ``num_val`` labelled cases not selected as labelled,
    so they stay the same when the labelled budget changes. The other labelled cases join the unlabelled set (their
    labels dropped), ahead of the layout's own unlabelled images. The test cases are the layout's held-out cases;
    only evaluation should read them.

    The four lists must be disjoint: a file (or, with ``validate``, an image's content) in two of them is an error
    (:mod:`semiseg.data.splits`); so is a case listed twice in one list of the data set (:func:`repeated_cases`).

    Args:
        dataset_dir: the data set directory.
        layout: ``"auto"`` (``dataset.json`` -> ``"msd"``, ``labelled/`` -> ``"bpl"``, ``train.list`` ->
            ``"la_h5"``), or one of these names.
        num_labelled: how many labelled cases to keep labelled; ``None`` keeps all but the ``num_val`` validation
            cases (unless ``labelled_ids``).
        labelled_ids: the cases to keep labelled, by image file name (with or without suffix) or list id.
        num_classes: classes including background, to check label values against; ``None`` skips the upper bound.
        validate: check every file (:func:`~semiseg.data.validation.validate_datalist`, reading each file whole) and
            compare image contents across the lists before returning.
        require_unlabelled: fail if the unlabelled set is empty (for semi-supervised methods).
        num_val: how many labelled cases to hold out for validation; 0 for none (an empty ``"validation"`` list).
        in_channels: the channels the network takes, checked against every image; ``None`` skips the check.

    Returns:
        ``{"labelled": [{"image", "label"}, ...], "unlabelled": [{"image"}, ...], "validation": [{"image", "label"},
        ...], "test": [{"image", "label"}, ...]}`` with absolute paths (``"file.h5::image"`` for HDF5), in a
        deterministic order.

    Raises:
        DataValidationError: for an unreadable or unknown layout, a case listed twice, an impossible split, an empty
            unlabelled set when it is required, lists that share a file, or (with ``validate``) any problem with the
            files or image contents shared between lists, all of them listed.
    """
    cases = read_layout(os.fspath(dataset_dir), layout)
    repeated = repeated_cases(cases)
    if repeated:
        raise DataValidationError(repeated)
    num_val = _count("num_val", num_val)
    if num_labelled is None and labelled_ids is None and num_val:
        num_labelled = max(1, len(cases.labelled) - num_val)  # "all" labelled cases, minus the validation ones
    chosen, rest = select_labelled(cases, num_labelled=num_labelled, labelled_ids=labelled_ids)
    validation, rest = select_validation(cases, chosen, rest, num_val)
    datalist = {
        "labelled": [{"image": case.image, "label": case.label} for case in chosen],
        "unlabelled": [{"image": case.image} for case in rest] + [dict(item) for item in cases.unlabelled],
        "validation": [{"image": case.image, "label": case.label} for case in validation],
        "test": [dict(item) for item in cases.test],
    }
    if require_unlabelled and not datalist["unlabelled"]:
        raise DataValidationError(
            f"the method needs unlabelled data, but data set {cases.dataset_dir} (layout '{cases.layout}') has none: "
            f"looked in {cases.unlabelled_sources} (after taking {len(chosen)} labelled and {num_val} validation "
            "cases: lower num_labelled or num_val, or add unlabelled images)"
        )
    problems = find_shared_files(datalist, compare_contents=validate)
    if validate:
        for name in ("labelled", "validation", "test", "unlabelled"):
            problems += collect_problems(
                datalist[name],
                num_classes=num_classes if name != "unlabelled" else None,
                require_label=name != "unlabelled",
                in_channels=in_channels,
            )
    if problems:
        raise DataValidationError(problems)
    return datalist


_LABELLED_LISTS = {"msd": "dataset.json 'training'", "bpl": "labelled/imgs", "la_h5": "train.list"}


def repeated_cases(cases: LayoutCases) -> list[str]:
    """Cases listed more than once in one list of a data set (:func:`~semiseg.data.splits.find_repeated`).

    Refused rather than silently de-duplicated: a repeated ``training`` entry is most likely a copy-and-paste slip
    whose intended case is missing, and the labelled selection (the first ``num_labelled`` entries) would count it
    twice, trained on twice, while the case it displaced silently became unlabelled.

    Args:
        cases: what the layout reader found.

    Returns:
        One problem line per repeated image (labelled candidates, unlabelled images, test cases).
    """
    where = f"data set {cases.dataset_dir} (layout '{cases.layout}')"
    source = _LABELLED_LISTS.get(cases.layout, "labelled list")
    return [
        *find_repeated(
            [case.image for case in cases.labelled], f"the {source} list of {where}",
            "it would be trained on twice, and take the labelled place of another case, which would silently become "
            "unlabelled",
        ),
        *find_repeated([item["image"] for item in cases.unlabelled], f"the unlabelled images of {where}",
                       "it would be drawn twice as often as the others"),
        *find_repeated([item["image"] for item in cases.test], f"the test cases of {where}",
                       "it would count twice in every mean score"),
    ]


def select_validation(
    cases: LayoutCases, chosen: Sequence[LabelledCase], rest: Sequence[LabelledCase], num_val: int
) -> tuple[list[LabelledCase], list[LabelledCase]]:
    """Take the validation cases from the labelled cases not selected as labelled: the last ``num_val`` of them.

    Taking them from the end keeps the validation set the same whatever the labelled budget (``num_labelled`` 2, 4
    or 8 of the same list), so runs with different budgets are selected on the same cases.

    Args:
        cases: what the layout reader found (for the error message).
        chosen: the cases kept labelled.
        rest: the other labelled cases, in the layout's order.
        num_val: how many validation cases (``>= 0``).

    Returns:
        ``(validation, rest)``, both in the layout's order.

    Raises:
        DataValidationError: if fewer than ``num_val`` cases are left, naming both numbers and the data set.
    """
    num_val = _count("num_val", num_val)
    if num_val > len(rest):
        where = f"data set {cases.dataset_dir} (layout '{cases.layout}')"
        raise DataValidationError(
            f"num_labelled={len(chosen)} labelled plus num_val={num_val} validation cases need "
            f"{len(chosen) + num_val} labelled cases, but {where} has only {len(cases.labelled)}: lower num_labelled "
            "or num_val (num_val=0 trains without validation)"
        )
    cut = len(rest) - num_val
    return list(rest[cut:]), list(rest[:cut])


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataValidationError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise DataValidationError(f"{name} must be at least 0, got {value}")
    return value


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
