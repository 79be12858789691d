// The rating page of `koala eval rate`. Answers are set with textContent only: no model output
// is ever parsed as HTML. The server never sends system names (except with --reveal, after the
// vote), so nothing here can tell which system wrote which answer.
"use strict";

const $ = (id) => document.getElementById(id);
let rater = new URLSearchParams(location.search).get("rater") || "";
let current = null; // the last state from the server
let busy = false;

function setState(s) {
  document.body.dataset.state = s;
}

function showError(msg) {
  $("error-text").textContent = msg;
  $("error").hidden = !msg;
}

function notice(msg) {
  $("notice").textContent = msg || "";
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw { message: "The server cannot be reached (" + e.message + "). Your last vote may not be saved; try again." };
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    throw { status: resp.status, message: (data && data.error) || ("HTTP " + resp.status), state: data && data.state };
  }
  return data;
}

function render(s) {
  current = s;
  document.body.dataset.pos = String(s.pos);
  $("who").textContent = "Rating as " + s.rater;
  $("progress-wrap").hidden = false;
  const shown = Math.min(s.pos + (s.done ? 0 : 1), s.total);
  $("progress").textContent = s.done ? s.total + " of " + s.total + " rated" : "Pair " + shown + " of " + s.total;
  $("bar-fill").style.width = (100 * s.pos / Math.max(1, s.total)) + "%";
  $("under").hidden = false;
  $("undo").disabled = !s.can_undo;
  $("name-form").hidden = true;
  if (s.done) {
    $("rating").hidden = true;
    $("done").hidden = false;
    $("done-text").textContent = "You rated " + s.total + " pairs. You can undo your last vote, or close this page.";
    setState("done");
  } else {
    $("done").hidden = true;
    $("rating").hidden = false;
    $("prompt").textContent = s.prompt;
    $("left").textContent = s.left;
    $("right").textContent = s.right;
    for (const el of [$("left"), $("right")]) el.scrollTop = 0;
    setState("ready");
  }
  setBusy(false);
}

function setBusy(b) {
  busy = b;
  for (const el of document.querySelectorAll("#buttons button")) el.disabled = b;
  if (b) $("undo").disabled = true;
  else if (current) $("undo").disabled = !current.can_undo;
  if (b) setState("busy");
}

async function load() {
  setBusy(true);
  try {
    render(await api("GET", "/api/state?rater=" + encodeURIComponent(rater)));
    showError("");
  } catch (e) {
    showError(e.message);
    setState("error");
    if (e.status === 400) askName();
  }
}

async function act(path, body, label) {
  if (busy || !current) return;
  setBusy(true);
  try {
    const s = await api("POST", path, body);
    showError("");
    render(s);
    if (s.revealed) notice("Last pair: A was " + s.revealed.left + ", B was " + s.revealed.right + ".");
    else notice(label);
  } catch (e) {
    if (e.status === 409 && e.state) {
      // The page was behind (another tab, a retried vote): show where the server is.
      render(e.state);
      notice(e.message);
      showError("");
    } else {
      showError(e.message);
      setBusy(false);
      setState(current && current.done ? "done" : "ready");
    }
  }
}

function vote(choice) {
  if (!current || current.done) return;
  const labels = { left: "Saved: A is better.", right: "Saved: B is better.", tie: "Saved: tie.", both_bad: "Saved: both are bad." };
  act("/api/vote", { rater, pos: current.pos, choice }, labels[choice]);
}

function undo() {
  if (!current || !current.can_undo) return;
  act("/api/undo", { rater }, "Last vote undone.");
}

function askName() {
  $("name").value = rater || localStorage.getItem("koala-rater") || "";
  $("name-form").hidden = false;
  $("rating").hidden = true;
  $("done").hidden = true;
  setState("name");
  $("name").focus();
}

$("name-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const n = $("name").value.trim();
  if (!n) return;
  rater = n;
  try { localStorage.setItem("koala-rater", n); } catch (e) { /* private mode */ }
  const u = new URL(location.href);
  u.searchParams.set("rater", n);
  history.replaceState(null, "", u);
  load();
});

for (const b of document.querySelectorAll("#buttons button")) {
  b.addEventListener("click", () => vote(b.dataset.choice));
}
$("undo").addEventListener("click", undo);

document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key;
  let handled = true;
  if (k === "1" || k === "ArrowLeft" || k === "a" || k === "A") vote("left");
  else if (k === "2" || k === "ArrowRight" || k === "b" || k === "B") vote("right");
  else if (k === "3" || k === "t" || k === "T") vote("tie");
  else if (k === "4" || k === "0" || k === "x" || k === "X") vote("both_bad");
  else if (k === "u" || k === "U" || k === "Backspace") undo();
  else handled = false;
  if (handled) ev.preventDefault();
});

if (rater) load();
else askName();
