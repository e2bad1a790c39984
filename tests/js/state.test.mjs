// node --test: the panel's reducer and selectors (js/panel/state.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  MAX_RECENT,
  badgeText,
  downloadedModels,
  downloadGroups,
  initialState,
  isNewer,
  outboxOpen,
  percentile,
  recentSummary,
  reduce,
  toastFor,
  trainingGroups,
} from "../../js/panel/state.js";

const dl = (id, status, updated, extra = {}) => ({ id, status, updated, created: updated, name: id, ...extra });

test("unknown actions return the very same state", () => {
  const s = initialState();
  assert.equal(reduce(s, { type: "nope" }), s);
  assert.equal(reduce(s, { type: "connection", state: "connecting" }), s);
});

test("a snapshot loads jobs and counts; the old state is not mutated", () => {
  const s0 = initialState();
  const s1 = reduce(s0, {
    type: "downloads",
    jobs: [dl("a", "running", 1), dl("b", "done", 2)],
    counts: { running: 1, done: 1 },
  });
  assert.equal(s0.downloads.loaded, false);
  assert.deepEqual(Object.keys(s0.downloads.byId), []);
  assert.equal(s1.downloads.loaded, true);
  assert.deepEqual(Object.keys(s1.downloads.byId).sort(), ["a", "b"]);
  assert.deepEqual(s1.downloads.counts, { running: 1, done: 1 });
  // a snapshot drops jobs the server no longer has
  const s2 = reduce(s1, { type: "downloads", jobs: [dl("b", "done", 2)] });
  assert.deepEqual(Object.keys(s2.downloads.byId), ["b"]);
  assert.deepEqual(s2.downloads.counts, { done: 1 });
});

test("an older snapshot never overwrites a newer event", () => {
  let s = reduce(initialState(), { type: "download", job: dl("a", "running", 10, { bytes_done: 900 }) });
  s = reduce(s, { type: "downloads", jobs: [dl("a", "running", 5, { bytes_done: 100 })] });
  assert.equal(s.downloads.byId.a.bytes_done, 900);
  // a finished job does not go back to running at the same timestamp
  s = reduce(s, { type: "download", job: dl("a", "done", 20) });
  const same = reduce(s, { type: "download", job: dl("a", "running", 20) });
  assert.equal(same, s);
  assert.equal(isNewer(dl("a", "done", 20), dl("a", "running", 21)), true);
});

test("download events upsert and recount; removal forgets the job", () => {
  let s = reduce(initialState(), { type: "download", job: dl("a", "queued", 1) });
  s = reduce(s, { type: "download", job: dl("b", "running", 2) });
  assert.deepEqual(s.downloads.counts, { queued: 1, running: 1 });
  s = reduce(s, { type: "download", job: { id: "a", status: "running", updated: 3, bytes_done: 5 } });
  assert.equal(s.downloads.byId.a.name, "a", "fields not in the event are kept");
  assert.equal(s.downloads.byId.a.bytes_done, 5);
  s = reduce(s, { type: "download/removed", id: "a" });
  assert.deepEqual(Object.keys(s.downloads.byId), ["b"]);
  assert.equal(reduce(s, { type: "download", job: { status: "x" } }), s, "a job without id is ignored");
});

test("downloadGroups puts active and paused first, newest first, then history", () => {
  let s = initialState();
  s = reduce(s, {
    type: "downloads",
    jobs: [dl("old", "done", 1), dl("p", "paused", 2), dl("r", "running", 3), dl("f", "failed", 4)],
  });
  const g = downloadGroups(s);
  assert.deepEqual(
    g.active.map((j) => j.id),
    ["r", "p"],
  );
  assert.deepEqual(
    g.history.map((j) => j.id),
    ["f", "old"],
  );
  assert.equal(badgeText(s), "1", "paused downloads are not counted as active");
});

test("training details keep the loss list and log tail apart from the summary", () => {
  const detail = {
    id: "t",
    name: "t",
    status: "running",
    updated: 5,
    step: 3,
    total_steps: 10,
    loss: [
      [1, 0.5],
      [2, 0.4],
      [3, 0.3],
    ],
    log_tail: ["a", "b"],
    config_yaml: "x: 1",
  };
  const s = reduce(initialState(), { type: "training", job: detail });
  assert.equal(s.training.byId.t.loss, 0.3, "the job's loss is the latest value");
  assert.equal(s.training.byId.t.log_tail, undefined);
  assert.deepEqual(s.training.detail.t.loss, detail.loss);
  assert.deepEqual(s.training.detail.t.log_tail, ["a", "b"]);
  assert.equal(s.training.detail.t.config_yaml, "x: 1");
  const s2 = reduce(s, {
    type: "trainings",
    jobs: [
      { ...detail, updated: 6, step: 4, loss: 0.25 },
      { id: "u", status: "done", updated: 1, created: 1 },
    ],
  });
  assert.equal(s2.training.byId.t.step, 4);
  assert.deepEqual(
    trainingGroups(s2).active.map((j) => j.id),
    ["t"],
  );
  assert.deepEqual(
    trainingGroups(s2).finished.map((j) => j.id),
    ["u"],
  );
  const s3 = reduce(s2, { type: "training/removed", id: "t" });
  assert.equal(s3.training.detail.t, undefined);
});

test("generations merge by prompt id, newest first, bounded", () => {
  let s = reduce(initialState(), {
    type: "metrics",
    report: {
      count: 2,
      recent: [
        { prompt_id: "a", started: 1, wall_s: 1 },
        { prompt_id: "b", started: 2, wall_s: 3 },
      ],
    },
  });
  s = reduce(s, { type: "generation", record: { prompt_id: "c", started: 3, wall_s: 2 } });
  s = reduce(s, { type: "generation", record: { prompt_id: "c", started: 3, wall_s: 2 } });
  assert.deepEqual(
    s.monitor.recent.map((r) => r.prompt_id),
    ["c", "b", "a"],
  );
  for (let i = 0; i < MAX_RECENT + 10; i += 1)
    s = reduce(s, { type: "generation", record: { prompt_id: `p${i}`, started: 10 + i, wall_s: 1 } });
  assert.equal(s.monitor.recent.length, MAX_RECENT);
  assert.equal(s.monitor.recent[0].prompt_id, `p${MAX_RECENT + 9}`);
});

test("percentile and recentSummary", () => {
  assert.equal(percentile([], 50), null);
  assert.equal(percentile([3, 1, 2], 50), 2);
  assert.equal(percentile([1, 2, 3, 4], 50), 2.5);
  assert.ok(Math.abs(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) - 9.55) < 1e-9);
  const sum = recentSummary([{ wall_s: 1 }, { wall_s: 3 }, { wall_s: null }]);
  assert.deepEqual(sum, { count: 2, p50_s: 2, p95_s: 2.9, mean_s: 2 });
});

test("upload events keep the outbox counts right", () => {
  let s = reduce(initialState(), {
    type: "outbox",
    counts: { pending: 1 },
    items: [{ id: "o", status: "pending", updated: 1, created: 1, key: "k" }],
  });
  s = reduce(s, { type: "upload", item: { id: "o", status: "failed", updated: 2, created: 1, key: "k" } });
  assert.deepEqual(s.outbox.counts, { pending: 0, failed: 1 });
  assert.deepEqual(
    outboxOpen(s).map((i) => i.id),
    ["o"],
  );
  s = reduce(s, { type: "upload", item: { id: "o", status: "done", updated: 3, created: 1, key: "k" } });
  assert.deepEqual(outboxOpen(s), []);
});

test("a withdrawn upload leaves the list and the counts", () => {
  let s = reduce(initialState(), {
    type: "outbox",
    counts: { failed: 1 },
    items: [{ id: "o", status: "failed", updated: 1, created: 1, key: "k" }],
  });
  s = reduce(s, { type: "upload/removed", id: "o" });
  assert.deepEqual(s.outbox.counts, { failed: 0 });
  assert.deepEqual(outboxOpen(s), []);
  assert.equal(reduce(s, { type: "upload/removed", id: "o" }), s); // unknown: nothing changes
});

test("errors attach to their section only", () => {
  const s = reduce(initialState(), { type: "error", section: "training", message: "boom" });
  assert.equal(s.training.error, "boom");
  assert.equal(s.downloads.error, null);
  assert.equal(reduce(s, { type: "error", section: "nope", message: "x" }), s);
  const ok = reduce(s, { type: "trainings", jobs: [] });
  assert.equal(ok.training.error, null, "a good answer clears the error");
});

test("toastFor: only status changes to done/failed toast", () => {
  assert.equal(toastFor("download", dl("a", "done", 1), dl("a", "done", 2)), null);
  assert.equal(toastFor("download", dl("a", "queued", 1), dl("a", "running", 2)), null);
  assert.deepEqual(toastFor("download", dl("a", "running", 1), dl("a", "done", 2, { dest: "loras/a.safetensors" })), {
    severity: "success",
    title: "Download finished",
    detail: "loras/a.safetensors",
  });
  assert.equal(toastFor("download", undefined, dl("a", "failed", 2, { error: "404" })).detail, "a: 404");
  assert.equal(
    toastFor("training", dl("t", "running", 1), dl("t", "done", 2, { lora_uri: "r2://l/t.safetensors" })).detail,
    "t → r2://l/t.safetensors",
  );
  assert.equal(
    toastFor("upload", undefined, { id: "o", status: "failed", key: "k", last_error: "503" }).severity,
    "error",
  );
  assert.equal(toastFor("upload", undefined, { id: "o", status: "done", key: "k", bucket: "out" }).detail, "out/k");
  assert.equal(toastFor("upload", undefined, null), null);
});

test("downloadedModels sums finished downloads per model type", () => {
  const s = reduce(initialState(), {
    type: "downloads",
    jobs: [
      dl("a", "done", 1, { model_type: "lora", bytes_total: 100 }),
      dl("b", "done", 2, { model_type: "lora", bytes_total: 50 }),
      dl("c", "done", 3, { model_type: "checkpoint", bytes_total: 1000, files: [{}, {}] }),
      dl("d", "running", 4, { model_type: "vae", bytes_total: 7 }),
      dl("e", "done", 5, { bytes_done: 3 }),
    ],
  });
  assert.deepEqual(downloadedModels(s), {
    count: 5,
    bytes: 1153,
    types: [
      ["checkpoint", { count: 2, bytes: 1000 }],
      ["lora", { count: 2, bytes: 150 }],
      ["other", { count: 1, bytes: 3 }],
    ],
  });
  assert.deepEqual(downloadedModels(initialState()), { count: 0, bytes: 0, types: [] });
});
