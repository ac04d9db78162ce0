"""Running untrusted candidate programs (pass@k): a child process with time, memory and no-network limits.

What is enforced, and how:

* time: a wall-clock timeout on the child, plus ``RLIMIT_CPU``; on expiry the
  child's whole process group is killed;
* memory: ``RLIMIT_AS`` (address space), so an allocation past the limit fails
  inside the child;
* no network, no new processes: before the candidate runs, the child replaces
  ``socket``'s constructors and ``os.fork``/``exec*``/``posix_spawn``/``system``
  and ``subprocess.Popen`` with functions that raise (``RLIMIT_NPROC`` does not
  bind root, so it cannot be relied on); ``RLIMIT_FSIZE`` caps file writes;
* isolation: ``python -I`` (no user site, no environment variables honoured), an
  empty working directory that is removed afterwards, an empty environment.

This stops model-written code that loops, forks, eats memory or opens a socket
by accident, which is what pass@k needs; it is not a boundary against code
written to escape (use a container or a VM for that).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_PRELUDE = r"""
import os, socket, subprocess, sys, _socket
def _denied(*args, **kwargs):
    raise PermissionError("not allowed in the sandbox")
for _name in ("socket", "create_connection", "socketpair", "fromfd"):
    setattr(socket, _name, _denied)
_socket.socket = _denied
for _name in ("fork", "forkpty", "system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle",
              "execlp", "execlpe", "posix_spawn", "posix_spawnp", "spawnv", "spawnve", "kill", "killpg"):
    if hasattr(os, _name):
        setattr(os, _name, _denied)
subprocess.Popen = _denied
_source = sys.stdin.read()
del _denied, _name
exec(compile(_source, "<candidate>", "exec"), {"__name__": "__main__"})
"""


@dataclass(frozen=True)
class Outcome:
    """How a candidate program ended."""

    passed: bool
    reason: str  # "passed", "timed out", or the failure's last line


def _limits(memory_bytes: int, cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_program(source: str, timeout_s: float = 5.0, memory_mb: int = 512) -> Outcome:
    """Run ``source`` as a program; it passes if it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="scorer-sandbox-") as workdir:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _PRELUDE],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin"},
            start_new_session=True,
            preexec_fn=lambda: _limits(memory_mb * 1024 * 1024, int(timeout_s) + 1),
        )
        try:
            _, err = process.communicate(source.encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return Outcome(False, "timed out")
        finally:
            _kill_group(process)  # anything it left behind
    if process.returncode == 0:
        return Outcome(True, "passed")
    lines = err.decode(errors="replace").strip().splitlines()
    return Outcome(False, lines[-1] if lines else f"exit code {process.returncode}")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
