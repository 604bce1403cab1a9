import assert from "node:assert/strict";
import {
  arange,
  broadcastIndex,
  broadcastShapes,
  normalizeAxes,
  normalizeAxis,
  ravelIndex,
  ref,
  refZeros,
  roundToF32,
  sizeOf,
  strideOffsets,
  stridesOf,
  unravelIndex,
} from "../../engine/reference/tensor.ts";
import { randnRef, randomIntRef, randomRef, rng } from "../../engine/reference/random.ts";

Deno.test("ref / refZeros / sizeOf", () => {
  const t = ref([1, 2, 3, 4, 5, 6], [2, 3]);
  assert.deepEqual(t.shape, [2, 3]);
  assert.ok(t.data instanceof Float64Array);
  assert.deepEqual([...t.data], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(ref([7]).shape, [1]);
  assert.deepEqual(ref([7], []).shape, []);
  assert.throws(() => ref([1, 2, 3], [2, 2]), /4 elements but data has 3/);
  assert.equal(sizeOf([]), 1);
  assert.equal(sizeOf([2, 0, 3]), 0);
  assert.equal(sizeOf([2, 3, 4]), 24);
  assert.throws(() => sizeOf([2, -1]), /non-negative integer/);
  assert.deepEqual([...refZeros([2, 2]).data], [0, 0, 0, 0]);
  // ref copies its input
  const src = new Float64Array([1, 2]);
  const r = ref(src);
  src[0] = 9;
  assert.equal(r.data[0], 1);
});

Deno.test("strides, offsets, ravel/unravel", () => {
  assert.deepEqual(stridesOf([2, 3, 4]), [12, 4, 1]);
  assert.deepEqual(stridesOf([]), []);
  assert.deepEqual([...strideOffsets([2, 3], [3, 1])], [0, 1, 2, 3, 4, 5]);
  assert.deepEqual([...strideOffsets([3, 2], [1, 3])], [0, 3, 1, 4, 2, 5]); // transpose of a 2x3
  assert.deepEqual([...strideOffsets([], [], 7)], [7]);
  assert.deepEqual(unravelIndex(23, [2, 3, 4]), [1, 2, 3]);
  assert.equal(ravelIndex([1, 2, 3], [2, 3, 4]), 23);
  assert.throws(() => ravelIndex([2, 0, 0], [2, 3, 4]), /out of bounds/);
  for (let i = 0; i < 24; i++) assert.equal(ravelIndex(unravelIndex(i, [2, 3, 4]), [2, 3, 4]), i);
});

Deno.test("axes normalisation", () => {
  assert.equal(normalizeAxis(-1, 3), 2);
  assert.equal(normalizeAxis(0, 3), 0);
  assert.throws(() => normalizeAxis(3, 3), /out of range/);
  assert.throws(() => normalizeAxis(-4, 3), /out of range/);
  assert.deepEqual(normalizeAxes(undefined, 3), [0, 1, 2]);
  assert.deepEqual(normalizeAxes([-1, 0], 3), [0, 2]);
  assert.deepEqual(normalizeAxes([], 3), []);
  assert.throws(() => normalizeAxes([1, -2], 3), /repeated/);
});

Deno.test("NumPy broadcasting", () => {
  assert.deepEqual(broadcastShapes([2, 1, 3], [4, 1]), [2, 4, 3]);
  assert.deepEqual(broadcastShapes([], [2, 3]), [2, 3]);
  assert.deepEqual(broadcastShapes([0], [1]), [0]);
  assert.deepEqual(broadcastShapes([5, 1], [1, 6], [6]), [5, 6]);
  assert.throws(() => broadcastShapes([2, 3], [3, 2]), /do not broadcast/);
  assert.throws(() => broadcastShapes([0], [2]), /do not broadcast/);
  assert.deepEqual([...broadcastIndex([3, 1], [2, 3, 2])], [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
  assert.throws(() => broadcastIndex([2, 3], [3]), /rank is larger/);
});

Deno.test("arange and roundToF32", () => {
  assert.deepEqual([...arange(6, [2, 3]).data], [0, 1, 2, 3, 4, 5]);
  const r = roundToF32(ref([0.1, 1 / 3]));
  assert.equal(r.data[0], Math.fround(0.1));
  assert.equal(r.data[1], Math.fround(1 / 3));
});

Deno.test("seeded random data is deterministic and well distributed", () => {
  const a = rng(42);
  const b = rng(42);
  for (let i = 0; i < 100; i++) assert.equal(a(), b());
  // Reference values of mulberry32 for seed 0 (first three outputs of the canonical implementation).
  const z = rng(0);
  assert.deepEqual([z(), z(), z()].map((v) => Math.round(v * 4294967296)), [1144304738, 1416247, 958946056]);
  assert.notDeepEqual([...randomRef([10], 1).data], [...randomRef([10], 2).data]);
  const u = randomRef([20000], 7, 2, 5);
  let mn = Infinity, mx = -Infinity, s = 0;
  for (const v of u.data) {
    mn = Math.min(mn, v);
    mx = Math.max(mx, v);
    s += v;
  }
  assert.ok(mn >= 2 && mx < 5);
  assert.ok(Math.abs(s / u.data.length - 3.5) < 0.03);
  const n = randnRef([20001], 3);
  let m1 = 0, m2 = 0;
  for (const v of n.data) {
    assert.ok(Number.isFinite(v));
    m1 += v;
    m2 += v * v;
  }
  m1 /= n.data.length;
  m2 /= n.data.length;
  assert.ok(Math.abs(m1) < 0.03, `mean ${m1}`);
  assert.ok(Math.abs(m2 - 1) < 0.04, `variance ${m2}`);
  const ints = randomIntRef([1000], 5, -2, 3);
  assert.ok([...ints.data].every((v) => Number.isInteger(v) && v >= -2 && v < 3));
  assert.equal(new Set(ints.data).size, 5);
});
