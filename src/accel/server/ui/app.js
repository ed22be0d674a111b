// acceld's dashboard: polls the task API (same origin only) and acts through it.
// The API token lives in sessionStorage and travels only in the Authorization header.
"use strict";

const POLL_MS = 1500;
const TOKEN_KEY = "acceld-token";
const state = { tasks: [], seen: "", selected: null, timer: null };
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.message ? data.message : response.statusText;
    const error = new Error(`${response.status}: ${message}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function notice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function seconds(task) {
  if (task.timings && task.timings.total) return task.timings.total;
  if (!task.started) return null;
  const end = task.finished ? Date.parse(task.finished) : Date.now();
  return (end - Date.parse(task.started)) / 1000;
}

function repository(ref) {
  const name = ref.split("@")[0];
  const slash = name.indexOf("/");
  const last = name.lastIndexOf(":");
  return last > slash ? name.slice(0, last) : name;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fillOptions(select, values) {
  const current = select.value;
  const wanted = ["", ...[...new Set(values)].sort()];
  const have = [...select.options].map((o) => o.value);
  if (wanted.join("\n") === have.join("\n")) return;
  select.replaceChildren(...wanted.map((v) => {
    const option = document.createElement("option");
    option.value = v;
    option.textContent = v || "all";
    return option;
  }));
  select.value = wanted.includes(current) ? current : "";
}

function matches(task) {
  const status = $("f-status").value, driver = $("f-driver").value, repo = $("f-repo").value;
  const words = $("f-search").value.trim().toLowerCase();
  if (status && task.status !== status) return false;
  if (driver && task.driver !== driver) return false;
  if (repo && repository(task.source) !== repo) return false;
  if (!words) return true;
  const text = [task.id, task.source, task.target, task.reason, task.driver].join(" ").toLowerCase();
  return words.split(/\s+/).every((w) => text.includes(w));
}

function renderTable() {
  fillOptions($("f-driver"), state.tasks.map((t) => t.driver).filter(Boolean));
  fillOptions($("f-repo"), state.tasks.map((t) => repository(t.source)));
  const rows = state.tasks.filter(matches).map((task) => {
    const row = document.createElement("tr");
    row.dataset.id = task.id;
    if (task.id === state.selected) row.classList.add("selected");
    const first = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.className = `status ${task.status}`;
    button.textContent = task.status;
    button.setAttribute("aria-label", `${task.status}: show task ${task.source}`);
    first.appendChild(button);
    row.appendChild(first);
    cell(row, task.source, "ref");
    cell(row, task.target || "–", "ref wide");
    cell(row, task.driver || "–", "wide");
    cell(row, task.target_size ? `${bytes(task.source_size)} → ${bytes(task.target_size)}` : "–", "num");
    const secs = seconds(task);
    cell(row, secs === null ? "–" : `${secs.toFixed(1)} s`, "num");
    cell(row, task.cache_hits || task.cache_misses ? `${task.cache_hits}/${task.cache_hits + task.cache_misses}` : "–", "num wide");
    cell(row, new Date(task.created).toLocaleString(), "wide");
    row.addEventListener("click", () => select(task.id));
    return row;
  });
  // Polling re-renders the table: keep the keyboard focus on the row it was on.
  const focused = document.activeElement && document.activeElement.closest("#tasks tbody tr");
  document.querySelector("#tasks tbody").replaceChildren(...rows);
  if (focused) {
    const again = rows.find((r) => r.dataset.id === focused.dataset.id);
    if (again) again.querySelector("button").focus();
  }
  $("empty").hidden = rows.length > 0;
}

function field(list, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value === "" || value === null || value === undefined ? "–" : String(value);
  list.append(dt, dd);
}

function renderDetail() {
  const panel = $("detail");
  const task = state.tasks.find((t) => t.id === state.selected);
  if (!task) { panel.hidden = true; return; }
  panel.hidden = false;
  panel.dataset.id = task.id;
  panel.dataset.status = task.status;
  $("d-title").textContent = `${task.status} · ${task.source}`;
  const list = $("d-fields");
  list.replaceChildren();
  field(list, "task", task.id);
  field(list, "source", task.source);
  field(list, "source digest", task.source_digest);
  field(list, "target", task.target);
  field(list, "target digest", task.target_digest);
  field(list, "driver", task.driver);
  field(list, "sizes", task.target_size ? `${bytes(task.source_size)} → ${bytes(task.target_size)}` : "");
  field(list, "moved", task.bytes_in || task.bytes_out ? `${bytes(task.bytes_in)} in, ${bytes(task.bytes_out)} out` : "");
  field(list, "layer cache", `${task.cache_hits} hits, ${task.cache_misses} misses, ${bytes(task.cache_saved)} saved`);
  field(list, "attempts", task.attempts);
  field(list, "node", task.node);
  field(list, "created", task.created);
  field(list, "started", task.started);
  field(list, "finished", task.finished);
  const stages = Object.entries(task.timings || {}).filter(([name]) => name !== "total" && name !== "overlap");
  const longest = Math.max(task.timings && task.timings.total ? task.timings.total : 0, ...stages.map(([, s]) => s), 0.001);
  if (!stages.length) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = task.status === "COMPLETED" || task.status === "FAILED" || task.status === "CANCELED"
      ? "no stage timings recorded" : "stage timings appear when the conversion ends";
    $("d-timeline").replaceChildren(none);
  } else $("d-timeline").replaceChildren(...stages.map(([name, secs]) => {
    const line = document.createElement("div");
    line.className = "stage";
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = `fill ${name}`;
    fill.style.width = `${Math.max(1, (100 * secs) / longest)}%`;
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "secs";
    value.textContent = `${secs.toFixed(2)} s`;
    line.append(label, track, value);
    return line;
  }));
  $("d-reason").textContent = task.reason;
  $("d-reason").hidden = $("d-reason-title").hidden = !task.reason;
  $("d-retry").hidden = !(task.status === "FAILED" || task.status === "CANCELED");
  $("d-cancel").hidden = !(task.status === "PENDING" || task.status === "PROCESSING");
}

function renderSummary(s) {
  const finished = s.completed + s.failed + s.canceled;
  $("t-finished").textContent = String(finished);
  $("t-success").textContent = s.success_rate === null ? "–" : `${(100 * s.success_rate).toFixed(0)} %`;
  $("t-pending").textContent = String(s.pending);
  $("t-running").textContent = String(s.processing);
  $("t-bytes").textContent = `${bytes(s.bytes_in)} / ${bytes(s.bytes_out)}`;
  $("t-saved").textContent = bytes(s.cache_saved);
}

function select(id) {
  state.selected = id;
  renderTable();
  renderDetail();
  $("detail").focus();
}

async function refresh() {
  try {
    const [summary, tasks] = await Promise.all([
      api("GET", "/api/v1/summary"), api("GET", "/api/v1/conversions?limit=500"),
    ]);
    renderSummary(summary);
    const seen = JSON.stringify(tasks);
    if (seen !== state.seen) {
      state.seen = seen;
      state.tasks = tasks;
      renderTable();
      renderDetail();
    }
    if ($("notice").dataset.kind === "poll") { notice(""); delete $("notice").dataset.kind; }
  } catch (error) {
    notice(error.status === 401 || error.status === 403
      ? `Cannot read tasks: ${error.message}. Enter the API token.` : `Cannot reach acceld: ${error.message}`);
    $("notice").dataset.kind = "poll";
  } finally {
    document.body.dataset.refreshed = String(Date.now());
  }
}

async function act(method, path, body) {
  try {
    const result = await api(method, path, body);
    notice("");
    await refresh();
    return result;
  } catch (error) {
    notice(`Refused: ${error.message}`);
    delete $("notice").dataset.kind;
    return null;
  }
}

function showTokenState() {
  $("token-state").textContent = token() ? "token set for this tab" : "no token";
}

function start() {
  $("convert-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const source = $("convert-source").value.trim();
    const created = await act("POST", "/api/v1/submit", { source });
    if (created && created.length) { $("convert-source").value = ""; select(created[0].id); }
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    showTokenState();
    notice("");  // a new token: what the old one was refused no longer holds
    refresh();
  });
  $("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showTokenState(); refresh(); });
  $("d-retry").addEventListener("click", () => act("POST", `/api/v1/conversions/${state.selected}/retry`));
  $("d-cancel").addEventListener("click", () => act("POST", `/api/v1/conversions/${state.selected}/cancel`));
  $("d-close").addEventListener("click", () => { state.selected = null; renderTable(); renderDetail(); });
  for (const id of ["f-status", "f-driver", "f-repo", "f-search"]) $(id).addEventListener("input", renderTable);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.selected) { state.selected = null; renderTable(); renderDetail(); }
  });
  showTokenState();
  refresh();
  state.timer = setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
