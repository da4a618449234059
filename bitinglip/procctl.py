"""Linux process-lifetime controls for the supervisor (prctl(2) through ctypes; no-ops elsewhere).

- A child bound with `die_with_parent` gets SIGTERM from the kernel when the supervisor dies, even
  by SIGKILL, so no child can outlive it unnoticed. (The kernel sends it when the *thread* that
  forked the child ends, so children are started from the supervisor's main thread.)
- The supervisor itself is bound to whatever started it (`bind_to_parent`): a shell, `make` or a
  test that goes away stops the platform as SIGTERM would.
- As a child subreaper, the supervisor inherits the orphans of its children (a flow-run subprocess
  whose pool worker died), so its final sweep finds and ends them instead of init adopting them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _prctl(option: int, value: int) -> bool:
    if _libc is None:
        return False
    return int(_libc.prctl(option, value, 0, 0, 0)) == 0


def bind_to_parent(sig: int = signal.SIGTERM) -> int:
    """Have the kernel send `sig` to this process when its parent dies; returns the parent's pid
    as of now (a caller compares `os.getppid()` against it: a parent gone before the call)."""
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, sig)
    return parent


def become_subreaper() -> bool:
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `sig` when the process that forks it dies. It only makes a
    system call (no imports, no locks), which is what is safe between fork and exec; a parent
    already gone by then (the race the prctl cannot see) is answered at once."""
    parent = os.getpid()

    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def sd_notify(state: str) -> bool:
    """Tell systemd (a `Type=notify` unit) our state, e.g. "READY=1": the sd_notify(3) protocol, one
    datagram to $NOTIFY_SOCKET. False when not started by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
