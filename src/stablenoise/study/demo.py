"""The demo view: type a prompt and K, see every candidate ordered by stability, the most and least stable
side by side, and optimize a noise with a live stability curve. Everything runs through the library
(``select``, ``generate``, ``optimize``); the server only validates input and polls the optimizer's callback."""

from __future__ import annotations

import base64
import io
import itertools
import threading

from ..errors import StablenoiseError
from .server import HttpError, make_server, static_page

MAX_K = 32
MAX_ITERATIONS = 100
MAX_PROMPT = 200


def _data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _int(body: dict, key: str, lo: int, hi: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise HttpError(400, f"{key}: an integer from {lo} to {hi}")
    return value


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT:
        raise HttpError(400, f"prompt: 1 to {MAX_PROMPT} characters")
    return prompt.strip()


class Demo:
    """The model, one lock around it (a backend serves one call at a time), and the optimization jobs."""

    def __init__(self, backend, steps: int | None = None):
        from ..stability import resolve

        self.backend = backend
        self.steps, self.guidance, self.inversion_guidance = resolve(backend, steps, None, None)
        self.lock = threading.Lock()
        self.jobs: dict[int, dict] = {}
        self.ids = itertools.count(1)

    def candidates(self, prompt: str, k: int) -> dict:
        from .. import generate, noises_from_seeds, select

        with self.lock:
            r = select(self.backend, prompt, k=k, steps=self.steps, guidance=self.guidance,
                       inversion_guidance=self.inversion_guidance, progress=False)
            images = generate(self.backend, prompt, noises_from_seeds(r.seeds, self.backend.latent_shape),
                              self.steps, self.guidance)
        rows = [{"seed": s, "stability": v, "image": _data_uri(im)} for s, v, im in zip(r.seeds, r.scores, images)]
        rows.sort(key=lambda c: (c["stability"] is None, -(c["stability"] or 0.0)))
        return {"candidates": rows, "most": r.best_seed, "least": r.worst_seed, "steps": self.steps}

    def start_optimize(self, prompt: str, seed: int, iterations: int) -> int:
        job_id = next(self.ids)
        job = self.jobs[job_id] = {"history": [], "done": False, "error": None, "image": None, "start": None}
        threading.Thread(target=self._optimize, args=(job, prompt, seed, iterations), daemon=True).start()
        return job_id

    def _optimize(self, job: dict, prompt: str, seed: int, iterations: int) -> None:
        import torch

        from .. import generate, noises_from_seeds, optimize, paper_equivalent_lr

        def progress(event: dict) -> None:
            job["history"].append(event["stability"][0])

        try:
            with self.lock:
                noise = noises_from_seeds([seed], self.backend.latent_shape)
                # The paper's relative step on this latent (its lr 100 was set for a 16,384-dim one), on the
                # sqrt(d) shell: off it the model draws noise, however stable.
                r = optimize(self.backend, prompt, noise, iterations=iterations,
                             lr=paper_equivalent_lr(self.backend.latent_shape), preserve_norm=True, steps=self.steps,
                             guidance=self.guidance, inversion_guidance=self.inversion_guidance, progress=False,
                             callback=progress)
                start, best = generate(self.backend, prompt, torch.cat([r.start_noise, r.noise]),
                                       self.steps, self.guidance)
            job.update(image=_data_uri(best), start=_data_uri(start), stability=r.best_stability[0])
        except StablenoiseError as e:
            job["error"] = str(e)
        finally:
            job["done"] = True


def _candidates(server, match, query, body) -> dict:
    prompt, k = _prompt(body), _int(body, "k", 1, MAX_K)
    return server.demo.candidates(prompt, k)


def _optimize(server, match, query, body) -> dict:
    args = _prompt(body), _int(body, "seed", 0, 2**63 - 1), _int(body, "iterations", 1, MAX_ITERATIONS)
    return {"job": server.demo.start_optimize(*args)}


def _job(server, match, query, body) -> dict:
    job = server.demo.jobs.get(int(match[1]))
    if job is None:
        raise HttpError(404, "no such job")
    return {**job, "history": list(job["history"])}  # a copy: the optimizer thread appends to it


DEMO_ROUTES = {("GET", "/"): static_page("demo.html"), ("GET", "/static/app.css"): static_page("app.css"),
               ("GET", "/static/demo.js"): static_page("demo.js"), ("GET", "/static/api.js"): static_page("api.js"),
               ("POST", "/api/candidates"): _candidates,
               ("POST", "/api/optimize"): _optimize, ("GET", r"/api/optimize/(\d{1,9})"): _job}


def demo_server(demo: Demo, host: str = "127.0.0.1", port: int = 0):
    return make_server(DEMO_ROUTES, host, port, demo=demo)
