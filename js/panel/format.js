// Pure formatting helpers for the PodKit panel (no DOM, no ComfyUI): sizes, speeds, durations,
// percentages and times as short human-readable text. Unit-tested by tests/js/format.test.mjs.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** True for a finite number (not null, NaN or ±Infinity). */
export function isNum(x) {
  return typeof x === "number" && Number.isFinite(x);
}

/** 1536 → "1.5 KiB"; null/undefined/NaN → "—". Binary units, 3 significant digits. */
export function formatBytes(n) {
  if (!isNum(n)) return "—";
  const sign = n < 0 ? "-" : "";
  let v = Math.abs(n);
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  if (i === 0) return `${sign}${Math.round(v)} B`;
  const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${sign}${v.toFixed(digits)} ${UNITS[i]}`;
}

/** Bytes per second → "12.3 MiB/s"; nothing for an unknown or zero speed. */
export function formatSpeed(bps) {
  if (!isNum(bps) || bps <= 0) return "";
  return `${formatBytes(bps)}/s`;
}

/** Seconds → "45 s", "3 m 05 s", "2 h 07 m", "3 d 4 h"; "—" when unknown. */
export function formatDuration(s) {
  if (!isNum(s) || s < 0) return "—";
  if (s < 1) return s === 0 ? "0 s" : `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1).replace(/\.0$/, "") : Math.round(s)} s`;
  const total = Math.round(s);
  const d = Math.floor(total / 86400);
  const h = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${String(m).padStart(2, "0")} m`;
  return `${m} m ${String(sec).padStart(2, "0")} s`;
}

/** Seconds of a measured latency → "850 ms", "2.41 s", "1 m 03 s". */
export function formatSeconds(s) {
  if (!isNum(s) || s < 0) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(2)} s`;
  return formatDuration(s);
}

/** The fraction done in [0, 1], or null when the total is unknown. */
export function fraction(done, total) {
  if (!isNum(done) || !isNum(total) || total <= 0) return null;
  return Math.min(1, Math.max(0, done / total));
}

/** A fraction → "42 %" (floor, so 99.9 % never shows as 100 % before it is done). */
export function formatPercent(f) {
  if (!isNum(f)) return "";
  return `${Math.floor(Math.min(1, Math.max(0, f)) * 100)} %`;
}

/** A rate in [0, 1] → "87.5 %", or "—". */
export function formatRate(r) {
  if (!isNum(r)) return "—";
  return `${(Math.min(1, Math.max(0, r)) * 100).toFixed(1).replace(/\.0$/, "")} %`;
}

/** Unix seconds → "12 s ago", "5 m ago", "3 h ago", "4 d ago" relative to ``now`` (unix seconds). */
export function formatAgo(t, now) {
  if (!isNum(t) || !isNum(now)) return "";
  const d = Math.max(0, now - t);
  if (d < 5) return "just now";
  if (d < 60) return `${Math.floor(d)} s ago`;
  if (d < 3600) return `${Math.floor(d / 60)} m ago`;
  if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
  return `${Math.floor(d / 86400)} d ago`;
}

/** A loss value with 4 significant digits ("0.1234", "1.235e-5"), or "—". */
export function formatLoss(x) {
  if (!isNum(x)) return "—";
  if (x !== 0 && Math.abs(x) < 1e-3) return x.toExponential(3);
  return x.toPrecision(4);
}

/** A download job's progress line: "42 % · 12.3 MiB of 29.1 MiB · 8.1 MiB/s · 2 s left". */
export function downloadProgressText(job) {
  const parts = [];
  const f = fraction(job.bytes_done, job.bytes_total);
  if (f !== null) parts.push(formatPercent(job.status === "done" ? 1 : f));
  if (isNum(job.bytes_total)) parts.push(`${formatBytes(job.bytes_done ?? 0)} of ${formatBytes(job.bytes_total)}`);
  else if (isNum(job.bytes_done)) parts.push(formatBytes(job.bytes_done));
  if (job.status === "running") {
    const speed = formatSpeed(job.speed ?? job.speed_bps);
    if (speed) parts.push(speed);
    const eta = job.eta ?? job.eta_s;
    if (isNum(eta)) parts.push(`${formatDuration(eta)} left`);
  }
  return parts.join(" · ");
}

/** A training job's progress line: "step 120 of 500 · loss 0.1234 · 1.2 s/step · 7 m 36 s left". */
export function trainingProgressText(job) {
  const parts = [];
  if (isNum(job.total_steps)) parts.push(`step ${job.step ?? 0} of ${job.total_steps}`);
  if (isNum(job.loss)) parts.push(`loss ${formatLoss(job.loss)}`);
  // the trainer reports seconds per step (`sec_per_step`), the route contract steps per second (`speed`)
  const sps = isNum(job.sec_per_step) ? job.sec_per_step : isNum(job.speed) && job.speed > 0 ? 1 / job.speed : null;
  if (isNum(sps) && sps > 0) parts.push(`${formatSeconds(sps)}/step`);
  const eta = job.eta ?? job.eta_s;
  if (isNum(eta) && !TERMINAL_TRAINING.has(job.status)) parts.push(`${formatDuration(eta)} left`);
  return parts.join(" · ");
}

const TERMINAL_TRAINING = new Set(["done", "failed", "cancelled"]);

/**
 * Parse a size typed by a person ("50G", "512 MiB", "1.5T", "1000000") into bytes (binary units,
 * as the server's PODKIT_CACHE_MAX_BYTES). Returns null when the text is not a size.
 */
export function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?\s*$/i.exec(String(text ?? ""));
  if (!m) return null;
  const unit = m[2].toLowerCase();
  const scale = unit ? 1024 ** ("kmgtp".indexOf(unit) + 1) : 1;
  return Math.floor(Number(m[1]) * scale);
}

/** Seconds left → a countdown clock "4:32", "1:04:32" (rounded up: "0:00" only once time is up); "" when unknown. */
export function formatClock(s) {
  if (!isNum(s)) return "";
  const total = Math.max(0, Math.ceil(s));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const ss = String(total % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** Seconds of idleness, coarse: "12 s", "3 min", "1 h", "2 h 05 min"; "—" when unknown. */
export function formatIdleFor(s) {
  if (!isNum(s) || s < 0) return "—";
  if (s < 60) return `${Math.floor(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const rest = m % 60;
  return rest ? `${Math.floor(m / 60)} h ${String(rest).padStart(2, "0")} min` : `${Math.floor(m / 60)} h`;
}

const IDLE_WORDS = {
  stop: { verb: "stops the pod", acting: "Stopping the pod…", done: "Pod stop requested" },
  command: { verb: "runs the idle command", acting: "Running the idle command…", done: "Idle command ran" },
};

/**
 * The idle stop in one short line, from what the panel holds now:
 * `{phase, action, idleFor, left, busy, error, message}` (`idleFor` and `left` in seconds, already
 * counted down locally). Returns {text, lead, countdown}: `text` is `lead` followed by `countdown`
 * ("4:32") when there is one, so a host can show the clock on its own.
 */
export function idleText({ phase, action, idleFor, left, busy, error, message } = {}) {
  const words = IDLE_WORDS[action] || IDLE_WORDS.stop;
  const plain = (text) => ({ text, lead: text, countdown: "" });
  switch (phase) {
    case "off":
      return plain("Idle stop off");
    case "busy":
      return plain(Array.isArray(busy) && busy.length ? `Busy: ${busy.join(", ")}` : "Busy");
    case "idle":
    case "warning": {
      if (isNum(left) && left <= 0) return plain(words.acting);
      const since = `Idle ${formatIdleFor(idleFor)}`;
      if (!isNum(left)) return plain(since);
      const lead = `${since} – ${words.verb} in`;
      const countdown = formatClock(left);
      return { text: `${lead} ${countdown}`, lead, countdown };
    }
    case "acting":
      return plain(words.acting);
    case "done":
      return plain(words.done);
    case "failed":
      return plain(`Idle action failed: ${error || message || "unknown error"}`);
    default:
      return plain(message || (phase ? String(phase) : ""));
  }
}

/** An idle policy as a hint: "Stops the pod after 30 min idle · warns 5 min before". */
export function idlePolicyText(policy) {
  if (!policy || !policy.enabled) return "";
  const what = policy.action === "command" ? "Runs the idle command" : "Stops the pod";
  const after = Number(policy.idle_minutes) * 60;
  const parts = [`${what} after ${formatIdleFor(after)} idle`];
  const warn = policy.warn_seconds;
  if (isNum(warn) && warn >= after) parts.push("warns throughout");
  else if (isNum(warn) && warn > 0) parts.push(`warns ${formatIdleFor(warn)} before`);
  return parts.join(" · ");
}
