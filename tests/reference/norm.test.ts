import assert from "node:assert/strict";
import { groupNorm, layerNorm } from "../../engine/reference/norm.ts";
import { mean, variance } from "../../engine/reference/reduce.ts";
import { add, mul } from "../../engine/reference/elementwise.ts";
import { reshape } from "../../engine/reference/shape.ts";
import { randnRef, randomRef } from "../../engine/reference/random.ts";
import { ref } from "../../engine/reference/tensor.ts";
import { assertClose } from "../helpers/check.ts";

Deno.test("groupNorm on a hand-computed case", () => {
  const x = ref([1, 2, 3, 4], [1, 2, 2]); // one group: mean 2.5, biased variance 1.25
  const y = groupNorm(x, 1, null, null, 0);
  const s = Math.sqrt(1.25);
  assertClose(y, ref([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], [1, 2, 2]), { rtol: 1e-15, atol: 1e-16 });
  const yd = groupNorm(x, 1); // default eps 1e-5
  assertClose(yd, ref([-1.5, -0.5, 0.5, 1.5].map((v) => v / Math.sqrt(1.25 + 1e-5)), [1, 2, 2]), {
    rtol: 1e-15,
    atol: 0,
  });
  const z = groupNorm(x, 2, ref([2, 3]), ref([1, -1]), 0); // two groups of one channel each: [1, 2] and [3, 4]
  assertClose(z, ref([2 * -1 + 1, 2 * 1 + 1, 3 * -1 - 1, 3 * 1 - 1], [1, 2, 2]), {
    rtol: 1e-15,
    atol: 1e-15,
  });
});

Deno.test("groupNorm output has zero mean and unit variance per (sample, group)", () => {
  const [n, c, g] = [2, 6, 3];
  const x = add(mul(randnRef([n, c, 3, 4, 5], 1), 3), 7);
  for (const eps of [0, 1e-5]) {
    const y = groupNorm(x, g, null, null, eps);
    const grouped = reshape(y, [n, g, -1]);
    assertClose(mean(grouped, -1), new Array(n * g).fill(0), { rtol: 0, atol: 1e-14 });
    // with eps the variance is v / (v + eps) for the group's input variance v
    const v = variance(reshape(x, [n, g, -1]), -1);
    const expected = [...v.data].map((vi) => vi / (vi + eps));
    assertClose(variance(grouped, -1), expected, { rtol: 1e-13, atol: 0 });
  }
  // affine: y·w[c] + b[c]
  const w = randomRef([c], 2);
  const b = randomRef([c], 3);
  const plain = groupNorm(x, g);
  assertClose(groupNorm(x, g, w, b), add(mul(plain, reshape(w, [c, 1, 1, 1])), reshape(b, [c, 1, 1, 1])), {
    rtol: 1e-15,
    atol: 1e-15,
  });
  assertClose(groupNorm(x, g, w), mul(plain, reshape(w, [c, 1, 1, 1])), { rtol: 1e-15, atol: 1e-15 });
  assert.throws(() => groupNorm(x, 4), /divisor/);
  assert.throws(() => groupNorm(x, 3, ref([1, 2])), /weight must have shape \[6\]/);
});

Deno.test("groupNorm with one group is layerNorm over [C, ...spatial]; layerNorm hand case", () => {
  const x = randnRef([3, 4, 5], 4);
  assertClose(groupNorm(x, 1), layerNorm(x, [4, 5]), { rtol: 1e-14, atol: 1e-15 });
  const y = layerNorm(ref([1, 3, 10, 20], [2, 2]), [2], null, null, 0);
  assertClose(y, ref([-1, 1, -1, 1], [2, 2]), { rtol: 0, atol: 1e-15 });
  const w = randomRef([4, 5], 5);
  const b = randomRef([4, 5], 6);
  const ln = layerNorm(x, [4, 5], w, b);
  assertClose(ln, add(mul(layerNorm(x, [4, 5]), w), b), { rtol: 1e-15, atol: 1e-15 });
  const last = layerNorm(x, [5]);
  assertClose(mean(last, -1), new Array(12).fill(0), { rtol: 0, atol: 1e-14 });
  assert.throws(() => layerNorm(x, [4]), /trailing shape/);
  assert.throws(() => layerNorm(x, [5], ref([1, 2])), /weight must have shape/);
});
