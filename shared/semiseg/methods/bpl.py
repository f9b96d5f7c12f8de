"""Bayesian Pseudo Labels (SegPL-VI; Xu et al., MICCAI 2022): pseudo-labels at a learned, sampled threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine
from torch import nn

from semiseg.losses import BinaryDiceBCELoss, gaussian_kl
from semiseg.methods.base import LabelledBatch, SSLMethod
from semiseg.networks.bpl_head import MONAI_UNET_LAST_DECODER, FeatureTap
from semiseg.settings import flag

__all__ = [
    "BPLMethod", "ThresholdPosterior", "threshold_posterior", "sample_threshold", "check_prior", "ALPHA", "FLAGS",
    "GAMMA",
]

ALPHA = "bpl_alpha"  # engine.state attribute: the warm-up weight alpha(t) (a RampScheduler's param_name)
GAMMA = 2.0  # prior/posterior widths derived from a mean keep mean +- GAMMA sigma inside [0, 1]
FLAGS = {
    "flag_post_mu": (0, 1, 2),  # 0: learned (relu of the head's mu); 1: mean sigmoid confidence; 2: the prior mean
    "flag_post_std": (0, 1, 2),  # 0: learned (the head's logvar); 1: from the posterior mean; 2: the prior std
    "flag_pri_mu": (0, 1),  # 0: pri_mu; 1: mean sigmoid confidence
    "flag_pri_std": (0, 1),  # 0: pri_std; 1: from the prior mean
}


@dataclass
class ThresholdPosterior:
    """The threshold's posterior and prior after the flags are applied (see :func:`threshold_posterior`).

    Attributes:
        kl: ``KL(q || p)`` summed over the latent and averaged over the batch (a 0-d tensor).
        mu: posterior mean ``mu1`` (``(B, L)`` or 0-d).
        logvar: the head's log-variance, ``(B, L)``: the sample's spread (as in the reference, whatever the flags).
        prior_mu: prior mean ``mu2`` (0-d tensor).
        prior_std: prior standard deviation ``s2`` (0-d tensor).
    """

    kl: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    prior_mu: torch.Tensor
    prior_std: torch.Tensor


def check_prior(pri_std: float, **flags: int) -> dict[str, int]:
    """Check ``pri_std > 0`` and each flag's value (:data:`FLAGS`); returns the flags.

    Raises:
        ValueError: naming the first bad setting and its allowed values.
    """
    for name, value in flags.items():
        if name not in FLAGS:
            raise ValueError(f"unknown flag {name!r}; the flags are {sorted(FLAGS)}.")
        if value not in FLAGS[name]:
            raise ValueError(f"{name} must be one of {FLAGS[name]}, got {value!r}.")
    if not float(pri_std) > 0:
        raise ValueError(f"pri_std must be > 0, got {pri_std!r}.")
    return dict(flags)


def _from_mean(mean: torch.Tensor) -> torch.Tensor:
    """``min(mean, 1 - mean) / GAMMA``: the widest std keeping ``mean +- GAMMA std`` inside [0, 1]."""
    return torch.minimum(mean, 1.0 - mean) / GAMMA


def threshold_posterior(
    logits: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    pri_mu: float = 0.7,
    pri_std: float = 0.15,
    flag_post_mu: int = 0,
    flag_post_std: int = 0,
    flag_pri_mu: int = 0,
    flag_pri_std: int = 0,
) -> ThresholdPosterior:
    """The KL of the threshold's posterior to its prior, with the reference code's four flags (``kld_loss``).

    Xu et al., MICCAI 2022, Eq. 7 (docs/architecture.md §3): ``KL(q||p) = log s2 - log s1 + (s1^2 + (mu1 - mu2)^2) /
    (2 s2^2) - 1/2`` through :func:`semiseg.losses.gaussian_kl`, summed over the latent and averaged over the batch.
    ``c = mean(sigmoid(logits))`` is the model's confidence over the whole batch.

    - ``flag_post_mu``: 0 ``mu1 = relu(mu)`` (the paper); 1 ``mu1 = c``; 2 ``mu1 = pri_mu`` (sample around the prior).
    - ``flag_post_std``: 0 ``s1 = exp(logvar / 2)`` (the paper); 1 ``s1 = min(mu1, 1 - mu1) / 2``; 2 ``s1 = pri_std``.
    - ``flag_pri_mu``: 0 ``mu2 = pri_mu`` (the paper); 1 ``mu2 = c`` (the model's confidence as prior).
    - ``flag_pri_std``: 0 ``s2 = pri_std`` (the paper); 1 ``s2 = min(mu2, 1 - mu2) / 2``.

    With ``flag_post_mu = flag_post_std = 2`` and both prior flags 0 the KL is 0: the threshold is sampled around the
    prior, nothing is learned. The reference takes ``log s1``, ``log s2`` of the flag-derived widths as Python floats
    (no gradient through those two logs); here they keep their gradient (same values). ``min`` is element-wise, so
    ``flag_post_std = 1`` also works with a per-element ``mu1`` (the reference needs a scalar there).

    Args:
        logits: the segmentation logits of the batch the head saw ``(B, 1, *spatial)``.
        mu: the head's posterior mean ``(B, L)``.
        logvar: the head's posterior log-variance ``(B, L)``.
        pri_mu: prior mean (0.7).
        pri_std: prior standard deviation (0.15).
        flag_post_mu: see above.
        flag_post_std: see above.
        flag_pri_mu: see above.
        flag_pri_std: see above.

    Returns:
        The :class:`ThresholdPosterior`.

    Raises:
        ValueError: on an unknown flag value, ``pri_std <= 0``, or ``mu`` / ``logvar`` of different shapes.
    """
    check_prior(pri_std, flag_post_mu=flag_post_mu, flag_post_std=flag_post_std, flag_pri_mu=flag_pri_mu,
                flag_pri_std=flag_pri_std)
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}.")
    mu, logvar = mu.float(), logvar.float()
    prior_mu = torch.tensor(float(pri_mu), device=mu.device)
    prior_std = torch.tensor(float(pri_std), device=mu.device)
    confidence = torch.sigmoid(logits.float()).mean() if 1 in (flag_post_mu, flag_pri_mu) else None

    post_mu = {0: torch.relu(mu), 1: confidence, 2: prior_mu}[flag_post_mu]
    assert post_mu is not None
    if flag_post_std == 0:
        post_logvar = logvar
    else:
        post_logvar = 2.0 * torch.log(_from_mean(post_mu) if flag_post_std == 1 else prior_std)
    mu2 = confidence if flag_pri_mu == 1 else prior_mu
    assert mu2 is not None
    std2 = _from_mean(mu2) if flag_pri_std == 1 else prior_std
    kl = gaussian_kl(post_mu, post_logvar, mu2, 2.0 * torch.log(std2))
    kl = kl.sum(dim=-1).mean(dim=0) if kl.dim() > 0 else kl
    return ThresholdPosterior(kl=kl, mu=post_mu, logvar=logvar, prior_mu=mu2, prior_std=std2)


def _all_mean(values: torch.Tensor) -> torch.Tensor:
    """Average ``values`` over the ranks of an initialised process group (identity otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / dist.get_world_size()
    return values


def sample_threshold(
    posterior: ThresholdPosterior, eps: torch.Tensor | None = None, fallback: bool = False
) -> torch.Tensor:
    """One threshold per iteration: ``tau = mean(eps exp(logvar / 2) + mu1)``, ``eps ~ N(0, 1)``.

    Xu et al., MICCAI 2022, Sec. 2 (reparameterised sample of the posterior; docs/architecture.md §3), as the
    reference code's ``kld_loss`` returns it (``libs/Loss.py`` at 96690d1, lines 107-114). Under ``torch.distributed``
    the sample's mean (and the prior's mean and std) are averaged over the ranks (one all-reduce), so every rank
    thresholds with the same ``tau``.

    ``fallback=True`` replaces a sample whose mean leaves ``mu2 +- 2 s2`` by the prior mean ``mu2`` (after the
    average over ranks). The reference's older commits did this; since commit ef57cd3 ("fixing bugs in kl") those
    lines are commented out (``libs/Loss.py`` lines 111-112), so the default is the sample itself.

    Args:
        posterior: from :func:`threshold_posterior`.
        eps: the standard normal draw, shape of ``posterior.logvar``; drawn with ``torch.randn_like`` when None.
        fallback: replace a sample outside ``mu2 +- 2 s2`` by ``mu2`` (off: the released code).

    Returns:
        ``tau``, a detached 0-d tensor (it only thresholds; the head learns through the KL).

    Raises:
        ValueError: if ``eps`` does not have the shape of ``posterior.logvar``.
    """
    logvar = posterior.logvar.detach()
    if eps is None:
        eps = torch.randn_like(logvar)
    elif eps.shape != logvar.shape:
        raise ValueError(f"eps must have the shape of logvar {tuple(logvar.shape)}, got {tuple(eps.shape)}.")
    sample = (eps.to(logvar) * torch.exp(0.5 * logvar) + posterior.mu.detach()).mean()
    sample, mu2, std2 = _all_mean(torch.stack([sample, posterior.prior_mu.detach(), posterior.prior_std.detach()]))
    if not fallback:
        return sample
    outside = (sample < mu2 - GAMMA * std2) | (sample > mu2 + GAMMA * std2)
    return torch.where(outside, mu2, sample)


class BPLMethod(SSLMethod):
    """``L = L_sup + beta alpha(t) L_pseudo + 0.1 alpha(t) KL`` with pseudo-labels ``1[sigmoid(s(x_u)/temp) > tau]``.

    Xu et al., "Bayesian Pseudo Labels: Expectation Maximization for Robust and Efficient Semi-Supervised
    Segmentation", MICCAI 2022, Sec. 2 and Eq. 7 (SegPL-VI; docs/architecture.md §3), as the reference code
    (``EM-BPL-Semi-Seg`` at 96690d1: ``Main.py``, ``libs/Train3D.py``, ``libs/Loss.py``, ``libs/Helpers.py``) runs it:
    binary segmentation with one sigmoid channel; one forward pass of the labelled and unlabelled crops; a
    :class:`~semiseg.networks.ThresholdHead` (trainable part ``"threshold_head"``) maps the pooled last-decoder
    features of that pass (read by a forward hook, :class:`~semiseg.networks.FeatureTap`) to the threshold's
    posterior; :func:`threshold_posterior` gives the KL, :func:`sample_threshold` one threshold ``tau`` (the sample
    itself, as the released code; the prior-mean fallback of older commits with ``threshold_fallback``);
    ``L_pseudo`` is :class:`~semiseg.losses.BinaryDiceBCELoss` on the unlabelled logits against the pseudo-labels, 0
    when they have ``min_foreground`` or less foreground. The pseudo and KL terms are dropped for the iteration
    unless ``beta alpha(t) L_pseudo > 0`` and ``conf_lower < tau < 1``. ``alpha(t)`` is ``engine.state.bpl_alpha`` (a
    linear :class:`~semiseg.handlers.RampScheduler` from 0 at ``warmup_start x T`` to ``alpha`` at ``(warmup_start +
    warmup) x T``, the reference's ``Helpers.ramp_up``).

    The drop rule needs one device sync per iteration (whether the terms are kept), besides the trainer's finite
    check: a dropped iteration leaves the head without gradients, so AdamW leaves it alone, as in the reference.
    Under ``torch.distributed`` the head gets a zero-valued term instead, so DDP sees a gradient for each of its
    parameters on every rank.

    Args:
        supervised_loss: default :class:`~semiseg.losses.BinaryDiceBCELoss` with ``temp``.
        pri_mu: prior mean of the threshold (0.7).
        pri_std: prior standard deviation (0.15).
        flag_post_mu: see :func:`threshold_posterior` (0).
        flag_post_std: see :func:`threshold_posterior` (0).
        flag_pri_mu: see :func:`threshold_posterior` (0).
        flag_pri_std: see :func:`threshold_posterior` (0).
        beta: weight of the pseudo-label loss (1).
        kl_weight: weight of the KL (0.1, a constant in the reference code).
        conf_lower: ``tau`` must exceed this for the terms to be kept (0.0).
        temp: temperature of the sigmoid that makes pseudo-labels and Dice probabilities (1.0).
        min_foreground: the pseudo loss is 0 unless the pseudo-labels' foreground fraction exceeds this (0.005, the
            reference's ``calculate_pseudo_loss``: "at least 0.5% foreground").
        batch_u: unlabelled crops per iteration; 0 trains on the labelled loss alone (the reference's supervised
            mode), and the trainer then needs no unlabelled loader.
        feature_module: the segmentation network's submodule whose output the head reads.
        threshold_fallback: replace a threshold sample outside ``pri_mu +- 2 pri_std`` by the prior mean (False:
            the released code, where that fallback is commented out; see :func:`sample_threshold`).

    Raises:
        ValueError: on a bad flag, a negative weight or ``batch_u``, ``min_foreground`` outside [0, 1), or a
            ``threshold_fallback`` that is not true or false.
    """

    required_state = (ALPHA,)
    required_networks = ("threshold_head",)

    def __init__(
        self,
        supervised_loss: nn.Module | None = None,
        pri_mu: float = 0.7,
        pri_std: float = 0.15,
        flag_post_mu: int = 0,
        flag_post_std: int = 0,
        flag_pri_mu: int = 0,
        flag_pri_std: int = 0,
        beta: float = 1.0,
        kl_weight: float = 0.1,
        conf_lower: float = 0.0,
        temp: float = 1.0,
        min_foreground: float = 0.005,
        batch_u: int = 1,
        feature_module: str = MONAI_UNET_LAST_DECODER,
        threshold_fallback: bool = False,
    ) -> None:
        super().__init__(BinaryDiceBCELoss(temp) if supervised_loss is None else supervised_loss)
        self.flags = check_prior(pri_std, flag_post_mu=flag_post_mu, flag_post_std=flag_post_std,
                                 flag_pri_mu=flag_pri_mu, flag_pri_std=flag_pri_std)
        for name, value in {"beta": beta, "kl_weight": kl_weight, "batch_u": batch_u}.items():
            if not float(value) >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        if not 0.0 <= float(min_foreground) < 1.0:
            raise ValueError(f"min_foreground must lie in [0, 1), got {min_foreground!r}.")
        self.pri_mu, self.pri_std = float(pri_mu), float(pri_std)
        self.beta, self.kl_weight, self.conf_lower = float(beta), float(kl_weight), float(conf_lower)
        self.min_foreground = float(min_foreground)
        self.batch_u = int(batch_u)
        self.requires_unlabelled = self.batch_u > 0
        self.required_state = (ALPHA,) if self.requires_unlabelled else ()
        self.pseudo_loss_fn = BinaryDiceBCELoss(temp)
        self.temp = float(temp)
        self.threshold_fallback = flag(threshold_fallback, "threshold_fallback")
        self.feature_module = feature_module
        self._tap: FeatureTap | None = None

    def features(self, network: nn.Module) -> FeatureTap:
        """The hook on ``network``'s :attr:`feature_module` (registered at the first call for that network)."""
        inner = network
        while hasattr(inner, "module") and isinstance(inner.module, nn.Module):
            inner = inner.module
        if self._tap is None or self._tap.network is not inner:
            if self._tap is not None:
                self._tap.remove()
            self._tap = FeatureTap(inner, self.feature_module)
        return self._tap

    def pseudo_labels(self, logits_u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``1[sigmoid(logits_u / temp) > tau]`` as a float tensor."""
        return (torch.sigmoid(logits_u.detach().float() / self.temp) > tau).float()

    def pseudo_loss(self, logits_u: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pseudo-label loss and the pseudo-labels' foreground fraction; the loss is 0 at or under
        ``min_foreground`` (reference ``calculate_pseudo_loss``)."""
        pseudo = self.pseudo_labels(logits_u, tau)
        fraction = pseudo.mean()
        loss = self.pseudo_loss_fn(logits_u, pseudo)
        return torch.where(fraction > self.min_foreground, loss, torch.zeros_like(loss)), fraction

    def kept(self, weighted_pseudo: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The drop rule (reference ``Main.py`` lines 82-88): keep the pseudo and KL terms only if
        ``beta alpha(t) L_pseudo > 0`` and ``conf_lower < tau < 1``."""
        return (weighted_pseudo > 0) & (tau > self.conf_lower) & (tau < 1.0)

    @staticmethod
    def _distributed() -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = labelled
        head = self.network(engine, "threshold_head")
        tap = self.features(engine.network)
        if not self.requires_unlabelled or unlabelled is None:
            logits_l = engine.network(images)
            supervised = self.supervised_loss(logits_l, labels)
            loss = supervised
            if self._distributed():  # every head parameter gets a (zero) gradient, as DDP requires
                mu, logvar = head(tap.pop())
                loss = loss + 0.0 * (mu.sum() + logvar.sum())
            else:
                tap.features = None
            return loss, self.outputs(logits_l, supervised)

        logits_l, logits_u = self.student_forward(engine.network, images, unlabelled)
        mu, logvar = head(tap.pop())
        supervised = self.supervised_loss(logits_l, labels)
        posterior = threshold_posterior(torch.cat([logits_l, logits_u]), mu, logvar, self.pri_mu, self.pri_std,
                                        **self.flags)
        tau = sample_threshold(posterior, fallback=self.threshold_fallback)
        pseudo, fraction = self.pseudo_loss(logits_u, tau)
        alpha = float(self.state(engine, ALPHA))
        weighted_pseudo = self.beta * alpha * pseudo
        weighted_kl = self.kl_weight * alpha * posterior.kl
        keep = bool(self.kept(weighted_pseudo, tau))
        zero = torch.zeros((), device=supervised.device)
        if keep:
            loss = supervised + weighted_pseudo + weighted_kl
        else:
            weighted_pseudo, weighted_kl = zero, zero
            loss = supervised + (0.0 * (mu.sum() + logvar.sum()) if self._distributed() else 0.0)
        out = self.outputs(logits_l, supervised, weighted_pseudo)
        out.update({
            "kl_loss": weighted_kl.detach(),
            ALPHA: alpha,
            "threshold_mu": posterior.mu.detach().mean(),
            "threshold_sigma": torch.exp(0.5 * posterior.logvar.detach()).mean(),
            "threshold": tau,
            "pseudo_foreground": fraction,
            "pseudo_kept": float(keep),
        })
        return loss, out
