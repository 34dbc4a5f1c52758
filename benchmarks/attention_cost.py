"""Forward+backward time and peak memory of one attention layer, global versus local versus sparse.

    python benchmarks/attention_cost.py                 # K = 64 ... 4096, about 3 minutes
    python benchmarks/attention_cost.py --lengths 256 1024 --batch 2

Every case runs in fresh processes: ``rlattn.MultiHeadAttention`` (embed 64, 4 heads) runs forward
and backward over a batch of K-step histories whose oldest quarter is padding (so global attention
needs its validity mask, as early in every episode). ``--scope attention`` (default) times the
attention itself, from split heads q, k, v to its output; ``--scope layer`` adds the qkv and output
projections, whose cost is the same for every method. Time is the median of ``--repeats`` runs
after one warm-up. Peak memory is measured in a second process, with glibc told to return every
large block to the system (MALLOC_MMAP_THRESHOLD_), as the rise of the peak resident set (VmHWM,
reset through /proc/self/clear_refs) over one run. Methods:

- ``global``: every step sees every valid step (dense, one boolean mask).
- ``local-dense``: the local window as a mask on the dense path: the work a mask does not save.
- ``local``: the same window, computed in blocks (the path ``attention="local"`` picks for long K).
- ``sparse``: global range, block-routed (``top_k`` with ``block_size``): keys in blocks of 64, each
  block of 64 queries attends to its 2 best-scoring blocks and its own (``--top-k 2 --block-size
  64``), so every query sees at most 192 keys whatever K: 3 of 64 blocks at K = 4096.
- ``sparse-compressed``: ``sparse`` plus NSA's compressed branch (``compress=True``: each block's
  routing query also attends to the other blocks' mean keys and values, gated), the branch that
  trains the router. The gate is fixed at 0.5 here: it is a projection, timed with ``--scope layer``.

Ratios are measured in the same run: ``x faster`` and ``x less mem`` against ``global`` at the same K,
``x vs local`` is local's time over this method's (>= 1: no slower than local), ``x time/2K`` this
method's time over its own at K / 2 (2.0 is linear).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("global", "local-dense", "local", "sparse", "sparse-compressed")
ROOT = Path(__file__).resolve().parent.parent


def pattern(method: str, window: int, top_k: int, block_size: int) -> dict:
    return {
        "global": {"attention": "global"},
        "local-dense": {"attention": "local", "window": window, "chunk": 0},
        "local": {"attention": "local", "window": window},
        "sparse": {"attention": "global", "top_k": top_k, "block_size": block_size},
        "sparse-compressed": {"attention": "global", "top_k": top_k, "block_size": block_size, "compress": True},
    }[method]


def _peak_reset() -> int:
    """Reset the peak resident set to the current one; returns the current resident set in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    """One case in this process: prints {"seconds": ...} or {"peak_bytes": ...} as JSON."""
    import torch

    from rlattn import MultiHeadAttention

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    K, B, E = args.length, args.batch, 64
    layer = MultiHeadAttention(E, 4, **pattern(args.method, args.window, args.top_k, args.block_size))
    valid = torch.ones(B, K, dtype=torch.bool)
    valid[:, : K // 4] = False  # an episode that started less than K steps ago
    if args.scope == "layer":
        inputs = [torch.randn(B, K, E, requires_grad=True)]
        call = lambda: layer(inputs[0], valid)[0]  # noqa: E731
    else:
        inputs = [torch.randn(B, 4, K, E // 4, requires_grad=True) for _ in range(3)]
        gate = torch.full((B, 4, K, 1), 0.5) if layer.compress_gate is not None else None
        call = lambda: layer.attend(*inputs, valid, gate=gate)[0]  # noqa: E731

    def run() -> None:
        call().square().mean().backward()
        for tensor in inputs:
            tensor.grad = None
        layer.zero_grad(set_to_none=True)

    run()  # warm-up
    if args.measure == "memory":
        before = _peak_reset()
        run()
        print(json.dumps({"peak_bytes": max(_status("VmHWM") - before, 0)}))
        return
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": statistics.median(times)}))


def measure(method: str, length: int, args: argparse.Namespace) -> dict:
    """Time, then peak memory, each in a fresh process."""
    result: dict = {}
    for what in ("time", "memory"):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if what == "memory" else None
        done = subprocess.run(
            [*_command(method, length, args), "--measure", what], capture_output=True, text=True, cwd=ROOT, env=env
        )
        if done.returncode:
            lines = done.stderr.strip().splitlines()
            return {"error": lines[-1] if lines else f"exit {done.returncode}"}
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return result


def _command(method: str, length: int, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--lengths",
        str(length),
        *("--batch", str(args.batch), "--window", str(args.window), "--top-k", str(args.top_k)),
        *("--block-size", str(args.block_size)),
        *("--repeats", str(args.repeats), "--threads", str(args.threads), "--scope", args.scope),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--batch", type=int, default=4, help="histories per batch")
    parser.add_argument("--window", type=int, default=64, help="local window in steps")
    parser.add_argument("--top-k", type=int, default=2, help="key blocks each query block attends to in sparse")
    parser.add_argument("--block-size", type=int, default=64, help="keys per block in sparse")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    parser.add_argument("--scope", choices=("attention", "layer"), default="attention", help="what is timed")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("batch", "window", "top_k", "block_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: must be >= 1")
    if min(args.lengths) < 1:
        parser.error(f"--lengths {min(args.lengths)} is invalid: must be >= 1")
    if args.worker:
        args.method, args.length = args.worker, args.lengths[0]
        worker(args)
        return

    print(
        f"{'attention (q, k, v -> out)' if args.scope == 'attention' else 'attention layer with projections'}, embed 64, 4 heads, batch {args.batch}, window {args.window}, top-k {args.top_k} blocks of {args.block_size}, "
        f"{args.threads} thread(s); forward+backward, median of {args.repeats}"
    )
    header = (
        f"{'K':>6} {'method':<17} {'ms':>10} {'peak MiB':>10} {'x faster':>9} {'x less mem':>10} {'x vs local':>10} "
        f"{'x time/2K':>10}"
    )
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, int], dict] = {}
    for length in sorted(args.lengths):
        for method in args.methods:
            results[method, length] = result = measure(method, length, args)
            base = results.get(("global", length), {})
            local = results.get(("local", length), {})
            prev = results.get((method, length // 2), {})
            if "error" in result:
                print(f"{length:>6} {method:<17} failed: {result['error']}")
                continue
            ms, mib = result["seconds"] * 1e3, result["peak_bytes"] / 2**20
            faster = f"{base['seconds'] / result['seconds']:.1f}" if "seconds" in base else "-"
            less = f"{base['peak_bytes'] / max(result['peak_bytes'], 1):.1f}" if "peak_bytes" in base else "-"
            vs_local = f"{local['seconds'] / result['seconds']:.2f}" if "seconds" in local else "-"
            growth = f"{result['seconds'] / prev['seconds']:.2f}" if "seconds" in prev else "-"
            row = (
                f"{length:>6} {method:<17} {ms:>10.2f} {mib:>10.1f} {faster:>9} {less:>10} {vs_local:>10} {growth:>10}"
            )
            print(row, flush=True)


if __name__ == "__main__":
    main()
