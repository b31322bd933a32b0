"""Robust-training terms next to IDEA's V-REx penalty: DROS's distributionally robust loss and the
IRMv1 penalty. Pure functions of logits, so the trainer and the tests share one definition."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DROS_POWER = 0.05  # the reference code's exponent on the smoothed popularity


def dros_propensity(targets: np.ndarray, n_items: int) -> Tensor:
    """p_j = ((count_j + 1) / sum_k (count_k + 1)) ** 0.05 over items 1..n from training targets; `[n]`."""
    counts = np.bincount(targets, minlength=n_items + 1)[1:].astype(np.float64) + 1.0  # [n]
    return torch.as_tensor((counts / counts.sum()) ** DROS_POWER, dtype=torch.float32)


def dros_loss(logits: Tensor, target: Tensor, propensity: Tensor, beta: float) -> Tensor:
    """L_DRO per row, `[M]`, for `logits [M, n]` over items 1..n and 1-based `target [M]`:

        log( sum_j exp(p_j s_j^2 / beta) - exp(p_t s_t^2 / beta) + exp(p_t (s_t - 1)^2 / beta) ).

    The sum minus the target's term plus its replacement is the sum over the same terms with the
    target's exponent replaced, so the loss is one logsumexp: no overflow, no cancellation."""
    idx = (target - 1).unsqueeze(1)  # [M, 1]
    exponent = propensity * logits.square() / beta  # [M, n]
    s_t = logits.gather(1, idx)  # [M, 1]
    shifted = propensity[idx] * (s_t - 1).square() / beta  # [M, 1]
    return torch.logsumexp(exponent.scatter(1, idx, shifted), dim=1)  # [M]


def ce_scale_gradient(logits: Tensor, target: Tensor) -> Tensor:
    """d/dw of cross-entropy(w * logits) at w = 1 per row, `[M]`: E_softmax[s] - s_t."""
    return (logits.softmax(1) * logits).sum(1) - logits.gather(1, (target - 1).unsqueeze(1)).squeeze(1)


def bce_scale_gradient(pos: Tensor, neg: Tensor) -> Tensor:
    """d/dw of softplus(-w pos) + softplus(w neg) at w = 1 per row, `[M]`."""
    return -pos * torch.sigmoid(-pos) + neg * torch.sigmoid(neg)


def bce_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """One positive and one sampled negative score per row, `[M]`."""
    return F.softplus(-pos) + F.softplus(neg)


def irmv1(scale_grads: Tensor) -> Tensor:
    """IRMv1 penalty of environments whose risks have gradients `[E]` with respect to a dummy scale
    w = 1 on the logits: mean_e (dR_e/dw)^2 (Arjovsky et al., 2019, averaged over environments)."""
    return scale_grads.square().mean()
