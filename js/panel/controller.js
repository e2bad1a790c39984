// The panel's controller: one per page. Holds the store, loads snapshots over HTTP, applies
// `podkit.*` events (and toasts finished/failed work), and debounces follow-up refreshes (a finished
// download changes the cache stats; a generation changes the metrics report). Host-independent: the
// host passes the API client, a toast function and its event source. No DOM; unit-tested by
// tests/js/controller.test.mjs with a fake fetch.

import { NOT_AVAILABLE, idlePolicy, idleToast, initialState, reduce, toastFor } from "./state.js";

/** The `podkit.*` events the panel listens to (register them before the socket delivers any). */
export const EVENTS = ["podkit.download", "podkit.training", "podkit.generation", "podkit.upload", "podkit.idle"];

/** A minimal store: get(), dispatch(action), subscribe(fn) → unsubscribe. */
export function createStore(reducer, state) {
  const listeners = new Set();
  return {
    get: () => state,
    dispatch(action) {
      const next = reducer(state, action);
      if (next === state) return;
      state = next;
      for (const fn of [...listeners]) fn(state);
    },
    subscribe(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
  };
}

/** Sections whose server answers 503 when the feature is not part of that process (no idle watch). */
const UNAVAILABLE_503 = new Set(["idle"]);

function message(e, section) {
  if (e && e.status === 404) return NOT_AVAILABLE;
  if (e && e.status === 503 && UNAVAILABLE_503.has(section)) return NOT_AVAILABLE;
  return (e && e.message) || String(e);
}

/**
 * @param {object} options
 * @param {ReturnType<import("./api.js").createApi>} options.api
 * @param {(t: {severity: string, title: string, detail: string}) => void} [options.toast]
 * @param {boolean} [options.toastSnapshots] toast status changes seen between snapshots (polling hosts)
 * @param {(fn: () => void, ms: number) => unknown} [options.setTimer] timers (tests pass their own)
 * @param {() => number} [options.now] the local clock in ms (stamps idle answers for the countdown)
 */
export function createController({
  api,
  toast = () => {},
  toastSnapshots = false,
  setTimer = (fn, ms) => setTimeout(fn, ms),
  clearTimer = (t) => clearTimeout(t),
  now = () => Date.now(),
}) {
  const store = createStore(reduce, initialState());
  const pending = new Map();

  const loaders = {
    status: async () => store.dispatch({ type: "status", status: await api.status() }),
    downloads: async () => {
      const data = await api.downloads();
      snapshotToasts("download", store.get().downloads, data.jobs);
      store.dispatch({ type: "downloads", jobs: data.jobs, counts: data.counts });
    },
    training: async () => {
      const jobs = (await api.trainings()).jobs;
      snapshotToasts("training", store.get().training, jobs);
      store.dispatch({ type: "trainings", jobs });
    },
    cache: async () => store.dispatch({ type: "cache", stats: await api.cacheStats() }),
    loras: async () => store.dispatch({ type: "loras", listing: await api.loras() }),
    monitor: async () => store.dispatch({ type: "metrics", report: await api.metrics(24) }),
    outbox: async () => {
      const data = await api.outbox({ limit: 100 });
      snapshotToasts("upload", store.get().outbox, data.items);
      store.dispatch({ type: "outbox", counts: data.counts, items: data.items });
    },
    idle: async () => applyIdle({ type: "idle", answer: await api.idle() }),
  };

  /**
   * Apply an idle answer or event. The warning toast goes out from snapshots too (a polling host
   * has no events, and a page opened during a warning must hear of it), but only once per warning:
   * idleToast compares with the phase held before.
   */
  function applyIdle(action, { toast: wantToast = true } = {}) {
    const prev = store.get().idle.current;
    store.dispatch({ ...action, at: now() });
    const state = store.get();
    if (wantToast && state.idle.current !== prev) notify(idleToast(prev, state.idle.current, idlePolicy(state)));
  }

  /** POST /podkit/idle/keepalive: restart the idle clock; its answer is the new idle state. Throws. */
  async function keepAlive() {
    const answer = await api.keepAlive();
    // the person who pressed the button needs no toast about the warning it restarted
    applyIdle({ type: "idle", answer }, { toast: false });
    return answer;
  }

  /**
   * Without live events (the standalone page polls), a job that changed status between two
   * snapshots deserves the same toast its event would have given. The first snapshot never toasts.
   */
  function snapshotToasts(kind, held, jobs) {
    if (!toastSnapshots || !held.loaded) return;
    for (const job of jobs || []) {
      const prev = job && held.byId[job.id];
      if (!prev) continue;
      notify(toastFor(kind, prev, job));
      followUp(kind, prev, job);
    }
  }

  /** What a job that just finished changes elsewhere: a download the cache, a training the LoRAs. */
  function followUp(kind, prev, next) {
    if (next.status !== "done" || (prev && prev.status === "done")) return;
    if (kind === "download") soon("cache");
    else if (kind === "training") soon("loras");
  }

  /** Reload one section; its error is kept in the state (shown by the section), never thrown. */
  async function load(section) {
    try {
      await loaders[section]();
      return true;
    } catch (e) {
      store.dispatch({ type: "error", section, message: message(e, section) });
      return false;
    }
  }

  /** Reload everything (panel opened, reconnected, periodic re-sync). True when the server answered. */
  async function resync() {
    const results = await Promise.all(Object.keys(loaders).map(load));
    const reachable = results.some(Boolean);
    store.dispatch({ type: "connection", state: reachable ? "live" : "offline" });
    return reachable;
  }

  /** Reload what moves while jobs run (downloads, training, outbox): the polling host's tick. */
  async function poll() {
    // sections whose routes are missing wait for the next full re-sync
    const live = ["downloads", "training", "outbox"].filter((name) => store.get()[name].error !== NOT_AVAILABLE);
    const results = await Promise.all(live.map(load));
    const reachable = results.some(Boolean);
    store.dispatch({ type: "connection", state: reachable ? "live" : "offline" });
    return reachable;
  }

  /** Reload `section` once, `ms` after the last request for it. */
  function soon(section, ms = 600) {
    if (pending.has(section)) clearTimer(pending.get(section));
    pending.set(
      section,
      setTimer(() => {
        pending.delete(section);
        load(section);
      }, ms),
    );
  }

  function notify(t) {
    if (!t) return;
    try {
      toast(t);
    } catch {
      // a toast must never break event handling
    }
  }

  /** Apply one `podkit.*` event (`detail` is the event's data). */
  function onEvent(name, detail) {
    if (!detail || typeof detail !== "object") return;
    const state = store.get();
    if (name === "podkit.download") {
      const prev = state.downloads.byId[detail.id];
      store.dispatch({ type: "download", job: detail });
      notify(toastFor("download", prev, detail));
      followUp("download", prev, detail);
    } else if (name === "podkit.training") {
      const prev = state.training.byId[detail.id];
      store.dispatch({ type: "training", job: detail });
      notify(toastFor("training", prev, detail));
      followUp("training", prev, detail);
    } else if (name === "podkit.generation") {
      store.dispatch({ type: "generation", record: detail });
      soon("monitor", 1500);
    } else if (name === "podkit.upload" && detail.removed) {
      store.dispatch({ type: "upload/removed", id: detail.id }); // withdrawn (its training job was discarded)
    } else if (name === "podkit.upload") {
      const prev = state.outbox.byId[detail.id];
      store.dispatch({ type: "upload", item: detail });
      notify(toastFor("upload", prev, detail));
    } else if (name === "podkit.idle") {
      applyIdle({ type: "idle/event", event: detail });
    }
  }

  /** The connection to the event source changed ("live" after a reconnect triggers a re-sync). */
  function onConnection(live) {
    store.dispatch({ type: "connection", state: live ? "live" : "connecting" });
    if (live) resync();
  }

  function dispose() {
    for (const t of pending.values()) clearTimer(t);
    pending.clear();
  }

  return { store, api, load, resync, poll, soon, onEvent, onConnection, keepAlive, dispose };
}
