// The study page: one blind pair at a time; the methods are revealed only after the vote.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null, busy = false;

function raterId() {
  const fromUrl = new URLSearchParams(location.search).get("rater");
  if (fromUrl) { localStorage.setItem("stablenoise-rater", fromUrl); return fromUrl; }
  let id = localStorage.getItem("stablenoise-rater");
  if (!id) {
    id = "rater-" + Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem("stablenoise-rater", id);
  }
  return id;
}
const rater = raterId();


function showProgress(judged, total) {
  $("progress-text").textContent = `${judged} of ${total} pairs judged`;
  $("progress-bar").style.width = `${total ? (100 * judged / total) : 0}%`;
}

async function next() {
  const d = await api(`/api/next?rater=${encodeURIComponent(rater)}`);
  showProgress(d.judged, d.total);
  if (d.done) { $("vote-view").hidden = true; $("done-view").hidden = false; current = null; return; }
  current = d;
  $("prompt").textContent = d.prompt;
  $("left").src = d.left; $("right").src = d.right;
  $("left-label").textContent = ""; $("right-label").textContent = "";
  $("vote-view").hidden = false;
  document.body.dataset.pair = d.pair;
}

async function vote(choice) {
  if (!current || busy) return;
  busy = true;
  document.querySelectorAll("button[data-choice]").forEach((b) => { b.disabled = true; });
  try {
    const r = await api("/api/vote", {pair: current.pair, rater, choice});
    $("left-label").textContent = r.left; $("right-label").textContent = r.right;
    await new Promise((ok) => setTimeout(ok, 600));
    await next();
  } catch (e) {
    $("error").textContent = e.message;
  } finally {
    busy = false;
    document.querySelectorAll("button[data-choice]").forEach((b) => { b.disabled = false; });
  }
}

const KEYS = {"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right", "3": "tie", "t": "tie",
              "ArrowDown": "tie", "4": "bad", "b": "bad"};
document.addEventListener("keydown", (e) => {
  if (KEYS[e.key] && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); vote(KEYS[e.key]); }
});
document.querySelectorAll("button[data-choice]").forEach((b) => b.addEventListener("click", () => vote(b.dataset.choice)));

function pct(ci) {
  return ci ? `${(100 * ci.mean).toFixed(1)}% [${(100 * ci.lo).toFixed(1)}, ${(100 * ci.hi).toFixed(1)}]` : "–";
}
function table(caption, headers, rows) {
  const t = document.createElement("table");
  t.createCaption().textContent = caption;
  const h = t.insertRow();
  headers.forEach((x) => { const th = document.createElement("th"); th.textContent = x; h.appendChild(th); });
  rows.forEach((row) => { const tr = t.insertRow(); row.forEach((x) => { tr.insertCell().textContent = x; }); });
  return t;
}

async function results() {
  const r = await api("/api/results");
  const out = $("results");
  out.replaceChildren();
  const p = document.createElement("p");
  p.textContent = `${r.votes} votes by ${r.raters} rater(s) on ${r.pairs} pairs. Win rate of the first method, ` +
    "ties and 'both bad' counting half, with a 95% bootstrap interval over prompts and raters.";
  out.appendChild(p);
  out.appendChild(table("Win rates", ["comparison", "votes", "first wins", "second wins", "ties", "both bad", "win rate of the first"],
    r.comparisons.map((c) => [c.comparison, c.votes, c.a_wins, c.b_wins, c.tie, c.bad, pct(c.win_rate)])));
  if (r.bradley_terry) {
    out.appendChild(table("Bradley–Terry log-strengths (mean 0)", ["method", "log-strength [95% CI]"],
      Object.entries(r.bradley_terry).map(([m, ci]) => [m, `${ci.mean.toFixed(2)} [${ci.lo.toFixed(2)}, ${ci.hi.toFixed(2)}]`])));
  }
  const a = r.rater_agreement, q = document.createElement("p");
  q.textContent = "Rater agreement: " + (a ? `${(100 * a.agreement).toFixed(1)}% of rater pairs agree, Fleiss' kappa ` +
    `${a.kappa === null ? "–" : a.kappa.toFixed(3)} over ${a.items} pairs` : "no pair judged by two raters yet.");
  out.appendChild(q);
  out.appendChild(table("Scores against the raters' majority", ["score", "agrees with the majority"],
    r.reward_agreement.map((x) => [x.score, pct(x.agreement)])));
}

$("who").textContent = `rater: ${rater}`;
(location.pathname === "/results" ? results().then(() => { $("results-view").hidden = false; }) : next())
  .catch((e) => { $("error").textContent = e.message; });
