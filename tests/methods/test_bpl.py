"""Bayesian Pseudo Labels (Xu et al., MICCAI 2022; docs/architecture.md §3): the flagged KL, the threshold sample,
the skip and drop rules, the warm-up, the binary loss and the supervised reduction, with hand-computed values."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from monai.networks.nets import UNet

from semiseg.handlers import RampScheduler
from semiseg.losses import BinaryDiceBCELoss
from semiseg.methods import BPLMethod
from semiseg.methods.bpl import ALPHA, ThresholdPosterior, sample_threshold, threshold_posterior
from semiseg.networks import FeatureTap, ThresholdHead

# posterior head outputs for one item and a 2-d latent: relu(mu) = [0.6, 0], s1 = exp(logvar / 2) = [1, 0.1]
MU = torch.tensor([[0.6, -0.1]])
LOGVAR = torch.tensor([[0.0, 2 * math.log(0.1)]])
LOGITS = torch.zeros(2, 1, 2, 2, 2)  # sigmoid 0.5 everywhere: the model's confidence c = 0.5


def kl(m1: float, s1: float, m2: float, s2: float) -> float:
    """KL(N(m1, s1^2) || N(m2, s2^2)) = log s2 - log s1 + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2 (Eq. 7)."""
    return math.log(s2) - math.log(s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


# (flag_post_mu, flag_post_std, flag_pri_mu, flag_pri_std), pri_mu, expected KL (sum over the 2-d latent, 1 item)
KL_CASES = [
    # paper: learned posterior [0.6, 0] with s1 [1, 0.1] against N(0.7, 0.15):
    # (ln 0.15 - ln 1 + (1 + 0.01) / 0.045 - 0.5) + (ln 0.15 - ln 0.1 + (0.01 + 0.49) / 0.045 - 0.5) = 31.0639
    ((0, 0, 0, 0), 0.7, kl(0.6, 1.0, 0.7, 0.15) + kl(0.0, 0.1, 0.7, 0.15)),
    # posterior mean = confidence 0.5 for both latents, learned std
    ((1, 0, 0, 0), 0.7, kl(0.5, 1.0, 0.7, 0.15) + kl(0.5, 0.1, 0.7, 0.15)),
    # posterior mean 0.5, std from it: min(0.5, 0.5) / 2 = 0.25 (a scalar posterior: no latent sum)
    ((1, 1, 0, 0), 0.7, kl(0.5, 0.25, 0.7, 0.15)),
    # posterior = prior: sampled around the prior, KL 0
    ((2, 2, 0, 0), 0.7, 0.0),
    # posterior std = prior std 0.15, learned mean
    ((0, 2, 0, 0), 0.7, kl(0.6, 0.15, 0.7, 0.15) + kl(0.0, 0.15, 0.7, 0.15)),
    # prior mean = the model's confidence 0.5
    ((0, 0, 1, 0), 0.7, kl(0.6, 1.0, 0.5, 0.15) + kl(0.0, 0.1, 0.5, 0.15)),
    # prior std from the prior mean 0.8: min(0.8, 0.2) / 2 = 0.1
    ((0, 0, 0, 1), 0.8, kl(0.6, 1.0, 0.8, 0.1) + kl(0.0, 0.1, 0.8, 0.1)),
    # prior mean = confidence 0.5 and its std min(0.5, 0.5) / 2 = 0.25; posterior mean 0.5 with std 0.25: KL 0
    ((1, 1, 1, 1), 0.7, 0.0),
    # posterior mean 0.7 (the prior's), learned std, against the confidence prior N(0.5, 0.25)
    ((2, 0, 1, 1), 0.7, kl(0.7, 1.0, 0.5, 0.25) + kl(0.7, 0.1, 0.5, 0.25)),
]


@pytest.mark.parametrize(("flags", "pri_mu", "expected"), KL_CASES)
def test_kl_for_each_flag_combination(flags: tuple[int, int, int, int], pri_mu: float, expected: float) -> None:
    names = ("flag_post_mu", "flag_post_std", "flag_pri_mu", "flag_pri_std")
    posterior = threshold_posterior(LOGITS, MU, LOGVAR, pri_mu, 0.15, **dict(zip(names, flags)))
    assert float(posterior.kl) == pytest.approx(expected, abs=1e-5)


def test_kl_is_summed_over_the_latent_and_averaged_over_the_batch() -> None:
    # two items: the first as above (31.0639), the second with mu = 0.7, s1 = 0.15 in both latents (KL 0)
    mu = torch.cat([MU, torch.full((1, 2), 0.7)])
    logvar = torch.cat([LOGVAR, torch.full((1, 2), 2 * math.log(0.15))])
    posterior = threshold_posterior(LOGITS, mu, logvar)
    assert float(posterior.kl) == pytest.approx((kl(0.6, 1.0, 0.7, 0.15) + kl(0.0, 0.1, 0.7, 0.15)) / 2, abs=1e-5)


def test_kl_gradient_reaches_the_head_outputs() -> None:
    mu, logvar = MU.clone().requires_grad_(), LOGVAR.clone().requires_grad_()
    threshold_posterior(LOGITS, mu, logvar).kl.backward()
    # d/d mu of (m - 0.7)^2 / (2 0.15^2) at m = 0.6: -0.1 / 0.0225; relu blocks the negative second entry
    assert mu.grad is not None and float(mu.grad[0, 0]) == pytest.approx(-0.1 / 0.0225, rel=1e-5)
    assert float(mu.grad[0, 1]) == 0.0
    # d/d logvar of (-logvar / 2 + exp(logvar) / (2 s2^2)) at logvar = 0: -0.5 + 1 / 0.045
    assert logvar.grad is not None and float(logvar.grad[0, 0]) == pytest.approx(-0.5 + 1 / 0.045, rel=1e-5)


@pytest.mark.parametrize("bad", [{"flag_post_mu": 3}, {"flag_pri_std": 2}, {"pri_std": 0.0}])
def test_bad_flags_and_prior_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        threshold_posterior(LOGITS, MU, LOGVAR, **bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        BPLMethod(**bad)


def _posterior(
    mu: list[float], sigma: list[float], prior_mu: float = 0.7, prior_std: float = 0.15
) -> ThresholdPosterior:
    logvar = 2 * torch.log(torch.tensor([sigma]))
    return ThresholdPosterior(kl=torch.zeros(()), mu=torch.tensor([mu]), logvar=logvar,
                              prior_mu=torch.tensor(prior_mu), prior_std=torch.tensor(prior_std))


def test_threshold_is_the_mean_of_one_reparameterised_sample() -> None:
    # eps [1, -1]: (1 * 0.1 + 0.6 + (-1) * 0.2 + 0.8) / 2 = (0.7 + 0.6) / 2 = 0.65, inside 0.7 +- 2 * 0.15
    tau = sample_threshold(_posterior([0.6, 0.8], [0.1, 0.2]), eps=torch.tensor([[1.0, -1.0]]))
    assert float(tau) == pytest.approx(0.65, abs=1e-6)


def test_threshold_outside_two_prior_sigmas_is_kept_as_the_released_code_does() -> None:
    # EM-BPL-Semi-Seg@96690d1 libs/Loss.py lines 111-112: the fallback to the prior mean is commented out, so the
    # sample is the threshold wherever it lies.
    # eps [5, 5]: (0.6 + 0.5 + 0.8 + 1.0) / 2 = 1.45 > 0.7 + 2 * 0.15 = 1.0: tau stays 1.45
    tau = sample_threshold(_posterior([0.6, 0.8], [0.1, 0.2]), eps=torch.full((1, 2), 5.0))
    assert float(tau) == pytest.approx(1.45)
    # (0.2 + 0.1) / 2 = 0.15 < 0.7 - 0.3 = 0.4: tau stays 0.15
    tau = sample_threshold(_posterior([0.2, 0.1], [0.1, 0.1]), eps=torch.zeros(1, 2))
    assert float(tau) == pytest.approx(0.15)
    assert BPLMethod().threshold_fallback is False
    with pytest.raises(ValueError, match="shape of logvar"):
        sample_threshold(_posterior([0.2, 0.1], [0.1, 0.1]), eps=torch.zeros(2))


def test_threshold_fallback_option_replaces_a_sample_outside_two_prior_sigmas() -> None:
    # the older commits' rule, kept as the bundle setting threshold_fallback: 1.45 > 1.0 -> 0.7; 0.15 < 0.4 -> 0.7
    tau = sample_threshold(_posterior([0.6, 0.8], [0.1, 0.2]), eps=torch.full((1, 2), 5.0), fallback=True)
    assert float(tau) == pytest.approx(0.7)
    tau = sample_threshold(_posterior([0.2, 0.1], [0.1, 0.1]), eps=torch.zeros(1, 2), fallback=True)
    assert float(tau) == pytest.approx(0.7)
    # inside the band the sample is kept either way: 0.65
    tau = sample_threshold(_posterior([0.6, 0.8], [0.1, 0.2]), eps=torch.tensor([[1.0, -1.0]]), fallback=True)
    assert float(tau) == pytest.approx(0.65, abs=1e-6)


def test_method_thresholds_with_the_sample_unless_told_to_fall_back() -> None:
    # flags 2/2 with the prior N(0.5, 0.001^2): tau = mean(eps exp(logvar / 2)) + 0.5 over 3 x 8 draws with the
    # head's own spread (exp(logvar / 2) about 1), far outside the band 0.5 +- 0.002 for this seed
    images, labels, unlabelled = _batch()
    engine = _engine(_unet())
    taus = {}
    for fallback in (False, True):
        method = BPLMethod(pri_mu=0.5, pri_std=0.001, flag_post_mu=2, flag_post_std=2, threshold_fallback=fallback)
        torch.manual_seed(7)
        _, out = method(engine, (images, labels), unlabelled)
        taus[fallback] = float(out["threshold"])
    assert abs(taus[False] - 0.5) > 0.002 and taus[True] == pytest.approx(0.5)


def test_binary_dice_bce_by_hand() -> None:
    # p = sigmoid(0) = 0.5 on 4 voxels, target [1, 1, 0, 0]: Dice = 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4,
    # BCE = ln 2 -> 0.5 * 0.4 + 0.5 * ln 2
    logits = torch.zeros(1, 1, 2, 2, 1)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2, 1)
    assert float(BinaryDiceBCELoss()(logits, target)) == pytest.approx(0.2 + 0.5 * math.log(2), abs=1e-6)
    # temp 2 scales the Dice's logits only: logits 2 -> p = sigmoid(1) = 0.731059 on every voxel
    logits = torch.full((1, 1, 2, 2, 1), 2.0)
    p = 1 / (1 + math.exp(-1))
    dice = 1 - (2 * 2 * p + 1) / (4 * p + 2 + 1)
    bce = (2 * math.log(1 + math.exp(-2)) + 2 * (2 + math.log(1 + math.exp(-2)))) / 4
    assert float(BinaryDiceBCELoss(temp=2.0)(logits, target)) == pytest.approx(0.5 * dice + 0.5 * bce, abs=1e-6)
    with pytest.raises(ValueError, match="one-channel"):
        BinaryDiceBCELoss()(torch.zeros(1, 2, 2, 2, 1), target)


def test_pseudo_loss_is_skipped_at_or_under_half_a_percent_foreground() -> None:
    method = BPLMethod()
    logits = torch.full((1, 1, 8, 8, 8), -4.0)  # sigmoid 0.018: background at tau 0.5
    logits[0, 0, 0, 0, :2] = 4.0  # 2 of 512 voxels = 0.39% foreground: skipped
    loss, fraction = method.pseudo_loss(logits, torch.tensor(0.5))
    assert float(fraction) == pytest.approx(2 / 512) and float(loss) == 0.0
    logits[0, 0, 0, 0, :] = 4.0  # 8 of 512 = 1.6%: the loss against the pseudo-labels
    loss, fraction = method.pseudo_loss(logits, torch.tensor(0.5))
    pseudo = (logits > 0).float()
    assert float(fraction) == pytest.approx(8 / 512)
    assert float(loss) == pytest.approx(float(BinaryDiceBCELoss()(logits, pseudo)), abs=1e-7) and float(loss) > 0


@pytest.mark.parametrize(("weighted", "tau", "conf_lower", "kept"), [
    (0.3, 0.5, 0.0, True), (0.0, 0.5, 0.0, False), (0.3, 1.0, 0.0, False), (0.3, 0.0, 0.0, False),
    (0.3, 0.05, 0.1, False), (0.3, 0.15, 0.1, True),
])
def test_drop_rule(weighted: float, tau: float, conf_lower: float, kept: bool) -> None:
    method = BPLMethod(conf_lower=conf_lower)
    assert bool(method.kept(torch.tensor(weighted), torch.tensor(tau))) is kept


def test_warmup_alpha_at_chosen_iterations() -> None:
    # T = 100: alpha = 0 before 0.4 T, then alpha_max * (step - 40) / (0.1 T), alpha_max from 0.5 T (reference ramp_up)
    values = dict(RampScheduler.simulate_values(100, param_name=ALPHA, start=0.0, end=1.0, length=1, ramp="linear",
                                                length_fraction=0.1, offset_fraction=0.4))
    assert values[0] == 0.0 and values[39] == 0.0 and values[40] == 0.0
    assert values[45] == pytest.approx(0.5) and values[48] == pytest.approx(0.8)
    assert values[50] == 1.0 and values[99] == 1.0


def _unet() -> UNet:
    torch.manual_seed(0)
    return UNet(3, 1, 1, channels=(4, 8), strides=(2,), num_res_units=0, norm="instance", dropout=0.0)


def _engine(network: torch.nn.Module, alpha: float = 1.0) -> SimpleNamespace:
    # MONAI UNet with two levels: model.1 = SkipConnection, 4 + 8 = 12 channels
    head = ThresholdHead(in_channels=12, latent_dim=8)
    return SimpleNamespace(network=network, networks={"network": network, "threshold_head": head},
                           state=SimpleNamespace(**{ALPHA: alpha}))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 8, 8, 8, generator=g)
    labels = (torch.rand(2, 1, 8, 8, 8, generator=g) > 0.5).float()
    return images, labels, torch.rand(1, 1, 8, 8, 8, generator=g)


def test_batch_u_zero_is_exactly_the_supervised_loss() -> None:
    images, labels, _ = _batch()
    network = _unet()
    method = BPLMethod(batch_u=0)
    assert not method.requires_unlabelled and method.required_state == ()
    loss, out = method(_engine(network), (images, labels), None)
    expected = BinaryDiceBCELoss()(network(images), labels)
    assert torch.equal(loss, expected) and set(out) == {"pred", "sup_loss"}


def test_terms_dropped_while_alpha_is_zero_and_kept_after() -> None:
    images, labels, unlabelled = _batch()
    network = _unet()
    method = BPLMethod(pri_mu=0.5, pri_std=0.25, flag_post_mu=2, flag_post_std=2, min_foreground=0.0)
    engine = _engine(network, alpha=0.0)
    loss, out = method(engine, (images, labels), unlabelled)
    assert float(out["pseudo_kept"]) == 0.0 and float(loss.detach()) == float(out["sup_loss"])
    engine.state.bpl_alpha = 1.0
    loss, out = method(engine, (images, labels), unlabelled)
    # flags 2/2: the KL is 0; the threshold is one sample around 0.5
    assert 0.0 <= float(out["threshold"]) <= 1.0 and float(out["kl_loss"]) == 0.0
    if float(out["pseudo_kept"]):
        assert float(loss.detach()) == pytest.approx(float(out["sup_loss"]) + float(out["unsup_loss"]), rel=1e-6)
    for key in ("threshold_mu", "threshold_sigma", "threshold", "pseudo_foreground", ALPHA):
        assert key in out


def test_kl_trains_head_and_network_when_kept() -> None:
    images, labels, unlabelled = _batch()
    network = _unet()
    engine = _engine(network)
    method = BPLMethod(min_foreground=0.0, conf_lower=-1.0)
    torch.manual_seed(3)
    loss, out = method(engine, (images, labels), unlabelled)
    if not float(out["pseudo_kept"]):  # tau left (conf_lower, 1): the reference drops the terms; nothing to check
        pytest.skip("threshold sample outside (conf_lower, 1)")
    loss.backward()
    head = engine.networks["threshold_head"]
    assert head.mu_layer.weight.grad is not None and float(head.mu_layer.weight.grad.abs().sum()) > 0


def test_feature_tap_reads_the_last_decoder_and_names_bad_modules() -> None:
    network = _unet()
    tap = FeatureTap(torch.nn.Sequential(network)[0], "model.1")
    network(torch.zeros(1, 1, 8, 8, 8))
    assert tuple(tap.pop().shape) == (1, 12, 4, 4, 4)
    with pytest.raises(RuntimeError, match="has not run"):
        tap.pop()
    with pytest.raises(ValueError, match="no submodule 'decoder'"):
        FeatureTap(network, "decoder")
    with pytest.raises(ValueError, match="in_channels"):
        ThresholdHead(in_channels=5)(torch.zeros(1, 12, 2, 2, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_threshold(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different eps on each rank, different posteriors: mu 0.6 vs 0.8
        posterior = _posterior([0.6 + 0.2 * rank] * 4, [0.05] * 4)
        torch.save(sample_threshold(posterior), Path(out) / f"tau{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_threshold_is_the_same_on_every_rank(tmp_path: Path) -> None:
    mp.spawn(_rank_threshold, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    tau0, tau1 = (torch.load(tmp_path / f"tau{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(tau0, tau1) and 0.6 < float(tau0) < 0.8  # the ranks' average, about 0.7
