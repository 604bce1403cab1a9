import assert from "node:assert/strict";
import { matmul } from "../../engine/reference/matmul.ts";
import { arange, at, ref } from "../../engine/reference/tensor.ts";
import { randomRef } from "../../engine/reference/random.ts";
import { transpose } from "../../engine/reference/shape.ts";
import { assertClose } from "../helpers/check.ts";

Deno.test("matmul of 2-D matrices (hand-computed)", () => {
  const a = ref([1, 2, 3, 4, 5, 6], [2, 3]);
  const b = ref([7, 8, 9, 10, 11, 12], [3, 2]);
  const c = matmul(a, b);
  assert.deepEqual(c.shape, [2, 2]);
  assert.deepEqual([...c.data], [58, 64, 139, 154]);
  assert.throws(() => matmul(a, a), /inner sizes differ/);
  assert.throws(() => matmul(ref([1], []), a), /rank >= 1/);
});

Deno.test("matmul promotes 1-D operands and removes the added axis", () => {
  const m = ref([1, 2, 3, 4, 5, 6], [2, 3]);
  const v = ref([1, 0, -1]);
  assert.deepEqual(matmul(m, v).shape, [2]);
  assert.deepEqual([...matmul(m, v).data], [-2, -2]);
  const u = ref([1, 1]);
  assert.deepEqual(matmul(u, m).shape, [3]);
  assert.deepEqual([...matmul(u, m).data], [5, 7, 9]);
  const dot = matmul(v, ref([3, 2, 1]));
  assert.deepEqual(dot.shape, []);
  assert.equal(dot.data[0], 2);
  // batched matrix @ vector
  const bm = arange(12, [2, 2, 3]);
  const r = matmul(bm, v);
  assert.deepEqual(r.shape, [2, 2]);
  assert.deepEqual([...r.data], [-2, -2, -2, -2]);
  // vector @ batched matrix
  assert.deepEqual(matmul(u, bm).shape, [2, 3]);
});

Deno.test("matmul broadcasts batch axes", () => {
  const a = randomRef([2, 1, 3, 4], 1);
  const b = randomRef([5, 4, 2], 2);
  const c = matmul(a, b);
  assert.deepEqual(c.shape, [2, 5, 3, 2]);
  for (let i = 0; i < 2; i++) {
    for (let j = 0; j < 5; j++) {
      for (let r = 0; r < 3; r++) {
        for (let s = 0; s < 2; s++) {
          let e = 0;
          for (let k = 0; k < 4; k++) e += at(a, [i, 0, r, k]) * at(b, [j, k, s]);
          assert.equal(at(c, [i, j, r, s]), e);
        }
      }
    }
  }
  // (AB)ᵀ = BᵀAᵀ
  const x = randomRef([3, 4, 5], 3);
  const y = randomRef([3, 5, 2], 4);
  assertClose(transpose(matmul(x, y)), matmul(transpose(y), transpose(x)), { rtol: 1e-14, atol: 1e-15 });
  assert.throws(() => matmul(randomRef([2, 3, 4], 1), randomRef([3, 4, 2], 1)), /do not broadcast/);
});
