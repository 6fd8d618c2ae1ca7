"""`stablenoise experiment shapes` is a preset of the bench: the held-out captions, the verifier and the
learned reward, every method."""

from click.testing import CliRunner

from stablenoise.bench.store import Store
from stablenoise.cli import main


def test_experiment_is_a_bench_preset(tmp_path):
    out = tmp_path / "exp"
    r = CliRunner().invoke(main, ["experiment", "shapes", "--limit", "2", "-k", "2", "--steps", "1",
                                  "--methods", "random,most-stable,best", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = Store(out, create=False).rows()
    assert len(rows) == 4 and all(set(x["scores"]) == {"shapes-verifier", "shapes-clip"} for x in rows)
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    prompts = Store(out, create=False).db.execute("SELECT text, tag FROM prompts ORDER BY idx").fetchall()
    from stablenoise import load_prompts
    assert prompts == [(p.text, p.tag) for p in load_prompts("shapes-heldout", limit=2).prompts]
