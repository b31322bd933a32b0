#!/usr/bin/env bash
# The device call after speed_and_accuracy.sh or stash.sh (within the ~30 s the machine stays warm, so /tmp/stash and
# /tmp/data are still there; see benchmarks/gpu/README.md): install Ray, MLflow and Optuna (install.sh), then
# run the cross-study set side by side on the one GPU, each study its own driver and local Ray instance, with
# CONC trials of GPT of the GPU each and searches capped at BUDGET seconds per arm. Results under $OUT:
# studies.tgz (every study folder without Ray's state and the start checkpoints: mlflow.db, report/,
# summary.txt, study.yaml, run.json) and studies.log (each study's console, its exit code and wall time).
set -u
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
START=$(date +%s)
STUDIES=${STUDIES:-beauty-gpu sports-gpu yelp-gpu beauty-gpu-sasrec beauty-gpu-mamba4rec beauty-gpu-noisy}
GPT=${GPT:-0.08} CONC=${CONC:-2} BUDGET=${BUDGET:-45} STUDY_TIMEOUT=${STUDY_TIMEOUT:-480} EXTRA=${EXTRA:-}
DATA=${DATA:-/tmp/data} DEST=${DEST:-/tmp/out}
source benchmarks/gpu/install.sh || exit 1
echo "installed after $(( $(date +%s) - START )) s; studies: $STUDIES" | tee -a $OUT/install.log
mkdir -p /tmp/logs $DEST
pids=()
for study in $STUDIES; do
  ( s0=$(date +%s)
    timeout $STUDY_TIMEOUT python3 studies/run_study.py $study --data-dir $DATA --out $DEST --gpus-per-trial $GPT \
      --concurrency $CONC --time-budget-s $BUDGET $EXTRA > /tmp/logs/$study.log 2>&1
    echo "== $study: exit $? after $(( $(date +%s) - s0 )) s" >> /tmp/logs/$study.log ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait $pid; done
for study in $STUDIES; do tail -n 1 /tmp/logs/$study.log; done | tee $OUT/exits.txt
cat /tmp/logs/*.log > $OUT/studies.log
tar czf $OUT/studies.tgz -C $DEST --exclude './*/ray' --exclude './*/starts' .
echo "all done after $(( $(date +%s) - START )) s"
