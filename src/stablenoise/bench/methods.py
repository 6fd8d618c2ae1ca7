"""The methods a bench compares: one registry that says, per method, how it runs, how its per-prompt outcome is
derived from the store, and what it costs.

A method is a registered ``Kind`` with an optional argument (``best:shapes-clip``, ``most-stable-of:4``) or,
for an optimizing method, settings (``optimize:lr=18.75,preserve_norm=1``). Its ``id`` names it everywhere:
in ``--methods``, in the store (an optimizing method's rows carry its id in ``samples.method``, the noise it
started from ``id + START_SUFFIX``), and in the report, which keys on ids and on ``oracle`` (whether the
method looks at the judging reward), never on display text.

- Selection methods (``choose``) pick one of each prompt's K scored seeds; they add no rows, so adding one to
  a finished run costs nothing.
- Optimizing methods (``run``) add one optimized noise per prompt, started from the prompt's first seed.

A new method is one ``register(Kind(...))``; another package registers one under the entry-point group
``stablenoise.methods`` (the entry point names a ``Kind``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import StablenoiseError
from ..plugins import Registry
from ..settings import OptimizerSettings
from .schema import STABILITY_PREFIX

if TYPE_CHECKING:
    from .results import ConfigTable, Rows

BASELINE = "random"  # every difference the report shows is against it, so it is always derived
COSTS = ("unet_calls", "reward_calls", "seconds")
ABLATION_KS = (1, 4, 16, 100)  # "most stable of k": the first k seeds only
DEFAULT_METHODS = "random,most-stable,least-stable,most-stable-of,best,optimize,reno"


def _nothing(method: "Method") -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Kind:
    """A registered method. ``choose`` makes it a selection method, ``run`` an optimizing one; ``derive``
    overrides both (random: a mean over the seeds, not one seed)."""
    name: str
    title: Callable[[str | None], str] | None = None  # display name from the argument; None: the id
    choose: Callable[["ConfigTable", "Method"], np.ndarray] | None = None  # per prompt the seed rank (-1: none)
    cost: Callable[["ConfigTable", "Method"], dict] | None = None  # per prompt COSTS; None: from its own rows
    run: Callable | None = None  # see Method.run
    defaults: Callable[[], OptimizerSettings] | None = None  # an optimizing method's settings before its own
    derive: Callable[["ConfigTable", "Method"], "Outcome"] | None = None
    argument: Callable[[str], str] | None = None  # checks a selection method's argument; None: it takes none
    # The arguments a table supports: all of them for arg None, else [arg] or [] (default: one argumentless).
    instances: Callable[["ConfigTable", str | None], list] | None = None
    looks_at: Callable[["Method"], tuple[str, ...]] = _nothing  # the rewards it chooses or optimizes by
    needs_variant: bool = False  # the bench scores the seeds' stability variant for it (inversion-ablation)
    verdict: bool = False  # named in the report's opening verdict (unless an oracle)
    ablation: bool = False  # left out of the verdict's plot and the sweeps
    grid: bool = True  # a column of the report's image grid (and a side of a preference study)


def _from_entry_point(registry: Registry, ep) -> None:
    kind = ep.load()
    if not isinstance(kind, Kind):
        raise StablenoiseError(f"entry point {ep.name} = {ep.value} is not a stablenoise.bench.methods.Kind")
    register(kind, into=registry)


METHODS: Registry[Kind] = Registry("method", "stablenoise.methods", _from_entry_point)


def register(kind: Kind, replace: bool = False, into: Registry[Kind] | None = None) -> None:
    """Add a method to ``--methods``, the bench and the report.

    Args:
        kind: what the method is (``Kind``); its name is the method's id, or the id's head before a colon.
        replace: replace a kind of the same name instead of refusing it.
        into: the registry (default: ``METHODS``).
    """
    if ":" in kind.name or "," in kind.name or kind.name == "seed" or kind.name != Registry.key(kind.name):
        raise StablenoiseError(f"{kind.name!r} cannot name a method")
    (METHODS if into is None else into).register(kind.name, kind, replace=replace)


@dataclass(frozen=True)
class Method:
    kind: str
    arg: str | None = None  # a selection method's argument
    settings: OptimizerSettings | None = None  # an optimizing method's settings

    @property
    def entry(self) -> Kind:
        """The registered kind; ``STORED`` for rows a store names in a way this version does not register."""
        return METHODS.find(self.kind) or STORED

    @property
    def id(self) -> str:
        """The kind, plus the argument or the settings that differ from the kind's defaults."""
        if self.settings is not None:
            changes = self.settings.changes(self.entry.defaults())
            return f"{self.kind}:{changes}" if changes else self.kind
        return f"{self.kind}:{self.arg}" if self.arg is not None else self.kind

    label = id  # what the store's rows call it

    @property
    def title(self) -> str:
        title = self.entry.title
        return title(self.arg) if title is not None else self.id

    @property
    def optimizing(self) -> bool:
        return self.entry.run is not None

    def oracle(self, judge: str | None) -> bool:
        """Whether the method looks at the judging reward (best of K by the verifier): then it is an upper
        bound, not a method one can run without the judge."""
        return judge is not None and judge in self.entry.looks_at(self)

    def run(self, backend, texts, noise, steps, guidance, inversion_guidance, rewards, progress, iterations=None):
        """Run an optimizing method on a batch (``iterations``: the method's own unless given); returns the
        result (``.noise``, ``.start_noise``), each sample's details and the reward calls per sample."""
        return self.entry.run(backend, texts, noise, self, steps, guidance, inversion_guidance, rewards, progress,
                              iterations)


# ----------------------------------------------------------------------------- parsing

def parse_method(item: str) -> Method:
    """``best:shapes-clip``, ``optimize:lr=18.75;preserve_norm=1`` (settings separated by ; or ,)."""
    kind, _, arg = (x.strip() for x in item.partition(":"))
    entry = METHODS.get(kind)
    if entry.run is not None:
        return Method(kind, settings=OptimizerSettings.parse(arg.replace(";", ","), entry.defaults()))
    if not arg:
        return Method(kind)
    if entry.argument is None:
        raise StablenoiseError(f"method {kind!r} takes no argument (got {item!r})")
    return Method(kind, entry.argument(arg))


def parse_methods(spec: str | list[str]) -> list[Method]:
    """``"random,most-stable,best:shapes-clip,optimize:lr=18.75;preserve_norm=1,reno:shapes-clip=1"``.

    Args:
        spec: methods separated by commas; an optimizing method's settings follow a colon and are separated by
            semicolons. Or a list with one method per item, where commas may separate settings (ids as stored).
    Returns:
        The methods, without repeats, in the order given; a one-line ``StablenoiseError`` for a bad one.
    """
    items = spec if isinstance(spec, list) else _split(spec)
    methods = [parse_method(item) for item in items]
    if not methods:
        raise StablenoiseError("no method given")
    return list(dict.fromkeys(methods))


def _split(spec: str) -> list[str]:
    """Split at commas that start a new method (a comma followed by a known method name)."""
    parts: list[str] = []
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            continue
        if parts and piece.partition(":")[0].strip() not in METHODS and ":" in parts[-1]:
            parts[-1] += ";" + piece  # a setting of the previous optimizing method
        else:
            parts.append(piece)
    return parts


def stored_method(label: str) -> Method:
    """The optimizing method whose rows carry ``label``. Rows this version would name otherwise (a method
    registered elsewhere, settings spelled another way) keep their label: shown as stored, never as another
    method's."""
    try:
        method = parse_method(label)
    except StablenoiseError:
        return Method(label)
    return method if method.optimizing and method.id == label else Method(label)


# ----------------------------------------------------------------------------- outcomes

@dataclass
class Outcome:
    """A method's per-prompt outcome on one config: arrays of shape (prompts,), NaN where unknown."""
    method: Method
    values: dict[str, np.ndarray]  # reward -> value
    stability: np.ndarray
    cost: dict[str, np.ndarray]  # COSTS -> per prompt
    # What an image grid shows: for random the first seed (its values are a mean over seeds).
    image: np.ndarray
    shown_stability: np.ndarray
    shown_values: dict[str, np.ndarray]
    start: dict[str, np.ndarray] | None = None  # optimizing: its start's values (stability too)


def expand(table: "ConfigTable", method: Method) -> list[Method]:
    """The instances of ``method`` this config has: ``best`` is best of K by each of its rewards, an optimizing
    method is itself where it has rows; none where the config lacks what it needs."""
    if method.optimizing:
        return [method] if method.id in table.optimized else []
    instances = method.entry.instances
    if instances is None:
        return [method]
    return [Method(method.kind, arg) for arg in instances(table, method.arg)]


def every_method(table: "ConfigTable") -> list[Method]:
    """Every method a config can show: each selection kind for every argument, each optimizing method stored."""
    return [*(Method(e.name) for e in METHODS.registered() if e.run is None), *map(stored_method, table.optimized)]


def derive_methods(table: "ConfigTable", methods: list[Method] | None = None) -> dict[str, Outcome]:
    """What each method gives on one config.

    Args:
        table: the config's rows (``results.ConfigTable``).
        methods: the methods to derive (an argumentless one for every instance the config has; random always);
            None: ``every_method``.
    Returns:
        Method id -> ``Outcome``, in report order: random, the selection methods in registry order, then the
        optimizing methods in the order they were stored. A method the config cannot show is left out.
    """
    wanted = every_method(table) if methods is None else [Method(BASELINE), *methods]
    found = list(dict.fromkeys(m for method in wanted for m in expand(table, method)))
    kinds, stored = [e.name for e in METHODS.registered()], list(table.optimized)
    found.sort(key=lambda m: (m.optimizing, stored.index(m.id) if m.optimizing else kinds.index(m.kind)))
    return {m.id: derive(table, m) for m in found}


def grid_methods(outcomes: dict[str, Outcome]) -> list[str]:
    """The ids of the outcomes an image grid shows (and a preference study may pair), in report order."""
    return [i for i, o in outcomes.items() if o.method.entry.grid]


def derive(table: "ConfigTable", method: Method) -> Outcome:
    entry = method.entry
    if entry.derive is not None:
        return entry.derive(table, method)
    if entry.choose is not None:
        return selected(table, method, entry.choose(table, method), entry.cost(table, method))
    return _optimized(table, method)


# ----------------------------------------------------------------------------- per-prompt helpers

def pick(values: np.ndarray, largest: bool = True) -> np.ndarray:
    """Per row, the column of the largest (smallest) finite value; -1 where none is finite (so a NULL
    stability or reward never wins)."""
    known = np.isfinite(values)
    filled = np.where(known, values if largest else -values, -np.inf)
    idx = filled.argmax(axis=1)
    idx[~known.any(axis=1)] = -1
    return idx


def take(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per row, the column ``idx`` (NaN, or None for objects, where idx is -1)."""
    out = values[np.arange(len(idx)), np.maximum(idx, 0)]
    if out.dtype == object:
        out[idx < 0] = None
    else:
        out = np.where(idx < 0, np.nan, out)
    return out


def _sum(values: np.ndarray) -> np.ndarray:
    """Per-prompt sum over the seeds present; NaN for a prompt without seeds."""
    return np.where(np.isfinite(values).any(axis=1), np.nansum(values, axis=1), np.nan)


def _mean(values: np.ndarray) -> np.ndarray:
    """Per-prompt mean over the seeds present; NaN (without numpy's empty-slice warning) when none is."""
    known = np.isfinite(values)
    return np.where(known.any(axis=1), np.where(known, values, 0).sum(axis=1) / np.maximum(known.sum(axis=1), 1),
                    np.nan)


def _image_seconds(seeds: "Rows") -> np.ndarray:
    """The share of a seed row's seconds its image alone took (the row's time covers the whole round trip)."""
    return seeds.seconds * seeds.image_calls / np.where(seeds.unet_calls > 0, seeds.unet_calls, np.nan)


def _first_seed(table: "ConfigTable") -> np.ndarray:
    """Seed rank 0 per prompt; -1 where its row is missing."""
    first = np.zeros(table.n_prompts, dtype=int)
    first[~np.isfinite(table.seeds.unet_calls[:, 0])] = -1
    return first


def scoring_cost(table: "ConfigTable", seeds: slice = slice(None)) -> dict[str, np.ndarray]:
    """What scoring ``seeds`` of every prompt cost: their round trips (UNet calls, seconds) and reward calls."""
    s = table.seeds
    return {"unet_calls": _sum(s.unet_calls[:, seeds]), "reward_calls": _sum(s.reward_calls[:, seeds]),
            "seconds": _sum(s.seconds[:, seeds])}


def image_cost(table: "ConfigTable", seeds: slice = slice(None), judged: bool = False) -> dict[str, np.ndarray]:
    """What the images of ``seeds`` alone cost (one denoising pass each), plus one reward call per image when
    ``judged``."""
    s = table.seeds
    images = np.isfinite(s.image_calls[:, seeds]).sum(axis=1) if judged else 0
    return {"unet_calls": _sum(s.image_calls[:, seeds]), "reward_calls": _sum(s.reward_calls[:, seeds]) + images,
            "seconds": _sum(_image_seconds(s)[:, seeds])}


def selected(table: "ConfigTable", method: Method, idx: np.ndarray, cost: dict) -> Outcome:
    """The outcome of choosing seed rank ``idx`` per prompt."""
    s = table.seeds
    values = {r: take(s.scores[r], idx) for r in table.rewards}
    stability = take(s.stability, idx)
    return Outcome(method, values, stability, cost, take(s.image, idx), stability, values)


# ----------------------------------------------------------------------------- the built-in selection methods

def _random(table: "ConfigTable", method: Method) -> Outcome:
    """A random seed on average: the mean over each prompt's seeds; the grid shows the first seed."""
    s, first = table.seeds, _first_seed(table)
    cost = {"unet_calls": _mean(s.image_calls), "reward_calls": np.zeros(table.n_prompts),
            "seconds": _mean(_image_seconds(s))}
    return Outcome(method, {r: _mean(s.scores[r]) for r in table.rewards}, _mean(s.stability), cost,
                   take(s.image, first), take(s.stability, first), {r: take(s.scores[r], first) for r in table.rewards})


def _among(supported: list, arg) -> list:
    return supported if arg is None else [a for a in supported if a == arg]


def _variant_cost(table: "ConfigTable", method: Method) -> dict:
    s = table.seeds
    return {**scoring_cost(table), "unet_calls": _sum(s.unet_calls + s.variant_calls)}


def _ks(table: "ConfigTable", arg) -> list:
    k = table.seeds.stability.shape[1]
    if arg is None:
        return [str(n) for n in ABLATION_KS if n < k]
    return [arg] if int(arg) < k else []


def _most_stable_of(table: "ConfigTable", method: Method) -> np.ndarray:
    n = int(method.arg)
    # the first seed: nothing to choose (even if its stability is NULL)
    return _first_seed(table) if n == 1 else pick(table.seeds.stability[:, :n])


def _most_stable_of_cost(table: "ConfigTable", method: Method) -> dict:
    n = int(method.arg)
    if n == 1:  # nothing to score
        return {**image_cost(table, slice(0, 1)), "reward_calls": np.zeros(table.n_prompts)}
    return scoring_cost(table, slice(0, n))


def _count(text: str) -> str:
    if not text.isdigit() or int(text) < 1:
        raise StablenoiseError(f"most-stable-of takes a number of seeds >= 1, got {text!r}")
    return str(int(text))


def _name(text: str) -> str:
    return text


register(Kind(BASELINE, title=lambda arg: "random", derive=_random))
register(Kind("most-stable", title=lambda arg: "most stable", choose=lambda t, m: pick(t.seeds.stability),
              cost=lambda t, m: scoring_cost(t), verdict=True))
register(Kind("least-stable", title=lambda arg: "least stable",
              choose=lambda t, m: pick(t.seeds.stability, largest=False), cost=lambda t, m: scoring_cost(t),
              verdict=True))
# Chosen by a stability variant the bench stored as score STABILITY_PREFIX + VARIANT (the other inversion guidance).
register(Kind("inversion-ablation", title=lambda arg: f"most stable ({arg})", argument=_name,
              instances=lambda t, arg: _among([v[len(STABILITY_PREFIX):] for v in t.variants], arg),
              choose=lambda t, m: pick(t.seeds.scores[STABILITY_PREFIX + m.arg]), cost=_variant_cost,
              needs_variant=True, grid=False))
register(Kind("most-stable-of", title=lambda arg: f"most stable of {arg}", argument=_count, instances=_ks,
              choose=_most_stable_of, cost=_most_stable_of_cost, ablation=True, grid=False))
register(Kind("best", title=lambda arg: f"best of K by {arg}", argument=_name,
              instances=lambda t, arg: _among(list(t.rewards), arg),
              choose=lambda t, m: pick(t.seeds.scores[m.arg]), cost=lambda t, m: image_cost(t, judged=True),
              looks_at=lambda m: (m.arg,) if m.arg else (), verdict=True))


# ----------------------------------------------------------------------------- optimizing methods

def _optimized(table: "ConfigTable", method: Method) -> Outcome:
    rows = table.optimized[method.id]
    values = {r: rows.scores[r] for r in table.rewards}
    cost = {"unet_calls": rows.unet_calls, "reward_calls": rows.reward_calls, "seconds": rows.seconds}
    return Outcome(method, values, rows.stability, cost, rows.image, rows.stability, values,
                   start=_start(table, method, rows))


def _start(table: "ConfigTable", method: Method, rows: "Rows") -> dict[str, np.ndarray] | None:
    """An optimizing method's start: its start rows, NaN where one is missing. A store from before start rows
    falls back to the seed row of the seed it started from, which is the start only without preserve_norm
    (with it, the optimizer started from that noise moved onto the shell: no start is known)."""
    if method.id in table.starts:
        start = table.starts[method.id]
        return {"stability": start.stability, **{r: start.scores[r] for r in table.rewards}}
    if method.settings is None or method.settings.preserve_norm:  # unknown settings: no start known
        return None
    s = table.seeds
    rank = np.array([_rank_of(s.seed[p], seed) for p, seed in enumerate(rows.seed)], dtype=int)
    return {"stability": take(s.stability, rank), **{r: take(s.scores[r], rank) for r in table.rewards}}


def _rank_of(prompt_seeds: np.ndarray, seed: int) -> int:
    """The seed rank of ``seed`` among a prompt's seed rows; -1 if it is not one of them."""
    hits = np.flatnonzero(prompt_seeds == seed) if seed >= 0 else []
    return int(hits[0]) if len(hits) else -1


def _run_optimize(backend, texts, noise, method, steps, guidance, inv, rewards, progress, iterations=None):
    """The paper's stability optimization."""
    from ..optimization import optimize

    s = method.settings
    res = optimize(backend, texts, noise, iterations=s.iterations if iterations is None else iterations, lr=s.lr,
                   momentum=s.momentum, steps=steps, guidance=guidance, inversion_guidance=inv,
                   checkpoint=_checkpoint(backend), preserve_norm=s.preserve_norm, progress=progress)
    return res, [{"start_stability": h[0] if h else None, "best_iteration": b, "stopped": st}
                 for h, b, st in zip(res.history, res.best_iteration, res.stopped)], 0


def _run_reno(backend, texts, noise, method, steps, guidance, inv, rewards, progress, iterations=None):
    """ReNO-style reward optimization through the differentiable ``rewards`` its weights name."""
    from ..reward_optimization import reward_optimize

    s = method.settings
    weighted = {name: (rewards[name], w) for name, w in s.reward_weights}
    iterations = s.iterations if iterations is None else iterations
    res = reward_optimize(backend, texts, noise, weighted, iterations=iterations, lr=s.lr, momentum=s.momentum,
                          nesterov=s.nesterov, grad_clip=s.grad_clip, reg_weight=s.reg_weight, steps=steps,
                          guidance=guidance, checkpoint=_checkpoint(backend), progress=progress)
    # start_reward and best_reward are the optimizer's objective, on the decoded float pixels; the stored scores
    # judge the saved 8-bit PNG, which can differ by a fraction of a point (docs/bench.md).
    return res, [{"start_reward": h[0] if h else None, "best_reward": b, "best_iteration": it, "stopped": st}
                 for h, b, it, st in zip(res.history, res.best_reward, res.best_iteration, res.stopped)], \
        res.reward_evaluations // len(texts)


def _checkpoint(backend) -> bool:
    return backend.device.type != "cpu"  # trades compute for memory; only worth it on an accelerator


def _cannot_run(*args, **kwargs):
    raise StablenoiseError("this stablenoise cannot run a method it only knows from a store's rows")


# Rows of an optimizing method this version does not register: derived from their rows under their own label.
STORED = Kind("stored", run=_cannot_run)

register(Kind("optimize", run=_run_optimize, defaults=OptimizerSettings.paper))
register(Kind("reno", run=_run_reno, defaults=OptimizerSettings.reno,
              looks_at=lambda m: tuple(name for name, _ in m.settings.reward_weights)))
