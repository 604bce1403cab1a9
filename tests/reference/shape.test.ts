import assert from "node:assert/strict";
import * as S from "../../engine/reference/shape.ts";
import { arange, at, ref } from "../../engine/reference/tensor.ts";
import { randomRef } from "../../engine/reference/random.ts";

Deno.test("reshape infers one -1 and validates counts", () => {
  const x = arange(24, [2, 3, 4]);
  assert.deepEqual(S.reshape(x, [4, -1]).shape, [4, 6]);
  assert.deepEqual([...S.reshape(x, [-1]).data], [...x.data]);
  assert.deepEqual(S.reshape(ref([5], []), [1, 1]).shape, [1, 1]);
  assert.deepEqual(S.reshape(ref([], [0, 3]), [3, -1, 5]).shape, [3, 0, 5]);
  assert.throws(() => S.reshape(x, [5, -1]), /cannot infer/);
  assert.throws(() => S.reshape(x, [-1, -1]), /at most one -1/);
  assert.throws(() => S.reshape(x, [2, 3, 5]), /cannot reshape/);
  const r = S.reshape(x, [24]);
  r.data[0] = 99;
  assert.equal(x.data[0], 0); // no aliasing
});

Deno.test("permute and transpose", () => {
  const x = arange(24, [2, 3, 4]);
  const p = S.permute(x, [2, 0, 1]);
  assert.deepEqual(p.shape, [4, 2, 3]);
  for (let i = 0; i < 2; i++) {
    for (let j = 0; j < 3; j++) for (let k = 0; k < 4; k++) assert.equal(at(p, [k, i, j]), at(x, [i, j, k]));
  }
  assert.deepEqual(S.permute(x, [-1, 0, 1]).data, p.data);
  assert.throws(() => S.permute(x, [0, 0, 1]), /not a permutation/);
  assert.throws(() => S.permute(x, [0, 1]), /length/);
  const t = S.transpose(ref([1, 2, 3, 4, 5, 6], [2, 3]));
  assert.deepEqual(t.shape, [3, 2]);
  assert.deepEqual([...t.data], [1, 4, 2, 5, 3, 6]);
  const t02 = S.transpose(x, 0, 2);
  assert.deepEqual(t02.shape, [4, 3, 2]);
  assert.equal(at(t02, [3, 1, 0]), at(x, [0, 1, 3]));
  // transposing twice is the identity
  const y = randomRef([3, 1, 4, 2], 3);
  assert.deepEqual(S.transpose(S.transpose(y, 1, -1), 1, -1), y);
});

Deno.test("slice with negative indices, clamping and steps (Python semantics)", () => {
  const v = arange(10);
  const sl = (
    s: number,
    e: number,
    st?: number,
  ) => [...S.slice(v, [s], [e], st === undefined ? undefined : [st]).data];
  assert.deepEqual(sl(2, 5), [2, 3, 4]);
  assert.deepEqual(sl(-3, 10), [7, 8, 9]);
  assert.deepEqual(sl(-3, -1), [7, 8]);
  assert.deepEqual(sl(0, 10, 3), [0, 3, 6, 9]);
  assert.deepEqual(sl(1, 9, 3), [1, 4, 7]);
  assert.deepEqual(sl(-100, 100), [...v.data]);
  assert.deepEqual(sl(5, 2), []);
  assert.deepEqual(sl(0, Infinity, 4), [0, 4, 8]);
  assert.throws(() => sl(0, 5, 0), /positive integer/);
  assert.throws(() => sl(0, 5, -1), /positive integer/);
  const x = arange(24, [2, 3, 4]);
  const s = S.slice(x, [1, 0, 1], [2, 3, 4], [1, 2, 2]); // x[1:2, 0:3:2, 1:4:2]
  assert.deepEqual(s.shape, [1, 2, 2]);
  assert.deepEqual([...s.data], [13, 15, 21, 23]);
  const partial = S.slice(x, [0, 1], [1, 3]); // x[0:1, 1:3, :]
  assert.deepEqual(partial.shape, [1, 2, 4]);
  assert.deepEqual([...partial.data], [4, 5, 6, 7, 8, 9, 10, 11]);
  assert.deepEqual(S.slice(x, [0, 3], [2, 3]).shape, [2, 0, 4]);
});

Deno.test("concat and stack", () => {
  const a = arange(6, [2, 3]);
  const b = ref([10, 11, 12, 13], [2, 2]);
  const c = S.concat([a, b], -1);
  assert.deepEqual(c.shape, [2, 5]);
  assert.deepEqual([...c.data], [0, 1, 2, 10, 11, 3, 4, 5, 12, 13]);
  const r = S.concat([a, ref([7, 8, 9], [1, 3])], 0);
  assert.deepEqual(r.shape, [3, 3]);
  assert.deepEqual([...r.data], [0, 1, 2, 3, 4, 5, 7, 8, 9]);
  assert.deepEqual(S.concat([a, ref([], [2, 0])], 1).data, a.data);
  assert.throws(() => S.concat([a, b], 0), /incompatible/);
  assert.throws(() => S.concat([]), /empty/);
  const st = S.stack([ref([1, 2]), ref([3, 4])], 1);
  assert.deepEqual(st.shape, [2, 2]);
  assert.deepEqual([...st.data], [1, 3, 2, 4]);
  assert.deepEqual(S.stack([ref([1, 2]), ref([3, 4])], -1).data, st.data);
});

Deno.test("pad with one [before, after] pair per dimension", () => {
  const x = ref([1, 2, 3, 4], [2, 2]);
  const p = S.pad(x, [[1, 0], [0, 2]], -1);
  assert.deepEqual(p.shape, [3, 4]);
  assert.deepEqual([...p.data], [-1, -1, -1, -1, 1, 2, -1, -1, 3, 4, -1, -1]);
  assert.deepEqual(S.pad(x, [[0, 0], [0, 0]]).data, x.data);
  assert.deepEqual([...S.pad(ref([5]), [[2, 1]]).data], [0, 0, 5, 0]);
  assert.throws(() => S.pad(x, [[1, 1]]), /one \[before, after\] pair/);
  assert.throws(() => S.pad(x, [[-1, 0], [0, 0]]), /non-negative/);
});

Deno.test("broadcastTo / expand / squeeze / unsqueeze", () => {
  const x = ref([1, 2, 3], [3, 1]);
  const b = S.broadcastTo(x, [2, 3, 2]);
  assert.deepEqual(b.shape, [2, 3, 2]);
  assert.deepEqual([...b.data], [1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3]);
  assert.deepEqual(S.expand(x, [2, -1, 4]).shape, [2, 3, 4]);
  assert.throws(() => S.expand(x, [-1, 3, 4]), /new leading axis/);
  assert.throws(() => S.broadcastTo(x, [2, 2]), /cannot broadcast/);
  assert.deepEqual(S.unsqueeze(x, 0).shape, [1, 3, 1]);
  assert.deepEqual(S.unsqueeze(x, -1).shape, [3, 1, 1]);
  assert.deepEqual(S.squeeze(ref([1, 2], [1, 2, 1])).shape, [2]);
  assert.deepEqual(S.squeeze(ref([1, 2], [1, 2, 1]), -1).shape, [1, 2]);
  assert.throws(() => S.squeeze(ref([1, 2], [1, 2, 1]), 1), /not 1/);
});
