// The job page: status document + allowed actions from /view, live events by SSE (refreshing the
// view on each), the running attempt's log tail, and the REQ-09 buttons.
"use strict";

const JOB = document.body.dataset.jobId;
const BASE = "/api/jobs/" + encodeURIComponent(JOB);
const CONFIRM = { cancel: true, hard_reset_step: true };
const ACTIONS = ["pause", "resume", "takeover", "cancel", "retry_step", "hard_reset_step", "resume_from_step"];
const TERMINAL = ["succeeded", "failed", "cancelled"];
let lastSeq = 0;
let source = null;
let view = null;
let refreshTimer = null;
let logAttempt = null;

function fmtSeconds(value) {
  return typeof value === "number" ? value.toFixed(1) + " s" : "";
}

function renderFacts(doc) {
  document.getElementById("job-status").textContent = doc.status;
  document.getElementById("job-status").className = "status " + text(doc.status);
  document.getElementById("objective").textContent = text(doc.objective);
  const facts = [["epoch", doc.epoch], ["current step", doc.currentStep], ["repo", doc.repo], ["ref", doc.ref],
    ["baseline", doc.baselineSha], ["resets used", doc.resetsUsed], ["queue retries", doc.queueRetriesUsed],
    ["paused", doc.paused], ["taken over", doc.takeover], ["terminal reason", doc.terminalReason],
    ["message", doc.message], ["created", shortTime(doc.createdAt)], ["finished", shortTime(doc.finishedAt)]];
  document.getElementById("facts").replaceChildren(...facts.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, text(v))]));
}

function attemptRow(att, summaries) {
  const summary = summaries[att.stepIndex + ":" + att.attempt];
  const decision = att.decision && att.decision.reason ? att.decision.reason : "";
  return el("tr", { class: "attempt " + text(att.status), dataset: { step: att.stepIndex, attempt: att.attempt } },
    el("td", {}, "#" + att.attempt),
    el("td", { class: "att-status" }, text(att.status)),
    el("td", {}, text(att.attemptStrategy)),
    el("td", { class: "att-detector" }, text(att.detector)),
    el("td", { class: "att-class" }, text(att.failureClass)),
    el("td", { class: "att-strategy" }, text(att.strategy)),
    el("td", {}, fmtSeconds(att.wallClockSeconds)),
    el("td", {}, fmtSeconds(att.idleSeconds)),
    el("td", {}, text(att.exitCode)),
    el("td", { class: "att-summary" }, summary ? el("pre", {}, summary) : "", decision ? el("div", { class: "muted" }, decision) : ""));
}

function renderTimeline(doc, summaries) {
  const blocks = doc.steps.map((step) => el("div", { class: "step " + text(step.status), dataset: { stepIndex: step.stepIndex } },
    el("h3", {}, `${step.stepIndex}. `, el("span", { class: "step-title" }, text(step.title)),
      " ", el("code", {}, text(step.stepId)), " ", el("span", { class: "status " + text(step.status) }, text(step.status))),
    step.attempts.length === 0 ? el("p", { class: "muted" }, "no attempt yet") :
      el("table", { class: "attempts" },
        el("thead", {}, el("tr", {}, ...["attempt", "status", "started as", "detector", "class", "next strategy",
          "wall", "idle", "exit", "failure summary"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...step.attempts.map((a) => attemptRow(a, summaries))))));
  document.getElementById("timeline").replaceChildren(...blocks);
}

function renderControls(doc, actions) {
  const select = document.getElementById("step");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "(the job's current step)"),
    ...doc.steps.map((s) => el("option", { value: s.stepId }, `${s.stepIndex}. ${s.stepId}`)));
  select.value = chosen;
  const box = document.getElementById("actions");
  box.replaceChildren(...ACTIONS.map((action) => {
    const rule = actions[action] || { allowed: false, why: "unknown action" };
    return el("button", { type: "button", id: "action-" + action, class: "action", disabled: !rule.allowed,
      title: rule.allowed ? action : text(rule.why), dataset: { action } }, action);
  }));
  const pending = doc.pendingControl || [];
  document.getElementById("pending").replaceChildren(...(pending.length === 0 ? [el("li", { class: "muted" }, "none")] :
    pending.map((r) => el("li", { class: "pending-request", dataset: { requestId: r.requestId } },
      `${text(r.action)}${r.stepId ? " step " + r.stepId : ""} by ${text(r.actor)}: pending since ${shortTime(r.requestedAt)} `,
      el("code", {}, text(r.requestId))))));
}

function renderAudit(doc) {
  document.querySelector("#audit tbody").replaceChildren(...(doc.audit || []).map((a) => el("tr", { class: "audit " + text(a.outcome) },
    el("td", {}, shortTime(a.at)), el("td", {}, text(a.actor)), el("td", {}, text(a.action)), el("td", {}, text(a.stepId)),
    el("td", {}, text(a.reason)), el("td", { class: "outcome" }, text(a.outcome) + (a.why ? ": " + a.why : "")),
    el("td", {}, el("code", {}, text(a.requestId).slice(0, 8))))));
  document.querySelector("#checkpoints tbody").replaceChildren(...(doc.checkpoints || []).map((c) => el("tr", {},
    el("td", {}, text(c.stepId)), el("td", {}, text(c.epoch)), el("td", {}, text(c.attempt)),
    el("td", {}, el("code", {}, text(c.diffHash).slice(0, 12))), el("td", {}, (c.changedFiles || []).join(", ")),
    el("td", {}, shortTime(c.finishedAt)))));
}

async function loadArtifacts() {
  const arts = await api(BASE + "/artifacts");
  document.getElementById("artifacts").replaceChildren(...arts.artifacts.map((a) =>
    el("li", {}, el("a", { href: BASE + "/artifacts/" + a.path.split("/").map(encodeURIComponent).join("/") }, a.path),
      ` (${a.size} bytes)`)));
}

async function refresh() {
  refreshTimer = null;
  loadArtifacts().catch(() => {});
  try {
    view = await api(BASE + "/view");
  } catch (err) {
    document.getElementById("page-error").textContent = err.message;
    return;
  }
  const doc = view.status;
  renderFacts(doc);
  renderTimeline(doc, view.summaries);
  renderControls(doc, view.actions);
  renderAudit(doc);
  // the running attempt, else the latest one: what the agent printed last
  const attempts = doc.steps.flatMap((s) => s.attempts).filter((a) => a.startedAt);
  attempts.sort((x, y) => (x.startedAt < y.startedAt ? -1 : 1));
  logAttempt = attempts.filter((a) => a.status === "running").pop() || attempts.pop() || null;
  const over = TERMINAL.includes(doc.status) && (doc.pendingControl || []).length === 0;
  if (over && (source || endEpoch !== doc.epoch)) {
    // the status can change before the last events reach the stream, and a revival can run to its
    // end between two looks (with no stream open): read what is left; if the end of this run is not
    // stored yet, follow the stream, which brings it (and asks for this again)
    if (source) { source.close(); source = null; }
    await catchUp(doc.epoch).catch(() => {});
    if (endEpoch !== doc.epoch) { follow(); return; }
    setLive("job ended");
  }
  if (!over && !source) follow();
}

function addEvent(seq, ev) {
  if (seq <= lastSeq) return;
  lastSeq = seq;
  if (JOB_ENDS.includes(ev.event)) endEpoch = ev.epoch;
  const list = document.getElementById("events");
  list.prepend(eventItem(seq, ev));
  while (list.children.length > 500) list.lastChild.remove();
}

const JOB_ENDS = ["task.job.succeeded", "task.job.failed", "task.job.cancelled"];
// the epoch of the last terminal event on the page: the job's current run has ended on the page
// when it is the job's epoch (a revival starts another epoch)
let endEpoch = null;

async function catchUp(epoch) {
  // a few short looks: the terminal event is stored just after the status changes
  for (let i = 0; i < 10 && endEpoch !== epoch; i++) {
    const page = await api(BASE + "/events?after=" + lastSeq);
    for (const ev of page.events) addEvent(ev.seq, ev);
    if (endEpoch !== epoch) await new Promise((done) => setTimeout(done, 200));
  }
}

function scheduleRefresh() {
  if (refreshTimer === null) refreshTimer = setTimeout(refresh, 150);
}

function setLive(message) {
  document.getElementById("live").textContent = message;
}

function eventItem(seq, ev) {
  const parts = [ev.stepId ? `step ${ev.stepId}` : "", ev.attempt ? `attempt ${ev.attempt}` : "",
    ev.detector ? `detector ${ev.detector}` : "", ev.failureClass ? ev.failureClass : "",
    ev.strategy ? `→ ${ev.strategy}` : "", ev.action ? `action ${ev.action}` : "", ev.actor ? `by ${ev.actor}` : "",
    ev.why ? ev.why : ev.reason ? ev.reason : ""].filter(Boolean);
  return el("li", { class: "event", dataset: { seq, event: ev.event } },
    el("span", { class: "seq" }, "#" + seq), " ", el("time", {}, shortTime(ev.ts)), " ",
    el("b", { class: "event-name" }, text(ev.event)), " ", el("span", {}, parts.join(" · ")));
}

function follow() {
  source = new EventSource(BASE + "/events/stream?after=" + lastSeq);
  setLive("live");
  source.onmessage = (msg) => {
    const seq = Number(msg.lastEventId);
    if (seq <= lastSeq) return;
    addEvent(seq, JSON.parse(msg.data));
    scheduleRefresh();
  };
  source.onerror = () => setLive("reconnecting…");
  source.onopen = () => setLive("live");
}

let logShown = null;

async function tailLog() {
  const pre = document.getElementById("log");
  const title = document.getElementById("log-title");
  const att = logAttempt;
  // a running attempt is polled every second; a finished one is read once more after it ended
  const key = att ? `${att.stepIndex}:${att.attempt}:${att.status}` : null;
  if (att && (att.status === "running" || key !== logShown)) {
    try {
      const body = await api(`${BASE}/steps/${att.stepIndex}/attempts/${att.attempt}/log?tail=8192`);
      title.textContent = `step ${att.stepId} attempt ${att.attempt} (${att.status})`;
      pre.textContent = body;
      pre.scrollTop = pre.scrollHeight;
      logShown = key;
    } catch (err) {
      if (err.status !== 404) title.textContent = err.message;
    }
  }
  setTimeout(tailLog, 1000);
}

async function request(action) {
  const msg = document.getElementById("control-msg");
  const reason = document.getElementById("reason").value.trim();
  const stepId = document.getElementById("step").value;
  if (CONFIRM[action] && !window.confirm(`${action} job ${JOB}?`)) return;
  const body = { action };
  if (reason) body.reason = reason;
  if (stepId) body.stepId = stepId;
  msg.className = "";
  msg.textContent = `requesting ${action}…`;
  try {
    const req = await api(BASE + "/control", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    msg.className = "ok";
    msg.textContent = `${action} requested (request ${req.requestId}); pending until a worker acknowledges it`;
    msg.dataset.requestId = req.requestId;
  } catch (err) {
    msg.className = "error";
    msg.textContent = `${action} rejected: ${err.message}`;
  }
  await refresh();
}

document.getElementById("actions").addEventListener("click", (ev) => {
  const button = ev.target.closest("button[data-action]");
  if (button && !button.disabled) request(button.dataset.action);
});

async function start() {
  try {
    const backlog = await api(BASE + "/events?after=0");
    const list = document.getElementById("events");
    for (const ev of backlog.events) {
      list.prepend(eventItem(ev.seq, ev));
      if (JOB_ENDS.includes(ev.event)) endEpoch = ev.epoch;  // a finished job's end is already here
    }
    lastSeq = backlog.last;
  } catch (err) {
    document.getElementById("page-error").textContent = err.message;
  }
  await refresh();
  tailLog();
}

start();
