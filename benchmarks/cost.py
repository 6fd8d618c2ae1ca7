"""What a stability score, a selection and an optimization cost, as ratios measured in one run.

    python benchmarks/cost.py [--model shapes] [--steps 10] [--batch 16] [--repeats 3]

Times are medians of --repeats runs on this machine; every ratio compares two numbers measured in
the same process. Peak memory of checkpointed vs plain optimization is measured in two fresh
subprocesses (max RSS on CPU, max allocated on CUDA).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import stablenoise as sn


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_memory_child(args, checkpoint: bool) -> float:
    code = (
        "import resource, torch, stablenoise as sn\n"
        f"b = sn.load({args.model!r}, device={args.device!r})\n"
        f"n = sn.noises_from_seeds(range({args.batch}), b.latent_shape)\n"
        f"sn.optimize(b, 'a red circle', n, iterations=2, steps={args.steps}, checkpoint={checkpoint}, progress=False)\n"
        "print(torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="shapes")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    b = sn.load(args.model, device=args.device)
    args.device = str(b.device)
    steps = args.steps or b.defaults.steps
    args.steps = steps
    prompt = "a red circle"
    noise = sn.noises_from_seeds(range(args.batch), b.latent_shape)
    one = noise[:1]

    t_gen = median_time(lambda: sn.generate(b, prompt, noise, steps=steps, sampler="ddim"), args.repeats)
    t_score = median_time(lambda: sn.stability(b, prompt, noise, steps=steps), args.repeats)
    t_score1 = median_time(lambda: sn.stability(b, prompt, one, steps=steps), args.repeats)
    # optimize(iterations=n) evaluates n + 1 round trips and backpropagates n of them; the difference
    # between n = 3 and n = 1 is exactly two iterations (two forward round trips and their backward passes).
    def iteration_time(checkpoint):
        def run(n):
            return lambda: sn.optimize(b, prompt, noise, iterations=n, steps=steps, checkpoint=checkpoint,
                                       progress=False)
        return (median_time(run(3), args.repeats) - median_time(run(1), args.repeats)) / 2

    t_opt, t_opt_ck = iteration_time(False), iteration_time(True)
    mem_plain, mem_ck = peak_memory_child(args, False), peak_memory_child(args, True)
    result = {
        "model": args.model, "device": args.device, "steps": steps, "batch": args.batch,
        "guidance": b.defaults.guidance, "versions": {"torch": torch.__version__, "stablenoise": sn.__version__},
        "seconds": {"generate_ddim_batch": t_gen, "score_batch": t_score, "score_one": t_score1,
                    "optimize_iteration_batch": t_opt, "optimize_iteration_batch_checkpointed": t_opt_ck},
        "ratios": {
            "score / generate (same batch, same steps)": t_score / t_gen,
            "batched score per sample / single score": (t_score / args.batch) / t_score1,
            "optimization iteration / score": t_opt / t_score,
            "checkpointed / plain iteration time": t_opt_ck / t_opt,
            "checkpointed / plain peak memory": mem_ck / mem_plain,
        },
        "peak_memory_mib": {"plain": mem_plain, "checkpointed": mem_ck},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
