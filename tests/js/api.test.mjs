// node --test: the panel's HTTP client (js/panel/api.js) against a fake fetch that records calls.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ApiError, createApi, errorFromBody } from "../../js/panel/api.js";
import { fakeFetch } from "./fake_fetch.mjs";

test("GETs send no body; mutations send JSON (DELETE included)", async () => {
  const { fetchFn, calls } = fakeFetch({
    "GET /podkit/downloads": [200, { jobs: [], counts: {} }],
    "POST /podkit/downloads": [202, { jobs: [{ id: "a" }] }],
    "DELETE /podkit/downloads/a%2Fb": [200, { id: "a/b", status: "cancelled" }],
    "POST /podkit/downloads/x/pause": [200, { id: "x", status: "paused" }],
    "POST /podkit/downloads/x/resume": [200, { id: "x", status: "queued" }],
  });
  const api = createApi(fetchFn);
  assert.deepEqual(await api.downloads(), { jobs: [], counts: {} });
  assert.deepEqual(await api.addDownloads({ items: [{ source: "url", url: "http://x/y" }] }), { jobs: [{ id: "a" }] });
  assert.equal((await api.deleteDownload("a/b")).status, "cancelled");
  assert.equal((await api.pauseDownload("x")).status, "paused");
  assert.equal((await api.resumeDownload("x")).status, "queued");
  assert.equal(calls[0].body, undefined);
  assert.equal(calls[0].headers["Content-Type"], undefined);
  assert.deepEqual(calls[1].body, { items: [{ source: "url", url: "http://x/y" }] });
  assert.equal(calls[1].headers["Content-Type"], "application/json");
  assert.deepEqual(calls[2].body, {}, "DELETE carries a JSON body (the server's CSRF guard)");
  assert.deepEqual(calls[3].body, {});
});

test("query strings skip empty values", async () => {
  const { fetchFn, calls } = fakeFetch({
    "GET /podkit/outbox?status=failed&limit=5": [200, { counts: {}, items: [] }],
    "GET /podkit/metrics/report?hours=24": [200, { count: 0 }],
  });
  const api = createApi(fetchFn);
  await api.outbox({ status: "failed", limit: 5, empty: "", nothing: null });
  await api.metrics();
  assert.deepEqual(
    calls.map((c) => c.route),
    ["/podkit/outbox?status=failed&limit=5", "/podkit/metrics/report?hours=24"],
  );
});

test("cache eviction: a plan first, then the purge", async () => {
  const { fetchFn, calls } = fakeFetch({ "POST /podkit/cache/evict": [200, { dry_run: true, plan: { entries: [] } }] });
  const api = createApi(fetchFn);
  await api.planEviction(100);
  await api.evict(100);
  assert.deepEqual(
    calls.map((c) => c.body),
    [
      { dry_run: true, target_bytes: 100 },
      { dry_run: false, target_bytes: 100 },
    ],
  );
});

test("training routes", async () => {
  const { fetchFn, calls } = fakeFetch({
    "POST /podkit/training/jobs": [202, { id: "t1", status: "queued" }],
    "GET /podkit/training/jobs/t1": [200, { id: "t1", loss: [[1, 0.5]], log_tail: [] }],
    "POST /podkit/training/jobs/t1/cancel": [200, { id: "t1", status: "cancelled" }],
    "DELETE /podkit/training/jobs/t1": [200, { deleted: "t1" }],
  });
  const api = createApi(fetchFn);
  await api.launchTraining({ name: "x" });
  await api.training("t1");
  await api.cancelTraining("t1");
  await api.deleteTraining("t1");
  assert.deepEqual(
    calls.map((c) => `${c.method} ${c.route}`),
    [
      "POST /podkit/training/jobs",
      "GET /podkit/training/jobs/t1",
      "POST /podkit/training/jobs/t1/cancel",
      "DELETE /podkit/training/jobs/t1",
    ],
  );
});

test("errors carry the server's code and message", async () => {
  const { fetchFn } = fakeFetch({
    "POST /podkit/downloads": [400, { error: "invalid_request", message: "url must be http(s)" }],
    "POST /podkit/loras/refresh": [401, { error: "unauthorized", message: "missing bearer token" }],
    "GET /podkit/status": [502, "<html>Bad gateway</html>"],
    "GET /podkit/cache/stats": new TypeError("Failed to fetch"),
  });
  const api = createApi(fetchFn);
  await assert.rejects(
    api.addDownloads({}),
    (e) =>
      e instanceof ApiError && e.status === 400 && e.code === "invalid_request" && e.message === "url must be http(s)",
  );
  await assert.rejects(api.refreshLoras(), (e) => e.status === 401 && /set the PodKit API token/.test(e.message));
  await assert.rejects(api.status(), (e) => e.status === 502 && e.message === "<html>Bad gateway</html>");
  await assert.rejects(
    api.cacheStats(),
    (e) => e.status === 0 && e.code === "network" && /Failed to fetch/.test(e.message),
  );
  await assert.rejects(api.trainings(), (e) => e.status === 404 && e.code === "not_found");
});

test("errorFromBody reads both error shapes", () => {
  assert.equal(errorFromBody(409, { error: { code: "conflict", message: "busy" } }).code, "conflict");
  assert.equal(errorFromBody(409, { error: "conflict", message: "busy" }).message, "busy");
  assert.equal(errorFromBody(500, null, "x".repeat(300)).message, "HTTP 500", "long bodies are not shown");
});
