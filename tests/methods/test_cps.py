"""Cross Pseudo Supervision (Chen et al., CVPR 2021; SSL4MIS train_cross_pseudo_supervision_3D.py;
docs/architecture.md §3), its students' initialisations and their averaged prediction."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.handlers import LrScheduleHandler
from torch import nn

from semiseg.engines import SemiSupervisedTrainer
from semiseg.errors import SettingError
from semiseg.handlers import ConsistencyRampUp
from semiseg.keys import SSLIterationEvents, SSLKeys
from semiseg.methods import CrossPseudoSupervisionMethod
from semiseg.methods.cps import SECOND_STUDENT, cross_pseudo_loss, hard_pseudo_labels
from semiseg.networks import SoftmaxAverage, init_conv_weights
from semiseg.networks.cps import inference_network
from tests.helpers import tiny_unet


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


class _Fixed(nn.Module):
    """Fixed logits per batch item (a parameter), whatever the images; records whether gradients were enabled."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits).view(len(logits), -1, 1, 1, 1))
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.logits[: x.shape[0]] + 0 * x


class _Engine:
    def __init__(self, first: nn.Module, second: nn.Module, weight: float) -> None:
        self.network = first
        self.networks = {"network": first, SECOND_STUDENT: second}
        self.state = type("State", (), {})()
        setattr(self.state, SSLKeys.CONSISTENCY_WEIGHT.value, weight)


class _ZeroLoss(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.0 * logits.sum()


def _batch(n_u: int = 1) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    return (torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)), torch.zeros(n_u, 1, 1, 1, 1)


def test_cross_pseudo_loss_hand_values() -> None:
    # student [2, 0, 0] supervised by the other's argmax of [0, 1, 0.5] = class 1: CE = log(e^2 + 2) - 0
    logits = torch.tensor([2.0, 0.0, 0.0]).view(1, 3, 1, 1, 1)
    other = torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1, 1)
    assert hard_pseudo_labels(other).tolist() == [[[[1]]]]
    assert cross_pseudo_loss(logits, other).item() == pytest.approx(_lse(2.0, 0.0, 0.0), rel=1e-6)  # 2.2395
    with pytest.raises(ValueError, match=r"same shape, got \(1, 3, 1, 1, 1\) and \(1, 2, 1, 1, 1\)"):
        cross_pseudo_loss(logits, other[:, :2])


def test_loss_sums_both_students_with_the_others_hard_labels_and_gradients_stay_apart() -> None:
    # items: [labelled, unlabelled]; student 1 on the unlabelled item [2, 0] (argmax 0), student 2 [0, 1] (argmax 1)
    first, second = _Fixed([[0.0, 0.0], [2.0, 0.0]]), _Fixed([[0.0, 0.0], [0.0, 1.0]])
    loss, out = CrossPseudoSupervisionMethod(supervised_loss=_ZeroLoss())(_Engine(first, second, 0.5), *_batch())
    cps_1 = _lse(2.0, 0.0) - 0.0  # CE([2, 0], target 1 from student 2) = log(1 + e^2) = 2.126928
    cps_2 = _lse(0.0, 1.0) - 0.0  # CE([0, 1], target 0 from student 1) = log(1 + e) = 1.313262
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(cps_1 + cps_2, rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * (cps_1 + cps_2), rel=1e-6)
    assert out["student_1_loss"].item() == pytest.approx(0.5 * cps_1, rel=1e-6)
    assert out["student_2_loss"].item() == pytest.approx(0.5 * cps_2, rel=1e-6)
    loss.backward()
    # each student's gradient is its own term's only (the other's labels are constants): w (softmax - onehot)
    s1 = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    s2 = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    assert torch.allclose(first.logits.grad.view(2, 2)[1], 0.5 * (s1 - torch.tensor([0.0, 1.0])))
    assert torch.allclose(second.logits.grad.view(2, 2)[1], 0.5 * (s2 - torch.tensor([1.0, 0.0])))
    assert torch.all(first.logits.grad.view(2, 2)[0] == 0)


def test_supervised_term_is_each_students_labelled_loss() -> None:
    first, second = _Fixed([[1.0, 0.0], [0.0, 0.0]]), _Fixed([[0.0, 2.0], [0.0, 0.0]])
    ce = nn.CrossEntropyLoss()

    class _CE(nn.Module):
        def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return ce(logits, labels[:, 0])

    loss, out = CrossPseudoSupervisionMethod(supervised_loss=_CE())(_Engine(first, second, 0.0), *_batch())
    # label 0: CE([1, 0], 0) = log(1 + e^-1) = 0.313262; CE([0, 2], 0) = log(1 + e^2) = 2.126928
    expected = _lse(1.0, 0.0) - 1.0 + _lse(0.0, 2.0)
    assert out[SSLKeys.SUPERVISED_LOSS.value].item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # weight 0: the pseudo-label term is off


class _Scale(nn.Module):
    """Two-class logits ``[0, k x]`` per voxel (``k`` a parameter): the prediction depends on the input."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return torch.cat([torch.zeros_like(x), self.k * x], dim=1)


def test_strong_views_train_on_the_strong_view_with_labels_from_the_weak_view() -> None:
    first, second = _Scale(1.0), _Scale(-1.0)
    unlabelled = torch.ones(1, 1, 1, 1, 1)
    method = CrossPseudoSupervisionMethod(supervised_loss=_ZeroLoss(), student_view=lambda u: 3.0 * u)
    loss, out = method(_Engine(first, second, 1.0), (torch.zeros(1, 1, 1, 1, 1),
                                                    torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)), unlabelled)
    # weak view x = 1: student 1 -> [0, 1] (label 1), student 2 -> [0, -1] (label 0), without gradient
    # strong view x = 3: student 1 -> [0, 3], CE(., 0) = log(1 + e^3); student 2 -> [0, -3], CE(., 1) = log(1 + e^3)
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(2 * _lse(0.0, 3.0), rel=1e-6)
    assert loss.item() == pytest.approx(2 * _lse(0.0, 3.0), rel=1e-6)
    assert first.grad_enabled == second.grad_enabled == [True, False]  # one pass with, one without gradient
    # without the view the labels come from the same pass: x = 1 gives [0, 1] vs label 0 and [0, -1] vs label 1
    plain, _ = CrossPseudoSupervisionMethod(supervised_loss=_ZeroLoss())(
        _Engine(first, second, 1.0), (torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)),
        unlabelled)
    assert plain.item() == pytest.approx(2 * _lse(0.0, 1.0), rel=1e-6)


def test_init_conv_weights_reproduces_the_references_kaiming_and_xavier_students() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(16, 64, 3), nn.BatchNorm3d(64), nn.ConvTranspose3d(64, 4, 2))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(2.0)
    bias, transposed = net[0].bias.detach().clone(), net[2].weight.detach().clone()
    assert init_conv_weights(net, "kaiming_normal") is net
    # kaiming_normal_ (fan_in, leaky_relu a=0): std = sqrt(2 / fan_in), fan_in = 16 * 27 = 432 -> 0.06804
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / 432), rel=0.03)
    assert torch.equal(net[0].bias, bias) and torch.equal(net[2].weight, transposed)  # as the reference: Conv3d only
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)
    init_conv_weights(net, "xavier_normal")
    # xavier_normal_: std = sqrt(2 / (fan_in + fan_out)) = sqrt(2 / (432 + 64 * 27)) = 0.03043
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / (432 + 1728)), rel=0.03)
    with pytest.raises(ValueError, match="scheme must be one of .*'kaiming_normal'.*got 'he'"):
        init_conv_weights(net, "he")


def test_softmax_average_is_the_mean_of_the_students_softmax() -> None:
    first, second = _Fixed([[math.log(3.0), 0.0]]), _Fixed([[0.0, 0.0]])
    out = SoftmaxAverage([first, second])(torch.zeros(1, 1, 1, 1, 1))
    # softmax: [0.75, 0.25] and [0.5, 0.5] -> mean [0.625, 0.375]; softmax(log p) = p for the post-processing
    assert torch.allclose(torch.softmax(out, dim=1).flatten(), torch.tensor([0.625, 0.375]))
    assert torch.allclose(out.exp().flatten(), torch.tensor([0.625, 0.375]))
    certain = SoftmaxAverage([_Fixed([[200.0, -200.0]])])(torch.zeros(1, 1, 1, 1, 1))
    assert torch.isfinite(certain).all()  # a class nobody predicts stays finite for sliding-window blending
    with pytest.raises(ValueError, match="at least one network"):
        SoftmaxAverage([])


def test_inference_network_setting() -> None:
    first, second = _Fixed([[0.0, 1.0]]), _Fixed([[1.0, 0.0]])
    for off in (False, "false", "False"):
        assert inference_network(first, second, off) is first
    for on in (True, "true", " TRUE "):
        ensemble = inference_network(first, second, on)
        assert isinstance(ensemble, SoftmaxAverage) and list(ensemble.networks) == [first, second]
    with pytest.raises(SettingError, match="setting ensemble_students must be true or false .* got 'yes please'"):
        inference_network(first, second, "yes please")
    with pytest.raises(ValueError, match="no second student"):
        inference_network(first, None, True)


def test_both_students_step_after_one_backward_in_one_phase(loaders) -> None:
    torch.manual_seed(0)
    first, second = tiny_unet(), tiny_unet()
    opt, opt_2 = (torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in (first, second))
    scheds = [torch.optim.lr_scheduler.PolynomialLR(o, total_iters=4, power=0.9) for o in (opt, opt_2)]
    before = [{k: v.detach().clone() for k, v in n.named_parameters()} for n in (first, second)]
    backward_calls: list[int] = []
    trainer = SemiSupervisedTrainer(
        "cpu", 2, loaders[0], first, opt, CrossPseudoSupervisionMethod(), unlabelled_data_loader=loaders[1],
        epoch_length=1, networks={SECOND_STUDENT: second}, optimizers={"optimizer_2": opt_2},
        train_handlers=[ConsistencyRampUp(weight=0.1, length=0),
                        *(LrScheduleHandler(s, print_lr=False) for s in scheds)],
    )
    trainer.add_event_handler(SSLIterationEvents.SECOND_PHASE_COMPLETED, lambda e: backward_calls.append(-1))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: backward_calls.append(e.state.iteration))
    trainer.run()
    assert backward_calls == [1, 2]  # no second phase
    for net, old in zip((first, second), before):
        assert any(not torch.equal(p, old[k]) for k, p in net.named_parameters())
    assert opt_2.state_dict()["state"][0]["momentum_buffer"] is not None
    # the reference decays both optimisers' learning rates with the same poly schedule
    assert opt.param_groups[0]["lr"] == opt_2.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 2 / 4) ** 0.9)
    assert {"student_1_loss", "student_2_loss", SSLKeys.CONSISTENCY_WEIGHT.value} <= set(trainer.state.output)
