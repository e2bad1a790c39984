// node --test: chart geometry (js/panel/charts.js, the pure parts).
import assert from "node:assert/strict";
import { test } from "node:test";

import { barLayout, downsample, ema, extent, linePath } from "../../js/panel/charts.js";

test("ema is bias-corrected and keeps the length", () => {
  const out = ema([1, 1, 1, 1]);
  assert.equal(out.length, 4);
  for (const v of out) assert.ok(Math.abs(v - 1) < 1e-12);
  const rising = ema([0, 10], 0.5);
  assert.ok(rising[1] > 0 && rising[1] < 10);
});

test("downsample averages buckets and keeps order", () => {
  const pts = Array.from({ length: 1000 }, (_, i) => [i, i * 2]);
  const out = downsample(pts, 100);
  assert.equal(out.length, 100);
  assert.deepEqual(out[0], [4.5, 9]);
  assert.ok(out.every((p, i) => i === 0 || p[0] > out[i - 1][0]));
  assert.equal(downsample(pts.slice(0, 5), 100).length, 5);
});

test("extent widens flat data and ignores non-finite values", () => {
  assert.deepEqual(extent([1, NaN, 3]), [1, 3]);
  assert.deepEqual(extent([]), [0, 1]);
  const [lo, hi] = extent([2, 2]);
  assert.ok(lo < 2 && hi > 2);
});

test("linePath maps larger values higher in the box", () => {
  assert.equal(
    linePath(
      [
        [0, 0],
        [10, 1],
      ],
      100,
      50,
    ),
    "M0.0 50.0 L100.0 0.0",
  );
  assert.equal(linePath([[0, NaN]], 100, 50), "");
});

test("barLayout scales bars to the largest value", () => {
  const bars = barLayout([1, 2, NaN], 30, 10, 0);
  assert.deepEqual(
    bars.map((b) => [b.x, b.h]),
    [
      [0, 5],
      [10, 10],
      [20, 0],
    ],
  );
  assert.deepEqual(barLayout([], 10, 10), []);
  // a few bars keep a bounded width instead of filling the chart
  const few = barLayout([2, 4], 300, 10, 0, 16);
  assert.deepEqual(
    few.map((b) => [b.x, b.w, b.h]),
    [
      [0, 16, 5],
      [16, 16, 10],
    ],
  );
});
