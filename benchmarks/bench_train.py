"""Training and evaluation throughput at Beauty shape (12,101 items, L=50, d=64), and on a GPU how far
each training step is from the hardware's floor.

Per backbone, batch size, precision and way of bucketing rows by length (`--buckets`: rows, the CPU's
blocks of 256 consecutive rows and a GPU's one pass; widths, length classes and GRU4Rec's packed
sequences, see idea/models/base.py): ERM and IDEA (K=3, N=4, T=5) milliseconds per training step
(IDEA's steps cycle through its T schedule, so one in five also moves the extractors), the IDEA/ERM
ratio, the extra cost of noise_ratio 0.1 and full-ranking evaluation users per second over 22,363 users.
On a GPU each step also gets its kernel time (torch.profiler: the summed duration of the GPU's kernels
per step; over the wall time, how busy the GPU was) and its floor:

    floor = max(FLOPs / matrix rate, bytes / memory bandwidth) + sequential launches x 5 us

FLOPs are counted by torch's FlopCounterMode over one step (matrix products and attention), plus the
GRU's 6·P·3h·(d+h) analytically over the P (row, step) pairs it runs, B·T in one pass and the sum of the
lengths when packed (cuDNN's RNN is not counted by torch); the matrix rate is the one
measured here for the step's precision (float32, TF32 or bfloat16 products), the bandwidth a measured
device-to-device copy. Bytes: weights, their gradients and Adam's two moments read and written once,
and the logits [rows, items] written once and read once. Sequential launches: a GRU cannot start
step t before step t-1, so its 2·T steps (forward and backward) cost at least one launch each.

Uses the real Beauty leave-one-out events when the data is found (--data-dir / $IDEA_DATA_DIR), else
random sequences of Beauty's shape.

    python benchmarks/bench_train.py [--device cpu|cuda] [--steps 10] [--backbones ...] [--precisions fp32 bf16]
                                     [--buckets rows widths]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch._dynamo
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

from idea.argparsing import StrictArgumentParser
from idea.config import BACKBONE_NAMES, BUCKETS, TrainConfig
from idea.data import DataNotFoundError, load_split
from idea.precision import PRECISIONS, set_tensor_cores
from idea.splits import Events, Split, SplitConfig
from idea.trainer import Trainer, resolve_device

N_USERS, N_ITEMS, MAX_LEN = 22_363, 12_101, 50
LAUNCH_US = 5.0  # one kernel launch, the floor of each sequential GRU step


def beauty_split(data_dir: str | None) -> tuple[Split, str]:
    try:
        return load_split("beauty", data_dir, SplitConfig("loo", MAX_LEN))[1], "real Beauty loo events"
    except DataNotFoundError:
        rng = np.random.default_rng(0)
        lengths = np.minimum(rng.geometric(1 / 9, 131_413), MAX_LEN)

        def events(n: int) -> Events:
            lens = lengths[:n]
            hist = np.where(np.arange(MAX_LEN) >= MAX_LEN - lens[:, None], rng.integers(1, N_ITEMS + 1, (n, MAX_LEN)), 0)
            return Events(hist, lens, rng.integers(1, N_ITEMS + 1, n), np.arange(n), np.arange(n), None, np.ones(n, bool))

        ev = events(N_USERS)
        split = Split("loo", "random", N_ITEMS, MAX_LEN, events(131_413), ev, {"test": ev}, {}, {}, np.ones(N_ITEMS + 1, bool), "")
        return split, "random sequences of Beauty's shape (Beauty files not found)"


def real_share(lengths: np.ndarray, batch: int) -> float:
    """Sum of the lengths over the positions that encoding each batch in one pass computes (rows x the batch's
    longest row), over one random epoch order: what length buckets can save."""
    order = np.random.default_rng(0).permutation(len(lengths))
    starts = np.arange(0, len(lengths), batch)
    widths = np.maximum.reduceat(lengths[order], starts)  # [batches]
    rows = np.diff(np.append(starts, len(lengths)))  # [batches]
    return float(lengths.sum() / (rows * widths).sum())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Steps:
    """Training steps of one trainer over its epoch-1 batches, continuing where the last call stopped."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.batches = trainer.epoch_batches(1)  # widths known up front, as in training: no wait on the device
        self.phase = "idea" if trainer.config.method == "idea" else "erm"
        self.i = 0
        trainer.model.train()

    def __call__(self, n: int) -> None:
        for _ in range(n):
            self.trainer.train_step(self.phase, *self.trainer.batch(*self.batches[self.i % len(self.batches)]))
            self.i += 1


def seconds_per_step(steps: Steps, n: int) -> float:
    """Mean wall time of one step over `n` steps, after 2 warm-up steps (compilation, cuDNN plans)."""
    device = steps.trainer.device
    steps(2)
    sync(device)
    start = time.perf_counter()
    steps(n)
    sync(device)
    return (time.perf_counter() - start) / n


def kernel_seconds_per_step(steps: Steps, n: int, table: Path | None, title: str) -> float:
    """Summed GPU kernel time per step over `n` profiled steps; the top kernels go to `table`."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        steps(n)
        sync(steps.trainer.device)
    kernel_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    if table is not None:
        with table.open("a") as f:
            f.write(f"\n== {title}: {kernel_us / n / 1000:.2f} ms of kernels per step\n")
            f.write(prof.key_averages().table(sort_by="self_device_time_total", row_limit=15) + "\n")
    return kernel_us / n / 1e6


def gru_flops(trainer: Trainer, positions: int) -> float:
    """Forward and backward FLOPs of cuDNN's GRU (3 gates, input and recurrent products) over `positions`
    (row, step) pairs, which FlopCounterMode does not see: 2 FLOPs per multiply-add, backward twice the forward."""
    gru = getattr(trainer.model, "gru", None)
    if gru is None or trainer.device.type != "cuda":
        return 0.0  # on the CPU the GRU runs as matrix products that FlopCounterMode counts
    h, d = gru.hidden_size, gru.input_size
    return 3 * 2 * positions * 3 * h * (d + h)


def step_floor(steps: Steps, rates: dict[str, float]) -> float:
    """Seconds: the floor of one step of `steps` (see the module docstring), counted over its next step."""
    t = steps.trainer
    idx, width = steps.batches[steps.i % len(steps.batches)]
    _, lengths, _ = t.batch(idx, width)
    rows = len(idx)
    copies = t.config.N if steps.phase == "idea" else 1  # environments (same_user: each row's length N times)
    env_rows = rows * copies
    # the GRU steps cuDNN runs: every row to the batch's width, or (packed) each row to its own length
    positions = copies * int(lengths.sum()) if t.model.buckets == "widths" else env_rows * width
    with FlopCounterMode(display=False) as counter:
        steps(1)
    # A compiled function called under a dispatch mode runs eagerly, and dynamo then never again runs it
    # compiled in this process (benchmarks/mamba_compile_probe.py): reset it, or every later step of this
    # benchmark (IDEA's after ERM's floor) runs Mamba4Rec's read-out eagerly.
    torch._dynamo.reset()
    flops = counter.get_total_flops() + gru_flops(t, positions)
    params = sum(p.numel() for p in t.model.parameters())
    logit_bytes = 2 if t.precision == "bf16" else 4
    nbytes = 7 * 4 * params + 2 * env_rows * t.n_items * logit_bytes
    launches = 2 * width * LAUNCH_US * 1e-6 if getattr(t.model, "gru", None) is not None else 0.0
    return max(flops / rates[t.precision], nbytes / rates["bandwidth"]) + launches


def device_rates(device: torch.device) -> dict[str, float]:
    """Measured matrix-product rates (FLOP/s) per precision and copy bandwidth (bytes/s) of a GPU."""
    def timed(fn, reps=10) -> float:
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - start) / reps

    n = 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    rates = {}
    for name in ("fp32", "tf32"):
        set_tensor_cores(name)
        rates[name] = 2 * n ** 3 / timed(lambda: a @ b)
    a16, b16 = a.bfloat16(), b.bfloat16()
    rates["bf16"] = 2 * n ** 3 / timed(lambda: a16 @ b16)
    big = torch.empty(1 << 30, dtype=torch.uint8, device=device)  # 1 GiB
    rates["bandwidth"] = 2 * big.numel() / timed(lambda: big.clone())
    return rates


def main() -> None:
    p = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONE_NAMES), choices=BACKBONE_NAMES)
    p.add_argument("--precisions", nargs="+", default=["auto"], choices=PRECISIONS)
    p.add_argument("--buckets", nargs="+", default=["auto"], choices=["auto", *BUCKETS],
                   help="TrainConfig.buckets, each its own table row: rows (256-row blocks on a CPU, one pass on a "
                        "GPU; auto), widths (length classes; GRU4Rec: packed sequences)")
    p.add_argument("--no-noise", action="store_true", help="skip the noise_ratio 0.1 column (saves a third of the time)")
    p.add_argument("--json-out", type=Path, help="append each row as a JSON line")
    p.add_argument("--profile-out", type=Path, help="GPU: write each step's top kernels (torch.profiler) here")
    args = p.parse_args()
    split, source = beauty_split(args.data_dir)
    print(f"input: {source}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    for batch in args.batches:
        print(f"batch {batch}: real positions are {real_share(split.train.lengths, batch):.1%} of those one pass "
              "per batch computes (every row to the batch's longest)")
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    rates = device_rates(device) if gpu else {}
    if rates:
        print("measured: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in rates.items() if k != "bandwidth")
              + f", copy {rates['bandwidth'] / 1e12:.2f} TB/s")
    head = (f"{'backbone':<9} {'batch':>5} {'prec':>4} {'buckets':>7} {'ERM ms':>7} {'kern':>6} {'floor':>6} {'IDEA ms':>8} {'kern':>6} "
            f"{'floor':>6} {'IDEA/ERM':>8} {'noise':>6} {'eval users/s':>12}")
    print(head)
    for backbone in args.backbones:
        for batch in args.batches:
            for precision, buckets in itertools.product(args.precisions, args.buckets):
                try:
                    row = bench_row(args, split, backbone, batch, precision, buckets, gpu, rates)
                except Exception as err:  # one failing variant (a kernel missing on this device) spares the rest
                    print(f"{backbone:<9} {batch:>5} {precision:>4} {buckets:>7} failed: {type(err).__name__}: {err}",
                          flush=True)
                    continue
                if args.json_out:
                    with args.json_out.open("a") as f:
                        f.write(json.dumps(row) + "\n")

                def ms(key):
                    return f"{row[key] * 1000:.2f}" if row.get(key) is not None else "-"

                noise = f"{row['noise']:+.1%}" if row.get("noise") is not None else "-"
                print(f"{backbone:<9} {batch:>5} {row['precision']:>4} {row['buckets']:>7} {ms('erm_s'):>7} {ms('erm_kernel_s'):>6} "
                      f"{ms('erm_floor_s'):>6} {ms('idea_s'):>8} {ms('idea_kernel_s'):>6} {ms('idea_floor_s'):>6} "
                      f"{row['idea_s'] / row['erm_s']:>8.2f} {noise:>6} {row['eval_users_s']:>12,.0f}", flush=True)
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if gpu else ""))


def bench_row(args, split: Split, backbone: str, batch: int, precision: str, buckets: str, gpu: bool,
              rates: dict) -> dict:
    """One table row: every figure for one backbone, batch size, precision and way of bucketing rows."""
    cfg = dict(backbone=backbone, batch_size=batch, device=args.device, precision=precision, buckets=buckets)
    row = {"backbone": backbone, "batch": batch}
    for name, config in (("erm", TrainConfig(**cfg)), ("idea", TrainConfig(method="idea", K=3, N=4, T=5, **cfg))):
        trainer = Trainer(config, split)
        row["precision"], row["buckets"] = trainer.precision, trainer.model.buckets
        steps = Steps(trainer)
        row[f"{name}_s"] = seconds_per_step(steps, args.steps)
        if gpu:
            table = args.profile_out
            row[f"{name}_kernel_s"] = kernel_seconds_per_step(steps, args.steps, table,
                                                              f"{backbone} batch {batch} {trainer.precision} {name}")
            row[f"{name}_floor_s"] = step_floor(steps, rates)
        if name == "erm":
            ev = split.tests["test"]
            sync(trainer.device)
            start = time.perf_counter()
            trainer.evaluate_events(ev, "test")
            sync(trainer.device)
            row["eval_users_s"] = len(ev) / (time.perf_counter() - start)
    if not args.no_noise:
        noisy = Trainer(TrainConfig(method="idea", K=3, N=4, T=5, noise_ratio=0.1, **cfg), split)
        row["noise"] = seconds_per_step(Steps(noisy), args.steps) / row["idea_s"] - 1
    return row


if __name__ == "__main__":
    main()
