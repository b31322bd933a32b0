# Sourced by study.sh and cross_study.sh on the device: join the Ray wheel (its first part stashed in /tmp/stash
# by speed_and_accuracy.sh, the second carried in .whl2/), install Ray, MLflow and Optuna (the image has
# neither) into /tmp/site and put it on PYTHONPATH. A dry run on a CPU sets SKIP_INSTALL=1 and uses the local
# packages. Appends to $OUT/install.log; returns non-zero when the packages do not import.
if [ -z "${SKIP_INSTALL:-}" ]; then
  cat /tmp/stash/ray.part-aa .whl2/ray.part-ab > /tmp/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls /tmp/stash/*.whl) .whl2/*.whl /tmp/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl >> $OUT/install.log 2>&1
  export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import ray, mlflow, optuna; print('ray', ray.__version__, 'mlflow', mlflow.__version__, 'optuna', optuna.__version__)" \
  >> $OUT/install.log 2>&1 || { tail -30 $OUT/install.log; false; }
