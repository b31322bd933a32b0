#!/usr/bin/env bash
# One device call (see benchmarks/gpu/README.md): the speed table of every backbone at batch 2048 in float32,
# TF32 and bf16 with kernel times and floors, each with rows encoded in one pass and by length classes
# (BUCKETS), the length-class tests on the GPU's kernels, then the accuracy check (Beauty leave-one-out, fp32 against
# bf16, seeds 0-2 of every backbone, all runs side by side on the one GPU). Results under $OUT (8 files at most).
# Also stashes the first half of the wheels under /tmp for the study call that follows it (stash.sh).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
DATA=/tmp/data ACC_EPOCHS=${ACC_EPOCHS:-10} MAMBA_EPOCHS=${MAMBA_EPOCHS:-4} ACC_TIMEOUT=${ACC_TIMEOUT:-130}
DEVICE=${DEVICE:-cuda} PRECISIONS=${PRECISIONS:-fp32 tf32 bf16} ACC_PRECISIONS=${ACC_PRECISIONS:-fp32 bf16}
BACKBONES=${BACKBONES:-gru4rec sasrec mamba4rec} STEPS=${STEPS:-10}  # overridable for a dry run on a CPU
BUCKETS=${BUCKETS:-rows widths} BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
bash benchmarks/gpu/stash.sh || exit 1  # the wheels to /tmp/stash, the data to /tmp/data, $OUT/device.txt
timeout $BENCH_TIMEOUT python3 benchmarks/bench_train.py --device $DEVICE --data-dir $DATA --batches 2048 \
  --precisions $PRECISIONS --buckets $BUCKETS --backbones $BACKBONES --no-noise --steps $STEPS --json-out $OUT/bench.jsonl --profile-out $OUT/profile.txt > $OUT/bench.txt 2>&1
echo "bench exit $?" >> $OUT/bench.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts=-rs tests/idea/test_models.py -k width_classes > $OUT/widths_tests.txt 2>&1
timeout 90 python3 benchmarks/mamba_compile_probe.py --device $DEVICE --batch 2048 > $OUT/probe.txt 2>&1  # compiled or eager
cp $OUT/bench.jsonl /tmp/bench.jsonl 2>/dev/null  # study.sh picks the GRU4Rec study's precision from it
pids=()
for bb in $BACKBONES; do
  ep=$ACC_EPOCHS; [ $bb = mamba4rec ] && ep=$MAMBA_EPOCHS
  for p in $ACC_PRECISIONS; do for s in 0 1 2; do
    timeout $ACC_TIMEOUT python3 benchmarks/bench_accuracy.py --device $DEVICE --data-dir $DATA --backbones $bb --seeds $s \
      --precision $p --max-epochs $ep > /tmp/logs/acc-$bb-$p-$s.out 2> /tmp/logs/acc-$bb-$p-$s.err &
    pids+=($!)
  done; done
done
for pid in "${pids[@]}"; do wait $pid; done
grep -h '^{' /tmp/logs/acc-*.out > $OUT/accuracy.jsonl
tar czf $OUT/logs.tgz -C /tmp logs
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv >> $OUT/device.txt 2>&1
cat $OUT/bench.txt; echo; tail -4 $OUT/widths_tests.txt; wc -l $OUT/accuracy.jsonl; cat $OUT/accuracy.jsonl
