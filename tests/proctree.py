"""Child processes that never outlive their test: a command's whole process tree (torchrun
starts its workers in sessions of their own, so a process-group kill would miss them) is
SIGKILLed when it runs past its time, and its output goes to files, not pipes, so a
grandchild that keeps a pipe open cannot block the test after its parent is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILLs the process and every descendant, and reaps them."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    try:
        proc.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)
    psutil.wait_procs(family, timeout=30)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_tree(cmd: list[str], timeout: float, env: dict | None = None) -> Result:
    """subprocess.run(capture_output=True, text=True) for a command that may start
    grandchildren: on timeout the whole tree is killed and TimeoutError says what it printed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        end = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        timed_out = proc.poll() is None
        if timed_out:
            kill_tree(proc)
        out.seek(0)
        err.seek(0)
        r = Result(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if timed_out:
        raise TimeoutError(f"{cmd[:6]} ran past {timeout:.0f} s and was killed with its children:\n"
                           f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def kill_tree_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILLs the process tree as soon as ready() holds; False if the process ended
    first. A process that neither ends nor gets ready in time is killed too."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if ready():
            # Freeze it first: listing its descendants takes milliseconds, long enough for
            # a small write to finish and be renamed into place before the SIGKILL lands.
            try:
                os.kill(proc.pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            kill_tree(proc)
            return True
        time.sleep(0.001)
    if proc.poll() is None:
        kill_tree(proc)
    return False
