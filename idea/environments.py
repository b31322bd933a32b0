"""IDEA's environment construction: subsequence extractors, mixup, and the V-REx penalty.

K extractors turn a sequence embedding into K soft subsequence views; each of
N environments mixes the views of its own pair of extractors (distinct pairs
across environments), so the environments are different distributions and the
variance of their risks is the invariance penalty (V-REx). All randomness (Gumbel noise, pairings, λ) comes from torch's global
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

from idea.config import ALIGNS
from idea.models.base import real_positions

_U_EPS = 1e-6  # keeps log u and log(1 - u) finite


class SubsequenceExtractors(nn.Module):
    """K MLPs `L -> hidden -> L` (stacked weights, one batched op) giving relaxed Bernoulli keep-masks.

    `align` says which position of a row an MLP input reads: "right" (ours), input j is the item L - j
    from the row's end, as our right-aligned histories hold them; "left" (the official code's, whose
    RecBole sequences are left-aligned), input i is the row's i-th item from its start."""

    def __init__(self, K: int, max_len: int, hidden: int = 64, init_keep_logit: float | None = 2.0,
                 align: str = "right"):
        super().__init__()
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if max_len < 1 or hidden < 1:
            raise ValueError(f"max_len and hidden must be >= 1, got {max_len}, {hidden}")
        if align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
        self.K, self.max_len, self.hidden, self.align = K, max_len, hidden, align
        L, H = max_len, hidden
        # nn.Linear's default init, per extractor: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        b1_bound, b2_bound = 1.0 / math.sqrt(L), 1.0 / math.sqrt(H)
        self.w1 = nn.Parameter(torch.empty(K, L, H).uniform_(-b1_bound, b1_bound))  # [K, L, H]
        self.b1 = nn.Parameter(torch.empty(K, H).uniform_(-b1_bound, b1_bound))  # [K, H]
        self.w2 = nn.Parameter(torch.empty(K, H, L).uniform_(-b2_bound, b2_bound))  # [K, H, L]
        # Output bias +2: sigmoid(2) ≈ 0.88, so at the start views keep most of the
        # sequence (close to what the pretrained backbone saw) and exploration grows
        # as the extractors learn to maximise the risk variance. None: nn.Linear's
        # default, as the official code, so views start keeping about half the sequence.
        b2 = torch.full((K, L), float(init_keep_logit)) if init_keep_logit is not None \
            else torch.empty(K, L).uniform_(-b2_bound, b2_bound)
        self.b2 = nn.Parameter(b2)  # [K, L]

    def logits(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Keep-logits ω `[K, B, L_batch]` from the position summaries `s = x.mean(-1)`.

        A batch shorter than max_len (e.g. trimmed to its longest sequence) is
        left-padded with zeros to max_len, which is exactly what an untrimmed,
        zero-padded batch gives, and the last L_batch output columns are kept.
        With align "left", each row's summaries are moved to the front before the MLPs and their
        outputs moved back (`lengths` [B] needed), so padding positions read and give 0.
        """
        B, Lb, _ = x.shape
        L = self.max_len
        if Lb > L:
            raise ValueError(f"sequence length {Lb} exceeds max_len={L}")
        s = F.pad(x.mean(-1), (L - Lb, 0))  # [B, L] right-aligned
        if self.align == "left":
            shift = (L - lengths).unsqueeze(1)  # [B, 1] padding before each row
            cols = torch.arange(L, device=x.device).unsqueeze(0)  # [1, L]
            s = torch.where(cols < lengths.unsqueeze(1), s.gather(1, (cols + shift).clamp(max=L - 1)), 0.0)  # [B, L]
        h = torch.relu(torch.einsum("bl,klh->kbh", s, self.w1) + self.b1.unsqueeze(1))  # [K, B, H]
        omega = torch.einsum("kbh,khl->kbl", h, self.w2) + self.b2.unsqueeze(1)  # [K, B, L]
        if self.align == "left":  # output i belongs to the row's i-th item: back to position L - length + i
            omega = omega.gather(2, (cols - shift).clamp(min=0).expand(self.K, B, L))  # padding columns: any value
        return omega[..., L - Lb:]  # [K, B, Lb]

    def forward(self, x: Tensor, lengths: Tensor, tau: float) -> Tensor:
        """Masks `[K, B, L]` in (0, 1) at real positions and exactly 0 at padding.

        Relaxed Bernoulli (binary Concrete): p = sigmoid((ω + log u - log(1 - u)) / τ),
        u ~ U(0, 1); small τ gives near-binary masks. View k is `masks[k, ..., None] * x`.
        """
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        omega = self.logits(x, lengths)  # [K, B, L]
        # Drawn in float32 whatever the compute dtype, so a float64 check sees the same draws.
        u = torch.rand(omega.shape, device=omega.device).clamp(_U_EPS, 1.0 - _U_EPS).to(omega.dtype)  # [K, B, L]
        p = torch.sigmoid((omega + torch.log(u) - torch.log1p(-u)) / tau)  # [K, B, L]
        real = real_positions(lengths, x.shape[1])  # [B, L]
        return torch.where(real, p, torch.zeros_like(p))  # [K, B, L]


def sample_lambda(n: int, *, alpha: float | None, low: float, high: float, device, fold: bool = True) -> Tensor:
    """Mixing weights `[n]` in [0.5, 1] (weight of the dominant view).

    Beta(α, α) folded to max(λ, 1 - λ) when `alpha` is given, else Uniform(low, high)
    (the caller guarantees 0.5 <= low <= high <= 1). `fold=False` keeps Beta's λ in (0, 1) as
    drawn (the official code): the first view of a pair dominates only about half the rows.
    """
    if alpha is not None:
        conc = torch.tensor(float(alpha), device=device)
        lam = torch.distributions.Beta(conc, conc).sample((n,))  # [n]
        return torch.maximum(lam, 1.0 - lam) if fold else lam  # [n]
    return low + (high - low) * torch.rand(n, device=device)  # [n]


def environment_pairs(N: int, K: int, pairing: str, device, draw: str = "distinct") -> tuple[Tensor, Tensor]:
    """Extractor pair `(a [N], b [N])` of each environment: distinct ordered pairs while N allows.

    The candidates are the ordered pairs of distinct extractors for "same_user" (both views are of
    the same sequence, so a == b would not mix anything) and all K² ordered pairs for "any" (view b
    is of another sequence). draw="distinct": a random permutation of them is cycled, so N <= #pairs
    gives N distinct pairs and a larger N uses every pair floor(N / #pairs) or ceil(N / #pairs) times.
    draw="with_replacement": each environment draws its pair uniformly on its own, as the official
    code does, so two environments may share a pair (and then the same distribution).
    """
    a, b = torch.meshgrid(torch.arange(K, device=device), torch.arange(K, device=device), indexing="ij")
    a, b = a.flatten(), b.flatten()  # [K*K]
    if pairing == "same_user":
        distinct = a != b
        a, b = a[distinct], b[distinct]  # [K*(K-1)]
    if draw == "with_replacement":
        order = torch.randint(len(a), (N,), device=device)  # [N]
    elif draw == "distinct":
        order = torch.cat([torch.randperm(len(a), device=device) for _ in range(-(-N // len(a)))])[:N]  # [N]
    else:
        raise ValueError(f"unknown pair draw {draw!r}; choose one of ['distinct', 'with_replacement']")
    return a[order], b[order]


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
    pair_draw: str = "distinct",
    lambda_fold: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Environment batch `(env_x [N*B, L, d], env_lengths [N*B], env_targets [N*B], lam [N*B])`, `lam` the
    mixing weights drawn (None without mixup), which IDEA's telemetry reports.

    mixup=True: environment n is defined by its own extractor pair (a_n, b_n) (`environment_pairs`,
    drawn by `pair_draw`), the same for every row, so the N environments are different distributions
    of subsequences and the variance of their risks measures how much the model depends on which
    subsequence it sees. Row b of environment n is λ·V_{a_n}(b) + (1-λ)·V_{b_n}(b'), λ ~ `sample_lambda`
    per row (λ >= 0.5: the dominant view supplies the label; `lambda_fold=False`, same_user only:
    λ in (0, 1) as drawn from Beta).
      - "same_user": b' = b, two different extractors' views of the same sequence (needs K >= 2).
      - "any": b' is a uniformly random row per row (may be b itself); length = max(len_b, len_b').
    mixup=False: the K views themselves are the environments (N is ignored; K*B rows).
    Rows are environment-major (row n*B + b).
    """
    K, B, L, d = views.shape
    dev = views.device
    if not mixup:
        return views.reshape(K * B, L, d), lengths.repeat(K), targets.repeat(K), None
    if N < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    if pairing not in ("same_user", "any"):
        raise ValueError(f"unknown pairing {pairing!r}; choose one of ['any', 'same_user']")
    if pairing == "same_user" and K < 2:
        raise ValueError(f"pairing='same_user' needs K >= 2 extractors, got K={K}")

    if not lambda_fold and pairing != "same_user":
        raise ValueError("lambda_fold=False needs pairing='same_user': with 'any' the dominant view supplies the label")
    ext_a, ext_b = environment_pairs(N, K, pairing, dev, pair_draw)  # [N], [N]
    lam = sample_lambda(N * B, alpha=alpha, low=lambda_low, high=lambda_high, device=dev, fold=lambda_fold)
    lam = lam.view(N, B, 1).to(views.dtype)  # [N, B, 1]
    one_a = F.one_hot(ext_a, K).to(views.dtype).unsqueeze(1)  # [N, 1, K]
    rows = torch.arange(B, device=dev).expand(N, B)  # [N, B] row b of every environment
    # Mixing weights over the K views of a row as a batched matmul: on CPU several times faster
    # than indexing views[ext_a], whose backward pass is a scatter-add.
    if pairing == "same_user":
        weights = lam * one_a + (1.0 - lam) * F.one_hot(ext_b, K).to(views.dtype).unsqueeze(1)  # [N, B, K]
        env_x = torch.einsum("nbk,kbld->nbld", weights, views)  # [N, B, L, d]
        env_lengths = lengths.expand(N, B)  # [N, B]
    else:
        partner = torch.randint(B, (N, B), device=dev)  # [N, B] row b'
        own = torch.einsum("nbk,kbld->nbld", lam * one_a, views)  # [N, B, L, d]
        env_x = own + (1.0 - lam).unsqueeze(-1) * views[ext_b.unsqueeze(1), partner]  # [N, B, L, d]
        env_lengths = torch.maximum(lengths[rows], lengths[partner])  # [N, B]
    return env_x.reshape(N * B, L, d), env_lengths.reshape(N * B), targets[rows].reshape(N * B), lam.reshape(N * B)


def vrex(risks: Tensor, unbiased: bool = False) -> tuple[Tensor, Tensor]:
    """V-REx statistics `(mean(R), var(R))` of the environment risks `[N]`.

    Population variance, mean((R - mean R)^2) by default: it is the V-REx definition, and stays
    finite (0) for a single environment. `unbiased=True` divides by N - 1 instead, as the official
    code's torch.var does, so its β equals our default's β·(N-1)/N.
    """
    mean = risks.mean()  # []
    var = ((risks - mean) ** 2).mean()  # []
    if not unbiased:
        return mean, var
    if len(risks) < 2:
        raise ValueError("the unbiased variance needs at least 2 environments")
    return mean, var * (len(risks) / (len(risks) - 1))
