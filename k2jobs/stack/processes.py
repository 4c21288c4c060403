"""Processes the local stack runs: started in their own session, found again through pid files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from k2jobs.errors import StackError

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
MARKER_TIMEOUT_S = 10.0  # how long a start waits for the new process to show its marker


@dataclass(frozen=True)
class Service:
    """One process the stack runs, identified by its pid file."""

    name: str
    command: list[str]
    log: Path
    pidfile: Path
    marker: str  # a string its command line holds, so a recycled pid is not mistaken for it
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    stop_timeout_s: float = STOP_TIMEOUT_S  # how long `stop` waits after SIGTERM before SIGKILL

    def pid(self) -> int | None:
        """The pid of the running process, or None if it is not running."""
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            return None
        if self.marker not in cmdline or is_zombie(pid):
            return None
        return pid

    def start(self) -> int:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        self.pidfile.write_text(str(proc.pid))
        # Popen returns once the child's exec has begun, before the kernel has set its new command line: until then
        # /proc/<pid>/cmdline is empty (often, on a busy machine), and redis-server shows its marker only once it
        # has set its title. `pid()` in that window would take a starting process (Flower, say) for one that had
        # exited, so a start ends when `pid()` finds the process.
        deadline = time.monotonic() + MARKER_TIMEOUT_S
        while proc.poll() is None and self.pid() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        return proc.pid


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def wait_until_ready(
    what: str, check: Callable[[], bool], service: Service | None = None, timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if service is not None and service.pid() is None:
            raise StackError(f"{what} exited while starting; see {service.log}")
        time.sleep(0.25)
    raise StackError(f"{what} was not ready after {timeout_s:.0f}s")


def stop(service: Service) -> bool:
    pid = service.pid()
    if pid is None:
        service.pidfile.unlink(missing_ok=True)
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + service.stop_timeout_s
    while time.monotonic() < deadline and not is_zombie(pid) and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists() and not is_zombie(pid):
        os.killpg(pid, signal.SIGKILL)
    service.pidfile.unlink(missing_ok=True)
    return True


def ports_clients_may_take(ports: Iterable[int], sysctl: Path = Path("/proc/sys/net/ipv4")) -> list[int]:
    """The ports among `ports` that Linux may hand a client as its own (the ephemeral range, less reserved ports).

    A client reconnecting to such a port while its server is down can be given that very port and connect to
    itself (TCP simultaneous open): it then holds the port, and the server cannot start on it again (`Address
    already in use`, and `ss` shows 127.0.0.1:PORT connected to itself)."""
    try:
        low, high = (int(n) for n in (sysctl / "ip_local_port_range").read_text().split())
        reserved_text = (sysctl / "ip_local_reserved_ports").read_text().strip()
    except (OSError, ValueError):
        return []  # not Linux, or not readable: nothing to say
    reserved: set[int] = set()
    for part in filter(None, reserved_text.split(",")):
        first, _, last = part.partition("-")
        reserved.update(range(int(first), int(last or first) + 1))
    return sorted({p for p in ports if low <= p <= high and p not in reserved})


def need_program(program: str) -> str:
    path = shutil.which(program) or (f"/usr/bin/{program}" if Path(f"/usr/bin/{program}").exists() else None)
    if path is None:
        raise StackError(f"{program} is not installed (make install puts it there: apt-get install redis-server)")
    return path
