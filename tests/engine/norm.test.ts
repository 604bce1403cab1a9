import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { groupNorm, groupNormSilu, groupNormStats, layerNorm } from "../../engine/ops/norm.ts";
import { randomRef, type RefTensor, rng } from "../../engine/reference/mod.ts";
import { divHelper, reciprocalBits } from "../../kernels/norm.ts";
import { paramsBlock } from "../../kernels/types.ts";
import { dispatch } from "../../engine/runtime.ts";
import { fromData } from "../../engine/tensor.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";
import { deepStrictEqual, throws } from "node:assert";

/** Reference group norm with optional affine, as a function of the inputs checkOp perturbs. */
function refGroupNorm(G: number, eps: number, hasW: boolean, hasB: boolean) {
  return (xs: RefTensor[]): RefTensor => {
    const w = hasW ? xs[1] : undefined;
    const b = hasB ? xs[hasW ? 2 : 1] : undefined;
    return R.groupNorm(xs[0], G, w, b, eps);
  };
}

function gpuArgs(xs: V.Tensor[], hasW: boolean, hasB: boolean): [V.Tensor | undefined, V.Tensor | undefined] {
  return [hasW ? xs[1] : undefined, hasB ? xs[hasW ? 2 : 1] : undefined];
}

// Odd channel/group splits and spatial sizes: S = 105 (scalar loads), S = 12 with G = C, rank 3.
const GN_CASES: Array<{ shape: number[]; G: number; eps: number }> = [
  { shape: [2, 6, 5, 7, 3], G: 3, eps: 1e-5 },
  { shape: [2, 6, 5, 7, 3], G: 1, eps: 1e-5 },
  { shape: [2, 6, 4, 3], G: 6, eps: 1e-6 },
  { shape: [3, 4, 7], G: 2, eps: 1e-5 },
  // vec4 loads (S = 16).
  { shape: [2, 6, 4, 4], G: 3, eps: 1e-5 },
  // 135 scalar loads per plane: the 2-D (plane-major) thread grid.
  { shape: [2, 4, 9, 5, 3], G: 2, eps: 1e-5 },
];

// Forward: each output is (x − μ)·rstd·γ + β with μ, rstd accumulated in f32 over ≤ 630 values: ~1e-6
// relative error on O(1) outputs, so rtol 1e-5 / atol 1e-5. Gradients: checkOp's defaults (f32 vs central
// differences of the float64 reference).
gpuTest(
  "groupNorm: odd sizes, groups, eps, with and without affine; gradients of x, weight, bias",
  async () => {
    for (const [k, { shape, G, eps }] of GN_CASES.entries()) {
      const C = shape[1];
      for (const [hasW, hasB] of [[true, true], [false, false], [true, false], [false, true]]) {
        const inputs = [
          randomRef(shape, 10 + k, -2, 3),
          ...(hasW ? [randomRef([C], 20 + k)] : []),
          ...(hasB ? [randomRef([C], 30 + k)] : []),
        ];
        await checkOp({
          name: `groupNorm ${JSON.stringify(shape)} G=${G} eps=${eps} weight=${hasW} bias=${hasB}`,
          gpu: (xs) => groupNorm(xs[0], G, ...gpuArgs(xs, hasW, hasB), eps),
          ref: refGroupNorm(G, eps, hasW, hasB),
          inputs,
          rtol: 1e-5,
          atol: 1e-5,
        });
      }
    }
  },
);

gpuTest("groupNorm: non-contiguous input and inputs at unaligned offsets", async () => {
  await checkOp({
    name: "groupNorm of a transposed view",
    gpu: ([x, w, b]) => groupNorm(x, 2, w, b),
    ref: ([x, w, b]) => R.groupNorm(x, 2, w, b),
    inputs: [randomRef([2, 4, 3, 5], 1), randomRef([4], 2), randomRef([4], 3)],
    asViews: true,
    rtol: 1e-5,
    atol: 1e-5,
  });
  // x starts at element 1 of its buffer: S = 16 allows vec4 loads, the offset does not.
  const xr = R.roundToF32(randomRef([2, 4, 4, 4], 4));
  const flat = V.tensor(Float32Array.from([0, ...xr.data]), [1 + xr.data.length]);
  const sliced = V.slice(flat, [1], [1 + xr.data.length]);
  const x = V.reshape(sliced, xr.shape);
  const y = groupNorm(x, 2);
  assertClose(await toRef(y), R.groupNorm(xr, 2), { rtol: 1e-5, atol: 1e-5, name: "groupNorm at offset 1" });
  disposeAll(flat, sliced, x, y);
});

gpuTest("groupNorm: eps matters when the variance is small", async () => {
  // Variance ~3e-3 against eps 1e-2: a wrong or missing eps changes outputs by > 10%.
  for (const eps of [1e-2, 1e-5]) {
    await checkOp({
      name: `groupNorm eps=${eps}`,
      gpu: ([x, w, b]) => groupNorm(x, 3, w, b, eps),
      ref: ([x, w, b]) => R.groupNorm(x, 3, w, b, eps),
      inputs: [randomRef([2, 6, 5, 3], 5, -0.1, 0.1), randomRef([6], 6), randomRef([6], 7)],
      rtol: 1e-5,
      atol: 1e-5,
      // The normalised values are x/σ with σ ~ 0.06: gradients are ~15× larger than the outputs.
      gradAtol: 1e-3,
    });
  }
});

/** Float64 mean and 1/√(var + eps) of each contiguous block of `block` values. */
function refStats(x: RefTensor, block: number, eps: number): Float64Array {
  const out = new Float64Array((x.data.length / block) * 2);
  for (let r = 0; r < out.length / 2; r++) {
    let m = 0;
    for (let i = r * block; i < (r + 1) * block; i++) m += x.data[i];
    m /= block;
    let v = 0;
    for (let i = r * block; i < (r + 1) * block; i++) v += (x.data[i] - m) ** 2;
    out[2 * r] = m;
    out[2 * r + 1] = 1 / Math.sqrt(v / block + eps);
  }
  return out;
}

gpuTest("groupNorm: groups of > 100k values keep float64-level statistics", async () => {
  // Groups of 2·65536 = 131072 (vec4 path, split into chunks) and 35937 values (scalar loads, chunked), with
  // a mean of 100 over a spread of ±1: E[x²] − E[x]² in f32 would lose ~4 of 7 digits of the variance.
  for (const [shape, G] of [[[2, 4, 32, 32, 64], 2], [[2, 2, 33, 33, 33], 2]] as const) {
    const xr = R.roundToF32(randomRef([...shape], 8, 99, 101));
    const x = fromRef(xr);
    const stats = groupNormStats(x, G);
    const got = await stats.toArray();
    const want = refStats(xr, xr.data.length / (shape[0] * G), 1e-5);
    // Welford per thread over ≤ 32 loads, then pairwise merges: the errors stay near f32 rounding of the
    // results (measured 5e-8 for the mean, 2e-7 for rstd); E[x²] − E[x]² would be off by ~1e-3 in rstd.
    const means = got.filter((_, i) => i % 2 === 0);
    const rstds = got.filter((_, i) => i % 2 === 1);
    assertClose(means, want.filter((_, i) => i % 2 === 0), { rtol: 2e-7, atol: 0, name: `mean ${shape}` });
    assertClose(rstds, want.filter((_, i) => i % 2 === 1), { rtol: 2e-6, atol: 0, name: `rstd ${shape}` });
    // The output inherits the mean's absolute error (~1e-5 here) scaled by rstd ~1.7.
    const y = groupNorm(x, G);
    assertClose(await toRef(y), R.groupNorm(xr, G), { rtol: 0, atol: 1e-4, name: `groupNorm ${shape}` });
    disposeAll(x, stats, y);
  }
});

/** Float64 closed-form backward of group norm (no affine): dx for gradient `g`. */
function refGroupNormGrad(x: RefTensor, g: RefTensor, G: number, eps: number): Float64Array {
  const block = x.data.length / (x.shape[0] * G);
  const stats = refStats(x, block, eps);
  const dx = new Float64Array(x.data.length);
  for (let r = 0; r < stats.length / 2; r++) {
    const [m, rstd] = [stats[2 * r], stats[2 * r + 1]];
    let sg = 0;
    let sgx = 0;
    for (let i = r * block; i < (r + 1) * block; i++) {
      sg += g.data[i];
      sgx += g.data[i] * (x.data[i] - m) * rstd;
    }
    for (let i = r * block; i < (r + 1) * block; i++) {
      dx[i] = rstd * (g.data[i] - sg / block - (x.data[i] - m) * rstd * (sgx / block));
    }
  }
  return dx;
}

gpuTest("groupNorm: backward over groups of > 100k values (chunked reductions)", async () => {
  const shape = [1, 4, 32, 32, 64];
  const xr = R.roundToF32(randomRef(shape, 9, -1, 2));
  // g correlated with x, so that the x̂·mean(g·x̂) term of dx is O(1) rather than O(1/√n).
  const gr = R.roundToF32(R.add(R.mul(xr, 0.5), randomRef(shape, 10)));
  const x = fromRef(xr, { requiresGrad: true });
  const gt = fromRef(gr);
  const y = groupNorm(x, 2);
  const loss = V.scope(() => V.sum(V.mul(y, gt)));
  const [dx] = V.grad(loss, [x]);
  // dx sums 131072 products per group in f32 (tree): the row means carry ~1e-6 relative error.
  assertClose(await dx.toArray(), refGroupNormGrad(xr, gr, 2, 1e-5), { rtol: 1e-4, atol: 1e-5, name: "dx" });
  disposeAll(x, gt, y, loss, dx);
});

gpuTest("groupNormSilu equals silu(groupNorm) in values and gradients", async () => {
  for (const [k, { shape, G }] of GN_CASES.entries()) {
    const C = shape[1];
    for (const [hasW, hasB] of [[true, true], [false, false], [false, true]]) {
      const inputs = [
        randomRef(shape, 40 + k, -2, 3),
        ...(hasW ? [randomRef([C], 50 + k, -2, 2)] : []),
        ...(hasB ? [randomRef([C], 60 + k)] : []),
      ];
      await checkOp({
        name: `groupNormSilu ${JSON.stringify(shape)} G=${G} weight=${hasW} bias=${hasB}`,
        gpu: (xs) => groupNormSilu(xs[0], G, ...gpuArgs(xs, hasW, hasB)),
        ref: (xs) => R.silu(refGroupNorm(G, 1e-5, hasW, hasB)(xs)),
        inputs,
        rtol: 1e-5,
        atol: 1e-5,
      });
    }
  }
  // Against the GPU composition: same values and the same gradients for every input.
  const xr = R.roundToF32(randomRef([2, 6, 5, 7, 3], 70, -2, 3));
  const wr = R.roundToF32(randomRef([6], 71, -2, 2));
  const br = R.roundToF32(randomRef([6], 72));
  const gr = R.roundToF32(randomRef([2, 6, 5, 7, 3], 73));
  const results: Float32Array[][] = [];
  for (const fused of [true, false]) {
    const [x, w, b] = [
      fromRef(xr, { requiresGrad: true }),
      fromRef(wr, { requiresGrad: true }),
      fromRef(br, { requiresGrad: true }),
    ];
    const g = fromRef(gr);
    const y = V.scope(() => fused ? groupNormSilu(x, 3, w, b) : V.silu(groupNorm(x, 3, w, b)));
    const loss = V.scope(() => V.sum(V.mul(y, g)));
    const grads = V.grad(loss, [x, w, b]);
    results.push([await y.toArray(), ...(await Promise.all(grads.map((t) => t.toArray())))]);
    disposeAll(x, w, b, g, y, loss, grads);
  }
  // Same f32 formulas in a different order: a few ulp; dγ, dβ sum 210 terms per channel.
  ["y", "dx", "dweight", "dbias"].forEach((name, i) =>
    assertClose(results[0][i], results[1][i], { rtol: 1e-5, atol: 1e-5, name: `fused vs composed ${name}` })
  );
});

gpuTest("layerNorm: trailing shapes, with and without affine; gradients of x, weight, bias", async () => {
  const cases: Array<[number[], number[]]> = [
    [[3, 4, 5, 6], [5, 6]],
    [[7, 37], [37]],
    [[2, 5, 8], [8]], // vec4 loads
    [[6], [6]], // a single row
  ];
  for (const [k, [shape, ns]] of cases.entries()) {
    for (const [hasW, hasB] of [[true, true], [false, false], [true, false], [false, true]]) {
      const inputs = [
        randomRef(shape, 80 + k, -2, 3),
        ...(hasW ? [randomRef(ns, 90 + k)] : []),
        ...(hasB ? [randomRef(ns, 100 + k)] : []),
      ];
      await checkOp({
        name: `layerNorm ${JSON.stringify(shape)} over ${JSON.stringify(ns)} weight=${hasW} bias=${hasB}`,
        gpu: (xs) => layerNorm(xs[0], ns, ...gpuArgs(xs, hasW, hasB), 1e-5),
        ref: (xs) =>
          R.layerNorm(xs[0], ns, hasW ? xs[1] : undefined, hasB ? xs[hasW ? 2 : 1] : undefined, 1e-5),
        inputs,
        rtol: 1e-5,
        atol: 1e-5,
      });
    }
  }
  await checkOp({
    name: "layerNorm of a transposed view, eps 1e-3",
    gpu: ([x, w, b]) => layerNorm(x, [4], w, b, 1e-3),
    ref: ([x, w, b]) => R.layerNorm(x, [4], w, b, 1e-3),
    inputs: [randomRef([3, 5, 4], 110), randomRef([4], 111), randomRef([4], 112)],
    asViews: true,
    rtol: 1e-5,
    atol: 1e-5,
  });
});

gpuTest("layerNorm: long rows are split into chunks", async () => {
  // 9001 values per row (scalar loads, 5 chunks) and 3·4096 (vec4, 2 chunks); f32 sums of ~1e4 values.
  for (const [shape, ns] of [[[3, 9001], [9001]], [[2, 3, 4096], [3, 4096]]] as const) {
    const xr = R.roundToF32(randomRef([...shape], 120, -2, 3));
    const wr = R.roundToF32(randomRef([...ns], 121));
    const x = fromRef(xr);
    const w = fromRef(wr);
    const y = layerNorm(x, ns, w);
    assertClose(await toRef(y), R.layerNorm(xr, ns, wr), {
      rtol: 1e-5,
      atol: 1e-5,
      name: `layerNorm ${shape}`,
    });
    disposeAll(x, w, y);
  }
});

gpuTest("norm ops refuse bad arguments with clear errors", () => {
  const x = V.zeros([2, 6, 3]);
  const v = V.zeros([6]);
  const w4 = V.zeros([4]);
  throws(() => groupNorm(v, 2), /groupNorm: x must be \[N, C, \.\.\.spatial\] \(rank ≥ 2\), got \[6\]/);
  throws(
    () => groupNorm(x, 4),
    /groupNorm: numGroups 4 must be a positive divisor of the channel count C = 6/,
  );
  throws(() => groupNormSilu(x, 0), /groupNormSilu: numGroups 0 must be a positive divisor/);
  throws(() => groupNorm(x, 2.5), /numGroups 2.5 must be a positive divisor/);
  throws(() => groupNorm(x, 3, w4), /groupNorm: weight must have shape \[6\], got \[4\]/);
  throws(() => groupNorm(x, 3, v, w4), /groupNorm: bias must have shape \[6\], got \[4\]/);
  throws(() => groupNorm(x, 3, v, v, -1), /groupNorm: eps must be a finite number ≥ 0, got -1/);
  throws(
    () => layerNorm(x, [6]),
    /layerNorm: normalizedShape \[6\] must be the trailing \(non-empty\) shape of x \[2, 6, 3\]/,
  );
  throws(() => layerNorm(x, []), /layerNorm: normalizedShape \[\] must be the trailing/);
  throws(() => layerNorm(x, [6, 3], w4), /layerNorm: weight must have shape \[6, 3\], got \[4\]/);
  // deno-lint-ignore no-explicit-any
  throws(() => groupNorm(null as any, 1), /groupNorm: x must be a Tensor, got null/);
  disposeAll(x, v, w4);
});

gpuTest("norm gradients when only some inputs require them", async () => {
  const xr = R.roundToF32(randomRef([2, 6, 5, 3], 130, -2, 3));
  const wr = R.roundToF32(randomRef([6], 131));
  const br = R.roundToF32(randomRef([6], 132));
  const gr = R.roundToF32(randomRef([2, 6, 5, 3], 133));
  const lnShape = [5, 3];
  const wl = R.roundToF32(randomRef(lnShape, 134));
  const ops = [
    {
      name: "groupNorm",
      run: (x: V.Tensor, w: V.Tensor, b: V.Tensor) => groupNorm(x, 3, w, b),
      w: wr,
      b: br,
    },
    {
      name: "layerNorm",
      run: (x: V.Tensor, w: V.Tensor, b: V.Tensor) => layerNorm(x, lnShape, w, b),
      w: wl,
      b: R.roundToF32(randomRef(lnShape, 135)),
    },
  ];
  for (const { name, run, w: wRef, b: bRef } of ops) {
    // Every combination of frozen inputs gives the same gradients for the others as all-trainable.
    const all: Float32Array[] = [];
    for (
      const mask of [[true, true, true], [false, true, false], [false, false, true], [true, false, false]]
    ) {
      const x = fromRef(xr, { requiresGrad: mask[0] });
      const w = fromRef(wRef, { requiresGrad: mask[1] });
      const b = fromRef(bRef, { requiresGrad: mask[2] });
      const g = fromRef(gr);
      const y = run(x, w, b);
      const loss = V.scope(() => V.sum(V.mul(y, g)));
      const wrt = [x, w, b].filter((_, i) => mask[i]);
      const grads = V.grad(loss, wrt);
      const values = await Promise.all(grads.map((t) => t.toArray()));
      if (mask.every((m) => m)) all.push(...values);
      else {
        mask.forEach((m, i) => {
          if (m) {
            assertClose(values[mask.slice(0, i).filter((v) => v).length], all[i], {
              rtol: 0,
              atol: 0,
              name: `${name} grad ${i}`,
            });
          }
        });
      }
      disposeAll(x, w, b, g, y, loss, grads);
    }
  }
});

gpuTest("more than 65535 planes fold the 2-D thread grid", async () => {
  // 65536 channels of 129 values: the plane-major grid needs a second row of planes (z = 2), which holds
  // only the last plane. Check the first and last groups of 16 channels against the reference.
  const [C, S, G] = [65536, 129, 4096];
  const xr = R.roundToF32(randomRef([1, C, S], 140, -2, 3));
  const wr = R.roundToF32(randomRef([C], 141));
  const x = fromRef(xr);
  const w = fromRef(wr);
  const y = groupNormSilu(x, G, w);
  const got = await y.toArray();
  const block = (C / G) * S;
  for (const start of [0, C - C / G]) {
    const part = { shape: [1, C / G, S], data: xr.data.slice(start * S, start * S + block) };
    const wPart = { shape: [C / G], data: wr.data.slice(start, start + C / G) };
    const want = R.silu(R.groupNorm(part, 1, wPart));
    const name = `groupNormSilu channels ${start}..${start + C / G - 1}`;
    assertClose(got.subarray(start * S, start * S + block), want.data, { rtol: 1e-5, atol: 1e-5, name });
  }
  disposeAll(x, w, y);
});

gpuTest("div_u, the float-reciprocal division of the kernels, is exact below 2^24", async () => {
  // Numerators at and around multiples of d near the top of the range, where the float estimate is worst.
  const next = rng(150);
  const triples: number[] = [];
  const divisors = [
    ...Array.from({ length: 300 }, (_, i) => i + 1),
    ...Array.from({ length: 300 }, () => 1 + Math.floor(next() * (1 << 24))),
  ];
  for (const d of divisors) {
    const top = Math.floor(((1 << 24) - 2) / d);
    for (const k of [top, top - 1, Math.floor(next() * (top + 1))]) {
      for (const n of [k * d - 1, k * d, k * d + 1]) {
        if (n >= 0 && n < 1 << 24) triples.push(n, d, reciprocalBits(d));
      }
    }
  }
  const count = triples.length / 3;
  const input = fromData(Int32Array.from(triples), [triples.length], { dtype: "int32" });
  const out = fromData(null, [count], { dtype: "int32" });
  const kernel = {
    key: "test:div_u",
    family: "test:div_u",
    bindings: ["read", "write"] as const,
    code: `
${paramsBlock(1)}
${divHelper(true)}
@group(0) @binding(1) var<storage, read> t: array<u32>;
@group(0) @binding(2) var<storage, read_write> q: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < pu(0u)) { q[i] = div_u(t[3u * i], t[3u * i + 1u], bitcast<f32>(t[3u * i + 2u])); }
}`,
  };
  dispatch({ ...kernel, bindings: [...kernel.bindings] }, new Uint32Array([count]), [
    input.storage().buffer,
    out.storage().buffer,
  ], Math.ceil(count / 64));
  const got = Array.from(new Uint32Array((await out.toArray()).buffer));
  const want = Array.from({ length: count }, (_, i) => Math.floor(triples[3 * i] / triples[3 * i + 1]));
  deepStrictEqual(got, want);
  disposeAll(input, out);
});
