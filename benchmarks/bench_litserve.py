"""``mcdrop serve`` against LitServe: the same engine behind LitServe, and LitServe around baal (no mcdrop).

For each model and each number of closed-loop clients (one text per request, real sentences from the Rotten
Tomatoes validation split, ``n_samples`` per request), each server is started alone on 127.0.0.1, driven for
``--seconds`` per client count (after ``--warmup-seconds``) by the minimal HTTP client of
``benchmarks/bench_server.py``, and stopped; the stacks take turns for ``--rounds`` rounds, so that load from other
processes falls on all of them. It prints the median over rounds of throughput, p50 and p99, and mcdrop's
ratios to LitServe with the same engine (throughput: above 1 is better; p99: below 1 is better).

Stacks (``benchmarks/litserve_app.py``): ``mcdrop`` (``mcdrop serve``, its defaults), ``mcdrop-base`` (with
``--base REV``: ``mcdrop serve`` at another git revision, for before/after), ``litserve`` (LitServe,
``max_batch_size`` 32, ``batch_timeout`` 5 ms, the mcdrop engine), ``litserve-baal`` (the same LitServe settings,
baal's ``predict_on_batch`` on the plain torch module, entropy and mutual information computed per text).

    python -m benchmarks.bench_litserve [--models rt-mlp,rt-gru] [--clients 1,8,32] [--n-samples 100]
                                           [--seconds 5] [--rounds 2] [--stacks mcdrop,litserve,litserve-baal]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_server import Load, Run, add_load_arguments, drive
from mcdrop.serving.launch import ServerProcess, free_port, start_server
from mcdrop.training.data import load_rotten_tomatoes

REPO = Path(__file__).resolve().parents[1]


def start_litserve(model: Path, stack: str, log_path: Path, extra: list[str]) -> ServerProcess:
    port = free_port()
    command = [sys.executable, str(REPO / "benchmarks" / "litserve_app.py"), "--model", str(model)]
    command += ["--port", str(port), "--stack", "baal" if stack == "litserve-baal" else "mcdrop", *extra]
    with log_path.open("wb") as log:  # its own process group: LitServe's workers are stopped with it
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        server.wait_until("/health", 200, 180)
    except BaseException:
        stop(server, stack)
        raise
    return server


# Runs ``mcdrop`` from another source tree: this environment's editable install would import this tree's.
_FROM_SOURCE = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '')"
    ".startswith('__editable__')]; sys.path.insert(0, sys.argv.pop(1)); from mcdrop.cli import main; "
    "sys.argv[0] = 'mcdrop'; sys.exit(main())"
)


def start_revision(source: Path, model_dir: Path, log_path: Path) -> ServerProcess:
    """``mcdrop serve`` from the source tree ``source`` (a ``git archive`` of another revision)."""
    port = free_port()
    command = [sys.executable, "-c", _FROM_SOURCE, str(source), "serve", "--model-dir", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCDROP_")} | {"MCDROP_ACCESS_LOG": "false"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        server.wait_until("/readyz", 200, 180)
    except BaseException:
        server.stop()
        raise
    return server


def checkout(revision: str, directory: Path) -> Path:
    """The files of ``revision`` of this repository, extracted under ``directory``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], capture_output=True, check=True)
    directory.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def stop(server: ServerProcess, stack: str) -> None:
    if stack.startswith("mcdrop"):
        server.stop(grace_s=60)
        return
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


def measure(args: argparse.Namespace, workdir: Path, name: str, stack: str) -> dict[int, Run]:
    model_dir = workdir / "models"
    if stack == "mcdrop":
        server = start_server(model_dir, workdir / f"{stack}.log", {"MCDROP_ACCESS_LOG": "false"})
    elif stack == "mcdrop-base":
        server = start_revision(workdir / "base", model_dir, workdir / f"{stack}.log")
    else:
        server = start_litserve(model_dir / name, stack, workdir / f"{stack}.log", ["--torch-threads", "1"])
    try:
        return {
            clients: asyncio.run(
                drive(
                    server.url,
                    Load(name, clients, args.n_samples, args.seconds, args.warmup_seconds, "raw", texts=args.texts),
                )
            )
            for clients in args.client_counts
        }
    finally:
        stop(server, stack)


def report(name: str, stacks: list[str], runs: dict[tuple[str, int], list[Run]], clients: list[int]) -> None:
    print(f"\n{name}: median over rounds; x = mcdrop / litserve (throughput: higher is better; p99: lower)")
    print(f"{'clients':>7} {'stack':>14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for n in clients:
        for stack in stacks:
            done = runs[(stack, n)]
            throughput = statistics.median(r.throughput for r in done)
            p50 = statistics.median(r.percentile_ms(0.5) for r in done)
            p99 = statistics.median(r.percentile_ms(0.99) for r in done)
            print(f"{n:>7} {stack:>14} {throughput:>8.1f} {p50:>8.1f} {p99:>8.1f} {sum(r.errors for r in done):>6}")
        if "mcdrop" in stacks and "litserve" in stacks:
            ours, theirs = runs[("mcdrop", n)], runs[("litserve", n)]
            speed = statistics.median(r.throughput for r in ours) / statistics.median(r.throughput for r in theirs)
            tail = statistics.median(r.percentile_ms(0.99) for r in ours) / statistics.median(
                r.percentile_ms(0.99) for r in theirs
            )
            print(f"{'':>7} {'x throughput':>14} {speed:>8.2f}   x p99 {tail:.2f}")
        if "mcdrop-base" in stacks:
            now, before = runs[("mcdrop", n)], runs[("mcdrop-base", n)]
            speed = statistics.median(r.throughput for r in now) / statistics.median(r.throughput for r in before)
            tail = statistics.median(r.percentile_ms(0.99) for r in now) / statistics.median(
                r.percentile_ms(0.99) for r in before
            )
            print(f"{'':>7} {'x vs base':>14} {speed:>8.2f}   x p99 {tail:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stacks", default="mcdrop,litserve,litserve-baal")
    parser.add_argument("--base", help="also run mcdrop-base: mcdrop serve at this git revision")
    args = parser.parse_args()
    args.client_counts = [int(c) for c in args.clients.split(",")]
    args.texts = load_rotten_tomatoes().validation.texts
    stacks = args.stacks.split(",") + (["mcdrop-base"] if args.base else [])
    for name in args.models.split(","):
        workdir = Path(tempfile.mkdtemp(prefix="mcdrop-litserve-"))
        shutil.copytree(args.model_dir / name, workdir / "models" / name)
        if args.base:
            checkout(args.base, workdir / "base")
        runs: dict[tuple[str, int], list[Run]] = {(s, n): [] for s in stacks for n in args.client_counts}
        try:
            for round_ in range(args.rounds):
                for stack in stacks if round_ % 2 == 0 else stacks[::-1]:
                    for n, run in measure(args, workdir, name, stack).items():
                        runs[(stack, n)].append(run)
                        print(
                            f"  round {round_} {name} {stack:>14} {n:>3} clients: {run.throughput:7.1f} req/s  "
                            f"p50 {run.percentile_ms(0.5):6.1f}  p99 {run.percentile_ms(0.99):6.1f} ms",
                            flush=True,
                        )
            report(name, stacks, runs, args.client_counts)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
