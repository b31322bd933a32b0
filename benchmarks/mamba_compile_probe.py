"""Which Mamba4Rec read-out a training step runs: the compiled one (`fused_readout`) or eager code. On a GPU
the IDEA step's profile showed eager exponentials over the large tensors (docs/speed.md); this counts, per
phase in bench_train.py's order (ERM steps, a step under FlopCounterMode, evaluation, IDEA steps), the
compiled-region events of the profiler, dynamo's compiled graphs and recompilations, and eager `aten::exp`
calls. On a CPU the compiled path (CUDA-only in the model) is switched on, so the same question can be asked
there.

    python benchmarks/mamba_compile_probe.py --device cuda --batch 2048      # on the GPU
    OMP_NUM_THREADS=1 python benchmarks/mamba_compile_probe.py --device cpu  # the CPU stand-in (small)
"""
from __future__ import annotations

import torch
import torch._dynamo
from torch.utils.flop_counter import FlopCounterMode

import idea.models.mamba4rec as M
from idea.argparsing import StrictArgumentParser
from idea.config import TrainConfig
from idea.data.synthetic import SyntheticConfig, generate
from idea.splits import SplitConfig, make_split
from idea.trainer import Trainer


def probe(label: str, fn) -> None:
    """Run `fn` under the profiler; print compiled-region events, new graphs, recompiles and eager exps."""
    stats = dict(torch._dynamo.utils.counters["stats"])
    recompiles = sum(torch._dynamo.utils.counters["recompiles"].values())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events()]
    compiled = sum(n.startswith("Torch-Compiled Region") for n in names)
    exps = sum(n == "aten::exp" for n in names)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - stats.get("unique_graphs", 0)
    new_recompiles = sum(torch._dynamo.utils.counters["recompiles"].values()) - recompiles
    print(f"{label:<34} compiled regions {compiled:>3}  new graphs {graphs}  recompiles {new_recompiles}  "
          f"eager aten::exp {exps:>3}", flush=True)


def main() -> None:
    p = StrictArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--reset-after-flops", action="store_true",
                   help="torch._dynamo.reset() after the FlopCounterMode step (what bench_train.py does)")
    p.add_argument("--no-flop-step", action="store_true", help="leave the FlopCounterMode step out")
    args = p.parse_args()
    M.COMPILED_READOUT_DEVICES = ("cpu", "cuda")
    split = make_split(generate(SyntheticConfig()), SplitConfig("loo", 50))
    for method in ("erm", "idea"):
        trainer = Trainer(TrainConfig(backbone="mamba4rec", method=method, K=3, N=4, T=5, batch_size=args.batch,
                                      device=args.device), split)
        batches = trainer.epoch_batches(1)
        phase = "idea" if method == "idea" else "erm"
        done = [0]

        def steps(n: int) -> None:
            trainer.model.train()
            for _ in range(n):
                trainer.train_step(phase, *trainer.batch(*batches[done[0] % len(batches)]))
                done[0] += 1
            if args.device == "cuda":
                torch.cuda.synchronize()

        def counted_step() -> None:
            with FlopCounterMode(display=False):
                steps(1)
            if args.reset_after_flops:
                torch._dynamo.reset()

        probe(f"{method}: {args.steps} steps", lambda: steps(args.steps))
        if not args.no_flop_step:
            probe(f"{method}: a step under FlopCounterMode", counted_step)
        probe(f"{method}: {args.steps} more steps", lambda: steps(args.steps))
        probe(f"{method}: evaluation", lambda: trainer.evaluate_events(split.tests["test"], "test"))
    print("dynamo:", {k: dict(v) for k, v in torch._dynamo.utils.counters.items()
                      if k in ("stats", "frames", "recompiles", "graph_break")})


if __name__ == "__main__":
    main()
