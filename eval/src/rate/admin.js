// The admin page of `koala eval rate`: progress per rater, behind the admin token. The token
// comes from the form or the URL's #token=… fragment (never sent in a URL), and is sent as a
// bearer token.
"use strict";

const $ = (id) => document.getElementById(id);
let token = "";
let timer = null;

async function refresh() {
  let resp;
  try {
    resp = await fetch("/api/admin/progress", { headers: { Authorization: "Bearer " + token } });
  } catch (e) {
    $("error").textContent = "The server cannot be reached: " + e.message;
    return;
  }
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    $("error").textContent = (data && data.error) || "HTTP " + resp.status;
    $("table").hidden = true;
    return;
  }
  $("error").textContent = "";
  const p = data.progress;
  $("summary").textContent = p.votes + " votes from " + p.raters.length + " raters on " + p.items + " pairs.";
  const body = $("rows");
  body.replaceChildren();
  for (const r of p.raters) {
    const tr = document.createElement("tr");
    const last = r.last_vote_ts ? new Date(r.last_vote_ts).toLocaleString() : "—";
    const cells = [[r.name, ""], [r.done, "n"], [r.total, "n"], [r.undone, "n"], [last, ""]];
    for (const [v, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = String(v);
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  $("table").hidden = false;
  document.body.dataset.loaded = "1";
}

function start(t) {
  token = t;
  if (timer) clearInterval(timer);
  refresh();
  timer = setInterval(refresh, 5000);
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  start($("token").value.trim());
});

// A token in the fragment starts the page, on load and when only the fragment changes (which
// does not reload the page).
function fromHash() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  const t = decodeURIComponent(m[1]);
  $("token").value = t;
  history.replaceState(null, "", location.pathname);
  start(t);
}
window.addEventListener("hashchange", fromHash);
fromHash();
