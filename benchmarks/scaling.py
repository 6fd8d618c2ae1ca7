"""Throughput of the bench with 1 and N processes, and the UNet's share of the wall time, in one run.

    python benchmarks/scaling.py                       # shapes model, CPU, 1 vs 2 processes of one thread each
    python benchmarks/scaling.py --processes 1,2,4 --limit 32 -k 16
    python benchmarks/scaling.py --architecture sdxl --size 512 --steps 4 --guidance 0 --device cuda \
        --processes 1,8 --threads 4 --limit 64 -k 16 --batch-size 16 --rewards shapes-clip   # a GPU node

Each count runs the same fresh bench (selection only: ``--methods random``; every seed scored, decoded and
judged) into its own folder, through ``accelerate launch`` above one process. Every rank reports the wall time
of its ``run_bench`` call (model loading and imports excluded, the plan and the final merge included), the time
spent inside the UNet's forward (timed by hooks; on CUDA, synchronised) and, on CUDA, its peak memory. The
throughput of a count is the rows stored over rank 0's ``run_bench`` time; the ratio divides it by the
throughput of the first count. With ``--architecture`` each rank builds the full-size random SD 1.5 or SDXL
(``bench/architectures.py``; SDXL-turbo is SDXL's architecture at 512 px, 4 steps, no CFG) instead of loading
``--model``.

The script is also each rank's program (``worker`` as its first argument): it wraps the bench's model loading
and ``run_bench`` to time them, then runs ``stablenoise bench``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def worker(argv: list[str]) -> None:
    """One rank: the bench, with its UNet and its run_bench timed into $SCALING_OUT/rank-R.json."""
    import torch

    import stablenoise.backends as backends
    from stablenoise.bench import run
    from stablenoise.cli import main

    report = {"rank": int(os.environ.get("RANK", "0")), "unet_seconds": 0.0, "unet_calls": 0}
    real_load, real_run = backends.load, run.run_bench

    def sync(device):
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def load(model, device=None, **kwargs):
        arch = os.environ.get("SCALING_ARCHITECTURE")
        if arch:
            from stablenoise.bench.architectures import random_pipeline

            size = int(os.environ["SCALING_SIZE"])
            pipe = random_pipeline(arch, dtype=backends.parse_dtype(kwargs.get("dtype")) or torch.float32,
                                   device=backends.parse_device(device))
            pipe.set_progress_bar_config(disable=True)
            backend = backends.from_pipeline(pipe, name=f"random-{arch}-{size}px", height=size, width=size)
        else:
            backend = real_load(model, device=device, **kwargs)
        unet, started = backend.network, []

        def start(*_):  # returns None: a pre-hook's return value would replace the UNet's inputs
            sync(backend.device)
            started.append(time.perf_counter())

        def done(*_):
            sync(backend.device)
            report["unet_seconds"] += time.perf_counter() - started.pop()
            report["unet_calls"] += 1

        unet.register_forward_pre_hook(start)
        unet.register_forward_hook(done)
        report["device"] = str(backend.device)
        return backend

    def run_bench(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_run(*args, **kwargs)
        finally:
            report["bench_seconds"] = time.perf_counter() - t0
            if torch.cuda.is_available():
                report["peak_bytes"] = torch.cuda.max_memory_allocated()

    def write():
        path = Path(os.environ["SCALING_OUT"]) / f"rank-{report['rank']}.json"
        path.write_text(json.dumps(report))

    backends.load, run.run_bench = load, run_bench
    atexit.register(write)
    sys.argv = ["stablenoise", *argv]
    main(prog_name="stablenoise")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, bench_args: list[str], threads: int, timing: Path, args) -> dict:
    """Run one count; returns rank 0's measurements, the ranks' UNet time and the rows stored."""
    script = [str(HERE), "worker", *bench_args]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SCALING_OUT": str(timing)}
    if args.architecture:
        env.update(SCALING_ARCHITECTURE=args.architecture, SCALING_SIZE=str(args.size))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{processes} processes failed:\n{r.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(timing.glob("rank-*.json"))]
    main = next(x for x in ranks if x["rank"] == 0)
    return {"processes": processes, "seconds": main["bench_seconds"],
            "unet_share": sum(x["unet_seconds"] for x in ranks) / sum(x["bench_seconds"] for x in ranks),
            "peak_bytes": max((x.get("peak_bytes", 0) for x in ranks), default=0), "ranks": ranks}


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        return worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts; the first is the base")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--architecture", choices=["sd15", "sdxl"], default=None)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--prompts", default="shapes-heldout")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rewards", default="shapes-verifier")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()
    counts = [int(x) for x in args.processes.split(",")]
    bench_args = ["bench", "--model", args.model, "--prompts", args.prompts, "--limit", str(args.limit), "-k",
                  str(args.k), "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--methods",
                  "random", "--rewards", args.rewards, "--device", args.device, "--no-report",
                  *(["--guidance", str(args.guidance)] if args.guidance is not None else []),
                  *(["--dtype", args.dtype] if args.dtype else [])]
    rows = args.limit * args.k
    results = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        for n in counts:
            timing = Path(tmp, f"timing-{n}")
            timing.mkdir()
            results.append(launch(n, [*bench_args, "--out", str(Path(tmp, f"run-{n}"))], args.threads, timing, args))
            r = results[-1]
            memory = f", peak {r['peak_bytes'] / 2**30:.1f} GiB per GPU" if r["peak_bytes"] else ""
            print(f"{n} process{'es' if n > 1 else ''} x {args.threads} thread{'s' if args.threads > 1 else ''}: "
                  f"{rows} scores in {r['seconds']:.1f} s = {rows / r['seconds']:.2f} scores/s; UNet "
                  f"{100 * r['unet_share']:.0f}% of the wall time{memory}", flush=True)
    base = results[0]
    for r in results[1:]:
        print(f"throughput ratio {r['processes']}/{base['processes']} processes: "
              f"{base['seconds'] / r['seconds']:.2f} (ideal {r['processes'] / base['processes']:g})")
    print(json.dumps({"command": " ".join(sys.argv), "rows": rows, "results": results}))


if __name__ == "__main__":
    main()
