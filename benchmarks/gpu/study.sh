#!/usr/bin/env bash
# The device call right after speed_and_accuracy.sh or stash.sh (within the ~30 s the machine stays warm, so /tmp/stash
# and /tmp/data are still there; see benchmarks/gpu/README.md): install Ray, MLflow and Optuna (install.sh),
# run the beauty-gpu study with four trials sharing the GPU, then the GPU study tests with the time left.
# Results under $OUT.
set -u
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
START=$(date +%s) LIMIT=${LIMIT:-420} STUDY_TIMEOUT=${STUDY_TIMEOUT:-330} NAME=${NAME:-beauty-gpu}
STUDY_ARGS=${STUDY_ARGS:-beauty-gpu --gpus-per-trial 0.25 --concurrency 4 --time-budget-s 45}
source benchmarks/gpu/install.sh || exit 1
# The study runs in the default precision (bf16 on a GPU) and encoding (one pass) unless the speed table just
# measured found GRU4Rec's IDEA step slower in bf16 than in TF32 (e.g. a cuDNN without bf16 RNNs), or faster by
# length classes: then with those, through a study file over beauty-gpu.
TRAIN=$([ -f /tmp/bench.jsonl ] && python3 - <<'PY'
import json
steps = {(r["precision"], r.get("buckets", "rows")): r["idea_s"]
         for r in map(json.loads, open("/tmp/bench.jsonl")) if r["backbone"] == "gru4rec"}
train = {}
if steps.get(("bf16", "rows"), 0) > steps.get(("tf32", "rows"), float("inf")):
    train["precision"] = "tf32"
precision = train.get("precision", "bf16")
if steps.get((precision, "widths"), float("inf")) < steps.get((precision, "rows"), 0):
    train["buckets"] = "widths"
print(", ".join(f"{k}: {v}" for k, v in train.items()))
PY
)
if [ -n "$TRAIN" ]; then
  printf 'extends: beauty-gpu\ntrain: {%s}\n' "$TRAIN" > studies/configs/beauty-gpu-measured.yaml
  STUDY_ARGS="studies/configs/beauty-gpu-measured.yaml ${STUDY_ARGS#beauty-gpu}"
fi
echo "installed after $(( $(date +%s) - START )) s; study: $STUDY_ARGS" | tee -a $OUT/install.log
timeout $STUDY_TIMEOUT python3 studies/run_study.py $STUDY_ARGS --study-name $NAME --data-dir /tmp/data --out /tmp/out \
  > $OUT/study.log 2>&1
STUDY_RC=$?
echo "study exit $STUDY_RC after $(( $(date +%s) - START )) s" | tee -a $OUT/study.log
rm -f studies/configs/beauty-gpu-measured.yaml  # made for this call only (a CPU dry run must not keep it)
[ -d /tmp/out/$NAME ] && tar czf $OUT/study.tgz -C /tmp/out/$NAME --exclude ./ray --exclude ./starts .
LEFT=$(( LIMIT - ($(date +%s) - START) - 15 ))
if [ $LEFT -gt 60 ] && [ -z "${SKIP_TESTS:-}" ]; then
  timeout $LEFT python3 -m pytest -q -p no:cacheprovider -o addopts=-rs tests/studies/test_study_gpu.py > $OUT/gpu_tests.log 2>&1
  echo "tests exit $? after $(( $(date +%s) - START )) s" | tee -a $OUT/gpu_tests.log
fi
grep -E "^\[|== arm|error|Error" $OUT/study.log | tail -40; tail -5 $OUT/gpu_tests.log 2>/dev/null
exit $STUDY_RC  # the study's, not the last command's (a dry run has no test log)
