// node --test: the idle stop in the panel: its formatting (js/panel/format.js), reducer, countdown
// and toasts (js/panel/state.js), and the controller's idle route, event and keep-alive.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createApi } from "../../js/panel/api.js";
import { EVENTS, createController } from "../../js/panel/controller.js";
import { formatClock, formatIdleFor, idlePolicyText, idleText } from "../../js/panel/format.js";
import {
  NOT_AVAILABLE,
  idleDue,
  idleFor,
  idleLeft,
  idlePolicy,
  idleToast,
  idleView,
  initialState,
  reduce,
} from "../../js/panel/state.js";
import { fakeFetch } from "./fake_fetch.mjs";

const POLICY = { enabled: true, idle_minutes: 10, action: "stop", warn_seconds: 300, command: [] };
const answer = (phase, extra = {}) => ({
  policy: POLICY,
  phase,
  idle_seconds: 0,
  act_in_seconds: null,
  busy: [],
  message: "",
  error: null,
  ...extra,
});
const T0 = 1_700_000_000_000; // a local clock reading, ms

test("formatClock counts down in m:ss (h:mm:ss past an hour), rounding up", () => {
  assert.equal(formatClock(272), "4:32");
  assert.equal(formatClock(271.2), "4:32", "0:00 only once the time is up");
  assert.equal(formatClock(59.9), "1:00");
  assert.equal(formatClock(5), "0:05");
  assert.equal(formatClock(0), "0:00");
  assert.equal(formatClock(-3), "0:00");
  assert.equal(formatClock(3600 + 4 * 60 + 32), "1:04:32");
  for (const bad of [null, undefined, NaN, "12"]) assert.equal(formatClock(bad), "");
});

test("formatIdleFor is coarse: seconds, minutes, hours", () => {
  assert.equal(formatIdleFor(0), "0 s");
  assert.equal(formatIdleFor(42.9), "42 s");
  assert.equal(formatIdleFor(3 * 60 + 59), "3 min");
  assert.equal(formatIdleFor(3600), "1 h");
  assert.equal(formatIdleFor(2 * 3600 + 5 * 60), "2 h 05 min");
  assert.equal(formatIdleFor(null), "—");
  assert.equal(formatIdleFor(-1), "—");
});

test("idleText: one short line per phase, the countdown apart", () => {
  assert.equal(idleText({ phase: "off" }).text, "Idle stop off");
  assert.equal(
    idleText({ phase: "busy", busy: ["1 upload(s) waiting for the store"] }).text,
    "Busy: 1 upload(s) waiting for the store",
  );
  assert.equal(
    idleText({ phase: "busy", busy: ["1 prompt(s) in ComfyUI's queue", "2 download(s) running"] }).text,
    "Busy: 1 prompt(s) in ComfyUI's queue, 2 download(s) running",
  );
  const w = idleText({ phase: "warning", action: "stop", idleFor: 200, left: 272 });
  assert.deepEqual(w, {
    text: "Idle 3 min – stops the pod in 4:32",
    lead: "Idle 3 min – stops the pod in",
    countdown: "4:32",
  });
  assert.equal(
    idleText({ phase: "idle", action: "command", idleFor: 12, left: 3000 }).text,
    "Idle 12 s – runs the idle command in 50:00",
  );
  // the local countdown ran out before the server said so
  assert.equal(idleText({ phase: "warning", action: "stop", idleFor: 600, left: 0 }).text, "Stopping the pod…");
  assert.equal(idleText({ phase: "acting", action: "stop" }).text, "Stopping the pod…");
  assert.equal(idleText({ phase: "acting", action: "command" }).text, "Running the idle command…");
  assert.equal(idleText({ phase: "done", action: "stop" }).text, "Pod stop requested");
  assert.equal(idleText({ phase: "done", action: "command" }).text, "Idle command ran");
  assert.equal(
    idleText({ phase: "failed", error: "stopping the pod needs RUNPOD_API_KEY and RUNPOD_POD_ID" }).text,
    "Idle action failed: stopping the pod needs RUNPOD_API_KEY and RUNPOD_POD_ID",
  );
  assert.equal(idleText({ phase: "failed", message: "the idle action failed" }).countdown, "");
});

test("idlePolicyText describes an enabled policy only", () => {
  assert.equal(idlePolicyText(POLICY), "Stops the pod after 10 min idle · warns 5 min before");
  assert.equal(
    idlePolicyText({ enabled: true, idle_minutes: 0.5, action: "command", warn_seconds: 3600 }),
    "Runs the idle command after 30 s idle · warns throughout",
  );
  assert.equal(idlePolicyText({ ...POLICY, warn_seconds: 0 }), "Stops the pod after 10 min idle");
  assert.equal(idlePolicyText({ ...POLICY, enabled: false, idle_minutes: null }), "");
  assert.equal(idlePolicyText(null), "");
});

test("the reducer takes answers with their policy and events without; bad input changes nothing", () => {
  const s0 = initialState();
  assert.deepEqual(s0.idle, { policy: null, current: null, loaded: false, error: null });
  const s1 = reduce(s0, { type: "idle", answer: answer("idle", { idle_seconds: 10, act_in_seconds: 590 }), at: T0 });
  assert.equal(s0.idle.current, null, "the old state is not mutated");
  assert.equal(s1.idle.loaded, true);
  assert.deepEqual(s1.idle.policy, POLICY);
  assert.deepEqual(s1.idle.current, {
    phase: "idle",
    idle_seconds: 10,
    act_in_seconds: 590,
    busy: [],
    message: "",
    error: null,
    at: T0,
  });
  assert.equal("policy" in s1.idle.current, false);
  // an event carries no policy: the held one stays
  const ev = { phase: "warning", idle_seconds: 301, act_in_seconds: 299, busy: [], message: "m", error: null };
  const s2 = reduce(s1, { type: "idle/event", event: ev, at: T0 + 5000 });
  assert.equal(s2.idle.policy, s1.idle.policy);
  assert.equal(s2.idle.current.phase, "warning");
  assert.equal(s2.idle.current.at, T0 + 5000);
  for (const bad of [null, "x", {}, { phase: 3 }]) {
    assert.equal(reduce(s2, { type: "idle/event", event: bad, at: T0 }), s2);
    assert.equal(reduce(s2, { type: "idle", answer: bad, at: T0 }), s2);
  }
  // a load error is kept beside the last answer; the next answer clears it
  const s3 = reduce(s2, { type: "error", section: "idle", message: "HTTP 500" });
  assert.equal(s3.idle.error, "HTTP 500");
  assert.equal(s3.idle.current, s2.idle.current);
  assert.equal(reduce(s3, { type: "idle", answer: answer("busy"), at: T0 }).idle.error, null);
});

test("the countdown ticks locally from act_in_seconds between answers", () => {
  const s = reduce(initialState(), {
    type: "idle",
    answer: answer("warning", { idle_seconds: 28, act_in_seconds: 272 }),
    at: T0,
  });
  const c = s.idle.current;
  assert.equal(idleLeft(c, T0), 272);
  assert.equal(idleLeft(c, T0 + 2000), 270);
  assert.equal(idleLeft(c, T0 + 1_000_000), 0, "never below 0");
  assert.equal(idleLeft(c, T0 - 5000), 272, "a clock that went back does not add time");
  assert.equal(idleFor(c, T0 + 2000), 30);
  assert.equal(idleView(s, T0).text, "Idle 28 s – stops the pod in 4:32");
  assert.equal(idleView(s, T0 + 33_000).text, "Idle 1 min – stops the pod in 3:59");
  assert.equal(idleView(s, T0 + 272_000).text, "Stopping the pod…");
  // phases without a countdown do not tick
  const busy = reduce(s, { type: "idle/event", event: answer("busy", { busy: ["1 download(s) running"] }), at: T0 });
  assert.equal(idleLeft(busy.idle.current, T0 + 9000), null);
  assert.equal(idleView(busy, T0 + 9000).text, "Busy: 1 download(s) running");
  assert.equal(idleView(busy, T0 + 9000).countdown, "");
});

test("idleView: warning highlight, Keep alive only when enabled, a missing route", () => {
  const at = (phase, extra) => reduce(initialState(), { type: "idle", answer: answer(phase, extra), at: T0 });
  const warn = idleView(at("warning", { act_in_seconds: 60 }), T0);
  assert.equal(warn.warning, true);
  assert.equal(warn.counting, true);
  assert.equal(warn.enabled, true);
  assert.equal(warn.countdown, "1:00");
  const idle = idleView(at("idle", { act_in_seconds: 400 }), T0);
  assert.equal(idle.warning, false);
  assert.equal(idle.counting, true);
  const off = idleView(
    reduce(initialState(), {
      type: "idle",
      answer: answer("off", { policy: { ...POLICY, enabled: false, idle_minutes: null } }),
      at: T0,
    }),
    T0,
  );
  assert.equal(off.enabled, false);
  assert.equal(off.text, "Idle stop off");
  // nothing loaded yet
  const none = idleView(initialState(), T0);
  assert.equal(none.loaded, false);
  assert.equal(none.enabled, false);
  // the route is missing (404) or the server has no idle watch (503)
  const missing = idleView(reduce(initialState(), { type: "error", section: "idle", message: NOT_AVAILABLE }), T0);
  assert.equal(missing.available, false);
  assert.equal(missing.enabled, false);
  // an event before any answer: no policy yet, the phase says it is on
  const early = reduce(initialState(), { type: "idle/event", event: answer("warning", { act_in_seconds: 9 }), at: T0 });
  assert.equal(idleView(early, T0).enabled, true);
});

test("idlePolicy falls back to GET /podkit/status (settings.pod.idle)", () => {
  let s = reduce(initialState(), { type: "status", status: { settings: { pod: { idle: POLICY } } } });
  assert.deepEqual(idlePolicy(s), POLICY);
  const own = { ...POLICY, action: "command" };
  s = reduce(s, { type: "idle", answer: answer("idle", { policy: own }), at: T0 });
  assert.equal(idlePolicy(s).action, "command");
  assert.equal(idlePolicy(initialState()), null);
});

test("idleDue: the local clock asks for a re-read when the action or the warning is due", () => {
  const s = (phase, left) =>
    reduce(initialState(), { type: "idle", answer: answer(phase, { act_in_seconds: left }), at: T0 });
  assert.equal(idleDue(s("warning", 30), T0), false);
  assert.equal(idleDue(s("warning", 30), T0 + 30_000), true);
  assert.equal(idleDue(s("idle", 400), T0), false);
  assert.equal(idleDue(s("idle", 400), T0 + 100_000), true, "300 s left: the warning has started");
  assert.equal(idleDue(s("busy", null), T0 + 1e9), false);
  assert.equal(idleDue(s("done", null), T0 + 1e9), false);
});

test("idleToast: once when a warning starts, and when the action fails", () => {
  const cur = (phase, extra = {}) => ({ ...answer(phase, extra), at: T0 });
  const t = idleToast(cur("idle"), cur("warning", { act_in_seconds: 272 }), POLICY);
  assert.equal(t.severity, "warn");
  assert.equal(t.title, "Pod idle");
  assert.match(t.detail, /stops the pod in 4:32/);
  assert.match(idleToast(null, cur("warning", { act_in_seconds: 30 }), { action: "command" }).detail, /idle command/);
  assert.equal(idleToast(cur("warning"), cur("warning", { act_in_seconds: 200 }), POLICY), null, "not again");
  assert.equal(idleToast(cur("warning"), cur("busy"), POLICY), null);
  assert.equal(idleToast(cur("acting"), cur("done"), POLICY), null);
  const f = idleToast(cur("acting"), cur("failed", { error: "no RUNPOD_API_KEY" }), POLICY);
  assert.deepEqual(f, { severity: "error", title: "Idle action failed", detail: "no RUNPOD_API_KEY" });
});

test("controller: loads GET /podkit/idle, applies podkit.idle events and toasts a warning once", async () => {
  let clock = T0;
  const toasts = [];
  const { fetchFn } = fakeFetch({ "GET /podkit/idle": [200, answer("idle", { act_in_seconds: 400 })] });
  const c = createController({ api: createApi(fetchFn), toast: (x) => toasts.push(x), now: () => clock });
  assert.ok(EVENTS.includes("podkit.idle"));
  assert.equal(await c.load("idle"), true);
  assert.equal(c.store.get().idle.current.at, T0);
  assert.deepEqual(toasts, []);
  clock += 100_000;
  c.onEvent("podkit.idle", { phase: "warning", idle_seconds: 300, act_in_seconds: 300, busy: [], message: "" });
  c.onEvent("podkit.idle", { phase: "warning", idle_seconds: 310, act_in_seconds: 290, busy: [], message: "" });
  c.onEvent("podkit.idle", null);
  assert.deepEqual(
    toasts.map((x) => x.title),
    ["Pod idle"],
  );
  assert.equal(c.store.get().idle.current.act_in_seconds, 290);
  assert.equal(c.store.get().idle.current.at, T0 + 100_000);
  assert.deepEqual(c.store.get().idle.policy, POLICY, "events keep the policy of the answer");
});

test("controller: a page opened during a warning hears of it once, from its snapshots", async () => {
  const toasts = [];
  const routes = { "GET /podkit/idle": [200, answer("warning", { act_in_seconds: 30 })] };
  const c = createController({ api: createApi(fakeFetch(routes).fetchFn), toast: (x) => toasts.push(x) });
  await c.load("idle");
  await c.load("idle");
  assert.equal(toasts.length, 1);
  assert.match(toasts[0].detail, /in 0:30/);
});

test("controller: Keep alive posts {} and takes the answer, without a toast", async () => {
  const toasts = [];
  const { fetchFn, calls } = fakeFetch({
    "POST /podkit/idle/keepalive": [200, answer("warning", { act_in_seconds: 30 })],
  });
  const c = createController({ api: createApi(fetchFn), toast: (x) => toasts.push(x), now: () => T0 });
  const got = await c.keepAlive();
  assert.equal(got.act_in_seconds, 30);
  assert.deepEqual(calls[0], {
    route: "/podkit/idle/keepalive",
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: {},
  });
  assert.equal(c.store.get().idle.current.act_in_seconds, 30);
  assert.equal(c.store.get().idle.current.at, T0);
  assert.deepEqual(toasts, []);
});

test("controller: a 503 (no idle watch) or 404 says not available; a refused keep-alive throws", async () => {
  const unavailable = { error: { code: "unavailable", message: "the idle watch is not part of this process" } };
  const c = createController({
    api: createApi(
      fakeFetch({
        "GET /podkit/idle": [503, unavailable],
        "POST /podkit/idle/keepalive": [401, { error: "unauthorized", message: "missing bearer token" }],
      }).fetchFn,
    ),
  });
  assert.equal(await c.load("idle"), false);
  assert.equal(c.store.get().idle.error, NOT_AVAILABLE);
  await assert.rejects(c.keepAlive(), /missing bearer token \(set the PodKit API token\)/);
  const c404 = createController({ api: createApi(fakeFetch({}).fetchFn) });
  await c404.load("idle");
  assert.equal(c404.store.get().idle.error, NOT_AVAILABLE);
  // another section's 503 stays a real error
  const other = createController({
    api: createApi(fakeFetch({ "GET /podkit/cache/stats": [503, unavailable] }).fetchFn),
  });
  await other.load("cache");
  assert.match(other.store.get().cache.error, /idle watch is not part/);
});
