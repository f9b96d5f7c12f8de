"""KL divergence between diagonal Gaussians (BPL / SegPL-VI threshold posterior vs prior)."""

from __future__ import annotations

import torch

__all__ = ["gaussian_kl"]


def gaussian_kl(
    mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor | float, logvar2: torch.Tensor | float
) -> torch.Tensor:
    """Element-wise ``KL(N(mu1, s1^2) || N(mu2, s2^2))`` with ``s = exp(logvar / 2)``.

    ``KL = log s2 - log s1 + (s1^2 + (mu1 - mu2)^2) / (2 s2^2) - 1/2`` (Xu et al., "Bayesian Pseudo Labels",
    MICCAI 2022, Eq. 7; docs/architecture.md §3). Reduction (sum over the latent, mean over the batch) is the caller's.

    Args:
        mu1: posterior mean.
        logvar1: posterior log-variance.
        mu2: prior mean (tensor or float, broadcast).
        logvar2: prior log-variance (tensor or float, broadcast).

    Returns:
        The KL divergence, broadcast shape of the inputs.
    """
    mu2 = torch.as_tensor(mu2, dtype=mu1.dtype, device=mu1.device)
    logvar2 = torch.as_tensor(logvar2, dtype=mu1.dtype, device=mu1.device)
    # log s2 - log s1 = (logvar2 - logvar1) / 2 ; s1^2 = exp(logvar1) ; 2 s2^2 = 2 exp(logvar2)
    return 0.5 * (logvar2 - logvar1) + (torch.exp(logvar1) + (mu1 - mu2) ** 2) / (2.0 * torch.exp(logvar2)) - 0.5
