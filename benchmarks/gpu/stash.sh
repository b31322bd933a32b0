#!/usr/bin/env bash
# The first of two device calls (see benchmarks/gpu/README.md), alone when no speed table is wanted, else run by
# speed_and_accuracy.sh: stash the first part of the wheels (.whl1/) in /tmp/stash and unpack the data
# (.gpu/data.tgz: beauty, sports, yelp) into /tmp/data for the call that follows (study.sh or cross_study.sh,
# within the ~30 s the machine stays warm); the GPU and torch's versions go to $OUT/device.txt.
set -u
mkdir -p /tmp/stash /tmp/logs /tmp/data && cp .whl1/* /tmp/stash/ && tar xzf .gpu/data.tgz -C /tmp/data || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"; } > $OUT/device.txt 2>&1
