// The job list: newest first, filtered by status, refreshed every 2 s (live status, no reload).
"use strict";

const REFRESH_MS = 2000;
let pages = 1;

function row(job) {
  return el("tr", { dataset: { jobId: job.jobId } },
    el("td", {}, el("a", { href: jobHref(job.jobId), class: "job-link" }, job.jobId)),
    el("td", {}, el("span", { class: "status " + text(job.status) }, job.status)),
    el("td", {}, text(job.currentStep)),
    el("td", { class: "objective" }, text(job.objective)),
    el("td", {}, shortTime(job.createdAt)),
    el("td", {}, shortTime(job.updatedAt)),
    el("td", {}, shortTime(job.finishedAt)));
}

async function load() {
  const status = document.getElementById("status-filter").value;
  const rows = [];
  let cursor = null;
  let next = null;
  for (let page = 0; page < pages; page++) {
    const params = new URLSearchParams({ limit: "50" });
    if (status) params.set("status", status);
    if (cursor) params.set("cursor", cursor);
    const body = await api("/api/jobs?" + params.toString());
    rows.push(...body.jobs);
    next = body.next;
    if (!next) break;
    cursor = next;
  }
  document.querySelector("#jobs tbody").replaceChildren(...rows.map(row));
  document.getElementById("more").hidden = !next;
  document.getElementById("list-state").textContent = `${rows.length} shown, updated ${shortTime(new Date().toISOString())}`;
}

async function tick() {
  try { await load(); } catch (err) { document.getElementById("list-state").textContent = err.message; }
  setTimeout(tick, REFRESH_MS);
}

document.getElementById("status-filter").addEventListener("change", () => { pages = 1; load(); });
document.getElementById("more").addEventListener("click", () => { pages += 1; load(); });
tick();
