"""IDEA's environment construction: subsequence extractors, mixup, and the V-REx penalty.

K extractors turn a sequence embedding into K soft subsequence views; mixing
pairs of views gives N environments whose risks' variance is the invariance
penalty. All randomness (Gumbel noise, pairings, λ) comes from torch's global
RNG, so a seeded run is reproducible.

Layout convention: environment-major rows. Row `n * B + b` of an environment
batch is environment n applied to batch row b, so per-row losses reshape to
`[N, B]` and `.mean(1)` gives the risks `R_n`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_U_EPS = 1e-6  # keeps log u and log(1 - u) finite


class SubsequenceExtractors(nn.Module):
    """K MLPs `L -> hidden -> L` (stacked weights, one batched op) giving relaxed Bernoulli keep-masks."""

    def __init__(self, K: int, max_len: int, hidden: int = 64, init_keep_logit: float = 2.0):
        super().__init__()
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if max_len < 1 or hidden < 1:
            raise ValueError(f"max_len and hidden must be >= 1, got {max_len}, {hidden}")
        self.K, self.max_len, self.hidden = K, max_len, hidden
        L, H = max_len, hidden
        # nn.Linear's default init, per extractor: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        b1_bound, b2_bound = 1.0 / math.sqrt(L), 1.0 / math.sqrt(H)
        self.w1 = nn.Parameter(torch.empty(K, L, H).uniform_(-b1_bound, b1_bound))  # [K, L, H]
        self.b1 = nn.Parameter(torch.empty(K, H).uniform_(-b1_bound, b1_bound))  # [K, H]
        self.w2 = nn.Parameter(torch.empty(K, H, L).uniform_(-b2_bound, b2_bound))  # [K, H, L]
        # Output bias +2: sigmoid(2) ≈ 0.88, so at the start views keep most of the
        # sequence (close to what the pretrained backbone saw) and exploration grows
        # as the extractors learn to maximise the risk variance.
        self.b2 = nn.Parameter(torch.full((K, L), float(init_keep_logit)))  # [K, L]

    def logits(self, x: Tensor) -> Tensor:
        """Keep-logits ω `[K, B, L_batch]` from the position summaries `s = x.mean(-1)`.

        A batch shorter than max_len (e.g. trimmed to its longest sequence) is
        left-padded with zeros to max_len, which is exactly what an untrimmed,
        zero-padded batch gives, and the last L_batch output columns are kept.
        """
        B, Lb, _ = x.shape
        if Lb > self.max_len:
            raise ValueError(f"sequence length {Lb} exceeds max_len={self.max_len}")
        s = x.mean(-1)  # [B, Lb]
        s = torch.nn.functional.pad(s, (self.max_len - Lb, 0))  # [B, L]
        h = torch.relu(torch.einsum("bl,klh->kbh", s, self.w1) + self.b1.unsqueeze(1))  # [K, B, H]
        omega = torch.einsum("kbh,khl->kbl", h, self.w2) + self.b2.unsqueeze(1)  # [K, B, L]
        return omega[..., self.max_len - Lb:]  # [K, B, Lb]

    def forward(self, x: Tensor, lengths: Tensor, tau: float) -> Tensor:
        """Masks `[K, B, L]` in (0, 1) at real positions and exactly 0 at padding.

        Relaxed Bernoulli (binary Concrete): p = sigmoid((ω + log u - log(1 - u)) / τ),
        u ~ U(0, 1); small τ gives near-binary masks. View k is `masks[k, ..., None] * x`.
        """
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        omega = self.logits(x)  # [K, B, L]
        u = torch.rand_like(omega).clamp(_U_EPS, 1.0 - _U_EPS)  # [K, B, L]
        p = torch.sigmoid((omega + torch.log(u) - torch.log1p(-u)) / tau)  # [K, B, L]
        L = x.shape[1]
        real = torch.arange(L, device=x.device) >= (L - lengths).unsqueeze(1)  # [B, L]
        return torch.where(real, p, torch.zeros_like(p))  # [K, B, L]


def sample_lambda(n: int, *, alpha: float | None, low: float, high: float, device) -> Tensor:
    """Mixing weights `[n]` in [0.5, 1] (weight of the dominant view).

    Beta(α, α) folded to max(λ, 1 - λ) when `alpha` is given, else Uniform(low, high)
    (the caller guarantees 0.5 <= low <= high <= 1).
    """
    if alpha is not None:
        conc = torch.tensor(float(alpha), device=device)
        lam = torch.distributions.Beta(conc, conc).sample((n,))  # [n]
        return torch.maximum(lam, 1.0 - lam)  # [n]
    return low + (high - low) * torch.rand(n, device=device)  # [n]


def make_environments(
    views: Tensor,
    lengths: Tensor,
    targets: Tensor,
    *,
    N: int,
    pairing: str,
    mixup: bool,
    alpha: float | None,
    lambda_low: float,
    lambda_high: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Environment batch `(env_x [N*B, L, d], env_lengths [N*B], env_targets [N*B])`.

    mixup=True: environment n mixes, per row b, λ·V_a + (1-λ)·V_b with λ ~ `sample_lambda`
    (λ >= 0.5, so V_a dominates and supplies the label).
      - "same_user": V_a, V_b are two different extractors' views of row b (needs K >= 2).
      - "any": V_a is a random extractor's view of row b; V_b a random extractor's view of
        a uniformly random row b' (may be b itself); length = max(len_b, len_b').
    mixup=False: the K views themselves are the environments (N is ignored; K*B rows).
    Rows are environment-major (row n*B + b).
    """
    K, B, L, d = views.shape
    dev = views.device
    if not mixup:
        return views.reshape(K * B, L, d), lengths.repeat(K), targets.repeat(K)
    if N < 1:
        raise ValueError(f"N must be >= 1, got {N}")

    rows = torch.arange(B, device=dev).expand(N, B)  # [N, B] row b of every environment
    if pairing == "same_user":
        if K < 2:
            raise ValueError(f"pairing='same_user' needs K >= 2 extractors, got K={K}")
        ext_a = torch.randint(K, (N, B), device=dev)  # [N, B]
        # A nonzero offset mod K picks uniformly among the K-1 other extractors.
        ext_b = (ext_a + torch.randint(1, K, (N, B), device=dev)) % K  # [N, B], != ext_a
        lam = sample_lambda(N * B, alpha=alpha, low=lambda_low, high=lambda_high, device=dev)
        lam = lam.view(N, B, 1).to(views.dtype)  # [N, B, 1]
        # Mixing weights over the K views of row b: lam at ext_a, 1 - lam at ext_b. A batched
        # matmul instead of two gathers: no scatter-add in the backward pass.
        weights = lam * F.one_hot(ext_a, K).to(views.dtype) + (1.0 - lam) * F.one_hot(ext_b, K).to(views.dtype)  # [N, B, K]
        env_x = torch.einsum("nbk,kbld->nbld", weights, views)  # [N, B, L, d]
        env_lengths = lengths.expand(N, B)  # [N, B]
    elif pairing == "any":
        ext_a = torch.randint(K, (N, B), device=dev)  # [N, B]
        ext_b = torch.randint(K, (N, B), device=dev)  # [N, B]
        partner = torch.randint(B, (N, B), device=dev)  # [N, B] row b'
        lam = sample_lambda(N * B, alpha=alpha, low=lambda_low, high=lambda_high, device=dev)
        lam = lam.view(N, B, 1, 1).to(views.dtype)  # [N, B, 1, 1]
        env_x = lam * views[ext_a, rows] + (1.0 - lam) * views[ext_b, partner]  # [N, B, L, d]
        env_lengths = torch.maximum(lengths[rows], lengths[partner])  # [N, B]
    else:
        raise ValueError(f"unknown pairing {pairing!r}; choose one of ['any', 'same_user']")
    return env_x.reshape(N * B, L, d), env_lengths.reshape(N * B), targets[rows].reshape(N * B)


def vrex(risks: Tensor) -> tuple[Tensor, Tensor]:
    """V-REx statistics `(mean(R), var(R))` of the environment risks `[N]`.

    Population variance, mean((R - mean R)^2) (unbiased=False): it is the V-REx
    definition, and stays finite (0) for a single environment.
    """
    mean = risks.mean()  # []
    var = ((risks - mean) ** 2).mean()  # []
    return mean, var
