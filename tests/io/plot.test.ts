import { deepStrictEqual } from "node:assert/strict";
import { movingAverage } from "../../io/plot.ts";

Deno.test("movingAverage: trailing window, averaging fewer points at the start", () => {
  deepStrictEqual(movingAverage([2, 4, 6, 8, 10], 3), [2, 3, 4, 6, 8]);
  deepStrictEqual(movingAverage([5, 1], 1), [5, 1]);
  deepStrictEqual(movingAverage([], 4), []);
});
