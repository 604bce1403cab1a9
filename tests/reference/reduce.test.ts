import assert from "node:assert/strict";
import * as R from "../../engine/reference/reduce.ts";
import { arange, ref } from "../../engine/reference/tensor.ts";
import { randnRef } from "../../engine/reference/random.ts";
import { assertClose } from "../helpers/check.ts";

Deno.test("sum / mean / max / min over axes with keepDims", () => {
  const x = arange(24, [2, 3, 4]);
  assert.deepEqual(R.sum(x).shape, []);
  assert.equal(R.sum(x).data[0], 276);
  assert.equal(R.mean(x).data[0], 11.5);
  const s1 = R.sum(x, 1);
  assert.deepEqual(s1.shape, [2, 4]);
  assert.deepEqual([...s1.data], [12, 15, 18, 21, 48, 51, 54, 57]);
  const s02 = R.sum(x, [0, -1], true);
  assert.deepEqual(s02.shape, [1, 3, 1]);
  assert.deepEqual([...s02.data], [60, 92, 124]); // 0..3 + 12..15, 4..7 + 16..19, 8..11 + 20..23
  assert.deepEqual([...R.mean(x, -1).data], [1.5, 5.5, 9.5, 13.5, 17.5, 21.5]);
  assert.deepEqual([...R.max(x, 0).data], [...arange(12).data].map((v) => v + 12));
  assert.deepEqual([...R.min(x, [1, 2]).data], [0, 12]);
  assert.deepEqual(R.max(x, [1, 2], true).shape, [2, 1, 1]);
  assert.deepEqual([...R.max(x, [1, 2], true).data], [11, 23]);
  // empty axis list reduces nothing (NumPy)
  assert.deepEqual(R.sum(x, []).shape, [2, 3, 4]);
  assert.throws(() => R.sum(x, [1, 1]), /repeated/);
  assert.throws(() => R.sum(x, 3), /out of range/);
  // NaN propagation and empty reductions
  assert.ok(Number.isNaN(R.max(ref([1, NaN, 3])).data[0]));
  assert.ok(Number.isNaN(R.min(ref([NaN, 1])).data[0]));
  assert.equal(R.sum(ref([], [0])).data[0], 0);
  assert.ok(Number.isNaN(R.mean(ref([], [0])).data[0]));
  assert.throws(() => R.max(ref([], [2, 0]), 1), /empty/);
  assert.deepEqual(R.max(ref([], [0, 2]), 1).shape, [0]);
});

Deno.test("variance is the two-pass biased (or corrected) variance", () => {
  const x = ref([1, 2, 3, 4, 10, 10, 10, 10], [2, 4]);
  assert.deepEqual([...R.variance(x, 1).data], [1.25, 0]);
  assert.deepEqual([...R.variance(x, 1, false, 1).data], [5 / 3, 0]);
  // no catastrophic cancellation with a large offset
  const big = ref([1e9 + 1, 1e9 + 2, 1e9 + 3]);
  assertClose(R.variance(big), ref([2 / 3], []), { rtol: 1e-12, atol: 0 });
});

Deno.test("softmax rows sum to 1, are shift invariant, and logSoftmax = log(softmax)", () => {
  const x = randnRef([3, 5, 7], 11);
  for (const axis of [0, 1, -1]) {
    const p = R.softmax(x, axis);
    const total = R.sum(p, axis);
    assertClose(total.data, new Array(total.data.length).fill(1), { rtol: 1e-14, atol: 0 });
    assert.ok([...p.data].every((v) => v > 0 && v < 1));
    const shifted = { shape: x.shape, data: x.data.map((v) => v + 1000) };
    assertClose(R.softmax(shifted, axis), p, { rtol: 1e-12, atol: 1e-15 });
    const lp = R.logSoftmax(x, axis);
    assertClose(lp, { shape: p.shape, data: p.data.map(Math.log) }, { rtol: 1e-13, atol: 1e-14 });
  }
  const s = R.softmax(ref([1, 2, 3]));
  const z = Math.exp(1) + Math.exp(2) + Math.exp(3);
  assertClose(s, ref([Math.exp(1) / z, Math.exp(2) / z, Math.exp(3) / z]), { rtol: 1e-15, atol: 0 });
  // -inf entries get probability 0; large logits do not overflow
  assert.deepEqual([...R.softmax(ref([-Infinity, 0])).data], [0, 1]);
  assertClose(R.softmax(ref([1000, 1000])), ref([0.5, 0.5]), { rtol: 0, atol: 0 });
  assertClose(R.logSoftmax(ref([1000, 0])), ref([0, -1000]), { rtol: 1e-15, atol: 0 });
});

Deno.test("mse is the mean squared difference as a scalar", () => {
  const m = R.mseLoss(ref([1, 2, 3, 4], [2, 2]), ref([1, 0, 3, 8], [2, 2]));
  assert.deepEqual(m.shape, []);
  assert.equal(m.data[0], (0 + 4 + 0 + 16) / 4);
  assert.equal(R.mseLoss(ref([1, 2]), 2).data[0], 0.5);
});
