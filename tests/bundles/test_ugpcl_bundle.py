"""The UGPCL bundle: the paper's comparison config, and its contrastive term switched on within a few iterations.

The contrastive term starts at 10% of the run (the comparison config's step 1000 of 10000). Here ``contrast_start``
0 sets an absolute start instead (on from the second iteration, as the reference's ``step > 0`` would), through
``python -m monai.bundle run training`` as a user runs it, and the logged term, the queues in the checkpoint and their
restoration on resume are checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import OneOf, RandScaleIntensityd, RandScaleIntensityFixedMeand

from semiseg.ramps import sigmoid_rampup
from tests.bundles.conftest import REPO, bundle_overrides, config, restore_fresh
from tests.helpers import states_equal


def test_contrastive_term_runs_is_logged_and_queues_resume(tiny_demo: Path, tmp_path: Path) -> None:
    overrides = bundle_overrides(tiny_demo, tmp_path, max_iterations=3, iterations_per_epoch=3, val_interval=10,
                                 contrast_start=0)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config("ugpcl", "train.json")]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    # logged every iteration (log_every 1): off at iteration 1 (step 0 is not after step 0), on at 2 and 3
    values = [float(v) for v in re.findall(r"contrast_loss: ([-+0-9.eE]+)", log)]
    assert len(values) == 3, log[-3000:]
    assert values[0] == 0.0 and all(v != 0.0 for v in values[1:]), values

    saved = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    method = saved["method"]
    assert set(method) == {"segment_queue", "segment_queue_ptr", "pixel_queue", "pixel_queue_ptr", "queue_rng_state"}
    assert method["segment_queue"].shape == (3, 500, 256)  # the comparison config's memory_size
    assert int(method["segment_queue_ptr"][1:].sum()) > 0  # two updates enqueued foreground keys
    assert int(method["pixel_queue_ptr"][0]) == 0 and not method["pixel_queue"][0].any()  # background: never

    objects = restore_fresh([config("ugpcl", "train.json")], {**overrides, "max_iterations": 6},
                            check_differs=lambda objs: not states_equal(objs["method"].state_dict(), method))
    assert states_equal(objects["method"].state_dict(), method)


def _parser(*extra: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([config("ugpcl", "train.json"), *extra])
    return parser


def test_defaults_are_the_papers_comparison_config() -> None:
    """taovv/UGPCL@5980405 configs/comparison_acdc_224_136/ugpcl_unet_r50.yaml on configs/_trainers/ugpcl.yaml."""
    parser = _parser()
    method = parser.get_parsed_content("method")
    assert (method.temperature, method.base_temperature) == (0.07, 0.07)  # _trainers/ugpcl.yaml (trainer: 0.1)
    assert method.segment_queue.shape == (3, 500, 256) and method.pixel_queue.shape == (3, 500, 256)  # memory_size
    assert method.tf_weight == 0.4 and method.cls_weight == 0.1 and method.max_samples == 1024
    # supervised Dice without the background: class_weight [0, 1, 1] (the reference's [0, 1, 1, 1] for 4 classes)
    assert method.supervised_loss.dice.class_weight.tolist() == [0.0, 1.0, 1.0]

    # consistency 0.01 sigmoid_rampup(step // 100, 100) over the comparison's 10000 steps; the same 100 ramp steps
    # over any other budget (step // 15 over the demo's 1500 iterations)
    ramp = parser.get_parsed_content("consistency_rampup_handler")
    for budget in (10000, 1500):
        ramp.fit(budget)
        for step in (0, 99, 100, 2550, budget // 2, budget - 1):
            expected = 0.01 * sigmoid_rampup(step // (budget // 100), 100)
            assert ramp.value_at_index(step) == pytest.approx(expected), (budget, step)

    # the contrastive term from step 1000 of 10000, i.e. 10% of the run (150 of 1500)
    contrast = parser.get_parsed_content("contrast_weight_handler")
    for budget, start in ((10000, 1000), (1500, 150)):
        contrast.fit(budget)
        assert contrast.value_at_index(start - 1) == 0.0 and contrast.value_at_index(start) == 0.1

    # no random rotation in the data chain ("Remove random rotation": p_rot 0), whatever the template's default
    assert parser["rot90"] is False
    # colour jitter (brightness 0.4, contrast 0.4, p 0.8) as the last step of both training chains, clipped to [0, 1]
    # as torchvision's for percentile-normalised images only
    assert parser["intensity_norm"] == "zscore" and parser.get_parsed_content("colour_jitter_clip") is None
    scaled = _parser()
    scaled["intensity_norm"] = "percentile"
    assert scaled.get_parsed_content("colour_jitter_clip") == [0.0, 1.0]
    for key in ("train#dataset#transform", "train#unlabelled#dataset#transform"):
        jitter = parser.get_parsed_content(key).transforms[-1]
        assert isinstance(jitter, OneOf) and [round(w, 6) for w in jitter.weights] == [0.8, 0.2]
        # each step is the scaling alone (z-scored images), or the scaling then the clip (percentile-normalised)
        steps = [t.transforms[0] if hasattr(t, "transforms") else t for t in jitter.transforms[0].transforms]
        assert [type(t) for t in steps] == [RandScaleIntensityd, RandScaleIntensityFixedMeand]
        assert [tuple(t.scaler.factors) for t in steps] == [(-0.4, 0.4), (-0.4, 0.4)]


def test_la_overlay_uses_the_references_fixed_step_units() -> None:
    # step // 100 with the ramp over 6000 // 100 = 60 units (max_iter // 100, as both released configs), contrast
    # after step 1000 (``step > 1000``: 0-based index 1001 is the first)
    parser = _parser(config("ugpcl", "la.json"))
    ramp = parser.get_parsed_content("consistency_rampup_handler")
    ramp.fit(parser["max_iterations"])
    assert (ramp.every, ramp.length) == (100, 60.0)
    contrast = parser.get_parsed_content("contrast_weight_handler")
    contrast.fit(parser["max_iterations"])
    assert contrast.value_at_index(1000) == 0.0 and contrast.value_at_index(1001) == 0.1
