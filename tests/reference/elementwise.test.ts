import assert from "node:assert/strict";
import * as E from "../../engine/reference/elementwise.ts";
import { ref, refScalar } from "../../engine/reference/tensor.ts";
import { randomRef } from "../../engine/reference/random.ts";
import { assertClose } from "../helpers/check.ts";

// [x, erf(x), erfc(x)] from mpmath at 40 digits.
const ERF_TABLE: Array<[number, number, number]> = [
  [-3.0, -0.99997790950300141, 1.9999779095030014],
  [-1.5, -0.96610514647531073, 1.9661051464753107],
  [-0.5, -0.52049987781304654, 1.5204998778130465],
  [-0.001, -0.0011283787909692364, 1.0011283787909692],
  [0.0, 0.0, 1.0],
  [1e-10, 0.00000000011283791670955126, 0.99999999988716208],
  [0.3, 0.32862675945912742, 0.67137324054087258],
  [1.0, 0.84270079294971487, 0.15729920705028513],
  [1.7, 0.98379045859077456, 0.016209541409225439],
  [2.4, 0.99931148610335492, 0.00068851389664507889],
  [2.6, 0.99976396558347065, 0.00023603441652934909],
  [3.5, 0.99999925690162766, 7.4309837234141275e-7],
  [5.0, 0.99999999999846254, 1.5374597944280349e-12],
];

// [x, x·Φ(x)] from mpmath at 40 digits.
const GELU_TABLE: Array<[number, number]> = [
  [-8.0, -4.9767684594174273e-15],
  [-3.0, -0.0040496940948902836],
  [-1.0, -0.15865525393145705],
  [-0.1, -0.046017216272297104],
  [0.0, 0.0],
  [0.5, 0.34573123063700655],
  [1.0, 0.84134474606854295],
  [2.0, 1.9544997361036416],
  [4.0, 3.9998733150326675],
];

Deno.test("erf / erfc / gelu agree with 40-digit values to ~1e-15 relative", () => {
  for (const [x, e, c] of ERF_TABLE) {
    assertClose([E.erfScalar(x)], [e], { rtol: 2e-15, atol: 0, name: `erf(${x})` });
    assertClose([E.erfcScalar(x)], [c], { rtol: 4e-15, atol: 0, name: `erfc(${x})` });
  }
  for (const [x, g] of GELU_TABLE) {
    assertClose([E.geluScalar(x)], [g], { rtol: 1e-14, atol: 0, name: `gelu(${x})` });
  }
  assert.ok(Number.isNaN(E.erfScalar(NaN)));
  assert.equal(E.erfScalar(Infinity), 1);
  assert.equal(E.erfScalar(-Infinity), -1);
  assert.equal(E.erfcScalar(40), 0);
  assert.equal(E.erfcScalar(-40), 2);
  // erf is odd and continuous across the series / continued-fraction switch at 2.5
  for (const x of [0.7, 2.4999999, 2.5, 2.5000001, 4]) assert.equal(E.erfScalar(-x), -E.erfScalar(x));
  // Across each switch point the jump equals the slope (2/√π)e^{-x²} times the step, to ~1e-16.
  const slope = (x: number) => (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x);
  const h = 1e-9;
  assert.ok(Math.abs(E.erfScalar(2.5 + h) - E.erfScalar(2.5 - h) - 2 * h * slope(2.5)) < 4e-16);
  assert.ok(Math.abs(E.erfcScalar(1 - h) - E.erfcScalar(1 + h) - 2 * h * slope(1)) < 4e-16);
  assert.ok(Math.abs(E.erfcScalar(-1 - h) - E.erfcScalar(-1 + h) - 2 * h * slope(1)) < 4e-16);
});

Deno.test("unary ops on hand-computed values", () => {
  const x = ref([-2, -0.5, 0, 1, 3]);
  assert.deepEqual([...E.neg(x).data], [2, 0.5, -0, -1, -3]);
  assert.deepEqual([...E.abs(x).data], [2, 0.5, 0, 1, 3]);
  assert.deepEqual([...E.square(x).data], [4, 0.25, 0, 1, 9]);
  assert.deepEqual([...E.relu(x).data], [0, 0, 0, 1, 3]);
  assertClose(E.exp(x), ref([Math.exp(-2), Math.exp(-0.5), 1, Math.E, Math.exp(3)]), {
    rtol: 1e-15,
    atol: 0,
  });
  const p = ref([0.25, 1, 4, 0]);
  assert.deepEqual([...E.sqrt(p).data], [0.5, 1, 2, 0]);
  assert.deepEqual([...E.rsqrt(p).data], [2, 1, 0.5, Infinity]);
  assert.deepEqual([...E.log(p).data], [Math.log(0.25), 0, Math.log(4), -Infinity]);
  assert.ok(Number.isNaN(E.log(ref([-1])).data[0]));
  assert.ok(Number.isNaN(E.relu(ref([NaN])).data[0]));
  assertClose(
    E.sigmoid(ref([0, 2, -2, 800, -800])),
    ref([0.5, 1 / (1 + Math.exp(-2)), 1 / (1 + Math.exp(2)), 1, 0]),
    {
      rtol: 1e-15,
      atol: 0,
    },
  );
  assert.ok(E.sigmoid(ref([-800])).data[0] >= 0);
  assertClose(E.silu(ref([1, -1])), ref([1 / (1 + Math.exp(-1)), -1 / (1 + Math.exp(1))]), {
    rtol: 1e-15,
    atol: 0,
  });
  assertClose(E.tanh(ref([0.5])), ref([Math.tanh(0.5)]), { rtol: 0, atol: 0 });
  // tanh-GELU is within 1e-3 of exact GELU
  const g = randomRef([200], 1, -5, 5);
  assertClose(E.geluTanh(g), E.gelu(g), { rtol: 0, atol: 1e-3 });
  assertClose(E.sin(ref([Math.PI / 2])), ref([1]), { rtol: 1e-15, atol: 0 });
  assertClose(E.cos(ref([0])), ref([1]), { rtol: 0, atol: 0 });
  assert.deepEqual([...E.reciprocal(ref([4, -0.5])).data], [0.25, -2]);
});

Deno.test("binary ops broadcast like NumPy", () => {
  const a = ref([1, 2, 3, 4, 5, 6], [2, 3]);
  const col = ref([10, 20], [2, 1]);
  const row = ref([1, 0, -1], [3]);
  assert.deepEqual(E.add(a, col).shape, [2, 3]);
  assert.deepEqual([...E.add(a, col).data], [11, 12, 13, 24, 25, 26]);
  assert.deepEqual([...E.sub(a, row).data], [0, 2, 4, 3, 5, 7]);
  assert.deepEqual([...E.mul(a, 2).data], [2, 4, 6, 8, 10, 12]);
  assert.deepEqual([...E.div(1, ref([2, 4])).data], [0.5, 0.25]);
  assert.deepEqual([...E.pow(ref([2, 3]), ref([3, 2])).data], [8, 9]);
  assert.ok(Number.isNaN(E.pow(-8, 1 / 3).data[0]));
  assert.deepEqual(E.pow(refScalar(2), refScalar(10)).shape, []);
  const outer = E.mul(ref([1, 2, 3], [3, 1]), ref([1, 10], [1, 2]));
  assert.deepEqual(outer.shape, [3, 2]);
  assert.deepEqual([...outer.data], [1, 10, 2, 20, 3, 30]);
  assert.deepEqual([...E.maximum(ref([1, 5, NaN]), ref([3, 2, 0])).data].map(String), ["3", "5", "NaN"]);
  assert.deepEqual([...E.minimum(ref([1, 5]), 2).data], [1, 2]);
  assert.throws(() => E.add(ref([1, 2, 3]), ref([1, 2])), /do not broadcast/);
  // size-0 broadcasting
  assert.deepEqual(E.add(ref([], [0, 3]), ref([1, 2, 3])).shape, [0, 3]);
});

Deno.test("comparisons, where and clamp", () => {
  const a = ref([1, 2, 3, NaN]);
  const b = ref([2, 2, 2, 2]);
  assert.deepEqual([...E.greater(a, b).data], [0, 0, 1, 0]);
  assert.deepEqual([...E.less(a, b).data], [1, 0, 0, 0]);
  assert.deepEqual([...E.equal(a, b).data], [0, 1, 0, 0]);
  assert.deepEqual([...E.greaterEqual(a, b).data], [0, 1, 1, 0]);
  assert.deepEqual([...E.lessEqual(a, b).data], [1, 1, 0, 0]);
  assert.deepEqual([...E.notEqual(a, b).data], [1, 0, 1, 1]);
  const w = E.where(ref([1, 0], [2, 1]), ref([1, 2, 3]), -1);
  assert.deepEqual(w.shape, [2, 3]);
  assert.deepEqual([...w.data], [1, 2, 3, -1, -1, -1]);
  assert.deepEqual([...E.where(ref([0.5, -2, 0, NaN]), 1, 0).data], [1, 1, 0, 1]);
  const x = ref([-3, -1, 0, 1, 3, NaN]);
  assert.deepEqual([...E.clamp(x, -1, 2).data].map(String), ["-1", "-1", "0", "1", "2", "NaN"]);
  assert.deepEqual([...E.clamp(x, 0).data.slice(0, 5)], [0, 0, 0, 1, 3]);
  assert.deepEqual([...E.clamp(x, null, 0).data.slice(0, 5)], [-3, -1, 0, 0, 0]);
  assert.deepEqual([...E.clamp(ref([5, -5]), 1, 0).data], [0, 0]); // lo > hi gives hi, as PyTorch
  assert.deepEqual([...E.clamp(ref([0, 0], [2, 1]), ref([1, -1], [2, 1]), 5).data], [1, 0]);
  assert.throws(() => E.clamp(x), /at least one/);
});
