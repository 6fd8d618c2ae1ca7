"""``stablenoise study``: create a blind A/B study over a bench run, serve it, print its results, and the demo."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_common import device_option, guarded, model_option, seed_option, steps_option
from ..errors import StablenoiseError


def _listen_options(fn):
    fn = click.option("--allow-remote", is_flag=True,
                      help="Allow --host other than loopback: anyone who reaches the address can use the app.")(fn)
    fn = click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)(fn)
    return click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")(fn)


def _check_host(host: str, allow_remote: bool) -> None:
    from .server import is_loopback

    if is_loopback(host):
        return
    if not allow_remote:
        raise StablenoiseError(f"--host {host} is not a loopback address: add --allow-remote to serve it there")
    click.echo(f"warning: serving on {host}: anyone who can reach it can vote and read the run's images", err=True)


def _run_forever(server, what: str) -> None:
    from .server import url

    click.echo(f"{what} at {url(server)}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()


@click.group()
def study():
    """A blind A/B human preference study over a bench run's images, and the interactive demo."""


@study.command()
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--pair", "pairs", multiple=True, required=True,
              help="A:B, two methods of the run (random, most-stable, least-stable, best:REWARD, or an "
                   "optimizing method's label); repeat for several comparisons.")
@click.option("--name", default=None, help="The study's name: RUN/study-NAME.sqlite (default: RUN/study.sqlite).")
@seed_option(help="Seeds the sides shown and each rater's order.")
@guarded
def create(run, pairs, name, seed):
    """Build blind pairs from RUN's stored images: per comparison, one pair per (config, prompt), sides drawn
    at random and recorded."""
    from . import store
    from .pairs import build_pairs

    if name is not None and not store.NAME.fullmatch(name):
        raise StablenoiseError("--name: 1 to 40 letters, digits, '_' or '-'")
    path = run / ("study.sqlite" if name is None else f"study-{name}.sqlite")
    built, meta = build_pairs(run, list(pairs), seed)
    store.create(path, meta, built)
    left = meta["left_out"]
    click.echo(f"wrote {path}: {len(built)} pairs over {', '.join(meta['comparisons'])}"
               + (f" (left out: {left['no image']} without an image, {left['same image']} where both methods "
                  "show the same image)" if any(left.values()) else ""))


@study.command()
@click.argument("study_file", metavar="STUDY", type=click.Path(path_type=Path))
@_listen_options
@guarded
def serve(study_file, host, port, allow_remote):
    """Serve STUDY (a study file, or a run folder with RUN/study.sqlite) to raters in a browser."""
    from .server import study_server
    from .store import Study, study_path

    _check_host(host, allow_remote)
    s = Study(study_path(study_file))
    s.set_wal(True)
    try:
        _run_forever(study_server(s, host, port), f"study {s.path} ({len(s.pairs)} pairs)")
    finally:
        s.set_wal(False)


@study.command()
@click.argument("study_file", metavar="STUDY", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@guarded
def results(study_file, as_json):
    """Print STUDY's win rates, Bradley–Terry strengths and agreements."""
    import json

    from ..bench.document import render_markdown
    from ..records import strict_json
    from .results import analyze, report_blocks
    from .store import Study, study_path

    path = study_path(study_file)
    s = Study(path, readonly=True)
    if as_json:
        click.echo(json.dumps(strict_json(analyze(s)), indent=2))
    else:
        text, _ = render_markdown(f"study {path.name}", report_blocks(s.run_dir, only=path), "files")
        click.echo(text.split("\n", 3)[3])  # without the mark and the title


@study.command()
@model_option
@device_option
@steps_option
@_listen_options
@guarded
def demo(model, device, steps, host, port, allow_remote):
    """An interactive demo: a prompt and K give every candidate ordered by stability, and a noise can be
    optimized with a live stability curve."""
    from ..backends import load
    from .demo import Demo, demo_server

    _check_host(host, allow_remote)
    server = demo_server(Demo(load(model, device=device), steps), host, port)
    _run_forever(server, f"demo of {model}")
