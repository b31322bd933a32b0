"""Mamba4Rec (Liu et al., 2024) as in its reference code (chengkai-liu/Mamba4Rec, on RecBole):
item embedding -> dropout -> LayerNorm -> Mamba layers -> the last position.

A Mamba layer is a selective state-space mixer (Gu & Dao, 2023: in-projection, causal depthwise
convolution, input-dependent step size dt and matrices B, C, gated output) -> dropout -> LayerNorm
(with a residual from the second layer on) -> a position-wise feed-forward block. Pure PyTorch, so
it runs on CPU; with the `mamba_ssm` package on a GPU its fused selective-scan kernel is used.

Our sequences are left-padded, and LayerNorm biases and the convolution bias would make padded
positions non-zero: the mixer zeroes its input and its convolved input there, so the state is
exactly zero up to the first real item and the amount of padding never matters.

The scan h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t factorises its decays: the product over steps
s+1..t is exp(A * sum(dt_{s+1..t})). So the last layer, read out only at the last position, needs
no scan at all (h_T = sum_s exp(A * sum(dt_{s+1..T})) dt_s B_s u_s, one vectorised pass), and a
layer whose every position is needed uses a log-depth parallel (Hillis-Steele) scan over windows.
The exponents are sums of positive step sizes times A < 0, never positive: nothing overflows.
Both run in row pieces under activation checkpointing, so the [rows, T, d_inner, d_state]
tensors exist for one piece at a time, in the forward pass and again in the backward pass. On a GPU
the read-out is compiled instead (`torch.compile`): the exponentials are summed over the state as they
are made, forward and backward, so that tensor never exists at all.
"""

from __future__ import annotations

import math

import torch
import torch._functorch.config as functorch_config
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import Backbone, check_dropout, real_positions, recbole_init
from .sasrec import LAYER_NORM_EPS

try:  # the fused CUDA kernel of the Mamba authors, when installed (GPU machines only)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except ImportError:  # pragma: no cover - depends on the machine
    selective_scan_fn = None

EXP_FLOOR = -80.0  # exp(-80) = 1.8e-35
SCAN_ELEMENTS = 1 << 24  # elements of one [rows, T, d_inner, d_state] piece (64 MiB in float32)


def _pieces(fn, *tensors: Tensor) -> Tensor:
    """`fn` over row pieces of at most SCAN_ELEMENTS state elements each, checkpointed when training."""
    B, T, D = tensors[0].shape
    rows = max(1, SCAN_ELEMENTS // (T * D * fn.d_state))
    outs = []
    for part in zip(*(t.split(rows) for t in tensors)):
        if torch.is_grad_enabled():
            outs.append(checkpoint(fn, *part, use_reentrant=False))
        else:
            outs.append(fn(*part))
    return torch.cat(outs)


def _decay(exponent: Tensor) -> Tensor:
    """exp of a non-positive exponent, floored at exp(EXP_FLOOR): below about -87 float32's exp takes
    a slow path (15x here) for results that are zero next to any other term."""
    return torch.exp(exponent.clamp(min=EXP_FLOOR))


def steps_after(dt: Tensor) -> Tensor:
    """`[b, T, D]`: sum of dt over the steps after s, s+1..T (0 at the last step)."""
    return torch.cat([dt[:, 1:].flip(1).cumsum(1).flip(1), torch.zeros_like(dt[:, :1])], 1)


def readout(after: Tensor, A: Tensor, read: Tensor, dtu: Tensor) -> Tensor:
    """The last layer's output before the skip, `[b, D]`: sum_s dtu_s * sum_n exp(A * after_s) read_s.
    Shapes: after, dtu `[b, T, D]` (steps after s, and dt_s u_s), A `[D, N]`, read `[b, T, N]` (C_T . B_s)."""
    decay = _decay(after.unsqueeze(-1) * A)  # [b, T, D, N]: never materialised once compiled
    return ((decay * read.unsqueeze(2)).sum(-1) * dtu).sum(1)  # [b, D]


_compiled_readout = None
COMPILED_READOUT_DEVICES = ("cuda",)  # on a CPU the checkpointed row pieces are faster than compiling (tests add "cpu")


def fused_readout(after: Tensor, A: Tensor, read: Tensor, dtu: Tensor) -> Tensor:
    """`readout` compiled once per process (dynamic shapes: batches differ in rows and width), in float32.
    Without donated buffers: IDEA walks a backward pass twice (`retain_graph`: its exploration step reuses
    the recommender's), which a compiled backward that frees its saved inputs refuses with an error.
    AOTAutograd compiles the backward at its first call, outside this function, so the setting is made
    for the process (this is the project's only compiled code)."""
    global _compiled_readout
    if _compiled_readout is None:
        functorch_config.donated_buffer = False
        _compiled_readout = torch.compile(readout, dynamic=True)
    return _compiled_readout(after.float(), A.float(), read.float(), dtu.float())


class SelectiveScan:
    """y = C_t . h_t with h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, h_{-1} = 0 (the skip D u is added by
    the caller). Shapes: u, dt `[b, T, D]`, A `[D, N]`, Bm, Cm `[b, T, N]`."""

    def __init__(self, A: Tensor, last_only: bool):
        self.A = A  # [D, N], negative
        self.d_state = A.shape[1]
        self.last_only = last_only

    def __call__(self, u: Tensor, dt: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
        return self.last(u, dt, Bm, Cm) if self.last_only else self.every(u, dt, Bm, Cm)

    def last(self, u: Tensor, dt: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
        """y at the last position, `[b, D]`: C_T . h_T with h_T = sum_s exp(A * sum(dt_{s+1..T})) dt_s B_s u_s."""
        decay = _decay(steps_after(dt).unsqueeze(-1) * self.A)  # [b, T, D, N]
        read = (Bm * Cm[:, -1:]).unsqueeze(-1)  # [b, T, N, 1]: C_T . (B_s e_n), contracted first
        return ((decay @ read).squeeze(-1) * dt * u).sum(1)  # [b, D]

    def every(self, u: Tensor, dt: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
        """y at every position, `[b, T, D]`, by doubling windows: after the round with offset k, h[t]
        holds the state from inputs t-2k+1..t and `window[t]` the sum of dt over t-k+1..t."""
        T = u.shape[1]
        h = (dt * u).unsqueeze(-1) * Bm.unsqueeze(2)  # [b, T, D, N]: inputs, windows of one step
        window = dt  # [b, T, D]
        k = 1
        while k < T:
            decay = _decay(window[:, k:].unsqueeze(-1) * self.A)  # [b, T-k, D, N]: steps t-k+1..t
            h = torch.cat([h[:, :k], h[:, k:] + decay * h[:, :-k]], 1)
            window = torch.cat([window[:, :k], window[:, k:] + window[:, :-k]], 1)
            k *= 2
        return torch.einsum("btdn,btn->btd", h, Cm)  # [b, T, D]


class MambaMixer(nn.Module):
    """The Mamba block of mamba_ssm (no biases but the convolution's and dt's), padding-masked."""

    def __init__(self, d: int, d_state: int = 32, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.d_inner = expand * d
        self.d_state = d_state
        self.dt_rank = math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d, bias=False)
        # S4D-real initialisation: A = -(1..N) for every channel; D = 1
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def forward(self, x: Tensor, real: Tensor, last_only: bool, fused: bool = True) -> Tensor:
        """`x [b, T, d]` -> `[b, d]` at the last position (last_only) or `[b, T, d]`; `real [b, T]`."""
        T = x.shape[1]
        u, z = self.in_proj(x * real.unsqueeze(-1)).chunk(2, dim=-1)  # 2 x [b, T, D]
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :T].transpose(1, 2)) * real.unsqueeze(-1)  # [b, T, D]
        dt_low, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        A = -torch.exp(self.A_log)  # [D, N]
        if fused and selective_scan_fn is not None and u.is_cuda:
            y = selective_scan_fn(u.transpose(1, 2).contiguous(), (dt_low @ self.dt_proj.weight.T).transpose(1, 2).contiguous(),
                                  A.float(), Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous(), self.D.float(),
                                  delta_bias=self.dt_proj.bias.float(), delta_softplus=True).transpose(1, 2)  # [b, T, D]
            y = y[:, -1] if last_only else y
        elif last_only and u.device.type in COMPILED_READOUT_DEVICES:
            dt = F.softplus(self.dt_proj(dt_low))  # [b, T, D]
            y = fused_readout(steps_after(dt), A, Bm * Cm[:, -1:], dt * u) + self.D * u[:, -1]  # [b, D]
        else:
            dt = F.softplus(self.dt_proj(dt_low))  # [b, T, D]
            y = _pieces(SelectiveScan(A, last_only), u, dt, Bm, Cm)  # [b, D] or [b, T, D]
            y = y + self.D * (u[:, -1] if last_only else u)
        gate = z[:, -1] if last_only else z
        return self.out_proj(y * F.silu(gate))  # [b, d] or [b, T, d]


class FeedForward(nn.Module):
    """Position-wise d -> 4d -> d GELU MLP with dropout after both, residual, LayerNorm."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x))))))


class MambaLayer(nn.Module):
    """Mixer -> dropout -> LayerNorm (+ residual unless the model has one layer) -> feed-forward."""

    def __init__(self, d: int, d_state: int, d_conv: int, expand: int, dropout: float, residual: bool):
        super().__init__()
        self.mixer = MambaMixer(d, d_state, d_conv, expand)
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(d, dropout)
        self.residual = residual

    def forward(self, x: Tensor, real: Tensor, last_only: bool) -> Tensor:
        h = self.dropout(self.mixer(x, real, last_only))  # [b, d] or [b, T, d]
        if self.residual:
            h = h + (x[:, -1] if last_only else x)
        return self.ff(self.ln(h))


class Mamba4Rec(Backbone):
    """Reference defaults: hidden 64, 1 layer, dropout 0.2, d_state 32, d_conv 4, expand 2."""

    def __init__(self, n_items: int, max_len: int, dropout: float = 0.2, d: int = 64, n_layers: int = 1,
                 d_state: int = 32, d_conv: int = 4, expand: int = 2, chunk_rows: int = 256,
                 buckets: str = "rows"):
        super().__init__(n_items, max_len, d, chunk_rows, buckets)
        dropout = check_dropout(dropout)
        self.emb_dropout = nn.Dropout(dropout)
        self.emb_ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.layers = nn.ModuleList(MambaLayer(d, d_state, d_conv, expand, dropout, residual=n_layers > 1)
                                    for _ in range(n_layers))
        self.apply(recbole_init)  # as the reference applies it: dt's bias too (dt starts at softplus(0) = 0.69)
        self._zero_padding_row()

    def encode_block(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Output of the last layer at the last (most recent) position."""
        real = real_positions(lengths, x.shape[1]).to(x.dtype)  # [b, T]
        h = self.emb_ln(self.emb_dropout(x))  # [b, T, d]
        for i, layer in enumerate(self.layers):
            h = layer(h, real, last_only=i == len(self.layers) - 1)
        return h  # [b, d]
