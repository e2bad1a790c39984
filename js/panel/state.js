// The panel's state and its pure reducer: HTTP snapshots and `podkit.*` events go in as actions,
// a new state object comes out (the old one is never mutated). No DOM, no ComfyUI; unit-tested by
// tests/js/state.test.mjs.
//
// Events and snapshots race (a snapshot requested before an event may arrive after it), so a job
// only replaces what we hold when it is at least as new (`updated`), and a finished job never
// goes back to an active status at the same timestamp.
//
// The idle stop is one pod-wide state, not a job list: the latest answer or event wins, stamped
// with the local time it arrived (`at`, ms) so the countdown can tick on between events.

import { formatClock, idleText } from "./format.js";

export const DOWNLOAD_ACTIVE = new Set(["queued", "running", "verifying"]);
/** Downloads shown in the "active" list: working ones and paused ones (which can resume). */
export const DOWNLOAD_OPEN = new Set([...DOWNLOAD_ACTIVE, "paused"]);
export const TRAINING_ACTIVE = new Set(["queued", "preparing", "running", "uploading"]);
export const TERMINAL = new Set(["done", "failed", "cancelled"]);
export const OUTBOX_OPEN = new Set(["spooling", "uploading", "pending", "failed"]);

/** Idle phases whose countdown ticks locally between events. */
export const IDLE_COUNTING = new Set(["idle", "warning"]);

/** A section's error when its routes are not on this server (HTTP 404): the section hides its body. */
export const NOT_AVAILABLE = "not available on this server";

/** How many generation records the Monitor keeps in memory. */
export const MAX_RECENT = 200;
/** How many log lines of a training job are kept from events and details. */
export const MAX_LOG_LINES = 400;

export function initialState() {
  return {
    connection: "connecting", // "live" | "connecting" | "offline"
    status: null,
    downloads: { byId: {}, counts: {}, loaded: false, error: null },
    training: { byId: {}, detail: {}, loaded: false, error: null },
    cache: { stats: null, plan: null, error: null },
    loras: { listing: null, error: null },
    monitor: { report: null, recent: [], error: null },
    outbox: { byId: {}, counts: {}, loaded: false, error: null },
    // policy: GET /podkit/idle's (events carry none); current: the last answer or event, or null
    idle: { policy: null, current: null, loaded: false, error: null },
  };
}

/** Whether `next` should replace `prev` (same job id). */
export function isNewer(prev, next) {
  if (!prev) return true;
  const a = Number(prev.updated ?? 0);
  const b = Number(next.updated ?? 0);
  if (b !== a) return b > a;
  return !(TERMINAL.has(prev.status) && !TERMINAL.has(next.status));
}

function mergeSnapshot(byId, jobs) {
  const out = {};
  for (const job of jobs || []) {
    if (!job || typeof job.id !== "string") continue;
    const held = byId[job.id];
    out[job.id] = held && !isNewer(held, job) ? held : job;
  }
  return out;
}

function upsert(byId, job) {
  if (!job || typeof job.id !== "string") return byId;
  if (!isNewer(byId[job.id], job)) return byId;
  return { ...byId, [job.id]: { ...(byId[job.id] || {}), ...job } };
}

function without(byId, id) {
  if (!(id in byId)) return byId;
  const out = { ...byId };
  delete out[id];
  return out;
}

function countBy(byId) {
  const counts = {};
  for (const job of Object.values(byId)) counts[job.status] = (counts[job.status] || 0) + 1;
  return counts;
}

/** Percentile `p` (0..100) of numbers by linear interpolation; null for an empty list. */
export function percentile(values, p) {
  const xs = values.filter((v) => typeof v === "number" && Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const rank = (Math.min(100, Math.max(0, p)) / 100) * (xs.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo);
}

function mergeRecent(recent, records) {
  const seen = new Set();
  const out = [];
  for (const r of [...records, ...recent]) {
    if (!r) continue;
    const key = r.prompt_id ?? `${r.started}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(r);
  }
  out.sort((a, b) => Number(b.started ?? 0) - Number(a.started ?? 0));
  return out.slice(0, MAX_RECENT);
}

function trainingDetail(detail, job) {
  const held = detail[job.id] || {};
  const next = { ...held };
  if (Array.isArray(job.log_tail)) next.log_tail = job.log_tail.slice(-MAX_LOG_LINES);
  if (Array.isArray(job.loss)) next.loss = job.loss;
  if (typeof job.config_yaml === "string") next.config_yaml = job.config_yaml;
  return { ...detail, [job.id]: next };
}

function trainingSummary(job) {
  // A detail answer carries `loss` as a list of [step, loss]; the job's own `loss` is a number.
  if (!Array.isArray(job.loss)) return job;
  const { loss, log_tail, config_yaml, ...rest } = job;
  const last = loss.length ? loss[loss.length - 1] : null;
  return { ...rest, loss: Array.isArray(last) ? last[1] : (rest.loss ?? null) };
}

const num = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);

/** The idle fields of an answer or event (without `policy`), stamped with `at` (local ms). */
function idleCurrent(wire, at) {
  return {
    phase: wire.phase,
    idle_seconds: num(wire.idle_seconds) ?? 0,
    act_in_seconds: num(wire.act_in_seconds),
    busy: Array.isArray(wire.busy) ? wire.busy.map(String) : [],
    message: typeof wire.message === "string" ? wire.message : "",
    error: wire.error ? String(wire.error) : null,
    at: num(at) ?? 0,
  };
}

/** The reducer. Unknown actions return the same state object. */
export function reduce(state, action) {
  switch (action.type) {
    case "connection":
      return state.connection === action.state ? state : { ...state, connection: action.state };
    case "status":
      return { ...state, status: action.status };

    case "downloads": {
      const byId = mergeSnapshot(state.downloads.byId, action.jobs);
      const counts = action.counts || countBy(byId);
      return { ...state, downloads: { byId, counts, loaded: true, error: null } };
    }
    case "download": {
      const byId = upsert(state.downloads.byId, action.job);
      if (byId === state.downloads.byId) return state;
      return { ...state, downloads: { ...state.downloads, byId, counts: countBy(byId) } };
    }
    case "download/removed": {
      const byId = without(state.downloads.byId, action.id);
      return { ...state, downloads: { ...state.downloads, byId, counts: countBy(byId) } };
    }

    case "trainings": {
      const byId = mergeSnapshot(state.training.byId, (action.jobs || []).map(trainingSummary));
      return { ...state, training: { ...state.training, byId, loaded: true, error: null } };
    }
    case "training": {
      const job = action.job;
      if (!job || typeof job.id !== "string") return state;
      const byId = upsert(state.training.byId, trainingSummary(job));
      const detail = trainingDetail(state.training.detail, job);
      return { ...state, training: { ...state.training, byId, detail } };
    }
    case "training/removed": {
      const byId = without(state.training.byId, action.id);
      const detail = without(state.training.detail, action.id);
      return { ...state, training: { ...state.training, byId, detail } };
    }

    case "cache":
      return { ...state, cache: { ...state.cache, stats: action.stats, error: null } };
    case "cache/plan":
      return { ...state, cache: { ...state.cache, plan: action.plan } };
    case "loras":
      return { ...state, loras: { listing: action.listing, error: null } };

    case "metrics": {
      const report = action.report || null;
      const recent = mergeRecent(state.monitor.recent, (report && report.recent) || []);
      return { ...state, monitor: { report, recent, error: null } };
    }
    case "generation": {
      if (!action.record) return state;
      const recent = mergeRecent(state.monitor.recent, [action.record]);
      return { ...state, monitor: { ...state.monitor, recent } };
    }

    case "outbox": {
      const byId = {};
      for (const item of action.items || []) if (item && typeof item.id === "string") byId[item.id] = item;
      return { ...state, outbox: { byId, counts: action.counts || {}, loaded: true, error: null } };
    }
    case "upload": {
      const item = action.item;
      if (!item || typeof item.id !== "string") return state;
      const held = state.outbox.byId[item.id];
      if (held && !isNewer(held, item)) return state;
      const counts = { ...state.outbox.counts };
      if (held) counts[held.status] = Math.max(0, (counts[held.status] || 0) - 1);
      counts[item.status] = (counts[item.status] || 0) + 1;
      return { ...state, outbox: { ...state.outbox, byId: { ...state.outbox.byId, [item.id]: item }, counts } };
    }

    case "upload/removed": {
      const held = state.outbox.byId[action.id];
      if (!held) return state;
      const counts = { ...state.outbox.counts };
      counts[held.status] = Math.max(0, (counts[held.status] || 0) - 1);
      return { ...state, outbox: { ...state.outbox, byId: without(state.outbox.byId, action.id), counts } };
    }

    case "idle": {
      // {answer, at}: GET /podkit/idle or POST /podkit/idle/keepalive (the policy included)
      const a = action.answer;
      if (!a || typeof a !== "object" || typeof a.phase !== "string") return state;
      const policy = a.policy && typeof a.policy === "object" ? a.policy : state.idle.policy;
      return { ...state, idle: { policy, current: idleCurrent(a, action.at), loaded: true, error: null } };
    }
    case "idle/event": {
      // {event, at}: a `podkit.idle` event (no policy: the one we hold stays)
      const e = action.event;
      if (!e || typeof e !== "object" || typeof e.phase !== "string") return state;
      return { ...state, idle: { ...state.idle, current: idleCurrent(e, action.at), error: null } };
    }

    case "error": {
      // {section, message}: a failed HTTP refresh of one section
      const section = state[action.section];
      if (!section || typeof section !== "object") return state;
      return { ...state, [action.section]: { ...section, error: action.message } };
    }
    default:
      return state;
  }
}

function byNewest(a, b) {
  return Number(b.created ?? 0) - Number(a.created ?? 0);
}

/** Downloads split for display: active and paused ones first (newest first), then the history. */
export function downloadGroups(state) {
  const jobs = Object.values(state.downloads.byId).sort(byNewest);
  return {
    active: jobs.filter((j) => DOWNLOAD_OPEN.has(j.status)),
    history: jobs.filter((j) => !DOWNLOAD_OPEN.has(j.status)),
  };
}

/** Training jobs, active ones first, each group newest first. */
export function trainingGroups(state) {
  const jobs = Object.values(state.training.byId).sort(byNewest);
  return {
    active: jobs.filter((j) => TRAINING_ACTIVE.has(j.status)),
    finished: jobs.filter((j) => !TRAINING_ACTIVE.has(j.status)),
  };
}

/** Outbox items still to upload or failed, newest first. */
export function outboxOpen(state) {
  return Object.values(state.outbox.byId)
    .filter((i) => OUTBOX_OPEN.has(i.status))
    .sort(byNewest);
}

/** p50/p95/mean of the generations we hold (the Monitor shows the server's report when present). */
export function recentSummary(recent) {
  const walls = recent.map((r) => r.wall_s);
  const valid = walls.filter((v) => typeof v === "number" && Number.isFinite(v));
  return {
    count: valid.length,
    p50_s: percentile(valid, 50),
    p95_s: percentile(valid, 95),
    mean_s: valid.length ? valid.reduce((a, b) => a + b, 0) / valid.length : null,
  };
}

/**
 * The toast an event deserves, given what we held before: a job that just finished or failed.
 * Returns {severity, title, detail} or null. Snapshots never toast (only live events do).
 */
export function toastFor(kind, prev, next) {
  if (!next || (prev && prev.status === next.status)) return null;
  const name = next.name || next.key || next.id;
  if (kind === "download") {
    if (next.status === "done") return { severity: "success", title: "Download finished", detail: next.dest || name };
    if (next.status === "failed")
      return { severity: "error", title: "Download failed", detail: `${name}: ${next.error || "unknown error"}` };
  } else if (kind === "training") {
    if (next.status === "done")
      return {
        severity: "success",
        title: "Training finished",
        detail: next.lora_uri ? `${name} → ${next.lora_uri}` : name,
      };
    if (next.status === "failed")
      return { severity: "error", title: "Training failed", detail: `${name}: ${next.error || "unknown error"}` };
  } else if (kind === "upload") {
    if (next.status === "done") return { severity: "success", title: "Uploaded", detail: `${next.bucket}/${next.key}` };
    if (next.status === "failed")
      return {
        severity: "error",
        title: "PodKit upload failed",
        detail: `${next.key}: ${next.last_error || "unknown error"}`,
      };
  }
  return null;
}

/** Active downloads + active trainings: the number on the sidebar icon ("" when none). */
export function badgeText(state) {
  const n =
    Object.values(state.downloads.byId).filter((j) => DOWNLOAD_ACTIVE.has(j.status)).length +
    Object.values(state.training.byId).filter((j) => TRAINING_ACTIVE.has(j.status)).length;
  return n > 0 ? String(n) : "";
}

/**
 * What finished downloads put into the model folders, per model type:
 * {count, bytes, types: [[type, {count, bytes}], ...]} (types sorted by name).
 */
export function downloadedModels(state) {
  const types = {};
  let count = 0;
  let bytes = 0;
  for (const job of Object.values(state.downloads.byId)) {
    if (job.status !== "done") continue;
    const files = Array.isArray(job.files) && job.files.length ? job.files.length : 1;
    const size = Number(job.bytes_total ?? job.bytes_done ?? 0) || 0;
    const t = (types[job.model_type || "other"] ||= { count: 0, bytes: 0 });
    t.count += files;
    t.bytes += size;
    count += files;
    bytes += size;
  }
  return { count, bytes, types: Object.entries(types).sort(([a], [b]) => a.localeCompare(b)) };
}

/** The idle policy: GET /podkit/idle's, else the one in GET /podkit/status (settings.pod.idle). */
export function idlePolicy(state) {
  const held = state.idle.policy;
  if (held) return held;
  const fromStatus = state.status && state.status.settings && state.status.settings.pod;
  return (fromStatus && fromStatus.idle) || null;
}

/**
 * Seconds until the idle action at local time `now` (ms): `act_in_seconds` counted down from when
 * it arrived, never below 0. Null when there is no countdown (busy, off, acting, done…).
 */
export function idleLeft(current, now) {
  if (!current || !IDLE_COUNTING.has(current.phase) || current.act_in_seconds === null) return null;
  const elapsed = Math.max(0, (now - current.at) / 1000);
  return Math.max(0, current.act_in_seconds - elapsed);
}

/** Seconds the pod has been idle at local time `now` (ms), counted up from the last answer. */
export function idleFor(current, now) {
  if (!current) return null;
  if (!IDLE_COUNTING.has(current.phase)) return current.idle_seconds;
  return current.idle_seconds + Math.max(0, (now - current.at) / 1000);
}

/**
 * What the idle block shows at local time `now` (ms): {available, loaded, enabled, phase, warning,
 * counting, left, text, lead, countdown, policy}. `enabled` decides the Keep alive button.
 */
export function idleView(state, now) {
  const { current, error, loaded } = state.idle;
  const policy = idlePolicy(state);
  const available = error !== NOT_AVAILABLE;
  const phase = current ? current.phase : null;
  const enabled = available && (policy ? !!policy.enabled : !!phase && phase !== "off");
  const left = idleLeft(current, now);
  const words = current
    ? idleText({
        phase,
        action: policy && policy.action,
        idleFor: idleFor(current, now),
        left,
        busy: current.busy,
        error: current.error,
        message: current.message,
      })
    : { text: "", lead: "", countdown: "" };
  return {
    available,
    loaded: loaded || !!current,
    enabled,
    phase,
    warning: phase === "warning" || phase === "acting",
    counting: IDLE_COUNTING.has(phase),
    left,
    ...words,
    policy,
  };
}

/**
 * Whether the local countdown says the server has moved on (the action is due, or an idle pod
 * reached its warning) while we still hold the older phase: time to re-read GET /podkit/idle.
 */
export function idleDue(state, now) {
  const current = state.idle.current;
  const left = idleLeft(current, now);
  if (left === null) return false;
  if (left <= 0) return true;
  const policy = idlePolicy(state);
  return current.phase === "idle" && !!policy && typeof policy.warn_seconds === "number" && left <= policy.warn_seconds;
}

/**
 * The toast a new idle state deserves, given the one held before: once when a warning starts
 * (not again while it lasts, keep-alives included), and when the idle action failed.
 */
export function idleToast(prev, next, policy) {
  if (!next || (prev && prev.phase === next.phase)) return null;
  if (next.phase === "warning") {
    const verb = policy && policy.action === "command" ? "runs the idle command" : "stops the pod";
    const when = next.act_in_seconds === null ? "soon" : `in ${formatClock(next.act_in_seconds)}`;
    return {
      severity: "warn",
      title: "Pod idle",
      detail: `PodKit ${verb} ${when} unless you press Keep alive in the PodKit panel.`,
    };
  }
  if (next.phase === "failed")
    return { severity: "error", title: "Idle action failed", detail: next.error || next.message || "unknown error" };
  return null;
}
