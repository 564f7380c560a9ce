"""Running the CLI (and servers) as subprocesses in their own process group, killed by id.

A driver started with ``start_new_session`` leads a process group that also holds the
local Ray processes it starts, so killing the group by its id ends all of them and
nothing else on the host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_driver(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen:
    """``python -m search.run <argv>`` in ``cwd`` (the repository root), in its own session, output as text."""
    command = [sys.executable, "-m", "search.run", *argv]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process's whole group (no-op when it is already gone)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for the driver's output, then kill whatever of its group is left; returns the output."""
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
        process.wait()
    return output


def kill_after_finished(process: subprocess.Popen, count: int, timeout: float = 300) -> list[str]:
    """Read the driver's progress until ``count`` trials have finished, then SIGKILL its group
    (nothing gets to clean up); returns the ids of the finished trials."""
    finished: list[str] = []
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None, "start the driver with stdout=PIPE"
    try:
        for line in process.stdout:
            lines.append(line)
            if " finished after " in line:
                finished.append(line.split(" trial ")[1].split()[0])
                if len(finished) == count:
                    time.sleep(1.0)  # let the next trial get going so there is unfinished work
                    break
            assert time.monotonic() < deadline, f"sweep too slow to reach {count} finished trials"
    finally:
        kill_group(process)
        process.wait()
    assert len(finished) == count, f"the driver ended after {len(finished)} finished trials:\n" + "".join(lines[-40:])
    return finished
