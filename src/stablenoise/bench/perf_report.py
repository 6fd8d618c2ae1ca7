"""perf.json as Markdown tables: what ``stablenoise perf`` prints and docs/performance.md quotes."""

from __future__ import annotations

from functools import partial

from ..stats import interval_text

_ci = partial(interval_text, missing="n/a")


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def _yes(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _overhead(o: dict) -> list[str]:
    """The report's overhead section."""
    lines = ["## Scoring overhead", "",
              "| batch | denoiser calls | stability() s | raw calls s | overhead | target |", "|---|---|---|---|---|---|",
              f"| {o['batch']} | {o['denoiser_calls']} | {o['seconds']['stability']:.3f} | "
              f"{o['seconds']['raw_denoiser_calls']:.3f} | {100 * o['overhead']:.1f}% | ≤ 10%: "
              f"{_yes(o['overhead'] <= 0.10)} |", ""]
    return lines


def _batching(b: dict) -> list[str]:
    """The report's batching section."""
    lines: list[str] = []
    sec = b["seconds"]
    lines += [f"## Batched vs per-seed selection (K = {b['k']})", "",
              "| batch | seconds | speed-up over one seed per call |", "|---|---|---|",
              f"| 1 | {sec['per_seed']:.2f} | 1.00 |",
              f"| auto ({b['auto_batch_on_this_device']}) | {sec['auto']:.2f} | {b['speedup_auto']:.2f} |",
              f"| {b['k']} | {sec['all']:.2f} | {b['speedup_all']:.2f} |", "",
              f"Same best seed in all three: {b['same_best_seed']}. Target ≥ 2×: "
              f"{_yes(b['speedup_auto'] >= 2)}.", ""]
    return lines


def _memory(mem: dict) -> list[str]:
    """The report's memory section."""
    lines: list[str] = []
    cuda = any("plain_peak_bytes_cuda" in row for row in mem["rows"])
    head = "| T | held, plain (MiB) | held, checkpoint (MiB) | ratio | peak est., plain | peak est., checkpoint |"
    lines += [f"## Optimization memory (batch {mem['batch']})", "",
              "Bytes autograd holds for backward (saved-tensor hooks + checkpoint inputs; weights excluded). "
              f"CPU peak estimate = held + the largest recomputed call ({_mib(mem['one_call_bytes'])} MiB) "
              "with checkpointing.", "",
              head + (" CUDA peak plain | CUDA peak checkpoint |" if cuda else ""),
              "|---|---|---|---|---|---|" + ("---|---|" if cuda else "")]
    def cell(row, key):
        return "out of memory" if key not in row else _mib(row[key])

    for row in mem["rows"]:
        ratio = f"{row['held_ratio']:.4f}" if "held_ratio" in row else "n/a"
        line = (f"| {row['steps']} | {cell(row, 'plain_held_bytes')} | {cell(row, 'checkpoint_held_bytes')} | "
                f"{ratio} | {cell(row, 'plain_peak_bytes_cpu_estimate')} | "
                f"{cell(row, 'checkpoint_peak_bytes_cpu_estimate')} |")
        if cuda:
            line += f" {cell(row, 'plain_peak_bytes_cuda')} | {cell(row, 'checkpoint_peak_bytes_cuda')} |"
        lines.append(line)
    p, h, t = (mem["peak_ratio_checkpoint_T8_over_T1"], mem["held_ratio_checkpoint_over_plain_T8"], mem["time"])
    held = (f"held at T = 8, checkpoint / plain: {100 * h:.2f}% (target ≤ 1%: {_yes(h <= 0.01)})" if h is not None
            else "held at T = 8 without checkpointing: out of memory")
    lines += ["", f"With checkpointing, peak at T = 8 / peak at T = 1: {p:.3f} (target ≤ 1.5: {_yes(p <= 1.5)}); "
              f"{held}.", "",
              f"Time at T = {t['steps']}: an iteration (forward + backward) = {t['iteration_plain_over_score']:.2f} "
              f"scores plain, {t['iteration_checkpoint_over_score']:.2f} with checkpointing "
              f"(checkpoint / plain {t['checkpoint_over_plain']:.2f}).", ""]
    return lines


def _proxies(px: dict) -> list[str]:
    """The report's proxies section."""
    lines: list[str] = []
    keeps = [t["keep"] for t in px["proxies"][0]["two_stage"]]
    lines += [f"## Proxies ({px['prompts']} prompts × {px['k']} seeds = {px['seeds']} seeds; full score "
              f"{px['full_evals_per_seed']:.0f} UNet evaluations per seed)", "",
              "| proxy | bank? | evals/seed | cheaper (evals) | cheaper (s) | Spearman within prompt | pooled | "
              + " | ".join(f"same seed, keep {k} (× cheaper)" for k in keeps) + " |",
              "|---|---|---|---|---|---|---|" + "---|" * len(keeps)]
    for row in px["proxies"]:
        cells = [f"{100 * t['same_seed']['mean']:.0f}% ({t['cheaper']:.1f}×)" for t in row["two_stage"]]
        lines.append(f"| {row['proxy']} | {'yes' if row['prompt_independent'] else 'no'} | "
                     f"{row['evals_per_seed']:.0f} | {row['cost_ratio_evals']:.1f} | {row['cost_ratio_seconds']:.1f} | "
                     f"{_ci(row['spearman_within_prompt'], digits=3)} | {row['spearman_pooled']:.3f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "A bank proxy (prompt-independent) is computed once per model, so per prompt two-stage "
              "selection pays only the kept seeds' full scores.", ""]
    for c in px.get("checked", []):
        lines.append(f"- real `select(proxy={c['proxy']}, keep={c['keep']})` on {c['prompts']} prompts: same seed "
                     f"as the simulation on {c['matches_simulation']}; {c['evals_per_prompt']:.0f} UNet evaluations "
                     f"and {c['seconds_per_prompt']:.2f} s per prompt")
    lines.append("")
    return lines


def _bank(b: dict) -> list[str]:
    """The report's bank section."""
    lines = [f"## Seed bank ({b['bank']['seeds']} seeds under the empty prompt; keep {b['keep']})", "",
              f"- built once: {b['bank']['evals']} UNet evaluations, {b['bank']['seconds']:.0f} s",
              f"- per prompt: {b['evals_per_prompt']:.0f} UNet evaluations (the kept seeds' full scores); "
              f"{b['distinct_winners']} distinct winning seeds over {b['prompts']} prompts",
              f"- {b['judge']} accuracy of the bank's pick: {_ci(b['accuracy'], 100, unit='%')}"]
    a = b.get("against_bench")
    if a:
        lines += [f"- on the same {a['prompts']} prompts, from {a['bench']} (K = {a['k']}): full per-prompt "
                  f"selection {_ci(a['full_selection'], 100, unit='%')}, random seed {_ci(a['random'], 100, unit='%')}; "
                  f"bank − full selection {_ci(a['bank_minus_full_selection'], 100)} points, bank − random "
                  f"{_ci(a['bank_minus_random'], 100)} points"]
    lines.append("")
    return lines

def markdown(r: dict) -> str:
    s = r.get("settings", {})
    m = r.get("machine", {})
    lines = [f"# stablenoise perf — {r.get('model', {}).get('name', '?')}", "",
             f"{r.get('created', '')}; {m.get('gpu') or m.get('processor', '')}, {m.get('cpu_count')} CPUs, "
             f"torch {r.get('versions', {}).get('torch', '?')} ({m.get('torch_threads')} threads); full score: "
             f"{s.get('steps')} steps, guidance {s.get('guidance')}, inversion guidance {s.get('inversion_guidance')}.",
             ""]
    if r.get("command"):
        lines += [f"`{r['command']}`", ""]
    for key, section in SECTIONS:
        if key in r:
            lines += section(r[key])
    return "\n".join(lines)


SECTIONS = (("overhead", _overhead), ("batching", _batching), ("memory", _memory), ("proxies", _proxies),
            ("bank", _bank))  # in report order
