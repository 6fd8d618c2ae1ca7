"""The bench's results store: one SQLite file per run folder (``RUN/bench.sqlite``), in WAL mode.

One row of ``samples`` per (run config, prompt, method, seed): the K scored seeds of every prompt are
rows of method ``seed``, and each optimizing method (``optimize``, ``optimize:lr=18.75``, ``reno``, ...)
adds one row per prompt, and one for the noise it started from (``START_SUFFIX``). Selection methods (random, most/least stable, best of K by a reward, the K
ablation) are read off the seed rows by the report, so they cost nothing to add. Every reward of a
sample's image, and stability variants such as the inversion-guidance ablation, are rows of ``scores``,
so a reward can be added to a finished run (and human preferences later) without touching the samples.
"""

SCHEMA_VERSION = 1

SEED_METHOD = "seed"  # the K scored seeds of each prompt

# An optimizing method's start row: the exact noise its optimizer started from (the first seed's noise, on the
# shell with preserve_norm), with its own image and scores, e.g. "optimize:preserve_norm=1@start".
START_SUFFIX = "@start"


def start_method(label: str) -> str:
    return label + START_SUFFIX


# A stability variant is stored as a score named STABILITY_PREFIX + what differs, e.g.
# "stability@inversion_guidance=1".
STABILITY_PREFIX = "stability@"

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- One row per run config: a model and round trip (steps, guidance) over a prompt set. A sweep adds one
-- config per (steps, guidance) pair.
CREATE TABLE IF NOT EXISTS configs (
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,        -- sha256 of the canonical JSON in `json`
    prompt_set TEXT NOT NULL,           -- a shipped set's name, or "file:NAME"
    model TEXT NOT NULL,                -- the backend's name
    steps INTEGER NOT NULL,
    guidance REAL NOT NULL,
    inversion_guidance REAL NOT NULL,
    k INTEGER NOT NULL,                 -- seeds scored per prompt
    first_seed INTEGER NOT NULL,        -- prompt i scores seeds first_seed + i*k ... + i*k + k-1
    json TEXT NOT NULL,                 -- the full config: model description, DDIM settings, prompt-set digest
    versions TEXT NOT NULL,             -- JSON: package versions and machine
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
    config_id INTEGER NOT NULL REFERENCES configs(id),
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (config_id, idx)
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    config_id INTEGER NOT NULL REFERENCES configs(id),
    prompt_idx INTEGER NOT NULL,
    method TEXT NOT NULL,               -- "seed", or an optimizing method's label ("optimize", "reno", ...)
    seed INTEGER NOT NULL,              -- the seed; for an optimizing method, the seed it starts from
    seed_rank INTEGER NOT NULL,         -- the seed's position among the prompt's K seeds (0 = first)
    stability REAL,                     -- cos(noise, F(noise)); NULL when not finite
    image_path TEXT NOT NULL,           -- relative to the run folder; written before the row commits
    noise_path TEXT,                    -- safetensors of an optimized noise; NULL for seed rows
    unet_calls INTEGER NOT NULL,        -- UNet evaluations per sample spent on this row (CFG counts 2)
    image_calls INTEGER NOT NULL,       -- of those, what the image alone costs (one denoising pass)
    reward_calls INTEGER NOT NULL,      -- reward-model evaluations the method itself spent (not the judging)
    seconds REAL NOT NULL,              -- wall-clock share of this row
    extra TEXT NOT NULL DEFAULT '{}',   -- JSON: method details (start stability, best iteration, norm, ...)
    created TEXT NOT NULL,
    UNIQUE (config_id, prompt_idx, method, seed)
);
CREATE TABLE IF NOT EXISTS scores (
    sample_id INTEGER NOT NULL REFERENCES samples(id),
    name TEXT NOT NULL,                 -- a reward's name, or a stability variant (STABILITY_PREFIX)
    value REAL,                         -- NULL when not finite
    PRIMARY KEY (sample_id, name)
);
"""
