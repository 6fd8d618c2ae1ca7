"""``stablenoise report``: the HTML and Markdown report of a bench run folder."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_common import guarded


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))  # load_results says what is wrong
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML report (default: RUN/report.html).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the Markdown report; its plots go to a _files folder beside it "
                   "(default: RUN/report.md, RUN/report_files/).")
@click.option("--grid-prompts", type=click.IntRange(min=0), default=8, show_default=True,
              help="Prompts in each config's image grid (spread over tags; 0: no grid).")
@click.option("--bootstrap", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Bootstrap resamples of the prompts per interval.")
@guarded
def report(run_dir, html_path, md_path, grid_prompts, bootstrap):
    """Report a bench run: every method against a random seed, with 95% bootstrap intervals over prompts."""
    from .report import write_report

    html, md = write_report(run_dir, html_path, md_path, grid_prompts=grid_prompts, n_boot=bootstrap)
    click.echo(f"wrote {html} and {md}")
