"""Backbone interface tests: shapes, padding/trimming invariance, NaN safety, registry."""

import pytest
import torch

from idea.config import BACKBONE_NAMES
from idea.models import BACKBONES, Backbone, GRU4Rec, SASRec, build_backbone
from idea.models.base import real_positions
from idea.models.sasrec import attention_mask
from idea.precision import set_tensor_cores

N_ITEMS = 30
NAMES = sorted(BACKBONES)


def left_pad(seqs, width):
    """Right-aligned id batch [B, width] and lengths [B] from python lists."""
    hist = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        hist[i, width - len(s):] = torch.tensor(s)
    return hist, torch.tensor([len(s) for s in seqs])


def make(name, max_len=20):
    torch.manual_seed(0)
    return build_backbone(name, N_ITEMS, max_len).eval()


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_scores(name):
    model = make(name)
    hist, lengths = left_pad([[1, 2, 3], [4], [5, 6, 7, 8, 9]], 20)
    user = model(hist, lengths)
    assert user.shape == (3, model.d) == (3, 64)
    assert model.embed(hist).shape == (3, 20, 64)
    assert model.item_emb.weight.shape == (N_ITEMS + 1, 64)
    assert model.max_len == 20 and model.chunk_rows == 256
    assert build_backbone(name, N_ITEMS, 20, chunk_rows=2).chunk_rows == 2
    with pytest.raises(ValueError, match="chunk_rows"):
        build_backbone(name, N_ITEMS, 20, chunk_rows=0)
    assert model.buckets == "rows" and build_backbone(name, N_ITEMS, 20, buckets="widths").buckets == "widths"
    with pytest.raises(ValueError, match="unknown buckets 'sorted'; choose one of \\['rows', 'widths'\\]"):
        build_backbone(name, N_ITEMS, 20, buckets="sorted")


@pytest.mark.parametrize("name", NAMES)
def test_padding_row_is_zero(name):
    model = make(name)
    assert torch.count_nonzero(model.item_emb.weight[0]) == 0
    assert torch.count_nonzero(model.item_emb.weight[1:]) > 0


@pytest.mark.parametrize("name", NAMES)
def test_extra_left_padding_does_not_change_user(name):
    model = make(name, max_len=20)
    seq = [3, 7, 1, 9]
    h10, l10 = left_pad([seq], 10)
    h20, l20 = left_pad([seq], 20)
    torch.testing.assert_close(model(h10, l10), model(h20, l20))


@pytest.mark.parametrize("name", NAMES)
def test_longer_neighbour_does_not_change_user(name):
    """Trimming to max(lengths) differs with the neighbour; the user vector must not."""
    model = make(name, max_len=20)
    seq = [3, 7, 1, 9]
    alone, l_alone = left_pad([seq], 20)
    both, l_both = left_pad([seq, list(range(1, 16))], 20)
    torch.testing.assert_close(model(both, l_both)[0], model(alone, l_alone)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_padding_content_is_ignored(name):
    """Garbage in padding rows of a (mixed) view must not leak into the output."""
    model = make(name)
    hist, lengths = left_pad([[3, 7, 1, 9], [2, 2], list(range(1, 12))], 12)
    x = model.embed(hist)
    pad = (torch.arange(12) < (12 - lengths).unsqueeze(1)).unsqueeze(-1)  # [B, L, 1]
    noisy = torch.where(pad, torch.randn_like(x) * 5, x)
    assert not torch.equal(noisy, x)
    torch.testing.assert_close(model.encode(noisy, lengths), model.encode(x, lengths))


@pytest.mark.parametrize("name", NAMES)
def test_output_depends_on_sequence(name):
    model = make(name)
    hist, lengths = left_pad([[3, 7, 1, 9], [3, 7, 1, 8], [7, 1, 9]], 10)
    u = model(hist, lengths)
    assert not torch.allclose(u[0], u[1])  # last item matters
    assert not torch.allclose(u[0], u[2])  # older items matter


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train", [False, True])
def test_no_nan_with_length_one(name, train):
    model = make(name).train(train)
    for seqs in ([[5], [1], [N_ITEMS]], [[5], [1, 2, 3], [N_ITEMS]]):  # alone, and next to padding queries
        hist, lengths = left_pad(seqs, 20)
        user = model(hist, lengths)
        assert torch.isfinite(user).all()
    user = model(hist, lengths)
    assert torch.isfinite(user).all()
    user.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sasrec_positions_count_from_the_right():
    """Trimmed batches must reuse the right-end position embeddings."""
    model = make("sasrec", max_len=20)
    hist, lengths = left_pad([[4, 5]], 20)
    u = model(hist, lengths)
    with torch.no_grad():
        model.pos_emb.weight[:18].normal_()  # positions never used by a length-2 sequence
    torch.testing.assert_close(model(hist, lengths), u)
    with torch.no_grad():
        model.pos_emb.weight[19].normal_()
    assert not torch.allclose(model(hist, lengths), u)


def test_sasrec_attention_mask():
    """Real queries see exactly the real keys up to themselves; every query sees some key."""
    allowed = attention_mask(torch.tensor([3, 1, 4]), 4)
    assert allowed.shape == (3, 1, 4, 4)
    assert allowed.any(-1).all()  # no empty softmax row -> no NaN on any backend
    expected_row0 = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool
    )  # query 0 is padding: only itself
    assert torch.equal(allowed[0, 0], expected_row0)
    assert torch.equal(allowed[1, 0, 3], torch.tensor([False, False, False, True]))
    assert torch.equal(allowed[2, 0], torch.ones(4, 4, dtype=torch.bool).tril())


def test_sasrec_rejects_too_long_sequences():
    model = make("sasrec", max_len=5)
    hist, lengths = left_pad([list(range(1, 8))], 7)
    with pytest.raises(ValueError, match="max_len"):
        model(hist, lengths)


def test_default_architectures():
    gru = build_backbone("gru4rec", N_ITEMS, 10)
    assert isinstance(gru, GRU4Rec) and gru.d == 64 and gru.gru.hidden_size == 128
    assert gru.gru.num_layers == 1 and gru.dense.in_features == 128 and gru.dense.out_features == 64
    assert gru.emb_dropout.p == 0.3
    sas = build_backbone("sasrec", N_ITEMS, 10)
    assert isinstance(sas, SASRec) and sas.d == 64 and len(sas.blocks) == 2
    assert sas.blocks[0].attn.n_heads == 2 and sas.blocks[0].ff.fc1.out_features == 256
    assert sas.emb_dropout.p == 0.5 and sas.blocks[0].attn.attn_dropout == 0.5
    assert sas.pos_emb.num_embeddings == 10


@pytest.mark.parametrize("name", NAMES)
def test_build_backbone_dropout_override(name):
    model = build_backbone(name, N_ITEMS, 10, dropout=0.1)
    assert isinstance(model, Backbone)
    assert model.emb_dropout.p == 0.1
    with pytest.raises(ValueError, match="dropout"):
        build_backbone(name, N_ITEMS, 10, dropout=1.5)


def test_build_backbone_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="gru4rec.*sasrec"):
        build_backbone("bert4rec", N_ITEMS, 10)


def test_the_config_knows_every_registered_backbone_in_its_order():
    """idea/config.py keeps the names without importing torch (a study file is checked before torch loads);
    this keeps them the registry's: the CLI's choices and a study's check offer exactly the backbones built."""
    assert BACKBONE_NAMES == tuple(BACKBONES)


def test_backbone_is_abstract():
    with pytest.raises(TypeError):
        Backbone(N_ITEMS, 10, 8)


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_and_train_uses_dropout(name):
    model = make(name)
    hist, lengths = left_pad([[3, 7, 1, 9], [2, 5]], 10)
    torch.testing.assert_close(model(hist, lengths), model(hist, lengths), rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(hist, lengths), model(hist, lengths))


@pytest.mark.parametrize("name", NAMES)
def test_length_buckets_equal_one_pass(name):
    """Encoding in buckets of chunk_rows rows, each trimmed to its longest row, changes no user vector."""
    seqs = [[4], [1, 2], [3, 7, 1], [2, 5, 8, 9], list(range(1, 9)), list(range(3, 15))]
    hist, lengths = left_pad(seqs, 20)
    torch.manual_seed(0)
    one = build_backbone(name, N_ITEMS, 20, chunk_rows=1 << 20).eval()
    torch.manual_seed(0)
    buckets = build_backbone(name, N_ITEMS, 20, chunk_rows=2).eval()
    torch.testing.assert_close(buckets(hist, lengths), one(hist, lengths), rtol=1e-5, atol=1e-6)


def user_and_gradients(model, x, lengths):
    """Users for embeddings `x` and the gradients of a fixed random projection of them with respect to `x`
    and every parameter."""
    x = x.clone().requires_grad_(True)
    user = model.encode(x, lengths)
    weights = torch.randn(user.shape, generator=torch.Generator().manual_seed(1), dtype=user.dtype).to(user.device)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((user * weights).sum(), [x, *params], allow_unused=True)
    return user, [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, [x, *params])]


def one_pass_and_widths(name, x, lengths):
    """(model, users, gradients) of backbone `name` with the same weights encoding one pass and by length
    classes, in `x`'s dtype and on its device."""
    out = []
    for kwargs in ({"chunk_rows": 1 << 20}, {"buckets": "widths"}):
        torch.manual_seed(0)
        model = build_backbone(name, N_ITEMS, x.shape[1], **kwargs).to(x.device, x.dtype).eval()
        out.append((model, *user_and_gradients(model, x, lengths)))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_width_classes_equal_one_pass(name):
    """buckets="widths" (length classes gathered from any row order; GRU4Rec: packed sequences) gives every
    user and every gradient of one pass over the whole batch, in float64, rows in the caller's order."""
    lengths = torch.tensor([3, 20, 1, 7, 2, 12, 5, 1, 16, 9, 4, 20, 6])  # unsorted, every class, both ends
    torch.manual_seed(0)
    x = torch.randn(len(lengths), 20, 64, dtype=torch.float64)
    x = x * real_positions(lengths, 20).unsqueeze(-1)  # left-padded: zeros before each row's items
    (one, user_one, grads_one), (widths, user_widths, grads_widths) = one_pass_and_widths(name, x, lengths)
    torch.testing.assert_close(user_widths, user_one, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads_widths, grads_one):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    empty = torch.zeros(0, 20, 64, dtype=torch.float64)
    assert widths.encode(empty, lengths[:0]).shape == one.encode(empty, lengths[:0]).shape == (0, 64)
    names = ["x"] + [n for n, p in one.named_parameters() if p.requires_grad]
    assert [n for n, g in zip(names, grads_one) if not g.abs().sum() > 0] == ["item_emb.weight"]  # encode skips it


def test_gru4rec_packed_keeps_dropout_draws():
    """In training, the packed GRU draws the same embedding-dropout mask as the dense pass (dropout comes
    before packing), so a seeded run is the same run either way."""
    hist, lengths = left_pad([[3, 7, 1, 9], [2, 5], list(range(1, 15)), [8]], 20)
    torch.manual_seed(0)
    dense = build_backbone("gru4rec", N_ITEMS, 20).double().train()
    torch.manual_seed(0)
    packed = build_backbone("gru4rec", N_ITEMS, 20, buckets="widths").double().train()
    torch.manual_seed(5)
    want = dense(hist, lengths)
    torch.manual_seed(5)
    torch.testing.assert_close(packed(hist, lengths), want, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: length classes on the device's kernels "
                    "(cuDNN's packed GRU, Mamba4Rec's compiled read-out)")
@pytest.mark.parametrize("name", NAMES)
def test_width_classes_on_a_gpu(name):
    """On a GPU, in float32 (TF32 off), buckets="widths" gives the users and gradients of one pass, and runs
    under bfloat16 autocast (the trainer's bf16 precision) with finite gradients."""
    set_tensor_cores("fp32")
    lengths = torch.randint(1, 51, (512,), generator=torch.Generator().manual_seed(0)).cuda()
    torch.manual_seed(0)
    x = torch.randn(512, 50, 64, device="cuda") * real_positions(lengths, 50).unsqueeze(-1)
    (_, user_one, grads_one), (widths, user_widths, grads_widths) = one_pass_and_widths(name, x, lengths)
    torch.testing.assert_close(user_widths, user_one, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads_widths, grads_one):  # float32 sums in another order: relative to the whole gradient
        assert float((got - want).norm()) <= 1e-4 * float(want.norm()) + 1e-6
    with torch.autocast("cuda", dtype=torch.bfloat16):
        user, grads = user_and_gradients(widths.train(), x, lengths)
    assert torch.isfinite(user).all() and all(torch.isfinite(g).all() for g in grads)
