"""Run ``mcdrop serve`` as a child process on a free loopback port: for tests, benchmarks and local tooling.

    with running_server("models", Path("serve.log"), env={"MCDROP_DEVICE": "cpu"}) as server:
        urllib.request.urlopen(server.url + "/readyz")

``start_server`` waits until the server listens (``/healthz``) and, unless told otherwise, until it is ready
(``/readyz`` 200); a server that exits or misses its deadline raises :class:`ServerStartError` with the end of its
log. ``stop`` sends SIGTERM, waits for a graceful exit, and kills it if none comes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_LOG_TAIL_CHARS = 4000


class ServerStartError(RuntimeError):
    """The server exited, or did not listen or get ready in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mcdrop_command() -> list[str]:
    """The ``mcdrop`` entry point of this interpreter's environment (or ``python -m mcdrop``)."""
    script = Path(sys.executable).with_name("mcdrop")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mcdrop"]


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM ``process``, wait up to ``grace_s`` for it to exit, and kill it if it does not."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _status(url: str, timeout_s: float) -> int | None:
    """The status ``url`` answers with, or ``None`` when nothing listens (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@dataclass
class ServerProcess:
    """A running ``mcdrop serve`` child process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace_s: float = 20.0) -> None:
        stop_process(self.process, grace_s)

    def wait_until(self, path: str, status: int, timeout_s: float) -> None:
        """Poll ``path`` until it answers ``status``; :class:`ServerStartError` if the server exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise ServerStartError(f"mcdrop serve exited with {self.process.returncode}:\n{self._tail()}")
            if _status(self.url + path, timeout_s=5.0) == status:
                return
            if time.monotonic() > deadline:
                raise ServerStartError(f"{path} did not answer {status} within {timeout_s:g}s:\n{self._tail()}")
            time.sleep(0.02)

    def _tail(self) -> str:
        return self.log()[-_LOG_TAIL_CHARS:]


def start_server(
    model_dir: str | os.PathLike[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    wait_ready: bool = True,
    timeout_s: float = 120.0,
    args: Sequence[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    cpus: set[int] | None = None,
) -> ServerProcess:
    """Start ``mcdrop serve --model-dir MODEL_DIR`` on a free loopback port with the caller's ``MCDROP_*`` variables
    replaced by ``env``; return once it listens (and, with ``wait_ready``, once ``/readyz`` answers 200). With
    ``cpus``, the server runs on those CPUs only (Linux), pinned before it has started a thread or sized its
    thread pools."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MCDROP_")}
    child_env.update(env or {})
    command = [*mcdrop_command(), "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=cwd)
    if cpus is not None:
        os.sched_setaffinity(process.pid, cpus)  # the interpreter is still starting: its threads inherit this
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        server.wait_until("/healthz", 200, timeout_s)
        if wait_ready:
            server.wait_until("/readyz", 200, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_server(
    model_dir: str | os.PathLike[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    wait_ready: bool = True,
    timeout_s: float = 120.0,
    cwd: str | os.PathLike[str] | None = None,
) -> Iterator[ServerProcess]:
    """:func:`start_server` as a context manager: the server is always stopped on exit."""
    server = start_server(model_dir, log_path, env, wait_ready=wait_ready, timeout_s=timeout_s, cwd=cwd)
    try:
        yield server
    finally:
        server.stop()


def env_setting(item: str) -> tuple[str, str]:
    """``MCDROP_X=Y`` from a command line, as ``("MCDROP_X", "Y")`` (an ``argparse`` type)."""
    name, sep, value = item.partition("=")
    if not sep or not name.startswith("MCDROP_"):
        raise argparse.ArgumentTypeError(f"expected MCDROP_NAME=VALUE, got {item!r}")
    return name, value


def add_env_argument(parser: argparse.ArgumentParser) -> None:
    """``--env MCDROP_X=Y`` (repeatable): settings for the server a tool starts; ``dict(args.env)`` holds them."""
    parser.add_argument("--env", action="append", default=[], type=env_setting, help="extra MCDROP_X=Y for the server")
