"""DAN (Zhang et al., MICCAI 2017; SSL4MIS train_adversarial_network_3D.py; docs/architecture.md §3)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from ignite.engine import Events
from monai.engines import IterationEvents
from monai.handlers import LrScheduleHandler
from torch import nn

from semiseg.engines import SemiSupervisedTrainer
from semiseg.handlers import ConsistencyRampUp
from semiseg.keys import SSLIterationEvents, SSLKeys
from semiseg.methods import AdversarialMethod
from semiseg.methods.adversarial import DISCRIMINATOR, DISCRIMINATOR_LOSS, LABELLED, UNLABELLED
from semiseg.networks import FC3DDiscriminator
from tests.helpers import tiny_unet


class _FixedStudent(nn.Module):
    """Returns fixed logits per batch item (a parameter, so gradients can be checked), whatever the images."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.logits[: x.shape[0]].expand(-1, -1, *x.shape[2:]) + 0 * x


class _LinearCritic(nn.Module):
    """``D(p, x) = [0, a * mean(p_1) + c]`` per item: the "labelled" logit minus the "unlabelled" one is ``s``."""

    def __init__(self, a: float = 2.0, c: float = 0.0) -> None:
        super().__init__()
        self.a, self.c = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(c))
        self.modes: list[bool] = []

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        s = self.a * probs[:, 1].flatten(1).mean(dim=1) + self.c
        return torch.stack([torch.zeros_like(s), s], dim=1)


class _Engine:
    def __init__(self, student: nn.Module, critic: nn.Module, weight: float = 0.5) -> None:
        self.network = student
        self.networks = {"network": student, DISCRIMINATOR: critic}
        self.state = type("State", (), {})()
        setattr(self.state, SSLKeys.CONSISTENCY_WEIGHT.value, weight)


def _batch() -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    images = torch.zeros(1, 1, 2, 2, 2)
    labels = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    return (images, labels), torch.zeros(1, 1, 2, 2, 2)


class _ZeroLoss(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.0 * logits.sum()


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_discriminator_loss_is_two_class_cross_entropy_with_hand_values() -> None:
    # CE([a, b], 1) = -log(e^b / (e^a + e^b)) = softplus(a - b); CE([a, b], 0) = softplus(b - a)
    scores = torch.tensor([[0.0, 1.0], [0.0, 1.5]])
    method = AdversarialMethod()
    assert method.discriminator_loss(scores, LABELLED).item() == pytest.approx(
        (_softplus(-1.0) + _softplus(-1.5)) / 2)  # (0.31326 + 0.20141) / 2
    assert method.discriminator_loss(scores, torch.tensor([LABELLED, UNLABELLED])).item() == pytest.approx(
        (_softplus(-1.0) + _softplus(1.5)) / 2)  # (0.31326 + 1.70141) / 2
    assert (LABELLED, UNLABELLED) == (1, 0)  # the reference's DAN_target [1, 1, 0, 0]: labelled first
    with pytest.raises(ValueError, match=r"\(batch, 2\) logits .* got \(2, 1\)"):
        method.discriminator_loss(torch.zeros(2, 1), LABELLED)


def test_student_loss_aims_unlabelled_predictions_at_labelled_with_hand_values() -> None:
    # student logits: labelled item [0, ln 3] -> p_1 = 0.75; unlabelled item [0, 0] -> p_1 = 0.5
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).view(2, 2, 1, 1, 1)
    student, critic = _FixedStudent(logits), _LinearCritic(a=2.0, c=0.0)
    critic.train()
    engine = _Engine(student, critic, weight=0.5)
    loss, out = AdversarialMethod(supervised_loss=_ZeroLoss())(engine, *_batch())
    # D(unlabelled) = [0, 2 * 0.5] = [0, 1]; CE(., labelled = 1) = softplus(-1) = 0.313262
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(_softplus(-1.0), rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * _softplus(-1.0), rel=1e-6)
    assert out[SSLKeys.CONSISTENCY_WEIGHT.value].item() == 0.5
    assert critic.modes == [False] and critic.training  # D scored in eval mode (no dropout), as the reference
    loss.backward()
    # d/dz_1 of softplus(-2 sigmoid-ish): the gradient reaches the student's unlabelled logits only
    grad = student.logits.grad.view(2, 2)
    assert torch.all(grad[0] == 0) and torch.all(grad[1] != 0)
    # d loss / d s = 0.5 * (sigmoid(s) - 1) at s = 1; s = 2 mean(p_1), dp_1/dz_1 = p_1 (1 - p_1) = 0.25 (8 voxels)
    expected = 0.5 * (1 / (1 + math.exp(-1.0)) - 1) * 2 * 0.25
    assert grad[1, 1].item() == pytest.approx(expected, rel=1e-5)
    assert grad[1, 0].item() == pytest.approx(-expected, rel=1e-5)


def test_discriminator_step_scores_labelled_predictions_real_and_unlabelled_fake_with_hand_values() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).view(2, 2, 1, 1, 1)
    student, critic = _FixedStudent(logits), _LinearCritic(a=2.0, c=0.0)
    student.train()
    engine = _Engine(student, critic)
    labelled, unlabelled = _batch()
    loss, terms = AdversarialMethod().second_phase(engine, labelled, unlabelled, outputs={})
    # labelled p_1 = 0.75 -> s = 1.5, target 1: softplus(-1.5) = 0.201413
    # unlabelled p_1 = 0.5 -> s = 1.0, target 0: softplus(1.0) = 1.313262; mean = 0.757338
    assert loss.item() == pytest.approx((_softplus(-1.5) + _softplus(1.0)) / 2, rel=1e-6)
    assert terms == {DISCRIMINATOR_LOSS: pytest.approx(loss.item())}
    # the student re-predicts without gradient, in eval mode (SSL4MIS: model.eval(); with torch.no_grad()), and is
    # put back in train mode
    assert student.modes == [False] and student.training
    loss.backward()
    assert student.logits.grad is None
    assert critic.a.grad is not None and critic.c.grad is not None


def test_fc3d_discriminator_follows_the_reference_layers() -> None:
    torch.manual_seed(0)
    disc = FC3DDiscriminator(num_classes=3, in_channels=1, features=2).eval()
    probs, image = torch.softmax(torch.randn(2, 3, 96, 96, 96), dim=1), torch.randn(2, 1, 96, 96, 96)
    out = disc(probs, image)
    assert out.shape == (2, 2)
    # the reference's forward, with its fixed AvgPool3d((6, 6, 6)) for 96^3 crops
    act = nn.LeakyReLU(0.2)
    x = act(disc.conv0(probs) + disc.conv1(image))
    x = act(disc.conv3(act(disc.conv2(x))))
    x = nn.AvgPool3d((6, 6, 6))(act(disc.conv4(x)))
    assert torch.allclose(out, disc.classifier(x.view(2, -1)), atol=1e-6)
    convs = [disc.conv0, disc.conv1, disc.conv2, disc.conv3, disc.conv4]
    assert all(c.stride == (2, 2, 2) and c.kernel_size == (4, 4, 4) for c in convs)
    assert [c.out_channels for c in convs] == [2, 2, 4, 8, 16] and disc.dropout.p == 0.5
    assert disc(probs[:, :, :32, :32, :32], image[:, :, :32, :32, :32]).shape == (2, 2)  # any crop >= 16


@pytest.mark.parametrize(
    ("probs", "image", "message"),
    [
        ((1, 2, 16, 16, 16), (1, 1, 16, 16, 16), "expects 3 segmentation channel"),
        ((1, 3, 16, 16, 16), (1, 2, 16, 16, 16), "and 1 image channel"),
        ((1, 3, 16, 16, 16), (2, 1, 16, 16, 16), "same batch size and spatial shape"),
        ((1, 3, 16, 16, 8), (1, 1, 16, 16, 8), "every spatial size must be >= 16"),
        ((3, 16, 16, 16), (1, 16, 16, 16), r"takes \(B, C, D, H, W\) tensors"),
    ],
)
def test_fc3d_discriminator_rejects_bad_inputs(probs: tuple, image: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FC3DDiscriminator(num_classes=3, features=1)(torch.zeros(probs), torch.zeros(image))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_classes": 0}, "num_classes must be an integer >= 1"), ({"num_classes": 2, "features": 1.5}, "features"),
     ({"num_classes": 2, "dropout": 1.0}, r"dropout must be in \[0, 1\)")],
)
def test_fc3d_discriminator_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FC3DDiscriminator(**kwargs)


def _params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _trainer(loaders: Any, **kwargs: Any) -> tuple[SemiSupervisedTrainer, nn.Module, nn.Module]:
    torch.manual_seed(0)
    student, disc = tiny_unet(), FC3DDiscriminator(num_classes=3, features=2)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    disc_opt = torch.optim.Adam(disc.parameters(), lr=1e-2, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=2, power=0.9)
    trainer = SemiSupervisedTrainer(
        "cpu", 2, loaders[0], student, opt, AdversarialMethod(), unlabelled_data_loader=loaders[1], epoch_length=1,
        networks={DISCRIMINATOR: disc}, optimizers={DISCRIMINATOR: disc_opt},
        train_handlers=[ConsistencyRampUp(weight=1.0, length=0), LrScheduleHandler(sched, print_lr=False)], **kwargs,
    )
    return trainer, student, disc


def test_no_gradient_leaks_between_the_student_step_and_the_discriminator_step(loaders) -> None:
    trainer, student, disc = _trainer(loaders)
    snaps: dict[str, list] = {"start": [], "main": [], "second": []}
    disc_grads_after_main: list[bool] = []
    trainer.add_event_handler(Events.ITERATION_STARTED,
                              lambda e: snaps["start"].append((_params(student), _params(disc))))
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED,
                              lambda e: disc_grads_after_main.append(all(p.grad.abs().sum() > 0
                                                                         for p in disc.parameters())))
    original = trainer.method.second_phase

    def spy(engine, labelled, unlabelled, outputs):
        snaps["main"].append((_params(student), _params(disc),
                              all(p.grad is None or not p.grad.any() for p in disc.parameters())))
        return original(engine, labelled, unlabelled, outputs)

    trainer.method.second_phase = spy
    trainer.add_event_handler(SSLIterationEvents.SECOND_PHASE_COMPLETED,
                              lambda e: snaps["second"].append((_params(student), _params(disc))))
    trainer.run()
    assert len(snaps["start"]) == len(snaps["main"]) == len(snaps["second"]) == 2
    for (s0, d0), (s1, d1, disc_grads_zeroed), (s2, d2) in zip(snaps["start"], snaps["main"], snaps["second"]):
        assert not _same(s0, s1) and _same(d0, d1)  # student step: D's weights do not move ...
        assert disc_grads_zeroed  # ... and the gradients it got from the student's loss are dropped
        assert _same(s1, s2) and not _same(d1, d2)  # D step: the student does not move
    assert disc_grads_after_main == [True, True]  # the adversarial term did reach D in the main backward pass
    assert all(id(p) not in {id(q) for q in disc.parameters()}
               for g in trainer.optimizer.param_groups for p in g["params"])  # D is in no main-phase optimiser
    terms = trainer.state.output
    assert {SSLKeys.SUPERVISED_LOSS.value, SSLKeys.UNSUPERVISED_LOSS.value, DISCRIMINATOR_LOSS} <= set(terms)
    assert trainer.optimizers[DISCRIMINATOR].state_dict()["param_groups"][0]["lr"] == 1e-2  # never decayed


def test_fp16_amp_gives_the_discriminator_step_its_own_grad_scaler(loaders) -> None:
    trainer, _, _ = _trainer(loaders, amp=True, amp_kwargs={"dtype": torch.float16})
    assert set(trainer.scalers) == {DISCRIMINATOR} and trainer.scaler is not trainer.scalers[DISCRIMINATOR]
    trainer.run()
    assert set(trainer.state_dict()["grad_scalers"]) == {"optimizer", DISCRIMINATOR}


def test_missing_discriminator_or_weight_fails_with_what_to_add(loaders) -> None:
    student = tiny_unet()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"needs the trainable part\(s\) \['discriminator'\]"):
        SemiSupervisedTrainer("cpu", 1, loaders[0], student, opt, AdversarialMethod(),
                              unlabelled_data_loader=loaders[1])
    disc = FC3DDiscriminator(num_classes=3, features=1)
    with pytest.raises(ValueError, match=r"optimiser 'discriminator'"):
        SemiSupervisedTrainer("cpu", 1, loaders[0], student, opt, AdversarialMethod(),
                              unlabelled_data_loader=loaders[1], networks={DISCRIMINATOR: disc})
    trainer = SemiSupervisedTrainer(
        "cpu", 1, loaders[0], student, opt, AdversarialMethod(), unlabelled_data_loader=loaders[1], epoch_length=1,
        networks={DISCRIMINATOR: disc}, optimizers={DISCRIMINATOR: torch.optim.Adam(disc.parameters())})
    with pytest.raises(RuntimeError, match="semiseg.handlers.ConsistencyRampUp"):
        trainer.run()
