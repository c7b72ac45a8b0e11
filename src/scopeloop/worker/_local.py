"""A worker of one's own: `scopeloop worker` in a child process.

What `scopeloop run` starts when no worker address is given (and the closed
loop benchmark too). The worker's output goes to a log file that `stop` can
copy into the run folder. Nothing here imports torch: the child does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["LocalWorker", "free_loopback_address"]


def free_loopback_address() -> str:
    """A TCP address on loopback that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


class LocalWorker:
    """`scopeloop worker` serving `address` in a child process (1 thread)."""

    def __init__(self, address: str, *, idle_exit_s: float = 60.0) -> None:
        self.log = Path(tempfile.mkstemp(prefix="scopeloop-worker-", suffix=".log")[1])
        self._file = self.log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "scopeloop", "worker", "--address", address,
                "--threads", "1", "--idle-exit", f"{idle_exit_s:g}",
            ],
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self, folder: Path | None = None) -> None:
        """End the worker; keep its log as `folder/worker.log` if given."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()
        if folder is not None and folder.is_dir():
            shutil.copyfile(self.log, folder / "worker.log")
        self.log.unlink(missing_ok=True)
