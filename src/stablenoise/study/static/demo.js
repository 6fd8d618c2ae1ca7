// The demo page: K candidates ordered by stability, the extremes side by side, and a live optimization curve.
"use strict";
const $ = (id) => document.getElementById(id);

const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(4));

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("error").textContent = ""; $("go").disabled = true; $("status").textContent = "scoring…";
  try {
    const d = await api("/api/candidates", {prompt: $("prompt").value, k: Number($("k").value)});
    const grid = $("grid");
    grid.replaceChildren();
    d.candidates.forEach((c) => {
      const f = document.createElement("figure");
      f.className = "tile" + (c.seed === d.most ? " most" : c.seed === d.least ? " least" : "");
      const img = document.createElement("img"); img.src = c.image; img.alt = `seed ${c.seed}`;
      const cap = document.createElement("figcaption"); cap.textContent = `seed ${c.seed} · ${fmt(c.stability)}`;
      f.append(img, cap); grid.appendChild(f);
    });
    const by = Object.fromEntries(d.candidates.map((c) => [c.seed, c]));
    $("most").src = by[d.most].image; $("most-caption").textContent = `most stable: seed ${d.most} · ${fmt(by[d.most].stability)}`;
    $("least").src = by[d.least].image; $("least-caption").textContent = `least stable: seed ${d.least} · ${fmt(by[d.least].stability)}`;
    $("opt-seed").value = d.least;
    $("result").hidden = false;
    $("status").textContent = `${d.candidates.length} seeds, ${d.steps} steps`;
  } catch (err) { $("error").textContent = err.message; $("status").textContent = ""; }
  $("go").disabled = false;
});

function draw(history, iterations) {
  const c = $("curve"), g = c.getContext("2d"), pad = 46;
  g.clearRect(0, 0, c.width, c.height);
  const ys = history.filter((y) => y !== null);
  const lo = Math.min(...ys, 0.9), hi = 1;
  const x = (i) => pad + (c.width - 2 * pad) * i / Math.max(iterations, 1);
  const y = (v) => c.height - pad - (c.height - 2 * pad) * (v - lo) / (hi - lo || 1);
  g.strokeStyle = "#999"; g.beginPath(); g.moveTo(pad, pad / 2); g.lineTo(pad, c.height - pad); g.lineTo(c.width - pad / 2, c.height - pad); g.stroke();
  g.fillStyle = "#444"; g.font = "12px system-ui";
  g.fillText(hi.toFixed(3), 2, y(hi) + 4); g.fillText(lo.toFixed(3), 2, y(lo));
  g.fillText("iteration", c.width / 2 - 20, c.height - 8); g.fillText("stability", pad + 4, 14);
  g.strokeStyle = "#3b7dd8"; g.lineWidth = 2; g.beginPath();
  history.forEach((v, i) => { if (v !== null) { i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v)); } });
  g.stroke();
  g.fillStyle = "#3b7dd8";
  history.forEach((v, i) => { if (v !== null) { g.beginPath(); g.arc(x(i), y(v), 3, 0, 7); g.fill(); } });
}

$("opt-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("error").textContent = ""; $("opt-go").disabled = true;
  const iterations = Number($("opt-iterations").value);
  try {
    const {job} = await api("/api/optimize", {prompt: $("prompt").value, seed: Number($("opt-seed").value), iterations});
    for (;;) {
      const j = await api(`/api/optimize/${job}`);
      draw(j.history, iterations);
      $("opt-status").textContent = `iteration ${Math.max(j.history.length - 1, 0)} of ${iterations}` +
        (j.history.length ? ` · stability ${fmt(j.history[j.history.length - 1])}` : "");
      if (j.done) {
        if (j.error) throw new Error(j.error);
        $("opt-start").src = j.start; $("opt-image").src = j.image;
        $("opt-caption").textContent = `optimized · ${fmt(j.stability)}`;
        $("opt-status").textContent += " · done";
        document.body.dataset.optimized = "1";
        break;
      }
      await new Promise((ok) => setTimeout(ok, 300));
    }
  } catch (err) { $("error").textContent = err.message; }
  $("opt-go").disabled = false;
});
