import assert from "node:assert/strict";
import { attention } from "../../engine/reference/attention.ts";
import { matmul } from "../../engine/reference/matmul.ts";
import { softmax } from "../../engine/reference/reduce.ts";
import { mul } from "../../engine/reference/elementwise.ts";
import { broadcastTo, transpose } from "../../engine/reference/shape.ts";
import { randnRef, randomRef } from "../../engine/reference/random.ts";
import { ref, refZeros } from "../../engine/reference/tensor.ts";
import { assertClose } from "../helpers/check.ts";

Deno.test("attention equals softmax(q kᵀ scale) v composed from matmul and softmax", () => {
  const q = randnRef([2, 3, 5, 4], 1);
  const k = randnRef([2, 3, 7, 4], 2);
  const v = randnRef([2, 3, 7, 6], 3);
  const expected = matmul(softmax(mul(matmul(q, transpose(k)), 1 / Math.sqrt(4)), -1), v);
  const out = attention(q, k, v);
  assert.deepEqual(out.shape, [2, 3, 5, 6]);
  assertClose(out, expected, { rtol: 1e-13, atol: 1e-14 });
  assertClose(attention(q, k, v, 0.7), matmul(softmax(mul(matmul(q, transpose(k)), 0.7), -1), v), {
    rtol: 1e-13,
    atol: 1e-14,
  });
});

Deno.test("attention special cases: uniform weights, hard attention, broadcasting", () => {
  // q = 0: every key gets weight 1/Nk, so each output row is the mean of v's rows
  const v = ref([1, 2, 3, 4, 5, 6], [1, 1, 3, 2]);
  const out = attention(refZeros([1, 1, 2, 4]), randomRef([1, 1, 3, 4], 1), v);
  assertClose(out, ref([3, 4, 3, 4], [1, 1, 2, 2]), { rtol: 1e-15, atol: 0 });
  // a huge scale makes the softmax a hard argmax over keys
  const k = ref([1, 0, 0, 1, -1, 0], [3, 2]);
  const q = ref([0, 1, 2, 0], [2, 2]);
  assertClose(attention(q, k, ref([1, 2, 3, 4, 5, 6], [3, 2]), 1e4), ref([3, 4, 1, 2], [2, 2]), {
    rtol: 0,
    atol: 1e-12,
  });
  // leading axes broadcast like NumPy
  const qb = randnRef([2, 1, 3, 4], 5);
  const kb = randnRef([1, 3, 5, 4], 6);
  const vb = randnRef([5, 2], 7);
  const o = attention(qb, kb, vb);
  assert.deepEqual(o.shape, [2, 3, 3, 2]);
  assertClose(
    o,
    attention(broadcastTo(qb, [2, 3, 3, 4]), broadcastTo(kb, [2, 3, 5, 4]), broadcastTo(vb, [2, 3, 5, 2])),
    {
      rtol: 0,
      atol: 0,
    },
  );
  assert.throws(() => attention(qb, randnRef([1, 3, 5, 3], 1), vb), /need q/);
});
