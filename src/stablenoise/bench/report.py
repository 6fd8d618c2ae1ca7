"""The bench report: every method of a run against a random seed, written as one self-contained HTML file
(RUN/report.html) and as Markdown with its plots in RUN/report_files/.

Numbers first (``analyze``: every interval of one config, computed once so the same comparison reads the
same everywhere, sweeps, the verdict and benchmarks/regimes_table.py included), then sections of blocks
(``document``) that both renderers share. Methods are keyed by their ids (``methods.Method.id``); which reward
judges is ``judge`` (default: the first pass/fail reward, else the first reward), and a method that looks
at it (best of K by the judge) is an oracle, kept out of the verdict.

All intervals are 95% bootstrap intervals over distinct captions (``stablenoise.stats``; prompts that repeat a
caption are resampled together), each from its own random stream seeded by the config and what it measures,
so an interval does not depend on which other methods a report shows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import stats
from ..errors import StablenoiseError
from ..records import atomic_write
from .document import HTML_MARK, MD_MARK, Code, Heading, Image, Table, Text, render_html, render_markdown
from .figures import plot_deciles, plot_forest, plot_sweep, thumbnail
from .methods import BASELINE, COSTS, Method, Outcome, derive_methods, expand, grid_methods
from .results import ConfigTable, Results, load_results, seed_norms
from .store import STORE_NAME, inside

__all__ = ["load_results", "derive_methods", "analyze", "write_report"]

MISSING = "–"  # what a report shows instead of NaN
STABILITY = "stability"
COMPARATORS = (BASELINE, "most-stable", "least-stable")  # the win rates' columns (method ids)
SETTING_FIELDS = ("model", "steps", "guidance", "inversion_guidance", "k", "first_seed")
SWEEP_AXES = ("steps", "guidance")


# ----------------------------------------------------------------------------- numbers

def is_binary(values) -> bool:
    """A verifier-like reward: every known value is 0 or 1 (shown as a percentage)."""
    v = np.concatenate([np.ravel(x) for x in values])
    v = v[np.isfinite(v)]
    return len(v) > 0 and bool(np.isin(v, (0.0, 1.0)).all())


@dataclass
class ConfigAnalysis:
    table: ConfigTable
    methods: dict[str, Outcome]  # method id -> outcome
    binary: dict[str, bool]  # reward -> pass/fail (a verifier)
    judge: str | None = None  # the reward the verdict judges by
    level: dict = field(default_factory=dict)  # method -> measure -> interval (measure: STABILITY or a reward)
    vs_random: dict = field(default_factory=dict)  # method -> measure -> paired difference
    vs_start: dict = field(default_factory=dict)  # optimizing method -> measure -> paired difference
    wins: dict = field(default_factory=dict)  # reward -> method -> comparator -> win rate
    spearman: dict = field(default_factory=dict)  # reward -> (within prompt, pooled)
    norm_spearman: dict | None = None  # within-prompt Spearman of stability and the noise's norm |eps|
    partial: dict = field(default_factory=dict)  # reward -> within-prompt Spearman with |eps| partialled out
    deciles: dict = field(default_factory=dict)  # reward -> [interval per decile]
    cost: dict = field(default_factory=dict)  # method -> cost -> mean per prompt (None if unknown)
    # (method id, learned reward, verifier, compared with, {"up"/"fails"/"fooled": interval}); per verifier a last
    # row "first seed" with only "fails"
    fooled: list = field(default_factory=list)
    by_tag: dict = field(default_factory=dict)  # reward -> method -> tag -> level (random) or difference
    # verifier -> tag (and ALL) -> {"prompts", "captions", "pass", "fail"}: prompts whose every seed passes / fails
    unanimous: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.table.config

    @property
    def measures(self) -> list[str]:
        return [STABILITY, *self.table.rewards]

    @property
    def verifiers(self) -> list[str]:
        return [r for r in self.table.rewards if self.binary[r]]

    def title(self, method_id: str) -> str:
        return self.methods[method_id].method.title


ALL = "all"  # the row of every tag together


def _measure(m: Outcome, name: str) -> np.ndarray:
    return m.stability if name == STABILITY else m.values[name]


def _mean(x) -> float | None:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def captions(table: ConfigTable) -> np.ndarray:
    """Each prompt's caption (a prompt without text is its own)."""
    return np.array([t or f"#{i}" for t, i in zip(table.texts, table.prompt_idx)], dtype=object)


def _clusters(labels: np.ndarray) -> np.ndarray | None:
    """The bootstrap's clusters: the captions, when there are two or more. Resampling one caption would give an
    interval of width 0; its prompts (independent seeds of that caption) are resampled instead."""
    return labels if len(set(labels)) > 1 else None


def _streams(seed: int, config_id: int):
    """A random stream per interval, named by what it measures: the same comparison gets the same interval
    whichever other numbers are computed."""
    def stream(*key) -> np.random.Generator:
        digest = hashlib.sha256("\0".join(map(str, key)).encode()).digest()
        return np.random.default_rng([seed, config_id, int.from_bytes(digest[:8], "little")])
    return stream


def default_judge(table: ConfigTable, binary: dict[str, bool]) -> str | None:
    """The first pass/fail reward (a verifier), else the first reward; None without rewards."""
    return next((r for r in table.rewards if binary[r]), table.rewards[0] if table.rewards else None)


def analyze(table: ConfigTable, n_boot: int = 1000, seed: int = 0, methods: list[Method] | None = None,
            judge: str | None = None) -> ConfigAnalysis:
    """Every number the report shows for one config.

    Args:
        table: the config's rows; n_boot: bootstrap resamples per interval; seed: the streams' seed.
        methods: the methods to show (None: every method the config has; random always).
        judge: the reward the verdict judges by (None: ``default_judge``; a reward the config lacks: no verdict).
    Returns:
        A ``ConfigAnalysis``: intervals keyed by method id, resampling distinct captions.
    """
    outcomes = derive_methods(table, methods)
    binary = {r: is_binary([table.seeds.scores[r], *(o.scores[r] for o in table.optimized.values())])
              for r in table.rewards}
    a = ConfigAnalysis(table, outcomes, binary, judge if judge is not None else default_judge(table, binary))
    stream, clusters = _streams(seed, table.config.id), _clusters(captions(table))
    _levels(a, n_boot, stream, clusters)
    _relations(a, n_boot, stream, clusters)
    _fooled_all(a, n_boot, stream, clusters)
    _tags(a, n_boot, stream)
    return a


def _levels(a: ConfigAnalysis, n_boot: int, stream, clusters) -> None:
    """Each method's level, its difference from random and from its start, its win rates and cost."""
    random = a.methods[BASELINE]
    for i, m in a.methods.items():
        a.level[i] = {x: stats.mean_ci(_measure(m, x), n_boot, stream("level", i, x), clusters) for x in a.measures}
        a.cost[i] = {c: _mean(m.cost[c]) for c in COSTS}
        if i != BASELINE:
            a.vs_random[i] = {x: stats.paired_diff_ci(_measure(m, x), _measure(random, x), n_boot,
                                                      stream("vs random", i, x), clusters) for x in a.measures}
        if m.start is not None:
            a.vs_start[i] = {x: stats.paired_diff_ci(_measure(m, x), m.start[x], n_boot, stream("vs start", i, x),
                                                     clusters) for x in a.measures}
    for r in a.table.rewards:
        a.wins[r] = {}
        for i, m in a.methods.items():
            if i == BASELINE:
                continue
            row = {c: stats.win_rate(m.values[r], a.methods[c].values[r], n_boot, stream("win", r, i, c), clusters)
                   for c in COMPARATORS if c != i and c in a.methods}
            if m.start is not None:
                row["its start"] = stats.win_rate(m.values[r], m.start[r], n_boot, stream("win", r, i, "start"),
                                                  clusters)
            a.wins[r][i] = row


def _relations(a: ConfigAnalysis, n_boot: int, stream, clusters) -> None:
    """Stability against each reward (and the noise's norm) over each prompt's seeds."""
    s = a.table.seeds
    for r in a.table.rewards:
        a.spearman[r] = (stats.within_prompt_spearman(s.stability, s.scores[r], n_boot, stream("within", r), clusters),
                         stats.pooled_spearman(s.stability, s.scores[r], n_boot, stream("pooled", r), clusters))
        a.deciles[r] = stats.by_decile(s.stability, s.scores[r], n_boot, stream("deciles", r), clusters=clusters)
    norms = seed_norms(a.table)
    if norms is not None:
        a.norm_spearman = stats.within_prompt_spearman(s.stability, norms, n_boot, stream("norm"), clusters)
        a.partial = {r: stats.within_prompt_partial_spearman(s.stability, s.scores[r], norms, n_boot,
                                                             stream("partial", r), clusters)
                     for r in a.table.rewards}


def _fooled_rates(values: dict, base: dict, reward: str, verifier: str, n_boot: int, stream, clusters) -> dict:
    """Per prompt: did the learned reward rise over the base seed, does the verifier fail, and both."""
    up, fails = values[reward] > base[reward], values[verifier] == 0
    known = np.isfinite(values[reward]) & np.isfinite(base[reward]) & np.isfinite(values[verifier])
    return {k: stats.mean_ci(np.where(known, x, np.nan), n_boot, stream(k), clusters)
            for k, x in (("up", up), ("fails", fails), ("fooled", up & fails))}


def _fooled_all(a: ConfigAnalysis, n_boot: int, stream, clusters) -> None:
    """Each candidate against the seed it replaces: best of K by a learned reward against a random draw (the
    first seed), an optimizing method against the noise it started from (its start rows)."""
    learned = [r for r in a.table.rewards if not a.binary[r]]
    first = a.methods[BASELINE].shown_values
    for verifier in a.verifiers if learned else []:
        for reward in learned:
            best = Method("best", reward).id
            candidates = [(best, first)] if best in a.methods else []
            candidates += [(i, m.start) for i, m in a.methods.items() if m.start is not None]
            for i, base in candidates:
                a.fooled.append((i, reward, verifier, "first seed" if base is first else "its start",
                                 _fooled_rates(a.methods[i].values, base, reward, verifier, n_boot,
                                               lambda k: stream("fooled", i, reward, verifier, k), clusters)))
        v = first[verifier]  # for reference: how often a random draw fails
        a.fooled.append(("first seed", MISSING, verifier, MISSING,
                         {"fails": stats.mean_ci(np.where(np.isfinite(v), v == 0, np.nan), n_boot,
                                                 stream("first seed fails", verifier), clusters)}))


def _tags(a: ConfigAnalysis, n_boot: int, stream) -> None:
    """Per tag of the prompt set: random's level and each method's difference from it, by each reward; and, per
    verifier, the prompts whose every seed passes or fails (counted in every mean: their differences are 0)."""
    t, labels = a.table, captions(a.table)
    tags = np.array(t.tags, dtype=object)
    groups = {**({tag: tags == tag for tag in dict.fromkeys(t.tags)} if len(set(t.tags)) > 1 else {}),
              ALL: np.ones(t.n_prompts, dtype=bool)}
    random = a.methods[BASELINE]
    for r in t.rewards:
        a.by_tag[r] = {i: {tag: stats.mean_ci(m.values[r][g], n_boot, stream("tag level", r, i, tag),
                                              _clusters(labels[g])) if i == BASELINE else
                           stats.paired_diff_ci(m.values[r][g], random.values[r][g], n_boot,
                                                stream("tag", r, i, tag), _clusters(labels[g]))
                           for tag, g in groups.items() if tag != ALL}
                       for i, m in a.methods.items()}
    for v in a.verifiers:
        passes, fails = stats.unanimous(t.seeds.scores[v])
        a.unanimous[v] = {tag: {"prompts": int(g.sum()), "captions": len(set(labels[g])),
                                "pass": int(passes[g].sum()), "fail": int(fails[g].sum())}
                          for tag, g in groups.items()}


# ----------------------------------------------------------------------------- formatting

def fmt_ci(ci: dict | None, percent: bool = False, signed: bool = False, mark: bool = False) -> str:
    """"0.253 [0.241, 0.266]"; percentages for 0/1 rewards ("62.5% [50.0, 75.0]", differences in
    percentage points); ``mark`` appends " *" when the interval excludes 0."""
    scale, digits = (100, 1) if percent else (1, 3)
    unit = (" pp" if signed else "%") if percent else ""
    return stats.interval_text(ci, scale, digits, "+" if signed else "", unit=unit, mark=mark, missing=MISSING)


def fmt_value(x, binary: bool = False) -> str:
    """One sample's score: pass/fail for a 0/1 reward."""
    if x is None or not math.isfinite(x):
        return MISSING
    return ("pass" if x == 1 else "fail") if binary else f"{x:.3f}"


def fmt_count(x) -> str:
    if x is None or not math.isfinite(x):
        return MISSING
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


# ----------------------------------------------------------------------------- sections

def _prompts(n: int) -> str:
    return f"{n} prompt" + ("" if n == 1 else "s")


def _captions(n: int) -> str:
    return f"{n} caption" + ("" if n == 1 else "s")


def _said(d: dict, percent: bool) -> str:
    scale, unit = (100, " points") if percent else (1, "")
    word = "helps" if d["lo"] > 0 else "hurts" if d["hi"] < 0 else "makes no clear difference"
    return f"{word} ({stats.interval_text(d, scale, sign='+', unit=unit)})"


def _ties(a: ConfigAnalysis) -> str:
    """What the intervals resample, and how many prompts cannot differ (every seed passes, or every seed fails,
    the judge): they count as ties."""
    n = len(set(captions(a.table)))
    text = " Intervals resample " + (f"its {n} distinct captions" if n > 1 else "its prompts (one caption)")
    u = a.unanimous.get(a.judge, {}).get(ALL)
    if u is not None:
        text += (f"; the {u['pass']} prompts where every seed passes and the {u['fail']} where every seed fails "
                 f"(of {u['prompts']}) count as ties, a difference of 0")
    return text + "."


def _verdict(analyses: list[ConfigAnalysis]) -> list:
    """What a reader needs first: per config, does choosing by stability beat a random seed, by the judge, with
    the forest plot of every method's difference (oracles, which look at the judge, left out)."""
    lines, forest = [], []
    for a in analyses:
        if a.judge not in a.binary:
            continue
        shown = {i: d[a.judge] for i, d in a.vs_random.items() if d.get(a.judge) is not None
                 and not a.methods[i].method.oracle(a.judge)}
        parts = [f"{a.title(i)} {_said(d, a.binary[a.judge])}" for i, d in shown.items()
                 if a.methods[i].method.entry.verdict]
        if parts:
            lines.append(f"Config {a.config.id} ({a.config.label()}), judged by {a.judge} against a random seed: "
                         + "; ".join(parts) + "." + _ties(a))
        forest += [(f"{a.config.id}: {a.title(i)}", d) for i, d in shown.items()
                   if not a.methods[i].method.entry.ablation]
    if not lines:
        return []
    percent = all(a.binary.get(a.judge, False) for a in analyses)
    blocks = [Heading("Verdict"), *[Text(line) for line in lines]]
    if forest:
        blocks.append(Image(plot_forest(forest, "difference from a random seed" + (" (points)" if percent else ""),
                                        100 if percent else 1), "verdict.png",
                            "Each method minus a random seed (same prompts), 95% intervals over captions; green: "
                            "better, red: worse, grey: no clear difference"))
    return blocks


def _header(results: Results, analyses: list[ConfigAnalysis]) -> list:
    configs = [a.config for a in analyses]
    blocks = [Text(f"Run folder: {results.run_dir}. Models: {', '.join(dict.fromkeys(c.model for c in configs))}. "
                   f"Prompt sets: {', '.join(dict.fromkeys(c.prompt_set for c in configs))}."),
              Table(["config", "prompt set", "model", "steps", "guidance", "inversion guidance", "K", "first seed",
                     "prompts", "optimizing methods"],
                    [[str(c.id), c.prompt_set, c.model, str(c.steps), f"{c.guidance:g}", f"{c.inversion_guidance:g}",
                      str(c.k), str(c.first_seed), str(a.table.n_prompts), ", ".join(a.table.optimized) or MISSING]
                     for c, a in zip(configs, analyses)], "Run configs")]
    versions: dict[str, list] = {}
    for c in configs:
        for key, value in c.versions.items():
            versions.setdefault(key, [])
            if str(value) not in versions[key]:
                versions[key].append(str(value))
    if versions:
        blocks.append(Table(["package", "version"], [[k, " / ".join(v)] for k, v in versions.items()],
                            "Package versions (of every config; several when configs differ)"))
    # The runner keeps every command that wrote to the store in meta["commands"] (a JSON list).
    try:
        commands = [str(c) for c in json.loads(results.meta.get("commands", "[]"))]
    except ValueError:
        commands = []
    if commands:
        blocks += [Text("Command:"), *[Code(c) for c in commands]]
    blocks.append(Text(
        "Methods: random = the mean over a prompt's K seeds (what a random seed gives on average); most / least "
        "stable = the seed of highest / lowest inversion stability; most stable (VARIANT) = chosen by a stability "
        "variant; most stable of k = among the first k seeds only; best of K by R = the seed with the highest "
        "reward R (an oracle when R is the judge); other rows are optimizing methods. Intervals are 95% bootstrap "
        "intervals over distinct captions (prompts that repeat a caption are resampled together); 0/1 rewards are "
        "shown as percentages; – = no value."))
    return blocks


def _rows_union(analyses: list[ConfigAnalysis]) -> dict[str, str]:
    """Every method id of the configs, in order -> its title."""
    return {i: m.method.title for a in analyses for i, m in a.methods.items()}


def _table1(analyses: list[ConfigAnalysis]) -> list:
    """The paper's Table 1 per setting: methods x rewards, the prompt sets of one setting side by side."""
    blocks = [Heading("Results per method (mean over prompts [95% CI over captions])")]
    settings: dict[tuple, list[ConfigAnalysis]] = {}
    for a in analyses:
        settings.setdefault(tuple(getattr(a.config, f) for f in SETTING_FIELDS), []).append(a)
    for group in settings.values():
        c = group[0].config
        sets = [a.config.prompt_set for a in group]
        labels = [s if sets.count(s) == 1 else f"{s} (config {a.config.id})" for s, a in zip(sets, group)]
        headers, groups = ["method"], []
        for label, a in zip(labels, group):
            headers += a.measures
            groups.append((f"{label} ({_prompts(a.table.n_prompts)})", len(a.measures)))
        caption = (f"{c.model} · {c.steps} steps · guidance {c.guidance:g} · inversion guidance "
                   f"{c.inversion_guidance:g} · K={c.k}")
        if len(group) == 1:  # one prompt set: named in the caption, no column groups needed
            caption, groups = f"{groups[0][0]} · {caption}", None
        rows = []
        for i, title in _rows_union(group).items():
            row = [title]
            for a in group:
                row += [fmt_ci(a.level.get(i, {}).get(x), percent=a.binary.get(x, False)) for x in a.measures]
            rows.append(row)
        blocks.append(Table(headers, rows, caption, groups))
    return blocks


def _differences(a: ConfigAnalysis) -> list:
    pct = a.binary
    blocks = [Table(["method", *a.measures],
                    [[a.title(i), *(fmt_ci(d[x], pct.get(x, False), signed=True, mark=True) for x in a.measures)]
                     for i, d in a.vs_random.items()],
                    "Paired difference vs random (same prompts); * = the 95% interval excludes 0")]
    if a.vs_start:
        blocks.append(Table(["method", *a.measures],
                            [[f"{a.title(i)} − its start",
                              *(fmt_ci(d[x], pct.get(x, False), signed=True, mark=True) for x in a.measures)]
                             for i, d in a.vs_start.items()],
                            "Optimizing methods vs the noise they started from (same prompt and seed; with preserve_norm "
                            "the seed's noise on the shell)"))
    return blocks


def _win_rates(a: ConfigAnalysis) -> list:
    blocks = []
    for r, rows in a.wins.items():
        columns = [c for c in COMPARATORS if c in a.methods] + (["its start"] if a.vs_start else [])
        blocks.append(Table(["method", *(f"vs {a.title(c) if c in a.methods else c}" for c in columns)],
                            [[a.title(i), *(fmt_ci(row[c], percent=True) if c in row else MISSING for c in columns)]
                             for i, row in rows.items()],
                            f"Win rate by {r}: share of prompts where the method scores higher (ties count half)"))
    return blocks


def _correlation(a: ConfigAnalysis) -> list:
    if not a.spearman:
        return [Text("No rewards scored yet.")]
    rows = []
    for r, (within, pooled) in a.spearman.items():
        rows.append([r, fmt_ci(within, signed=True), str(within["n"]) if within else "0",
                     str(within["skipped"]) if within else MISSING, fmt_ci(pooled, signed=True),
                     fmt_ci(a.partial.get(r), signed=True)])
    blocks = [Table(["reward", "within prompt", "prompts", "skipped (constant)", "pooled", "within, |ε| partialled out"],
                    rows, "Spearman correlation between a seed's stability and its reward: within prompt (mean over "
                    "prompts of each prompt's correlation over its K seeds), pooled over all (prompt, seed) pairs, and "
                    "within prompt with the noise's norm |ε| partialled out")]
    if a.config.noise_norm == "shell":
        blocks.append(Text("Every noise was on the √d shell: |ε| is the same for every seed, so the norm cannot "
                           "explain stability here."))
    elif a.norm_spearman is not None:
        blocks.append(Text(f"Within-prompt Spearman between stability and the noise's norm |ε|: "
                           f"{fmt_ci(a.norm_spearman, signed=True)} (a few-step DDIM round trip rewards long noises; "
                           "--noise-norm shell removes that)."))
    return blocks


def _decile_section(a: ConfigAnalysis, name: str) -> list:
    rewards = list(a.deciles)
    if not rewards:
        return []
    rows = []
    for d in range(stats.DECILES):
        n = max((a.deciles[r][d]["n"] for r in rewards if a.deciles[r][d]), default=0)
        rows.append([str(d + 1), str(n), *(fmt_ci(a.deciles[r][d], percent=a.binary[r]) for r in rewards)])
    return [Table(["decile", "prompts", *rewards], rows,
                  "Reward by within-prompt stability decile (1 = the least stable tenth of each prompt's seeds; "
                  "with fewer than 10 seeds per prompt some deciles hold few prompts)"),
            Image(plot_deciles(a.deciles, a.binary, a.config.label()), f"{name}-deciles.png",
                  "Reward by within-prompt stability decile, with 95% intervals over captions")]


def _costs(a: ConfigAnalysis) -> list:
    return [Table(["method", "UNet calls", "reward calls", "seconds"],
                  [[a.title(i), *(fmt_count(c[k]) for k in COSTS)] for i, c in a.cost.items()],
                  "Cost per prompt (mean over prompts). Image-only seconds are the image's share of a seed row's "
                  "time; best of K by a reward counts K reward calls")]


def _fooled(a: ConfigAnalysis) -> list:
    if not a.fooled:
        return []
    rows = [[a.title(i) if i in a.methods else i, learned, verifier, base,
             *(fmt_ci(c.get(k), percent=True) for k in ("up", "fails", "fooled"))]
            for i, learned, verifier, base, c in a.fooled]
    return [Table(["method", "learned reward", "verifier", "compared with", "learned reward up", "verifier fails",
                   "fooled: up and fails"], rows,
                  "Fooled: how often the learned reward rose over the seed the method replaced while the verifier "
                  "fails the image (last row: how often a random seed fails)")]


def _tag_sections(a: ConfigAnalysis) -> list:
    """Per tag of the prompt set, by each reward: random's level and each method's difference from it; and the
    prompts whose every seed passes or fails the verifier."""
    blocks = []
    tags = list(next(iter(a.by_tag.values()), {}).get(BASELINE, {}))
    counts = next(iter(a.unanimous.values()), None)
    headers = ["method", *(f"{tag} ({_prompts(counts[tag]['prompts'])}, {_captions(counts[tag]['captions'])})"
                           if counts else tag for tag in tags)]
    for r, rows in a.by_tag.items() if tags else ():
        pct = a.binary[r]
        blocks.append(Table(headers, [[a.title(i) + ("" if i == BASELINE else " − random"),
                                       *(fmt_ci(row[tag], pct, signed=i != BASELINE, mark=i != BASELINE)
                                         for tag in tags)] for i, row in rows.items()],
                            f"By tag, {r}: random's level, then each method minus random (same prompts), 95% "
                            "intervals over the tag's captions (over its prompts where it has one caption); * = the "
                            "interval excludes 0"))
    for v, by in a.unanimous.items():
        blocks.append(Table(["tag", "prompts", "captions", "every seed passes", "every seed fails"],
                            [[tag, *(str(c[k]) for k in ("prompts", "captions", "pass", "fail"))]
                             for tag, c in by.items()],
                            f"Prompts whose seeds all agree by {v}: they stay in every mean (choosing among them "
                            "changes nothing, a difference of 0)"))
    return blocks


def _pick_prompts(table: ConfigTable, n: int) -> list[int]:
    """Up to n prompt positions, taken in turn from each tag so that every tag is shown."""
    by_tag: dict[str, list[int]] = {}
    for i, tag in enumerate(table.tags):
        by_tag.setdefault(tag, []).append(i)
    picked, queues = [], [list(v) for v in by_tag.values()]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return sorted(picked)


def inside_run(run_dir: Path, image_path) -> Path | None:
    """A store's image path, resolved, if it lies inside the run folder. A report may be shared: it must not
    embed other local files, whether the store names them by an absolute or ``..`` path or by a symlink."""
    if not isinstance(image_path, str) or not image_path:
        return None
    try:
        return inside(run_dir, image_path).resolve()
    except (StablenoiseError, OSError, ValueError):  # outside the run; a loop of symlinks; a NUL byte
        return None


def _grid(a: ConfigAnalysis, run_dir: Path, n: int, name: str) -> list:
    t = a.table
    columns = grid_methods(a.methods)
    first = t.rewards[0] if t.rewards else None
    rows = []
    for p in _pick_prompts(t, n):
        row = [f"{t.tags[p]}: {t.texts[p]}" if t.tags[p] else t.texts[p]]
        for j, column in enumerate(columns):
            m = a.methods[column]
            path = inside_run(run_dir, m.image[p])
            png = thumbnail(path) if path else None
            caption = f"stability {fmt_value(m.shown_stability[p])}"
            if first:
                caption += f" · {first} {fmt_value(m.shown_values[first][p], a.binary[first])}"
            row.append(Image(png, f"{name}-grid-{t.prompt_idx[p]}-{j}.png", caption) if png else MISSING)
        rows.append(row)
    if not rows:
        return []
    headers = ["prompt", *(a.title(i) + (" (first seed)" if i == BASELINE else "") for i in columns)]
    return [Table(headers, rows, f"Images of {_prompts(len(rows))} (each tile: stability · {first or 'no reward'})")]


def _sweeps(analyses: list[ConfigAnalysis]) -> list:
    """Gain over random against steps (or guidance) where configs differ only in that."""
    blocks = []
    for axis in SWEEP_AXES:
        others = [f for f in ("prompt_set", *SETTING_FIELDS) if f != axis]
        groups: dict[tuple, dict] = {}
        for a in analyses:
            groups.setdefault(tuple(getattr(a.config, f) for f in others), {}).setdefault(getattr(a.config, axis), a)
        for key, by_x in groups.items():
            if len(by_x) < 2:
                continue
            xs = sorted(by_x)
            members = [by_x[x] for x in xs]
            methods = {i: title for i, title in _rows_union(members).items() if i != BASELINE and not any(
                a.methods[i].method.entry.ablation for a in members if i in a.methods)}
            rewards = list(dict.fromkeys(r for a in members for r in a.table.rewards))
            series = {r: {title: [a.vs_random.get(i, {}).get(r) for a in members] for i, title in methods.items()}
                      for r in rewards}
            c = members[0].config
            title = (f"{c.prompt_set} · {c.model}" + ("" if axis == "steps" else f" · {c.steps} steps")
                     + ("" if axis == "guidance" else f" · guidance {c.guidance:g}"))
            blocks.append(Heading(f"Sweep over {axis}: {title}", 3))
            for r in rewards:
                pct = any(a.binary.get(r, False) for a in members)
                blocks.append(Table([f"method \\ {axis}", *(f"{x:g}" for x in xs)],
                                    [[title, *(fmt_ci(ci, pct, signed=True, mark=True) for ci in series[r][title])]
                                     for title in methods.values()],
                                    f"{r}: gain over random; * = the interval excludes 0"))
            name = f"sweep-{axis}-{'-'.join(str(a.config.id) for a in members)}"
            percent = {r: any(a.binary.get(r, False) for a in members) for r in rewards}
            blocks.append(Image(plot_sweep(axis, xs, series, percent, title), f"{name}.png",
                                f"Gain over random vs {axis}, with 95% intervals over captions"))
    return [Heading("Sweeps"), *blocks] if blocks else []


def check_methods(results: Results, methods: list[Method] | None) -> None:
    """Refuse a requested method that no config of the run can show (a reward it did not score, an optimizing
    method it did not run)."""
    for m in methods or ():
        if not any(expand(t, m) for t in results.tables):
            raise StablenoiseError(f"method {m.id} has nothing to show in {results.run_dir}: no config has "
                                   f"what it needs")


def build(results: Results, grid_prompts: int = 8, n_boot: int = 1000, seed: int = 0,
          methods: list[Method] | None = None, judge: str | None = None) -> list:
    """The report's blocks: ``methods`` (None: every method each config has) judged by ``judge`` (see
    :func:`analyze`)."""
    analyses = [analyze(t, n_boot, seed, methods, judge) for t in results.tables]
    blocks = _verdict(analyses) + _header(results, analyses) + _table1(analyses) + _sweeps(analyses)
    for a in analyses:
        name = f"config-{a.config.id}"
        blocks += [Heading(f"Config {a.config.id}: {a.config.label()} ({_prompts(a.table.n_prompts)})"),
                   Heading("Differences", 3), *_differences(a), *_tag_sections(a),
                   Heading("Win rates", 3), *_win_rates(a),
                   Heading("Stability and reward", 3), *_correlation(a), *_decile_section(a, name),
                   Heading("Cost", 3), *_costs(a)]
        if a.fooled:
            blocks += [Heading("Fooled rewards", 3), *_fooled(a)]
        if grid_prompts > 0:
            blocks += [Heading("Images", 3), *_grid(a, results.run_dir, grid_prompts, name)]
    from ..study.results import report_blocks  # the run's human preference studies, if any
    return blocks + report_blocks(results.run_dir, n_boot, seed)


# The names _decile_section, _grid and _sweeps give their images: what a report's _files folder may hold.
REPORT_FILE = re.compile(r"(verdict|config-\d+-(deciles|grid-\d+-\d+)|sweep-(steps|guidance)(-\d+)+)\.png")
# The openings of a report's outputs: the marked ones, and those written before the mark (docs/bench-*).
REPORT_OPENINGS = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{HTML_MARK}\n', f"{MD_MARK}\n",
                   '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>stablenoise bench report: ',
                   "# stablenoise bench report: ")


def _written_by_report(path: Path) -> bool:
    """A report's HTML or Markdown (by its opening), or its plot folder (only a report's image names, no
    symlinks, which a rewrite would follow out of the folder)."""
    try:
        if path.is_dir():
            return not path.is_symlink() and all(
                f.is_file() and not f.is_symlink() and REPORT_FILE.fullmatch(f.name) for f in path.iterdir())
        with open(path, "rb") as f:
            opening = f.read(200)
    except OSError:  # a dangling symlink, an unreadable file
        return False
    return any(opening.startswith(o.encode()) for o in REPORT_OPENINGS)


def check_outputs(run_dir: Path, outputs: dict[str, Path]) -> None:
    """Refuse, before anything is written, outputs that would destroy what a report did not write: the
    results store (by any path: symlink, hard link, ``..``), an existing file or folder without a report's
    mark, two outputs on one path, or a path below a file."""
    store = [run_dir / f"{STORE_NAME}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")]
    seen: dict[Path, str] = {}
    for label, path in outputs.items():
        resolved = path.resolve()
        if resolved in seen:
            raise StablenoiseError(f"{label} {path} is also {seen[resolved]}: give each output its own path")
        seen[resolved] = label
        if any(resolved == s.resolve() or (path.exists() and s.exists() and os.path.samefile(path, s))
               for s in store):
            raise StablenoiseError(f"{label} {path} is the run's results store: choose another path")
        above = next(p for p in resolved.parents if p.exists())
        if not above.is_dir():
            raise StablenoiseError(f"cannot write {label} {path}: {above} is a file, not a folder")
        if (path.exists() or path.is_symlink()) and not _written_by_report(path):
            raise StablenoiseError(f"{label} {path} exists and was not written by a stablenoise report: "
                                   f"move it or choose another path")


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    except OSError as e:
        raise StablenoiseError(f"cannot write {path}: {e.strerror or e}") from None


def write_report(run_dir, out_html=None, out_md=None, grid_prompts: int = 8, n_boot: int = 1000,
                 seed: int = 0, methods: list[Method] | None = None, judge: str | None = None,
                 strict: bool = True) -> tuple[Path, Path]:
    """Write RUN/report.html (self-contained) and RUN/report.md (plots in report_files/ next to it),
    overwriting only a report's own earlier outputs (``check_outputs``).

    Args:
        run_dir: the bench's run folder; out_html, out_md: other places for the two files.
        grid_prompts: prompts per image grid (0: none); n_boot, seed: the bootstrap.
        methods, judge: see :func:`analyze`.
        strict: refuse a requested method that no config can show (``check_methods``); the bench's own report
            at the end of a run is not strict.
    Returns:
        The paths of the HTML and the Markdown report.
    """
    run_dir = Path(run_dir)
    html_path = Path(out_html) if out_html else run_dir / "report.html"
    md_path = Path(out_md) if out_md else run_dir / "report.md"
    files = md_path.parent / f"{md_path.stem}_files"
    # First: a refused report does not even open the store (opening a WAL store adds its -shm file).
    check_outputs(run_dir, {"HTML report": html_path, "Markdown report": md_path, "plot folder": files})
    results = load_results(run_dir)
    if strict:
        check_methods(results, methods)
    blocks = build(results, grid_prompts, n_boot, seed, methods, judge)
    title = f"stablenoise bench report: {results.run_dir.resolve().name}"
    markdown, images = render_markdown(title, blocks, files.name)
    for name, png in images.items():
        _write(files / name, png)
    _write(html_path, render_html(title, blocks).encode("utf-8"))
    _write(md_path, markdown.encode("utf-8"))
    return html_path, md_path
