// node --test: the panel's pure formatting helpers (js/panel/format.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  downloadProgressText,
  formatAgo,
  formatBytes,
  formatDuration,
  formatLoss,
  formatPercent,
  formatRate,
  formatSeconds,
  formatSpeed,
  fraction,
  parseSize,
  trainingProgressText,
} from "../../js/panel/format.js";

test("formatBytes uses binary units and 3 significant digits", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(1023), "1023 B");
  assert.equal(formatBytes(1536), "1.50 KiB");
  assert.equal(formatBytes(10.5 * 1024 ** 2), "10.5 MiB");
  assert.equal(formatBytes(250 * 1024 ** 3), "250 GiB");
  assert.equal(formatBytes(-2048), "-2.00 KiB");
  for (const bad of [null, undefined, NaN, Infinity, "12"]) assert.equal(formatBytes(bad), "—");
});

test("formatSpeed is empty for unknown or zero speeds", () => {
  assert.equal(formatSpeed(3 * 1024 ** 2), "3.00 MiB/s");
  assert.equal(formatSpeed(0), "");
  assert.equal(formatSpeed(null), "");
});

test("formatDuration picks the two largest units", () => {
  assert.equal(formatDuration(0), "0 s");
  assert.equal(formatDuration(0.25), "250 ms");
  assert.equal(formatDuration(4.5), "4.5 s");
  assert.equal(formatDuration(4), "4 s");
  assert.equal(formatDuration(45), "45 s");
  assert.equal(formatDuration(185), "3 m 05 s");
  assert.equal(formatDuration(2 * 3600 + 7 * 60 + 10), "2 h 07 m");
  assert.equal(formatDuration(3 * 86400 + 4 * 3600), "3 d 4 h");
  assert.equal(formatDuration(-1), "—");
  assert.equal(formatDuration(null), "—");
});

test("formatSeconds shows latencies", () => {
  assert.equal(formatSeconds(0.85), "850 ms");
  assert.equal(formatSeconds(2.413), "2.41 s");
  assert.equal(formatSeconds(63), "1 m 03 s");
  assert.equal(formatSeconds(undefined), "—");
});

test("fraction and percent never claim 100 % early", () => {
  assert.equal(fraction(5, 10), 0.5);
  assert.equal(fraction(15, 10), 1);
  assert.equal(fraction(5, 0), null);
  assert.equal(fraction(5, null), null);
  assert.equal(formatPercent(0.999), "99 %");
  assert.equal(formatPercent(1), "100 %");
  assert.equal(formatPercent(null), "");
  assert.equal(formatRate(0.875), "87.5 %");
  assert.equal(formatRate(0.5), "50 %");
  assert.equal(formatRate(null), "—");
});

test("formatAgo is relative to now", () => {
  assert.equal(formatAgo(1000, 1002), "just now");
  assert.equal(formatAgo(1000, 1030), "30 s ago");
  assert.equal(formatAgo(1000, 1000 + 300), "5 m ago");
  assert.equal(formatAgo(1000, 1000 + 3 * 3600), "3 h ago");
  assert.equal(formatAgo(1000, 1000 + 4 * 86400), "4 d ago");
  assert.equal(formatAgo(null, 5), "");
});

test("formatLoss keeps 4 significant digits", () => {
  assert.equal(formatLoss(0.123456), "0.1235");
  assert.equal(formatLoss(0.0000123), "1.230e-5");
  assert.equal(formatLoss(0), "0.000");
  assert.equal(formatLoss(NaN), "—");
});

test("downloadProgressText reads the contract's speed and eta", () => {
  const job = { status: "running", bytes_done: 512 * 1024, bytes_total: 1024 * 1024, speed: 256 * 1024, eta: 2 };
  assert.equal(downloadProgressText(job), "50 % · 512 KiB of 1.00 MiB · 256 KiB/s · 2 s left");
  // a finished job shows 100 % and no speed
  assert.equal(
    downloadProgressText({ ...job, status: "done", bytes_done: 1024 * 1024 }),
    "100 % · 1.00 MiB of 1.00 MiB",
  );
  // unknown total: bytes only
  assert.equal(downloadProgressText({ status: "running", bytes_done: 2048, bytes_total: null }), "2.00 KiB");
  assert.equal(downloadProgressText({ status: "queued" }), "");
});

test("trainingProgressText accepts seconds per step or steps per second", () => {
  const job = { status: "running", step: 120, total_steps: 500, loss: 0.1234, sec_per_step: 1.2, eta_s: 456 };
  assert.equal(trainingProgressText(job), "step 120 of 500 · loss 0.1234 · 1.20 s/step · 7 m 36 s left");
  assert.equal(
    trainingProgressText({ status: "running", step: 1, total_steps: 10, speed: 4, eta: 2 }),
    "step 1 of 10 · 250 ms/step · 2 s left",
  );
  assert.equal(
    trainingProgressText({ ...job, status: "done", step: 500 }),
    "step 500 of 500 · loss 0.1234 · 1.20 s/step",
  );
});

test("parseSize reads the sizes people type", () => {
  assert.equal(parseSize("50G"), 50 * 1024 ** 3);
  assert.equal(parseSize("512 MiB"), 512 * 1024 ** 2);
  assert.equal(parseSize("1.5t"), 1.5 * 1024 ** 4);
  assert.equal(parseSize("1000000"), 1000000);
  assert.equal(parseSize("0"), 0);
  for (const bad of ["", "abc", "-5G", "5X", "1e9", null]) assert.equal(parseSize(bad), null, String(bad));
});
