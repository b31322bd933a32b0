"""Training precision: what each name resolves to, that training steps really run their forward pass
under it, and that evaluation always ranks in full float32."""
import pytest
import torch

from idea.config import TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.precision import exact_float32, resolve_precision, set_tensor_cores
from idea.splits import SplitConfig, make_split
from idea.trainer import Trainer


@pytest.fixture(scope="module")
def split():
    return make_split(generate(SyntheticConfig(n_users=120, n_items=60, seed=0)), SplitConfig("temporal", 12))


def test_auto_is_bf16_on_a_gpu_but_for_mamba4rec_and_fp32_on_a_cpu():
    assert resolve_precision("auto", torch.device("cuda"), "gru4rec") == "bf16"
    assert resolve_precision("auto", torch.device("cuda"), "sasrec") == "bf16"
    assert resolve_precision("auto", torch.device("cuda"), "mamba4rec") == "fp32"
    assert resolve_precision("auto", torch.device("cpu"), "gru4rec") == "fp32"
    assert resolve_precision("bf16", torch.device("cuda"), "mamba4rec") == "bf16"  # asked for, it is used
    assert resolve_precision("tf32", torch.device("cuda:0")) == "tf32"


@pytest.mark.parametrize("name", ["tf32", "bf16"])
def test_gpu_precisions_are_refused_on_a_cpu(name, split):
    with pytest.raises(ValueError, match=f"precision '{name}' needs a CUDA device"):
        Trainer(TrainConfig(precision=name, device="cpu"), split)


def test_unknown_precision_names_the_field():
    with pytest.raises(ValueError, match="TrainConfig.precision = 'fp16' is invalid"):
        TrainConfig(precision="fp16")


def test_exact_float32_turns_tensor_cores_off_and_restores_them():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tensor_cores("bf16")
        with exact_float32(torch.device("cuda")):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("method,phase", [("erm", "erm"), ("idea", "idea")])
@pytest.mark.parametrize("backbone", ["gru4rec", "sasrec"])
def test_bf16_steps_run_their_forward_pass_in_bfloat16(method, phase, backbone, split):
    """CPU autocast stands in for the GPU's here: the step must open it (the precision is set by hand,
    since a CPU run refuses bf16). Weights and their gradients stay float32."""
    trainer = Trainer(TrainConfig(backbone=backbone, method=method, batch_size=32, T=1, device="cpu"), split)
    trainer.precision = "bf16"
    seen = []
    last = trainer.model.dense if backbone == "gru4rec" else trainer.model.blocks[-1].ff.fc2
    last.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    out = trainer.train_step(phase, *trainer.batch(torch.arange(32)))
    assert seen and set(seen) == {torch.bfloat16}
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before))  # it did step


def test_fp32_steps_stay_float32(split):
    trainer = Trainer(TrainConfig(method="idea", batch_size=32, T=1, device="cpu"), split)
    seen = []
    trainer.model.dense.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    trainer.train_step("idea", *trainer.batch(torch.arange(32)))
    assert seen and set(seen) == {torch.float32}
