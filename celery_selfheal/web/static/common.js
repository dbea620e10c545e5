// Shared helpers. Everything from the API is put into the page with textContent, never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && key !== "href") node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function text(value) {
  return value === null || value === undefined ? "" : String(value);
}

function shortTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? text(iso) : d.toISOString().replace("T", " ").slice(0, 19);
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") opts.headers["X-CSRF-Token"] = CSRF;
  const resp = await fetch(path, opts);
  if (resp.status === 401) { window.location.assign("/login"); throw new Error("logged out"); }
  const type = resp.headers.get("content-type") || "";
  const body = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) {
    const err = new Error((body && body.error) || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function jobHref(jobId) {
  return "/jobs/" + encodeURIComponent(jobId);
}
