import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { avgPool2d, avgPool3d, interpolate, type InterpolateOptions } from "../../engine/ops/resample.ts";
import { randomRef } from "../../engine/reference/mod.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";
import { throws } from "node:assert";

// Interpolation and pooling are linear in x, so central differences of the float64 reference are exact up
// to rounding and checkOp's default tolerances apply. Forward: at most 8 f32 products per output with the
// same f32 taps as the reference, within a few ulp (checkOp's rtol 1e-5, atol 1e-6).
//
// None of the scale factors below hits the case where the reference (engine/reference/resample.ts) differs
// from the kernel: see the "nearest without ATen's legacy shortcuts" test.
const CASES: Array<[number[], InterpolateOptions]> = [
  [[2, 3, 5, 7], { mode: "nearest", size: [9, 4] }],
  [[2, 3, 5, 7], { mode: "nearest", scaleFactor: 2 }],
  [[2, 3, 5, 7], { mode: "nearest", scaleFactor: 0.5 }],
  [[2, 3, 5, 7], { mode: "nearest", scaleFactor: 1.7 }],
  [[2, 2, 5, 7, 3], { mode: "nearest", size: [3, 11, 4] }],
  [[2, 2, 5, 7, 3], { mode: "nearest", scaleFactor: 2 }],
  [[2, 2, 5, 7, 3], { mode: "nearest", scaleFactor: [0.5, 2, 1.7] }],
  [[2, 3, 7], { mode: "nearest", size: [12] }],
  [[2, 3, 5, 7], { mode: "bilinear", size: [9, 4] }],
  [[2, 3, 5, 7], { mode: "bilinear", scaleFactor: 2 }],
  [[2, 3, 5, 7], { mode: "bilinear", scaleFactor: 0.5 }],
  [[2, 3, 5, 7], { mode: "bilinear", scaleFactor: 1.7 }],
  [[2, 3, 5, 7], { mode: "bilinear", scaleFactor: 2.5 }],
  [[2, 3, 5, 7], { mode: "bilinear", size: [5, 13] }], // one axis unchanged (copied)
  [[2, 2, 5, 7, 3], { mode: "trilinear", size: [3, 11, 4] }],
  [[2, 2, 5, 7, 3], { mode: "trilinear", scaleFactor: 2 }],
  [[2, 2, 5, 7, 3], { mode: "trilinear", scaleFactor: 0.5 }],
  [[2, 2, 5, 7, 3], { mode: "trilinear", scaleFactor: 1.7 }],
  [[2, 2, 5, 7, 3], { mode: "trilinear", scaleFactor: [0.5, 2, 1.3] }],
  // Last input axis a multiple of 4: the backward computes 4 inputs per thread.
  [[2, 3, 5, 8], { mode: "nearest", scaleFactor: 1.7 }],
  [[2, 3, 5, 8], { mode: "bilinear", size: [3, 5] }],
  [[3, 2, 8], { mode: "nearest", scaleFactor: 0.5 }],
  [[2, 2, 3, 5, 4], { mode: "trilinear", scaleFactor: 2 }],
  [[2, 2, 3, 5, 4], { mode: "nearest", size: [4, 4, 9] }],
];

gpuTest(
  "interpolate: nearest, bilinear, trilinear by size and scale factor; values and gradients",
  async () => {
    for (const [k, [shape, opts]] of CASES.entries()) {
      await checkOp({
        name: `interpolate ${JSON.stringify(shape)} ${JSON.stringify(opts)}`,
        gpu: ([x]) => interpolate(x, opts),
        ref: ([x]) => R.interpolate(x, opts),
        inputs: [randomRef(shape, 10 + k)],
      });
    }
  },
);

gpuTest("interpolate: non-contiguous input", async () => {
  for (
    const opts of [{ mode: "trilinear", scaleFactor: 1.7 }, { mode: "nearest", size: [3, 8, 5] }] as const
  ) {
    await checkOp({
      name: `interpolate of a transposed view ${JSON.stringify(opts)}`,
      gpu: ([x]) => interpolate(x, opts),
      ref: ([x]) => R.interpolate(x, opts),
      inputs: [randomRef([2, 2, 3, 5, 4], 40)],
      asViews: true,
    });
  }
});

gpuTest("interpolate: the backward of nearest ×2 sums each 2×2×2 block", async () => {
  const x = V.zeros([2, 3, 3, 4, 8], { requiresGrad: true });
  const gr = R.roundToF32(randomRef([2, 3, 6, 8, 16], 41));
  const g = fromRef(gr);
  const y = interpolate(x, { mode: "nearest", scaleFactor: 2 });
  const loss = V.scope(() => V.sum(V.mul(y, g)));
  const [dx] = V.grad(loss, [x]);
  // Expected: block sums of g, written out directly (8 f32 terms: a few ulp).
  const expected = new Float64Array(x.size);
  for (let o = 0; o < gr.data.length; o++) {
    const [n, c, d, h, w] = R.unravelIndex(o, gr.shape);
    expected[R.ravelIndex([n, c, d >> 1, h >> 1, w >> 1], x.shape)] += gr.data[o];
  }
  assertClose(await dx.toArray(), expected, { rtol: 1e-6, atol: 1e-6, name: "nearest ×2 backward" });
  disposeAll(x, g, y, loss, dx);
});

gpuTest("interpolate: nearest without ATen's legacy shortcuts (reference deviation)", async () => {
  // engine/reference/resample.ts applies ATen's `nearest_idx` shortcuts (out = in copies, out = 2·in takes
  // dst >> 1) even when a scale factor is given. PyTorch 1.13 takes them only on its channels-last CPU path
  // (which [1, 1, H, W] tensors also use); its contiguous NCHW CPU kernel and CUDA kernel compute
  // min(⌊dst / scale⌋, in − 1) as the kernel does. Expected values below are PyTorch 1.13's output for
  // F.interpolate(torch.arange(50.).reshape(1, 2, 5, 5), scale_factor=1.1, mode="nearest").
  const torch = [
    [0, 0, 1, 2, 3, 0, 0, 1, 2, 3, 5, 5, 6, 7, 8, 10, 10, 11, 12, 13, 15, 15, 16, 17, 18],
    [25, 25, 26, 27, 28, 25, 25, 26, 27, 28, 30, 30, 31, 32, 33, 35, 35, 36, 37, 38, 40, 40, 41, 42, 43],
  ].flat();
  const x = V.arange(50);
  const x4 = V.reshape(x, [1, 2, 5, 5]);
  const y = interpolate(x4, { mode: "nearest", scaleFactor: 1.1 });
  assertClose(await y.toArray(), torch, { rtol: 0, atol: 0, name: "nearest scaleFactor 1.1" });
  // Likewise 10 → 20 with scale 2.05: ⌊dst / 2.05⌋, not dst >> 1.
  const z = V.arange(10);
  const z3 = V.reshape(z, [1, 1, 10]);
  const u = interpolate(z3, { mode: "nearest", scaleFactor: 2.05 });
  const want = Array.from(
    { length: 20 },
    (_, o) => Math.min(Math.floor(Math.fround(o * Math.fround(1 / 2.05))), 9),
  );
  assertClose(await u.toArray(), want, { rtol: 0, atol: 0, name: "nearest scaleFactor 2.05" });
  disposeAll(x, x4, y, z, z3, u);
});

gpuTest("avgPool3d and avgPool2d: kernels, strides, floor mode; values and gradients", async () => {
  const cases3: Array<[number[], number | [number, number, number], (number | [number, number, number])?]> = [
    [[2, 3, 7, 5, 6], 2],
    [[2, 3, 7, 5, 6], [3, 2, 1], [2, 1, 3]],
    [[2, 2, 5, 7, 3], [2, 3, 3], 1], // overlapping windows
    [[2, 2, 6, 4, 8], 2], // 4 outputs (and 4 inputs in the backward) per thread
  ];
  for (const [k, [shape, kernel, stride]] of cases3.entries()) {
    await checkOp({
      name: `avgPool3d ${JSON.stringify(shape)} kernel ${JSON.stringify(kernel)} stride ${
        JSON.stringify(stride)
      }`,
      gpu: ([x]) => avgPool3d(x, kernel, stride),
      ref: ([x]) => R.avgPool3d(x, kernel, stride),
      inputs: [randomRef(shape, 50 + k)],
    });
  }
  const cases2: Array<[number[], number | [number, number], (number | [number, number])?]> = [
    [[2, 3, 7, 5], 2],
    [[2, 3, 7, 5], [3, 2], [2, 3]],
    [[3, 2, 6, 9], [2, 4], 1],
    [[2, 3, 5, 12], [2, 3], [1, 2]],
  ];
  for (const [k, [shape, kernel, stride]] of cases2.entries()) {
    await checkOp({
      name: `avgPool2d ${JSON.stringify(shape)} kernel ${JSON.stringify(kernel)} stride ${
        JSON.stringify(stride)
      }`,
      gpu: ([x]) => avgPool2d(x, kernel, stride),
      ref: ([x]) => R.avgPool2d(x, kernel, stride),
      inputs: [randomRef(shape, 60 + k)],
      asViews: k === 2,
    });
  }
});

gpuTest("a larger trilinear resize and pooling agree with the reference", async () => {
  // 2·4·(9·11·13) inputs → 2·4·(16·20·7) outputs: exercises the grid and every tap position.
  const xr = R.roundToF32(randomRef([2, 4, 9, 11, 13], 70));
  const x = fromRef(xr);
  const opts: InterpolateOptions = { mode: "trilinear", size: [16, 20, 7] };
  const y = interpolate(x, opts);
  assertClose(await toRef(y), R.interpolate(xr, opts), { rtol: 1e-5, atol: 1e-6, name: "trilinear" });
  const p = avgPool3d(x, [3, 2, 2], [2, 2, 3]);
  assertClose(await toRef(p), R.avgPool3d(xr, [3, 2, 2], [2, 2, 3]), {
    rtol: 1e-5,
    atol: 1e-6,
    name: "pool",
  });
  disposeAll(x, y, p);
});

gpuTest("resample ops refuse bad arguments with clear errors", () => {
  const x4 = V.zeros([1, 2, 4, 4]);
  const x5 = V.zeros([1, 2, 4, 4, 4]);
  const x2 = V.zeros([2, 4]);
  throws(
    () => interpolate(x5, { mode: "bilinear", scaleFactor: 2 }),
    /interpolate: mode "bilinear" needs x \[N, C, H, W\], got \[1, 2, 4, 4, 4\]/,
  );
  throws(
    () => interpolate(x4, { mode: "trilinear", scaleFactor: 2 }),
    /interpolate: mode "trilinear" needs x \[N, C, D, H, W\], got \[1, 2, 4, 4\]/,
  );
  throws(
    () => interpolate(x2, { mode: "nearest", scaleFactor: 2 }),
    /interpolate: mode "nearest" needs x \[N, C, W\], \[N, C, H, W\] or \[N, C, D, H, W\], got \[2, 4\]/,
  );
  throws(
    () => interpolate(x4, { mode: "bicubic" as unknown as InterpolateOptions["mode"], scaleFactor: 2 }),
    /interpolate: mode "bicubic" is not supported; accepted: "nearest", "bilinear", "trilinear"/,
  );
  throws(() => interpolate(x4, { mode: "nearest" }), /interpolate: give exactly one of size and scaleFactor/);
  throws(
    () => interpolate(x4, { mode: "nearest", size: [8, 8], scaleFactor: 2 }),
    /give exactly one of size and scaleFactor/,
  );
  throws(
    () => interpolate(x4, { mode: "bilinear", size: [8] }),
    /interpolate: size \[8\] must list 2 positive integers/,
  );
  throws(
    () => interpolate(x4, { mode: "bilinear", scaleFactor: 0 }),
    /interpolate: scaleFactor 0 must be a positive finite number or 2 of them/,
  );
  throws(
    () => interpolate(x4, { mode: "nearest", scaleFactor: [2, 2, 2] }),
    /scaleFactor \[2,2,2\] must be a positive finite number or 2 of them/,
  );
  throws(
    () => interpolate(x4, { mode: "nearest", scaleFactor: 0.1 }),
    /interpolate: input \[1, 2, 4, 4\] and output spatial size \[0, 0\] must be non-empty/,
  );
  throws(() => avgPool3d(x4, 2), /avgPool3d: x must be \[N, C, D, H, W\], got \[1, 2, 4, 4\]/);
  throws(() => avgPool2d(x5, 2), /avgPool2d: x must be \[N, C, H, W\], got \[1, 2, 4, 4, 4\]/);
  throws(() => avgPool3d(x5, 5), /avgPool3d: kernel \[5, 5, 5\] is larger than the spatial size \[4, 4, 4\]/);
  throws(() => avgPool2d(x4, [2, 0]), /avgPool2d: kernel \[2,0\] must be a positive integer or 2 of them/);
  throws(() => avgPool2d(x4, 2, 1.5), /avgPool2d: stride 1.5 must be a positive integer or 2 of them/);
  disposeAll(x4, x5, x2);
});

gpuTest("more than 65535 planes fold the thread grid", async () => {
  // 65537 planes of 2×3: the plane rows of the grid wrap into z (planes 65535 and 65536). Forward against
  // the reference. Backward: the last two planes repeat the data of the first two, so their gradients must
  // be identical; and the adjoint identity ⟨interp(x), g⟩ = ⟨x, interpᵀ(g)⟩ holds overall (f32 sums of ~1e6
  // terms: 1e-5 relative).
  const planes = 65537;
  const opts: InterpolateOptions = { mode: "bilinear", scaleFactor: 2 };
  const xr = R.roundToF32(randomRef([1, planes, 2, 3], 80));
  const gr = R.roundToF32(randomRef([1, planes, 4, 6], 81));
  xr.data.copyWithin((planes - 2) * 6, 0, 2 * 6);
  gr.data.copyWithin((planes - 2) * 24, 0, 2 * 24);
  const x = fromRef(xr, { requiresGrad: true });
  const g = fromRef(gr);
  const y = interpolate(x, opts);
  const yr = await toRef(y);
  assertClose(yr, R.interpolate(xr, opts), { rtol: 1e-5, atol: 1e-6, name: "bilinear over 65537 planes" });
  const loss = V.scope(() => V.sum(V.mul(y, g)));
  const [dx] = V.grad(loss, [x]);
  const dxr = await toRef(dx);
  assertClose(dxr.data.subarray((planes - 2) * 6), dxr.data.subarray(0, 2 * 6), {
    rtol: 0,
    atol: 0,
    name: "folded planes",
  });
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, v, i) => s + v * b[i], 0);
  assertClose([dot(xr.data, dxr.data)], [dot(yr.data, gr.data)], {
    rtol: 1e-5,
    atol: 0,
    name: "adjoint identity",
  });
  disposeAll(x, g, y, loss, dx);
});
