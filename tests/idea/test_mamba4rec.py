"""Mamba4Rec: the vectorised scan against the plain recurrence (values and gradients, float64),
causality, padding, the reference architecture, and IDEA training with it."""
import pytest
import torch

import idea.models.mamba4rec as mamba
from idea.config import TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.models import build_backbone
from idea.models.mamba4rec import Mamba4Rec, SelectiveScan, real_positions
from idea.splits import SplitConfig, make_split
from idea.trainer import Trainer


def naive_scan(u, dt, A, Bm, Cm):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t, one step at a time."""
    b, T, D = u.shape
    h = torch.zeros(b, D, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(T):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[..., None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1)  # [b, T, D]


def scan_inputs(T=13, dt_scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, D, N = 3, 5, 4

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    dt = torch.rand(b, T, D, generator=g, dtype=torch.float64) * dt_scale
    A = -torch.rand(D, N, generator=g, dtype=torch.float64) * 10 - 0.1
    return [t.requires_grad_() for t in (r(b, T, D), dt, A, r(b, T, N), r(b, T, N))]


@pytest.mark.parametrize("T", [1, 2, 5, 13, 50])
@pytest.mark.parametrize("dt_scale", [0.05, 2.0, 30.0])  # 30: decays far below float32's exp range
def test_vectorised_scan_equals_recurrence(T, dt_scale):
    u, dt, A, Bm, Cm = scan_inputs(T, dt_scale)
    ref = naive_scan(u, dt, A, Bm, Cm)
    every = SelectiveScan(A, last_only=False)(u, dt, Bm, Cm)
    last = SelectiveScan(A, last_only=True)(u, dt, Bm, Cm)
    torch.testing.assert_close(every, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, ref[:, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("last_only", [True, False])
def test_scan_gradients_equal_recurrence_gradients(last_only, monkeypatch):
    """Through the checkpointed row pieces (one row per piece here), every input's gradient, A's included."""
    monkeypatch.setattr(mamba, "SCAN_ELEMENTS", 1)
    inputs = scan_inputs(T=9)
    u, dt, A, Bm, Cm = inputs
    weight = torch.randn(3, 5, dtype=torch.float64) if last_only else torch.randn(3, 9, 5, dtype=torch.float64)
    ref = naive_scan(u, dt, A, Bm, Cm)
    ref = ref[:, -1] if last_only else ref
    expected = torch.autograd.grad((ref * weight).sum(), inputs)
    got = torch.autograd.grad((mamba._pieces(SelectiveScan(A, last_only), u, dt, Bm, Cm) * weight).sum(), inputs)
    for e, g in zip(expected, got):
        assert e.abs().max() > 1e-3  # every input matters, so a dropped term cannot pass
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dt_scale", [0.05, 2.0, 30.0])
def test_compiled_readout_equals_recurrence_with_gradients(dt_scale):
    """The GPU read-out (`fused_readout`, torch.compile'd; here compiled for the CPU) against the recurrence:
    value and every input's gradient, A's included. It computes in float32, so float32 tolerances."""
    u, dt, A, Bm, Cm = inputs = scan_inputs(T=11, dt_scale=dt_scale)
    weight = torch.randn(3, 5, dtype=torch.float64)
    ref = naive_scan(u, dt, A, Bm, Cm)[:, -1]
    got = mamba.fused_readout(mamba.steps_after(dt), A, Bm * Cm[:, -1:], dt * u)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    expected = torch.autograd.grad((ref * weight).sum(), inputs)
    grads = torch.autograd.grad((got.double() * weight).sum(), inputs)
    for e, g in zip(expected, grads):
        assert e.abs().max() > 1e-3  # every input matters, so a dropped term cannot pass
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def naive_mixer(m, x):
    """mamba_ssm's reference forward on one unpadded sequence x [1, T, d], step by step."""
    T = x.shape[1]
    u, z = m.in_proj(x).chunk(2, dim=-1)
    u = torch.nn.functional.silu(m.conv1d(u.transpose(1, 2))[..., :T].transpose(1, 2))
    dt_low, Bm, Cm = m.x_proj(u).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = torch.nn.functional.softplus(m.dt_proj(dt_low))
    y = naive_scan(u, dt, -torch.exp(m.A_log), Bm, Cm) + m.D * u
    return m.out_proj(y * torch.nn.functional.silu(z))  # [1, T, d]


def test_mixer_on_padded_rows_equals_reference_on_each_sequence():
    torch.manual_seed(0)
    m = mamba.MambaMixer(8, d_state=4).double()
    with torch.no_grad():
        m.dt_proj.bias.uniform_(-2, 1)
    lengths = torch.tensor([1, 4, 9])
    x = torch.randn(3, 9, 8, dtype=torch.float64) * 3  # padding positions hold garbage too
    real = real_positions(lengths, 9).double()
    every = m(x, real, last_only=False)
    last = m(x, real, last_only=True)
    for b, n in enumerate(lengths.tolist()):
        ref = naive_mixer(m, x[b:b + 1, 9 - n:])[0]  # [n, d]
        torch.testing.assert_close(every[b, 9 - n:], ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(last[b], ref[-1], rtol=1e-10, atol=1e-12)


def left_pad(seqs, width):
    hist = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        hist[i, width - len(s):] = torch.tensor(s)
    return hist, torch.tensor([len(s) for s in seqs])


def model64(n_layers=1, seed=0):
    torch.manual_seed(seed)
    return Mamba4Rec(30, 20, n_layers=n_layers).double().eval()


@pytest.mark.parametrize("n_layers", [1, 2])
def test_last_position_path_equals_every_position_path(n_layers):
    """The readout layer skips the other positions; its value must be the full layer's last row."""
    model = model64(n_layers)
    hist, lengths = left_pad([[3, 7, 1, 9], [2], list(range(1, 16))], 16)
    x = model.emb_ln(model.embed(hist))
    real = real_positions(lengths, 16).double()
    for layer in model.layers:
        torch.testing.assert_close(layer(x, real, last_only=True), layer(x, real, last_only=False)[:, -1])
        x = layer(x, real, last_only=False)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_causal(n_layers):
    """Changing position t never changes any output before t."""
    model = model64(n_layers)
    torch.manual_seed(1)
    x = torch.randn(2, 12, 64, dtype=torch.float64)
    real = torch.ones(2, 12, dtype=torch.float64)
    for t in (3, 7, 11):
        y = x.clone()
        y[:, t] += torch.randn(2, 64, dtype=torch.float64)
        out_x, out_y = x, y
        for layer in model.layers:
            out_x, out_y = layer(out_x, real, last_only=False), layer(out_y, real, last_only=False)
        torch.testing.assert_close(out_y[:, :t], out_x[:, :t], rtol=0, atol=1e-12)
        assert (out_y[:, t] - out_x[:, t]).abs().amax(-1).min() > 1e-3  # and does change the output at t


@pytest.mark.parametrize("n_layers", [1, 2])
def test_padding_never_reaches_the_state(n_layers):
    """More left padding, or garbage in it, leaves the user vector as it is (float64, exact up to rounding)."""
    model = model64(n_layers)
    with torch.no_grad():  # non-zero LayerNorm biases: padded positions are non-zero unless masked
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.bias.normal_()
    seqs = [[3, 7, 1, 9], [5], list(range(1, 11))]
    h10, l10 = left_pad(seqs, 10)
    h20, l20 = left_pad(seqs, 20)
    torch.testing.assert_close(model(h20, l20), model(h10, l10), rtol=1e-12, atol=1e-12)
    x = model.embed(h20)
    pad = ~real_positions(l20, 20).unsqueeze(-1)
    garbage = torch.where(pad, torch.randn_like(x) * 5, x)
    torch.testing.assert_close(model.encode(garbage, l20), model(h10, l10), rtol=1e-12, atol=1e-12)


def test_reference_architecture():
    model = build_backbone("mamba4rec", 30, 50)
    assert isinstance(model, Mamba4Rec) and model.d == 64 and len(model.layers) == 1
    assert not model.layers[0].residual and model.emb_dropout.p == 0.2 and model.layers[0].dropout.p == 0.2
    mixer = model.layers[0].mixer
    assert (mixer.d_inner, mixer.d_state, mixer.dt_rank, mixer.conv1d.kernel_size) == (128, 32, 4, (4,))
    assert model.layers[0].ff.fc1.out_features == 256 and model.layers[0].ff.dropout.p == 0.2
    assert torch.equal(mixer.dt_proj.bias, torch.zeros(128))  # the reference's RecBole init zeroes it
    torch.testing.assert_close(-torch.exp(mixer.A_log[5]), -torch.arange(1.0, 33.0))
    assert Mamba4Rec(30, 50, n_layers=2).layers[1].residual


def test_idea_trains_with_mamba4rec():
    split = make_split(generate(SyntheticConfig(n_users=300, n_items=100, seed=3)), SplitConfig(max_len=15))
    cfg = TrainConfig(backbone="mamba4rec", method="idea", K=2, N=3, T=1, epochs=2, pretrain_epochs=1,
                      batch_size=128, device="cpu")
    trainer = Trainer(cfg, split)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    records = trainer.fit()
    assert [r.phase for r in records] == ["pretrain", "idea"]
    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in records)
    assert records[-1].extra["risk_var"] > 0
    moved = [not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters())]
    assert all(moved[1:])  # every parameter but possibly rows of the embedding
    assert trainer.evaluate(["valid"])["value"].notna().all()


@pytest.mark.parametrize("buckets", ["rows", "widths"])
def test_an_exploring_idea_step_runs_through_the_compiled_readout(monkeypatch, buckets):
    """The GPU read-out path (compiled; here for the CPU) under IDEA's step with exploration, which walks
    the backward pass twice (retain_graph): it used to fail there (a compiled backward that donates its
    buffers), unseen because the GPU benchmark ran IDEA eagerly. Gradients match the eager path's, in one
    pass and by length classes (widths 1 to 12 through one compiled function)."""
    split = make_split(generate(SyntheticConfig(n_users=200, n_items=80, seed=4)), SplitConfig(max_len=12))
    cfg = TrainConfig(backbone="mamba4rec", method="idea", K=2, N=2, T=1, dropout=0.0, batch_size=64, device="cpu",
                      buckets=buckets)
    trainer = Trainer(cfg, split)
    batch = trainer.batch(trainer.permutation(1).split(64)[0])

    def gradients(devices):
        monkeypatch.setattr(mamba, "COMPILED_READOUT_DEVICES", devices)
        torch.manual_seed(0)  # the same extractor noise and mixup draws on both paths
        rec, ext, _ = trainer.objective.idea_gradients(trainer.step_context(), *batch, explore=True)
        return [g for g in (*rec, *ext) if g is not None]

    compiled, eager = gradients(("cpu",)), gradients(())
    assert len(compiled) == len(eager) > 0
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available() or mamba.selective_scan_fn is None,
                    reason="needs a CUDA GPU with the mamba_ssm package (its fused selective-scan kernel)")
def test_fused_kernel_agrees_with_pure_pytorch():
    torch.manual_seed(0)
    model = Mamba4Rec(200, 50).cuda().eval()
    hist = torch.randint(1, 201, (64, 50), device="cuda")
    lengths = torch.randint(1, 51, (64,), device="cuda")
    hist = hist * real_positions(lengths, 50)
    x = model.emb_ln(model.embed(hist))
    real = real_positions(lengths, 50).float()
    mixer = model.layers[0].mixer
    torch.testing.assert_close(mixer(x, real, last_only=True, fused=True), mixer(x, real, last_only=True, fused=False),
                               rtol=1e-4, atol=1e-5)
