"""Ray's local processes in process groups of their own. A signal sent to the driver's whole process group
(what `timeout` and a shell's `kill -- -PGID` do) then reaches the driver alone, which stops the study
gracefully and shuts Ray down itself; with Ray's GCS and raylet in the driver's group, they died first and
took the driver with them (exit 1 at once, or after 61 s of "Failed to connect to GCS"), runs left RUNNING.

Ray starts them in the caller's group and offers no option for this. It does the same on Windows when the
kernel ties its processes' lives to the driver's; on Linux that tie is PR_SET_PDEATHSIG, which a process
group does not affect, so the processes still die with a driver killed by -9. Elsewhere (no such tie, Ray's
reaper cleans up by process group) nothing is changed."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from ray._private import services, utils


@contextlib.contextmanager
def own_process_groups() -> Iterator[None]:
    """While in this block, every process Ray starts (`ray.init` of a local instance: the GCS, the raylet,
    which starts the workers in its group, and the monitors) leads a new process group."""
    if not (sys.platform.startswith("linux") and utils.detect_fate_sharing_support()):
        yield
        return
    popen = services.ConsolePopen  # what services.start_ray_process starts every Ray process with

    class OwnGroupPopen(popen):
        def __init__(self, *args, preexec_fn=None, **kwargs):
            def preexec() -> None:  # in the child, before Ray's own (which ties it to the driver)
                os.setpgid(0, 0)
                if preexec_fn is not None:
                    preexec_fn()

            super().__init__(*args, preexec_fn=preexec, **kwargs)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    finally:
        services.ConsolePopen = popen
