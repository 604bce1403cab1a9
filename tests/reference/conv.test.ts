import assert from "node:assert/strict";
import {
  conv2d,
  conv2dBackward,
  conv3d,
  conv3dBackward,
  type Conv3dOptions,
  conv3dOutputShape,
} from "../../engine/reference/conv.ts";
import { matmul } from "../../engine/reference/matmul.ts";
import { add } from "../../engine/reference/elementwise.ts";
import { concat, pad, reshape, slice } from "../../engine/reference/shape.ts";
import { randomRef } from "../../engine/reference/random.ts";
import { ref, type RefTensor, refZeros } from "../../engine/reference/tensor.ts";
import { assertClose } from "../helpers/check.ts";
import { numericGrad } from "../helpers/gradcheck.ts";

const trip = (v: Conv3dOptions["stride"], d: number): number[] =>
  v === undefined ? [d, d, d] : typeof v === "number" ? [v, v, v] : [...v];

/** conv3d by an independent route: zero-pad, gather every tap with strided slices (im2col), then matmul. */
function conv3dIm2col(x: RefTensor, w: RefTensor, opts: Conv3dOptions): RefTensor {
  const [n, cin, ...inDims] = x.shape;
  const [cout, cing, ...k] = w.shape;
  const groups = opts.groups ?? 1;
  const s = trip(opts.stride, 1);
  const p = trip(opts.padding, 0);
  const dl = trip(opts.dilation, 1);
  const out = inDims.map((d, a) => Math.floor((d + 2 * p[a] - dl[a] * (k[a] - 1) - 1) / s[a]) + 1);
  const xp = pad(x, [[0, 0], [0, 0], [p[0], p[0]], [p[1], p[1]], [p[2], p[2]]]);
  const taps: RefTensor[] = [];
  for (let a = 0; a < k[0]; a++) {
    for (let b = 0; b < k[1]; b++) {
      for (let c = 0; c < k[2]; c++) {
        const st = [a * dl[0], b * dl[1], c * dl[2]];
        const t = slice(xp, [0, 0, ...st], [n, cin, ...st.map((v, i) => v + (out[i] - 1) * s[i] + 1)], [
          1,
          1,
          ...s,
        ]);
        taps.push(reshape(t, [n, cin, 1, out[0] * out[1] * out[2]]));
      }
    }
  }
  const cols = concat(taps, 2); // [N, Cin, K, P]
  const K = k[0] * k[1] * k[2];
  const P = out[0] * out[1] * out[2];
  const pieces: RefTensor[] = [];
  for (let g = 0; g < groups; g++) {
    const cg = reshape(slice(cols, [0, g * cing], [n, (g + 1) * cing]), [n, cing * K, P]);
    const coutg = cout / groups;
    const wg = reshape(slice(w, [g * coutg], [(g + 1) * coutg]), [coutg, cing * K]);
    pieces.push(matmul(wg, cg)); // [N, coutg, P]
  }
  return reshape(concat(pieces, 1), [n, cout, ...out]);
}

function dot(a: RefTensor, b: RefTensor): number {
  let s = 0;
  for (let i = 0; i < a.data.length; i++) s += a.data[i] * b.data[i];
  return s;
}

Deno.test("conv3d on hand-computed 1-D cases (padding, stride, dilation)", () => {
  const x = ref([1, 2, 3, 4, 5], [1, 1, 1, 1, 5]);
  const w = ref([1, 0, -1], [1, 1, 1, 1, 3]);
  assert.deepEqual([...conv3d(x, w).data], [-2, -2, -2]);
  assert.deepEqual([...conv3d(x, w, null, { padding: [0, 0, 1] }).data], [-2, -2, -2, -2, 4]);
  assert.deepEqual([...conv3d(x, w, null, { padding: [0, 0, 1], stride: 2 }).data], [-2, -2, 4]);
  assert.deepEqual([...conv3d(x, w, null, { dilation: [1, 1, 2] }).data], [-4]);
  assert.deepEqual([...conv3d(x, w, ref([10])).data], [8, 8, 8]);
});

Deno.test("conv3d with a 1x1x1 identity kernel is the identity; a shifted delta shifts", () => {
  const c = 3;
  const x = randomRef([2, c, 3, 4, 5], 1);
  const eye = refZeros([c, c, 1, 1, 1]);
  for (let i = 0; i < c; i++) eye.data[i * c + i] = 1;
  assert.deepEqual(conv3d(x, eye), x);
  // 3x3x3 kernel with a single 1 at (2, 1, 1) and padding 1: out[d, h, w] = x[d + 1, h, w] (0 past the end)
  const x1 = randomRef([1, 1, 4, 3, 3], 2);
  const delta = refZeros([1, 1, 3, 3, 3]);
  delta.data[2 * 9 + 1 * 3 + 1] = 1;
  const y = conv3d(x1, delta, null, { padding: 1 });
  assert.deepEqual(y.shape, [1, 1, 4, 3, 3]);
  for (let d = 0; d < 4; d++) {
    for (let i = 0; i < 9; i++) assert.equal(y.data[d * 9 + i], d + 1 < 4 ? x1.data[(d + 1) * 9 + i] : 0);
  }
});

const CASES: Array<{ x: number[]; w: number[]; opts: Conv3dOptions }> = [
  { x: [2, 3, 4, 5, 4], w: [4, 3, 3, 3, 3], opts: { padding: 1 } },
  { x: [1, 4, 5, 4, 6], w: [6, 2, 3, 2, 3], opts: { groups: 2, stride: [2, 1, 2], padding: [1, 0, 1] } },
  {
    x: [2, 2, 6, 5, 5],
    w: [2, 1, 2, 3, 2],
    opts: { groups: 2, dilation: [2, 1, 2], padding: [0, 2, 1], stride: [1, 2, 1] },
  },
  { x: [1, 3, 3, 3, 3], w: [3, 1, 1, 1, 1], opts: { groups: 3 } }, // depthwise 1x1x1
];

Deno.test("conv3d agrees with an independent im2col + matmul evaluation", () => {
  CASES.forEach(({ x, w, opts }, i) => {
    const xt = randomRef(x, 10 + i);
    const wt = randomRef(w, 20 + i);
    const y = conv3d(xt, wt, null, opts);
    assert.deepEqual(y.shape, conv3dOutputShape(x, w, opts));
    assertClose(y, conv3dIm2col(xt, wt, opts), { rtol: 1e-13, atol: 1e-14, name: `case ${i}` });
    const b = randomRef([w[0]], 30 + i);
    assertClose(conv3d(xt, wt, b, opts), add(y, reshape(b, [w[0], 1, 1, 1])), { rtol: 1e-14, atol: 1e-15 });
  });
});

Deno.test("conv3dBackward matches numericGrad (random gradOut) and the adjoint identities", () => {
  CASES.slice(0, 3).forEach(({ x, w, opts }, i) => {
    const xt = randomRef(x, 40 + i);
    const wt = randomRef(w, 50 + i);
    const bt = randomRef([w[0]], 60 + i);
    const g = randomRef(conv3dOutputShape(x, w, opts), 70 + i);
    const { dx, dw, db } = conv3dBackward(xt, wt, g, opts);
    const f = ([a, b, c]: RefTensor[]) => conv3d(a, b, c, opts);
    // conv is linear in each argument, so central differences have no truncation error and a large eps
    // (less rounding error) is exact; the default eps = 1e-6 is checked with a looser tolerance.
    const tol = { rtol: 1e-9, atol: 1e-10 };
    assertClose(dx, numericGrad(f, [xt, wt, bt], 0, g, 1e-2), { ...tol, name: `dx case ${i}` });
    assertClose(dw, numericGrad(f, [xt, wt, bt], 1, g, 1e-2), { ...tol, name: `dw case ${i}` });
    assertClose(db, numericGrad(f, [xt, wt, bt], 2, g, 1e-2), { ...tol, name: `db case ${i}` });
    assertClose(dw, numericGrad(f, [xt, wt, bt], 1, g), {
      rtol: 1e-6,
      atol: 1e-7,
      name: `dw case ${i}, eps 1e-6`,
    });
    // conv is bilinear: <conv(x, w), g> = <x, dx> = <w, dw>
    const lhs = dot(conv3d(xt, wt, null, opts), g);
    assert.ok(Math.abs(lhs - dot(xt, dx)) < 1e-11 * (1 + Math.abs(lhs)));
    assert.ok(Math.abs(lhs - dot(wt, dw)) < 1e-11 * (1 + Math.abs(lhs)));
  });
});

Deno.test("conv2d / conv2dBackward equal conv3d with depth 1", () => {
  const x = randomRef([2, 4, 6, 5], 1);
  const w = randomRef([6, 2, 3, 2], 2);
  const b = randomRef([6], 3);
  const opts = {
    stride: [2, 1] as [number, number],
    padding: 1,
    dilation: [1, 2] as [number, number],
    groups: 2,
  };
  const y = conv2d(x, w, b, opts);
  const y3 = conv3d(reshape(x, [2, 4, 1, 6, 5]), reshape(w, [6, 2, 1, 3, 2]), b, {
    stride: [1, 2, 1],
    padding: [0, 1, 1],
    dilation: [1, 1, 2],
    groups: 2,
  });
  assert.deepEqual(y.shape, [2, 6, 3, 5]); // H: (6 + 2 - 3)/2 + 1, W: (5 + 2 - 2·1 - 1)/1 + 1
  assert.deepEqual([...y.data], [...y3.data]);
  const g = randomRef(y.shape, 4);
  const grads = conv2dBackward(x, w, g, opts);
  assert.deepEqual(grads.dx.shape, x.shape);
  assert.deepEqual(grads.dw.shape, w.shape);
  const f = ([a, c]: RefTensor[]) => conv2d(a, c, null, opts);
  assertClose(grads.dx, numericGrad(f, [x, w], 0, g, 1e-2), { rtol: 1e-9, atol: 1e-10 });
  assertClose(grads.dw, numericGrad(f, [x, w], 1, g, 1e-2), { rtol: 1e-9, atol: 1e-10 });
});

Deno.test("conv3d at test scale runs and validates its arguments", () => {
  const x = randomRef([2, 4, 9, 9, 9], 1);
  const w = randomRef([6, 4, 3, 3, 3], 2);
  const y = conv3d(x, w, null, { padding: 1 });
  const { dx } = conv3dBackward(x, w, y, { padding: 1 });
  assert.deepEqual(y.shape, [2, 6, 9, 9, 9]);
  assert.deepEqual(dx.shape, x.shape);
  assert.throws(() => conv3d(x, randomRef([6, 3, 3, 3, 3], 1)), /input channels/);
  assert.throws(() => conv3d(x, randomRef([6, 2, 3, 3, 3], 1), null, { groups: 3 }), /must divide/);
  assert.throws(() => conv3d(x, randomRef([6, 4, 11, 3, 3], 1)), /not positive/);
  assert.throws(() => conv3d(x, w, ref([1, 2])), /bias must have shape \[6\]/);
  assert.throws(() => conv3d(randomRef([4, 9, 9, 9], 1), w), /\[N, C, D, H, W\]/);
  assert.throws(
    () => conv3dBackward(x, w, randomRef([2, 6, 7, 7, 8], 1)),
    /gradOut must have the output shape/,
  );
});
