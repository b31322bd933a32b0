#!/usr/bin/env bash
# The README's screenshots of a smoke study, taken by headless Chromium: MLflow's chart view of the final runs
# (the link in report/summary.md) and optuna-dashboard on the idea arm's search.
#
#   bash docs/screenshots/take.sh [STUDY_DIR]
#
# Without STUDY_DIR it first runs `python studies/run_study.py synthetic --smoke` in a temporary folder. Needs
# Debian's chromium (`apt-get install -y chromium`) and optuna-dashboard (`pip install optuna-dashboard`); serves
# both UIs on free ports of 127.0.0.1 and stops them at the end. Writes mlflow_chart_view.png and
# optuna_dashboard.png next to this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
shots=docs/screenshots
tmp=$(mktemp -d)
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true

study_dir=${1:-}
if [[ -z $study_dir ]]; then
  python studies/run_study.py synthetic --smoke --out "$tmp/out" >"$tmp/study.log" 2>&1 \
    || { tail -30 "$tmp/study.log" >&2; exit 1; }
  study_dir=$tmp/out/synthetic-smoke
fi
study_dir=$(cd "$study_dir" && pwd)
study=$(basename "$study_dir")

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {
  for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return; sleep 1; done
  echo "no answer from $1" >&2; exit 1
}
mlflow_port=$(free_port)
optuna_port=$(free_port)
setsid mlflow server --backend-store-uri "sqlite:///$study_dir/mlflow.db" --host 127.0.0.1 --port "$mlflow_port" \
  --workers 1 >"$tmp/mlflow.log" 2>&1 &
servers+=($!)
setsid optuna-dashboard "sqlite:///$study_dir/optuna.db" --host 127.0.0.1 --port "$optuna_port" >"$tmp/optuna.log" 2>&1 &
servers+=($!)
wait_for "http://127.0.0.1:$mlflow_port/health"
wait_for "http://127.0.0.1:$optuna_port/"

# the report's chart-view link, for the port served here (a study's summary.md links port 5001)
python -m analysis.report --tracking-uri "sqlite:///$study_dir/mlflow.db" --study "$study" --out "$tmp/report" \
  --ui-url "http://127.0.0.1:$mlflow_port" >/dev/null
view=$(grep -o '<http[^>]*viewStateShareKey=[^>]*>' "$tmp/report/summary.md" | tr -d '<>')
idea=$(python -c 'import optuna, sys; print(optuna.storages.RDBStorage(sys.argv[1]).get_study_id_from_name("idea"))' \
  "sqlite:///$study_dir/optuna.db")

shot() {  # name, url, virtual time (ms): MLflow draws its charts after ~30 s of it
  chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$tmp/profile-$1" --virtual-time-budget="$3" \
    --window-size=1920,1200 --screenshot="$shots/$1.png" "$2" 2>>"$tmp/chromium.log"
}
shot mlflow_chart_view "$view" 60000
shot optuna_dashboard "http://127.0.0.1:$optuna_port/dashboard/studies/$idea" 30000
echo "wrote $shots/mlflow_chart_view.png and $shots/optuna_dashboard.png"
