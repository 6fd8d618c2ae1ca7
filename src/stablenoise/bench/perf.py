"""``stablenoise perf``: what stability costs beyond the model, and how to pay less. Every figure is a ratio of
two quantities measured in the same process (times are medians of interleaved repeats; memory is counted in
bytes; UNet evaluations by the backend's counter), so a figure means the same on a slow and a fast machine.

Parts (each a function returning a JSON-able dict; ``run_perf`` runs the chosen ones and writes perf.json):

- ``overhead``: ``stability()`` over the replay of exactly the denoiser calls it made (same inputs);
- ``batching``: selection of K seeds one seed per call over batched selection;
- ``memory``: bytes held for backward by an optimization step, with and without checkpointing, T = 1, 2, 4, 8
  (saved-tensor hooks; checkpoint inputs added), the CPU peak estimate, CUDA's measured peak on a GPU, and the
  time of an iteration over a score;
- ``proxies``: cheap scores against the full one over prompts x K seeds (Spearman, cost), and two-stage
  selection simulated from them (how often it keeps the full selection's seed, at what cost), checked against
  real ``select(proxy=..., keep=...)`` runs;
- ``bank``: a seed bank (empty prompt) and per-prompt selection among its top m, judged by a reward
  (the shapes verifier on the shipped model), beside full per-prompt selection from a bench run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from torch.utils.checkpoint import checkpoint as torch_checkpoint

from .. import stats
from ..backends.denoiser import Conditioning
from ..bank import build_bank
from ..batching import CPU_BATCH, auto_batch_size, is_out_of_memory, synchronize
from ..errors import StablenoiseError
from ..noise import noises_from_seeds
from ..records import now, versions, write_json_atomic
from ..selection import Proxy, select
from ..stability import conditioning, cosine, evaluations, resolve, round_trip, round_trips, score, stability
from .store import Store

PARTS = ("overhead", "batching", "memory", "proxies", "bank")
MEMORY_STEPS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Setting:
    """One way to score a seed: the round trip under ``prompt`` (None: the seed's own prompt)."""

    name: str
    steps: int
    guidance: float
    inversion_guidance: float
    prompt: str | None = None

    @property
    def prompt_independent(self) -> bool:
        return self.prompt is not None


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict:
    """Median seconds of each function, run round-robin ``repeats`` times after one warm-up each, so that
    a slow spell of the machine hits every function alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


# --- overhead -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def recorded_calls(module: torch.nn.Module):
    """Record the (args, kwargs) of every forward call of ``module``."""
    calls = []
    handle = module.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, kwargs)),
                                              with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def overhead(backend, prompt: str, steps: int, guidance: float, inversion_guidance: float, batch: int,
             repeats: int) -> dict:
    noise = noises_from_seeds(range(batch), backend.latent_shape)
    with recorded_calls(backend.network) as calls, torch.no_grad():
        reference = score(backend, conditioning(backend, prompt, 1, max(guidance, inversion_guidance)), noise,
                          steps, guidance, inversion_guidance)

    def raw():
        with torch.no_grad():
            for args, kwargs in calls:
                backend.network(*args, **kwargs)

    def full():
        s = stability(backend, prompt, noise, steps, guidance, inversion_guidance)
        assert torch.equal(s, reference)  # the timed call is the score it claims to be
    t = interleaved_medians({"stability": full, "raw_denoiser_calls": raw}, repeats, backend.device)
    return {"batch": batch, "steps": steps, "denoiser_calls": len(calls), "seconds": t,
            "overhead": t["stability"] / t["raw_denoiser_calls"] - 1, "target": "<= 0.10"}


# --- batching -----------------------------------------------------------------------------------------

def batching(backend, prompt: str, steps: int, guidance: float, inversion_guidance: float, k: int,
             repeats: int) -> dict:
    sizes = {"per_seed": 1, "auto": None, "all": k}
    results = {}

    def run(size):
        def fn():
            results[size] = select(backend, prompt, k=k, batch_size=size, steps=steps, guidance=guidance,
                                   inversion_guidance=inversion_guidance, progress=False)
        return fn
    t = interleaved_medians({name: run(size) for name, size in sizes.items()}, repeats, backend.device)
    same = results[1].best_seed == results[None].best_seed == results[k].best_seed
    auto = (auto_batch_size(backend.device, lambda: None, k, math.prod(backend.latent_shape))
            if backend.device.type != "cuda" else "from memory")
    return {"k": k, "auto_batch_on_this_device": auto,
            "seconds": t, "speedup_auto": t["per_seed"] / t["auto"], "speedup_all": t["per_seed"] / t["all"],
            "same_best_seed": same, "target": "speedup >= 2"}


# --- memory -------------------------------------------------------------------------------------------

def _storages(tree, out: dict, skip: set) -> None:
    if isinstance(tree, torch.Tensor):
        st = tree.untyped_storage()
        if st.data_ptr() not in skip and st.nbytes():
            out[st.data_ptr()] = st.nbytes()
    elif isinstance(tree, (list, tuple)):
        for x in tree:
            _storages(x, out, skip)
    elif isinstance(tree, dict):
        for x in tree.values():
            _storages(x, out, skip)
    elif isinstance(tree, Conditioning):
        _storages(tree.cond, out, skip)
        _storages(tree.uncond, out, skip)


def _weights(backend) -> set:
    """Storages of the model's parameters and buffers: they exist anyway, so are not held *for backward*."""
    modules = [m for m in getattr(backend.pipe, "components", {}).values() if isinstance(m, torch.nn.Module)]
    return {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}


@contextlib.contextmanager
def held_for_backward(skip: set):
    """Count the bytes autograd keeps for the backward pass: every saved tensor outside checkpointed regions
    (saved-tensor hooks) plus the inputs a non-reentrant checkpoint keeps to recompute its region (inside a
    checkpoint, torch's own hooks replace ours, so what it recomputes is rightly not counted). Yields the count
    and the checkpoint function that adds those inputs, to give the round trip as its ``checkpoint``."""
    held: dict[int, int] = {}

    def pack(t):
        _storages(t, held, skip)
        return t

    def counting_checkpoint(fn, *args, **kwargs):
        _storages(args, held, skip)
        return torch_checkpoint(fn, *args, **kwargs)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield held, counting_checkpoint


def _iteration(backend, cond, noise, steps, guidance, inversion_guidance, checkpoint):
    x = noise.clone().requires_grad_(True)
    inverted = round_trip(backend, cond, x, steps, guidance, inversion_guidance, checkpoint)[1]
    return x, (1 - cosine(x, inverted)).sum()


def _memory_row(backend, cond, noise, t_steps: int, guidance: float, inversion_guidance: float, skip: set,
                one_call: int) -> dict:
    """Bytes held for backward by one optimization step of ``t_steps`` steps, plain and checkpointed."""
    row = {"steps": t_steps}
    for checkpointed in (False, True):
        key = "checkpoint" if checkpointed else "plain"
        if backend.device.type == "cuda":  # pragma: no cover - GPU only
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(backend.device)
            base = torch.cuda.memory_allocated(backend.device)
        try:
            with held_for_backward(skip) as (held, counted):
                x, loss = _iteration(backend, cond, noise, t_steps, guidance, inversion_guidance,
                                     counted if checkpointed else False)
            grad, = torch.autograd.grad(loss, x)
        except Exception as error:  # noqa: BLE001 - a GPU may not hold T = 8 without checkpointing
            if not is_out_of_memory(error):
                raise
            row[f"{key}_out_of_memory"] = True
            x = loss = grad = held = None
            continue
        row[f"{key}_held_bytes"] = sum(held.values())
        row[f"{key}_peak_bytes_cpu_estimate"] = sum(held.values()) + (one_call if checkpointed else 0)
        if backend.device.type == "cuda":  # pragma: no cover - GPU only
            row[f"{key}_peak_bytes_cuda"] = torch.cuda.max_memory_allocated(backend.device) - base
        assert torch.isfinite(grad).all()
        del x, loss, grad, held
    if "plain_held_bytes" in row and "checkpoint_held_bytes" in row:
        row["held_ratio"] = row["checkpoint_held_bytes"] / row["plain_held_bytes"]
    return row


def _iteration_times(backend, cond, noise, steps: int, guidance: float, inversion_guidance: float,
                     repeats: int) -> dict:
    """Median seconds of an optimization iteration (forward + backward), plain and checkpointed, and of a score
    of the same batch and steps."""
    def score_fn():
        with torch.no_grad():
            round_trip(backend, cond, noise, steps, guidance, inversion_guidance)

    def iteration_fn(checkpoint):
        def fn():
            x, loss = _iteration(backend, cond, noise, steps, guidance, inversion_guidance, checkpoint)
            torch.autograd.grad(loss, x)
        return fn
    fns = {"score": score_fn, "iteration_plain": iteration_fn(False), "iteration_checkpoint": iteration_fn(True)}
    try:
        return interleaved_medians(fns, repeats, backend.device)
    except Exception as error:  # noqa: BLE001
        if not is_out_of_memory(error):
            raise
        del fns["iteration_plain"]
        return {**interleaved_medians(fns, repeats, backend.device), "iteration_plain": math.nan}


def memory(backend, prompt: str, steps: int, guidance: float, inversion_guidance: float, batch: int,
           repeats: int) -> dict:
    noise = noises_from_seeds(range(batch), backend.latent_shape).to(backend.device)
    with torch.no_grad():
        cond = conditioning(backend, prompt, batch, max(guidance, inversion_guidance))
    skip = _weights(backend)
    # The largest single recomputed call: one network evaluation (with CFG) with everything saved.
    with held_for_backward(skip) as (one, _):
        x = noise.clone().requires_grad_(True)
        backend.denoiser(cond, guidance).output(x, backend.timesteps(steps)[0]).sum()
    one_call = sum(one.values())
    rows = [_memory_row(backend, cond, noise, t, guidance, inversion_guidance, skip, one_call) for t in MEMORY_STEPS]
    first, last = rows[0], rows[-1]
    peak_key = "checkpoint_peak_bytes_cuda" if backend.device.type == "cuda" else "checkpoint_peak_bytes_cpu_estimate"
    t = _iteration_times(backend, cond, noise, steps, guidance, inversion_guidance, repeats)
    return {"batch": batch, "one_call_bytes": one_call, "rows": rows,
            "peak_ratio_checkpoint_T8_over_T1": last[peak_key] / first[peak_key],
            "held_ratio_checkpoint_over_plain_T8": last.get("held_ratio"),
            "targets": {"peak_ratio_checkpoint_T8_over_T1": "<= 1.5", "held_ratio_checkpoint_over_plain_T8": "<= 0.01"},
            "time": {"steps": steps, "seconds": t, "iteration_plain_over_score": t["iteration_plain"] / t["score"],
                     "iteration_checkpoint_over_score": t["iteration_checkpoint"] / t["score"],
                     "checkpoint_over_plain": t["iteration_checkpoint"] / t["iteration_plain"]}}


# --- proxies and two-stage selection -----------------------------------------------------------------

def proxy_settings(steps: int, guidance: float, inversion_guidance: float) -> list[Setting]:
    """The full score first, then the cheap ones: fewer steps, the empty prompt (prompt-independent, so a
    bank), both. With the empty prompt CFG would compare the empty prompt with itself, so guidance is 1."""
    full = Setting("full", steps, guidance, inversion_guidance)
    out = [full]
    for t in sorted({1, 2} - {steps}):
        out.append(Setting(f"steps={t}", t, guidance, inversion_guidance))
    out.append(Setting("empty-prompt", steps, 1.0, 1.0, ""))
    if steps != 1:
        out.append(Setting("empty-prompt,steps=1", 1, 1.0, 1.0, ""))
    return out


def _score_setting(backend, prompt: str, seeds: list[int], s: Setting, batch: int) -> dict:
    """Stability and cos(eps, z_0) of each seed under one setting, with the UNet evaluations and seconds
    of each half of the round trip."""
    with torch.no_grad():
        cond = conditioning(backend, s.prompt if s.prompt is not None else prompt, 1,
                            max(s.guidance, s.inversion_guidance))
    costs = []

    def read(chunk, trip):
        values = list(zip(trip.stability[0].tolist(), cosine(trip.noise, trip.z0).cpu().tolist()))
        costs.append((trip.evaluations, trip.seconds))
        return values

    values = round_trips(backend, seeds, lambda chunk: (cond.expand(len(chunk)), noises_from_seeds(
                             chunk, backend.latent_shape)), s.steps, s.guidance, (s.inversion_guidance,),
                         read=read, batch_size=batch)
    out = {"stability": [v for v, _ in values], "z0_cosine": [z for _, z in values]}
    for i, half in enumerate(("denoise", "invert")):
        out[f"{half}_evals"] = sum(e[i] for e, _ in costs)
        out[f"{half}_seconds"] = sum(sec[i] for _, sec in costs)
    return out


def proxy_scores(backend, prompts: list[str], k: int, settings: list[Setting], batch: int, state_path: Path,
                 progress: bool = True) -> dict:
    """Every setting's scores of prompt i's seeds i*k .. i*k+k-1, resumable through ``state_path``."""
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    key = json.dumps({"k": k, "settings": [s.__dict__ for s in settings], "model": backend.name})
    if state.get("key") != key:
        state = {"key": key, "prompts": {}}
    for i, prompt in enumerate(tqdm(prompts, desc="proxies", unit="prompt", disable=not progress)):
        if str(i) in state["prompts"]:
            continue
        seeds = list(range(i * k, (i + 1) * k))
        state["prompts"][str(i)] = {"prompt": prompt, "seeds": seeds,
                                    **{s.name: _score_setting(backend, prompt, seeds, s, batch) for s in settings}}
        write_json_atomic(state_path, state)
    return state


def _candidates(settings: list[Setting]) -> list[tuple[str, str, str, bool]]:
    """(proxy name, setting, score kind, prompt-independent): each setting's stability and its z_0 cosine,
    whose cost is only the denoising half."""
    out = []
    for s in settings:
        for kind in ("stability", "z0_cosine"):
            if not (s.name == "full" and kind == "stability"):
                out.append((f"{s.name}:{kind}", s.name, kind, s.prompt_independent))
    return out


def analyse_proxies(state: dict, settings: list[Setting], keeps: tuple[int, ...]) -> dict:
    prompts = [state["prompts"][str(i)] for i in range(len(state["prompts"]))]
    full = np.array([p["full"]["stability"] for p in prompts], dtype=float)
    k = full.shape[1]
    evals = {s.name: {half: sum(p[s.name][f"{half}_evals"] for p in prompts) / full.size
                      for half in ("denoise", "invert")} for s in settings}
    secs = {s.name: {half: sum(p[s.name][f"{half}_seconds"] for p in prompts) / full.size
                     for half in ("denoise", "invert")} for s in settings}
    full_evals = evals["full"]["denoise"] + evals["full"]["invert"]
    full_secs = secs["full"]["denoise"] + secs["full"]["invert"]
    best_full = full.argmax(axis=1)
    rows = []
    for name, setting, kind, independent in _candidates(settings):
        values = np.array([p[setting][kind] for p in prompts], dtype=float)
        halves = ("denoise",) if kind == "z0_cosine" else ("denoise", "invert")
        e = sum(evals[setting][h] for h in halves)
        sec = sum(secs[setting][h] for h in halves)
        order = np.argsort(-values, axis=1, kind="stable")
        two_stage = []
        for m in keeps:
            kept = np.array([best_full[i] in order[i, :m] for i in range(len(prompts))], dtype=float)
            # Per prompt: K proxy scores (nothing, for a prompt-independent bank computed once) + m full scores.
            per_prompt = (0 if independent else k * e) + m * full_evals
            two_stage.append({"keep": m, "same_seed": stats.mean_ci(kept), "evals_per_prompt": per_prompt,
                              "cheaper": k * full_evals / per_prompt})
        rows.append({"proxy": name, "prompt_independent": independent, "evals_per_seed": e,
                     "seconds_per_seed": sec, "cost_ratio_evals": full_evals / e, "cost_ratio_seconds": full_secs / sec,
                     "spearman_within_prompt": stats.within_prompt_spearman(values, full),
                     "spearman_pooled": stats.spearman(values, full), "two_stage": two_stage})
    return {"prompts": len(prompts), "k": k, "seeds": int(full.size), "full_evals_per_seed": full_evals,
            "full_seconds_per_seed": full_secs, "proxies": rows,
            "targets": {"proxy": "cost_ratio >= 4 at spearman >= 0.9",
                        "two_stage": "cheaper >= 10 and same_seed >= 0.9 at K = 100"}}


def check_two_stage(backend, state: dict, setting: Setting, keep: int, full: Setting, limit: int) -> dict:
    """Real ``select(proxy=..., keep=...)`` runs on the first prompts: the seed it returns must be the one the
    simulation from stored scores predicts, and its UNet evaluations are counted."""
    agree, evals, seconds = [], [], []
    for i in range(min(limit, len(state["prompts"]))):
        p = state["prompts"][str(i)]
        proxy = (dict(zip(p["seeds"], p[setting.name]["stability"])) if setting.prompt_independent else
                 Proxy(setting.steps, setting.guidance, setting.inversion_guidance, setting.prompt))
        before, t = evaluations(backend), time.perf_counter()
        r = select(backend, p["prompt"], seeds=p["seeds"], proxy=proxy, keep=keep, steps=full.steps,
                   guidance=full.guidance, inversion_guidance=full.inversion_guidance, progress=False)
        seconds.append(time.perf_counter() - t)
        evals.append(evaluations(backend) - before)
        order = np.argsort(-np.array(p[setting.name]["stability"]), kind="stable")[:keep]
        predicted = max(order, key=lambda j: p["full"]["stability"][j])
        agree.append(r.best_seed == p["seeds"][predicted])
    return {"proxy": setting.name, "keep": keep, "prompts": len(agree), "matches_simulation": sum(agree),
            "evals_per_prompt": statistics.mean(evals), "seconds_per_prompt": statistics.mean(seconds)}


# --- seed bank ----------------------------------------------------------------------------------------

def bank(backend, prompts: list[str], n: int, keep: int, full: Setting, judge, batch: int,
         progress: bool = True) -> dict:
    """Build a bank of ``n`` seeds under the empty prompt, then per prompt fully score its ``keep`` most stable
    and judge the winner's image."""
    before, t = evaluations(backend), time.perf_counter()
    b = build_bank(backend, n, 0, "", full.steps, 1.0, 1.0, batch, progress=progress)
    build = {"seeds": n, "evals": evaluations(backend) - before, "seconds": time.perf_counter() - t}
    picks, passes, evals = [], [], []
    for prompt in tqdm(prompts, desc="bank", unit="prompt", disable=not progress):
        before = evaluations(backend)
        r = select(backend, prompt, seeds=b.seeds, proxy=b.scores, keep=keep, steps=full.steps,
                   guidance=full.guidance, inversion_guidance=full.inversion_guidance, progress=False)
        evals.append(evaluations(backend) - before)
        passes += round_trips(backend, [prompt], lambda chunk: (conditioning(backend, prompt, 1, full.guidance),
                                                                r.best_noise), full.steps, full.guidance,
                              read=lambda chunk, trip: [float(judge(backend.decode(trip.z0), [prompt])[0])],
                              batch_size=1)
        picks.append(r.best_seed)
    return {"bank": build, "keep": keep, "prompts": len(prompts), "top": b.top(keep),
            "distinct_winners": len(set(picks)), "evals_per_prompt": statistics.mean(evals),
            "judge": getattr(judge, "name", type(judge).__name__), "accuracy": stats.mean_ci(passes),
            "per_prompt": passes, "winners": picks}


def _bench_config(store: Store, full: Setting) -> tuple[int, int]:
    row = store.config_with(full.steps, full.guidance, full.inversion_guidance)
    if row is None:
        raise StablenoiseError(f"{store.path} has no run with steps={full.steps}, guidance={full.guidance}, "
                               f"inversion guidance={full.inversion_guidance}")
    return row


def check_bench(bench_db: Path, full: Setting) -> None:
    """Fail before any work when the bench run cannot serve as the reference."""
    store = Store.reference(bench_db)
    try:
        _bench_config(store, full)
    finally:
        store.close()


def compare_with_bench(bank_result: dict, prompts: list[str], bench_db: Path, full: Setting) -> dict:
    """Full per-prompt selection and a random seed on the same prompts, from a bench run of the same settings."""
    store = Store.reference(bench_db)
    try:
        cid, k = _bench_config(store, full)
        # Matched by position: a prompt set may repeat a caption, so the same index must hold the same text.
        texts = store.prompt_texts(cid)
        most, rnd, bank_pass = [], [], []
        for i, (prompt, passed) in enumerate(zip(prompts, bank_result["per_prompt"])):
            if texts.get(i) != prompt:
                continue
            scored = [(st, v) for st, v in store.seed_scores(cid, i, bank_result["judge"])
                      if st is not None and v is not None]
            if not scored:
                continue
            most.append(max(scored)[1])
            rnd.append(statistics.mean(v for _, v in scored))
            bank_pass.append(passed)
    finally:
        store.close()
    return {"bench": str(bench_db), "k": k, "prompts": len(most), "full_selection": stats.mean_ci(most),
            "random": stats.mean_ci(rnd), "bank": stats.mean_ci(bank_pass),
            "bank_minus_full_selection": stats.paired_diff_ci(bank_pass, most),
            "bank_minus_random": stats.paired_diff_ci(bank_pass, rnd)}


# --- the run ------------------------------------------------------------------------------------------

def check_parts(parts) -> None:
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise StablenoiseError(f"unknown perf part(s) {', '.join(unknown)}; use {', '.join(PARTS)}")


def run_perf(backend, out: str | Path, parts=PARTS, prompts: list[str] | None = None, steps: int | None = None,
             guidance: float | None = None, inversion_guidance: float | None = None, batch: int = CPU_BATCH,
             repeats: int = 5, k_batching: int = 32, proxy_prompts: int = 20, proxy_k: int = 100,
             keeps: tuple[int, ...] = (1, 5, 10, 20), bank_seeds: int = 1000, bank_keep: int = 8,
             bank_prompts: int = 200, judge=None, bench_db: Path | None = None, progress: bool = True,
             command: str = "") -> dict:
    check_parts(parts)
    if not prompts:
        raise StablenoiseError("perf needs prompts")
    if "bank" in parts and judge is None:
        raise StablenoiseError("the bank part needs a judge reward (--judge)")
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    full = Setting("full", steps, guidance, inversion_guidance)
    if "bank" in parts and bench_db is not None:
        check_bench(Path(bench_db), full)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "perf.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({"created": now(), "command": command, "versions": versions(), "machine": machine(),
                   "model": backend.describe(),
                   "settings": {"steps": steps, "guidance": guidance, "inversion_guidance": inversion_guidance,
                                "batch": batch, "repeats": repeats}})
    prompt = prompts[0]
    if "overhead" in parts:
        result["overhead"] = overhead(backend, prompt, steps, guidance, inversion_guidance, batch, repeats)
        write_json_atomic(path, result)
    if "batching" in parts:
        result["batching"] = batching(backend, prompt, steps, guidance, inversion_guidance, k_batching,
                                      max(1, repeats // 2))
        write_json_atomic(path, result)
    if "memory" in parts:
        result["memory"] = memory(backend, prompt, steps, guidance, inversion_guidance, 2, repeats)
        write_json_atomic(path, result)
    if "proxies" in parts:
        settings = proxy_settings(steps, guidance, inversion_guidance)
        state = proxy_scores(backend, prompts[:proxy_prompts], proxy_k, settings, batch, out / "proxy_scores.json",
                             progress)
        analysis = analyse_proxies(state, settings, keeps)
        bank_setting = next(s for s in settings if s.name == "empty-prompt")
        keep = min(10, proxy_k)  # select refuses to keep more seeds than it has (a small --proxy-k)
        analysis["checked"] = [check_two_stage(backend, state, bank_setting, keep, full, proxy_prompts),
                               check_two_stage(backend, state, settings[1], keep, full, 3)]
        result["proxies"] = analysis
        write_json_atomic(path, result)
    if "bank" in parts:
        b = bank(backend, prompts[:bank_prompts], bank_seeds, bank_keep, full, judge, batch, progress)
        if bench_db is not None:
            b["against_bench"] = compare_with_bench(b, prompts[:bank_prompts], Path(bench_db), full)
        result["bank"] = b
        write_json_atomic(path, result)
    return result
