// node --test: the panel controller (js/panel/controller.js) with a fake fetch and fake timers.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createApi } from "../../js/panel/api.js";
import { EVENTS, createController, createStore } from "../../js/panel/controller.js";
import { NOT_AVAILABLE } from "../../js/panel/state.js";
import { fakeFetch } from "./fake_fetch.mjs";

function fakeTimers() {
  const timers = new Map();
  let next = 1;
  return {
    timers,
    setTimer: (fn, ms) => {
      const id = next++;
      timers.set(id, { fn, ms });
      return id;
    },
    clearTimer: (id) => timers.delete(id),
    runAll() {
      const due = [...timers.entries()];
      timers.clear();
      for (const [, t] of due) t.fn();
    },
  };
}

const CORE = {
  "GET /podkit/status": [200, { name: "PodKit" }],
  "GET /podkit/cache/stats": [200, { model_cache: { entries: 0, bytes_on_disk: 0 } }],
  "GET /podkit/loras": [200, { bucket: "loras", items: [] }],
  "GET /podkit/outbox?limit=100": [200, { counts: {}, items: [] }],
};
const job = (id, status, updated, extra = {}) => ({ id, status, updated, created: 1, name: id, ...extra });
const flush = () => new Promise((r) => setImmediate(r));

test("createStore notifies only on change", () => {
  const store = createStore((s, a) => (a.type === "inc" ? s + 1 : s), 0);
  const seen = [];
  const off = store.subscribe((s) => seen.push(s));
  store.dispatch({ type: "inc" });
  store.dispatch({ type: "noop" });
  off();
  store.dispatch({ type: "inc" });
  assert.deepEqual(seen, [1]);
  assert.equal(store.get(), 2);
});

test("resync: sections whose routes are missing say so, the rest loads", async () => {
  const { fetchFn, calls } = fakeFetch({ ...CORE });
  const c = createController({ api: createApi(fetchFn) });
  assert.equal(await c.resync(), true);
  const s = c.store.get();
  assert.equal(s.connection, "live");
  assert.equal(s.downloads.error, NOT_AVAILABLE);
  assert.equal(s.training.error, NOT_AVAILABLE);
  assert.equal(s.monitor.error, NOT_AVAILABLE);
  assert.equal(s.cache.error, null);
  assert.equal(s.cache.stats.model_cache.entries, 0);
  assert.equal(s.loras.listing.bucket, "loras");
  assert.equal(s.outbox.loaded, true);
  // poll skips the missing sections until the next full re-sync
  calls.length = 0;
  await c.poll();
  assert.deepEqual(
    calls.map((x) => x.route),
    ["/podkit/outbox?limit=100"],
  );
});

test("resync: an unreachable server is offline, errors are kept per section", async () => {
  const c = createController({ api: createApi(async () => Promise.reject(new TypeError("Failed to fetch"))) });
  assert.equal(await c.resync(), false);
  const s = c.store.get();
  assert.equal(s.connection, "offline");
  assert.match(s.cache.error, /cannot reach the PodKit server/);
});

test("events update the state, toast finished work and refresh what it changed", async () => {
  const timers = fakeTimers();
  const toasts = [];
  const { fetchFn, calls } = fakeFetch({
    ...CORE,
    "GET /podkit/metrics/report?hours=24": [200, { count: 1, recent: [] }],
  });
  const c = createController({ api: createApi(fetchFn), toast: (t) => toasts.push(t), ...timers });
  assert.ok(EVENTS.includes("podkit.download") && EVENTS.includes("podkit.training"));
  c.onEvent("podkit.download", job("d", "running", 1, { bytes_done: 1, bytes_total: 2 }));
  c.onEvent("podkit.download", null);
  assert.equal(c.store.get().downloads.byId.d.bytes_done, 1);
  assert.equal(toasts.length, 0);
  c.onEvent("podkit.download", job("d", "done", 2, { dest: "loras/d.safetensors" }));
  c.onEvent("podkit.download", job("d", "done", 3));
  assert.deepEqual(
    toasts.map((t) => t.title),
    ["Download finished"],
  );
  // one debounced cache refresh
  assert.equal(timers.timers.size, 1);
  timers.runAll();
  await flush();
  assert.deepEqual(
    calls.map((x) => x.route),
    ["/podkit/cache/stats"],
  );

  c.onEvent("podkit.training", job("t", "running", 1, { step: 1, total_steps: 4 }));
  c.onEvent("podkit.training", job("t", "failed", 2, { error: "CUDA out of memory" }));
  assert.equal(toasts.at(-1).title, "Training failed");
  assert.match(toasts.at(-1).detail, /CUDA out of memory/);

  c.onEvent("podkit.upload", { id: "o", status: "failed", updated: 1, created: 1, key: "img.png", last_error: "503" });
  assert.equal(c.store.get().outbox.counts.failed, 1);
  assert.equal(toasts.at(-1).title, "PodKit upload failed");
  const toastCount = toasts.length;
  c.onEvent("podkit.upload", { id: "o", status: "failed", updated: 1, created: 1, key: "img.png", removed: true });
  assert.equal(c.store.get().outbox.byId.o, undefined);
  assert.equal(c.store.get().outbox.counts.failed, 0);
  assert.equal(toasts.length, toastCount); // a withdrawal is not news

  calls.length = 0;
  c.onEvent("podkit.generation", { prompt_id: "p", started: 5, wall_s: 1.5 });
  c.onEvent("podkit.generation", { prompt_id: "q", started: 6, wall_s: 2.5 });
  assert.deepEqual(
    c.store.get().monitor.recent.map((r) => r.prompt_id),
    ["q", "p"],
  );
  assert.equal(timers.timers.size, 1, "generations debounce into one report refresh");
  c.dispose();
  assert.equal(timers.timers.size, 0);
});

test("a throwing toast never breaks event handling", () => {
  const c = createController({
    api: createApi(fakeFetch({}).fetchFn),
    toast: () => {
      throw new Error("no toast API");
    },
    ...fakeTimers(),
  });
  c.onEvent("podkit.download", job("d", "running", 1));
  c.onEvent("podkit.download", job("d", "failed", 2));
  assert.equal(c.store.get().downloads.byId.d.status, "failed");
});

test("polling hosts toast changes between snapshots, never the first snapshot", async () => {
  const toasts = [];
  const routes = {
    ...CORE,
    "GET /podkit/downloads": [200, { jobs: [job("old", "done", 1), job("d", "running", 1)] }],
    "GET /podkit/training/jobs": [200, { jobs: [] }],
  };
  const timers = fakeTimers();
  const c = createController({
    api: createApi(fakeFetch(routes).fetchFn),
    toast: (t) => toasts.push(t),
    toastSnapshots: true,
    ...timers,
  });
  await c.resync();
  assert.deepEqual(toasts, []);
  routes["GET /podkit/downloads"] = [
    200,
    { jobs: [job("old", "done", 1), job("d", "done", 2), job("new", "failed", 2)] },
  ];
  await c.poll();
  assert.deepEqual(
    toasts.map((t) => t.title),
    ["Download finished"],
    "an unseen job finishing between polls is history, not news",
  );
  assert.equal(timers.timers.size, 1, "the cache is re-read after a finished download");
  // without the option, snapshots stay silent
  const quiet = [];
  const c2 = createController({ api: createApi(fakeFetch(routes).fetchFn), toast: (t) => quiet.push(t) });
  await c2.resync();
  await c2.resync();
  assert.deepEqual(quiet, []);
});

test("reconnecting, then reconnected re-syncs", async () => {
  const { fetchFn, calls } = fakeFetch({ ...CORE });
  const c = createController({ api: createApi(fetchFn) });
  c.onConnection(false);
  assert.equal(c.store.get().connection, "connecting");
  assert.equal(calls.length, 0);
  c.onConnection(true);
  await flush();
  await flush();
  assert.ok(calls.some((x) => x.route === "/podkit/status"));
  assert.equal(c.store.get().connection, "live");
});
