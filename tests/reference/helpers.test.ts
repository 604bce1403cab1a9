import assert from "node:assert/strict";
import { assertClose, maxAbsDiff, maxRelDiff } from "../helpers/check.ts";
import { numericGrad } from "../helpers/gradcheck.ts";
import { map, mul, sigmoid, tanh } from "../../engine/reference/elementwise.ts";
import { matmul } from "../../engine/reference/matmul.ts";
import { softmax, sum } from "../../engine/reference/reduce.ts";
import { transpose } from "../../engine/reference/shape.ts";
import { randnRef, randomRef } from "../../engine/reference/random.ts";
import { ref, type RefTensor } from "../../engine/reference/tensor.ts";

Deno.test("assertClose passes within tolerance and reports the worst element when it fails", () => {
  assertClose([1, 2, 3], [1, 2, 3 + 1e-7]);
  assertClose(ref([1, NaN, Infinity]), ref([1, NaN, Infinity]));
  assertClose([100], [100.1], { rtol: 1e-3, atol: 0 });
  assert.throws(
    () =>
      assertClose(ref([1, 2, 3, 4], [2, 2]), ref([1, 2.5, 3, 4.01], [2, 2]), {
        rtol: 0,
        atol: 0.1,
        name: "case A",
      }),
    (e: Error) => {
      assert.match(e.message, /assertClose\(case A\): 1 of 4 elements differ \(rtol 0, atol 0\.1\)/);
      assert.match(
        e.message,
        /worst: index 1 \[0, 1\]: actual 2, expected 2\.5, abs err 5\.000e-1, rel err 2\.000e-1/,
      );
      return true;
    },
  );
  // the worst is the largest violation, not the first
  assert.throws(
    () => assertClose([0, 0], [1, 2], { rtol: 0, atol: 0.5 }),
    /2 of 2 elements differ[\s\S]*worst: index 1/,
  );
  // NaN mismatches, infinity mismatches, length and shape mismatches fail
  assert.throws(() => assertClose([NaN], [1]), /worst: index 0: actual NaN, expected 1/);
  assert.throws(() => assertClose([1], [NaN]), /1 of 1 elements differ/);
  assert.throws(() => assertClose([NaN], [NaN], { equalNan: false }), /differ/);
  assert.throws(() => assertClose([Infinity], [-Infinity]), /differ/);
  assert.throws(() => assertClose([1e308], [Infinity]), /differ/);
  assert.throws(() => assertClose([1, 2], [1, 2, 3]), /length 2 differs from expected length 3/);
  assert.throws(
    () => assertClose(ref([1, 2], [2]), ref([1, 2], [1, 2])),
    /shape \[2\] differs from expected \[1, 2\]/,
  );
  // multi-index from the `shape` option when plain arrays are compared
  assert.throws(() => assertClose([0, 0, 0, 1], [0, 0, 0, 0], { shape: [2, 2] }), /index 3 \[1, 1\]/);
});

Deno.test("maxAbsDiff / maxRelDiff", () => {
  assert.equal(maxAbsDiff([1, 2, 3], [1, 2.5, 2]), 1);
  assert.equal(maxAbsDiff([NaN, Infinity], [NaN, Infinity]), 0);
  assert.equal(maxAbsDiff([NaN], [0]), Infinity);
  assert.equal(maxAbsDiff([], []), 0);
  assert.equal(maxRelDiff([1, 2.2], [1, 2]), 0.10000000000000009);
  assert.equal(maxRelDiff([1e-9], [0]), Infinity);
  assert.equal(maxRelDiff([1e-9], [0], 1e-6), 1e-3);
  assert.equal(maxRelDiff([0], [0]), 0);
  assert.throws(() => maxAbsDiff([1], [1, 2]), /lengths differ/);
});

Deno.test("numericGrad matches analytic gradients of smooth functions", () => {
  // f(x) = tanh(x)·sigmoid(x): f' = (1 − tanh²)·σ + tanh·σ·(1 − σ)
  const x = randomRef([3, 4], 1, -2, 2);
  const g = randnRef([3, 4], 2);
  const num = numericGrad(([a]) => mul(tanh(a), sigmoid(a)), [x], 0, g);
  const analytic = map(x, (v) => {
    const t = Math.tanh(v);
    const s = 1 / (1 + Math.exp(-v));
    return (1 - t * t) * s + t * s * (1 - s);
  });
  assertClose(num, mul(analytic, g), { rtol: 1e-8, atol: 1e-9 });
  // matmul: d/dA Σ (A B) ⊙ G = G Bᵀ and d/dB = Aᵀ G
  const A = randnRef([2, 3], 3);
  const B = randnRef([3, 4], 4);
  const G = randnRef([2, 4], 5);
  const f = ([p, q]: RefTensor[]) => matmul(p, q);
  assertClose(numericGrad(f, [A, B], 0, G), matmul(G, transpose(B)), { rtol: 1e-8, atol: 1e-9 });
  assertClose(numericGrad(f, [A, B], 1, G), matmul(transpose(A), G), { rtol: 1e-8, atol: 1e-9 });
  // default gradOut is ones: the gradient of Σ softmax is 0
  assertClose(numericGrad(([a]) => softmax(a), [randnRef([2, 5], 6)], 0), new Array(10).fill(0), {
    rtol: 0,
    atol: 1e-8,
  });
  // a scalar-valued f: d/dx Σ x² = 2x
  const y = randnRef([5], 7);
  assertClose(numericGrad(([a]) => sum(mul(a, a)), [y], 0), map(y, (v) => 2 * v), { rtol: 1e-8, atol: 1e-9 });
  // the caller's tensors are left untouched
  const before = [...y.data];
  numericGrad(([a]) => sum(mul(a, a)), [y], 0);
  assert.deepEqual([...y.data], before);
  assert.throws(() => numericGrad(([a]) => a, [y], 1), /not an index/);
  assert.throws(() => numericGrad(([a]) => a, [y], 0, ref([1, 2])), /gradOut shape \[2\] differs/);
});
