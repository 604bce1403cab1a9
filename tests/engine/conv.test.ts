import { throws as assertThrows } from "node:assert";
import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { conv2d, type Conv2dOptions, conv3d, convSettings } from "../../engine/ops/conv.ts";
import { assertClose } from "../helpers/check.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";

/**
 * Tolerances. Every output (and input-gradient) element is an f32 sum of Cin/groups · taps products of
 * values in [−1, 1] (≤ 6 · 27 = 162 terms here); weight gradients sum N · (output positions) products (≤ a
 * few thousand); bias gradients as many values. Each f32 addition rounds by ≤ 2⁻²⁴ of the running sum, so
 * with K terms of typical size 1 the error is ~√K · 6e-8 · |sum| ≲ 1e-5 absolute for K in the thousands
 * (observed: ≤ 3e-5 at K = 2000). atol 1e-4 + rtol 1e-5 leaves room for the worst case without hiding a
 * wrong tap (which is off by O(0.1–1)).
 */
const TOL = { rtol: 1e-5, atol: 1e-4 };

type Triple = [number, number, number];
type PerAxis = Triple | number;

/** One convolution to check: shapes and options (bias unless `bias` is false). */
interface Case {
  n: number;
  cin: number;
  cout: number;
  size: Triple;
  kernel: Triple;
  stride: PerAxis;
  padding: PerAxis;
  dilation: PerAxis;
  groups: number;
  bias?: boolean;
}

/** A case from [n, cin, cout, size, kernel, stride, padding, dilation, groups] (keeps the tables short). */
function conv(
  [n, cin, cout, size, kernel, stride, padding, dilation, groups]: [
    number,
    number,
    number,
    Triple,
    Triple,
    PerAxis,
    PerAxis,
    PerAxis,
    number,
  ],
  bias = true,
): Case {
  return { n, cin, cout, size, kernel, stride, padding, dilation, groups, bias };
}

/** Forward, and all three gradients of Σ y ⊙ r (random r), against the float64 reference. */
async function checkConv3d(c: Case, seed: number): Promise<void> {
  const name = JSON.stringify(c);
  const xr = R.roundToF32(R.randomRef([c.n, c.cin, ...c.size], seed));
  const wr = R.roundToF32(R.randomRef([c.cout, c.cin / c.groups, ...c.kernel], seed + 1));
  const br = R.roundToF32(R.randomRef([c.cout], seed + 2));
  const opts = { stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.groups };
  const useBias = c.bias ?? true;
  const yr = R.conv3d(xr, wr, useBias ? br : null, opts);
  const rr = R.roundToF32(R.randomRef(yr.shape, seed + 3));
  const ref = R.conv3dBackward(xr, wr, rr, opts);
  const x = fromRef(xr, { requiresGrad: true });
  const w = fromRef(wr, { requiresGrad: true });
  const b = fromRef(br, { requiresGrad: true });
  const r = fromRef(rr);
  const y = conv3d(x, w, { ...opts, bias: useBias ? b : undefined });
  const weighted = V.mul(y, r);
  const loss = V.sum(weighted);
  const grads = V.grad(loss, useBias ? [x, w, b] : [x, w]);
  try {
    assertClose(await toRef(y), yr, { ...TOL, name: `${name} forward` });
    assertClose(await toRef(grads[0]), ref.dx, { ...TOL, name: `${name} dx` });
    assertClose(await toRef(grads[1]), ref.dw, { ...TOL, name: `${name} dw` });
    if (useBias) assertClose(await toRef(grads[2]), ref.db, { ...TOL, name: `${name} db` });
  } finally {
    disposeAll(x, w, b, r, y, weighted, loss, grads);
  }
}

gpuTest(
  "conv3d: every stride × padding × dilation × groups combination (kernel 3×2×1, batch 2)",
  async () => {
    // Odd sizes 7×6×5; padding 3 exceeds the kernel's reach on every axis (outputs of pure padding + bias);
    // groups: plain, 2 groups, depthwise.
    const channels: Triple[] = [[3, 5, 1], [4, 6, 2], [4, 4, 4]]; // [cin, cout, groups]
    let seed = 10;
    for (const [cin, cout, groups] of channels) {
      for (const stride of [1, 2]) {
        for (const padding of [0, 1, 3]) {
          for (const dilation of [1, 2]) {
            await checkConv3d(
              conv([2, cin, cout, [7, 6, 5], [3, 2, 1], stride, padding, dilation, groups]),
              seed++,
            );
          }
        }
      }
    }
  },
);

gpuTest("conv3d: per-axis strides, paddings and dilations; kernels 1³, 2³, 3³; stride > kernel", async () => {
  const cases: Case[] = [
    conv([2, 3, 5, [7, 6, 5], [3, 3, 3], 1, 1, 1, 1]),
    conv([2, 3, 5, [7, 6, 5], [3, 3, 3], [2, 1, 3], [1, 0, 2], [1, 2, 1], 1]),
    conv([1, 2, 3, [9, 8, 7], [2, 2, 2], [3, 2, 1], [0, 1, 1], [2, 1, 3], 1]),
    conv([2, 3, 5, [7, 6, 5], [1, 1, 1], 1, 0, 1, 1]),
    conv([2, 4, 4, [7, 6, 5], [1, 1, 1], 2, [2, 0, 1], 1, 2]),
    // stride 3 > kernel 2: some input positions reach no output (their gradient is exactly 0)
    conv([1, 3, 2, [8, 7, 9], [2, 2, 2], 3, 0, 1, 1]),
    // depthwise with channel multiplier 2, no bias
    conv([2, 3, 6, [5, 7, 6], [3, 3, 3], 2, 1, 1, 3], false),
  ];
  for (const [i, c] of cases.entries()) await checkConv3d(c, 100 + 10 * i);
});

gpuTest(
  "conv3d: the register-blocked tiles (U-Net-like 3³ convs, odd sizes near the tile shape)",
  async () => {
    const cases: Case[] = [
      // 7×8×15 outputs fill most of a 4×8×16 tile: the 16-channel "volume" tiling (17 input channels:
      // the input gradient, a transposed convolution into 17 channels, runs on it too)
      conv([2, 17, 20, [7, 8, 15], [3, 3, 3], 1, 1, 1, 1]),
      // 3 → 2 channels: the narrow tiling, at 7×16×31
      conv([1, 3, 2, [7, 16, 31], [3, 3, 3], 1, 1, 1, 1]),
      // stride 2, the U-Net's downsampling: the "strided" tiling; its input gradient's 8 phases (kernels
      // 1 or 2 per axis, strided writes) run on the volume tiling
      conv([1, 17, 16, [14, 16, 30], [3, 3, 3], 2, 1, 1, 1]),
      // 7×8×7 outputs: the 4×8×8 tile of 8³ levels
      conv([2, 5, 9, [7, 8, 7], [3, 3, 3], 1, 1, 1, 1]),
    ];
    for (const [i, c] of cases.entries()) await checkConv3d(c, 200 + 10 * i);
  },
);

gpuTest(
  "conv3d: the chunk kernels (implicit GEMM over w-planes; software adapters' path for large convs)",
  async () => {
    // Forced on at small sizes with a small geometry (8 threads × 8 output channels, which compiles in a
    // second) so that the code generator is exercised on partial column tiles, partial row tiles, a partial
    // last input-channel chunk, groups, dilation and stride 2; the input gradients of the stride-1 cases
    // (contiguous, width a multiple of 4) run on it too, and the weight gradients (groups = 1) on the
    // weight-gradient chunk kernel.
    const saved = { ...convSettings };
    try {
      convSettings.path = "chunk";
      convSettings.chunk = { threads: 8, rows: 8 };
      // Weight gradients: 8 k-values × 8 output channels × 3 groups of 4 positions per dispatch, so the
      // cases also cover partial k, channel and position chunks and several batch items.
      convSettings.weightGradChunk = { threads: 8, rows: 8, depth: 3 };
      const cases: Case[] = [
        conv([2, 6, 10, [5, 6, 8], [3, 3, 3], 1, 1, 1, 1]),
        conv([1, 5, 7, [9, 7, 8], [3, 3, 3], 2, 1, 1, 1]),
        conv([2, 4, 6, [7, 8, 12], [3, 3, 3], 1, 2, 2, 2], false),
        conv([1, 9, 4, [6, 5, 4], [1, 1, 1], 1, 0, 1, 1]),
      ];
      for (const [i, c] of cases.entries()) await checkConv3d(c, 700 + 10 * i);
      convSettings.chunk = { threads: 8, rows: 8, channels: 2 };
      await checkConv3d(conv([1, 5, 3, [6, 7, 4], [3, 3, 3], 1, 1, 1, 1]), 790);
    } finally {
      Object.assign(convSettings, saved);
    }
  },
);

gpuTest("conv3d: geometries that use the fallback kernels (large dilation, large kernel)", async () => {
  const cases: Case[] = [
    conv([1, 2, 3, [20, 19, 21], [3, 3, 3], 1, 1, 9, 1]),
    conv([2, 2, 3, [7, 6, 5], [6, 5, 5], 1, 2, 1, 1]),
  ];
  for (const [i, c] of cases.entries()) await checkConv3d(c, 300 + 10 * i);
});

gpuTest(
  "conv2d: forward and gradients vs reference (stride, padding, dilation, groups, plane tiles)",
  async () => {
    const cases: Array<[number[], number[], R.Conv2dOptions]> = [
      [[2, 3, 7, 6], [5, 3, 3, 3], { padding: 1 }],
      [[2, 4, 9, 8], [6, 2, 3, 2], { stride: [2, 1], padding: [0, 2], dilation: [1, 2], groups: 2 }],
      [[1, 4, 7, 5], [4, 1, 3, 3], { stride: 2, padding: 3, groups: 4 }],
      // 15×31 outputs use the register-blocked 2-D tiles
      [[2, 3, 15, 31], [17, 3, 3, 3], { padding: 1 }],
      [[1, 3, 31, 30], [2, 3, 3, 3], { padding: 1 }],
    ];
    let seed = 400;
    for (const [xShape, wShape, opts] of cases) {
      const name = `conv2d x ${JSON.stringify(xShape)} w ${JSON.stringify(wShape)} ${JSON.stringify(opts)}`;
      const xr = R.roundToF32(R.randomRef(xShape, seed++));
      const wr = R.roundToF32(R.randomRef(wShape, seed++));
      const br = R.roundToF32(R.randomRef([wShape[0]], seed++));
      const yr = R.conv2d(xr, wr, br, opts);
      const rr = R.roundToF32(R.randomRef(yr.shape, seed++));
      const ref = R.conv2dBackward(xr, wr, rr, opts);
      const x = fromRef(xr, { requiresGrad: true });
      const w = fromRef(wr, { requiresGrad: true });
      const b = fromRef(br, { requiresGrad: true });
      const r = fromRef(rr);
      const y = conv2d(x, w, { ...opts, bias: b } as Conv2dOptions);
      const weighted = V.mul(y, r);
      const loss = V.sum(weighted);
      const [dx, dw, db] = V.grad(loss, [x, w, b]);
      assertClose(await toRef(y), yr, { ...TOL, name: `${name} forward` });
      assertClose(await toRef(dx), ref.dx, { ...TOL, name: `${name} dx` });
      assertClose(await toRef(dw), ref.dw, { ...TOL, name: `${name} dw` });
      assertClose(await toRef(db), ref.db, { ...TOL, name: `${name} db` });
      disposeAll(x, w, b, r, y, weighted, loss, dx, dw, db);
    }
  },
);

gpuTest("conv3d: end-to-end finite-difference gradient check (checkOp), non-contiguous inputs", async () => {
  const opts = { stride: [2, 1, 1] as Triple, padding: 1, dilation: [1, 1, 2] as Triple, groups: 2 };
  await checkOp({
    name: "conv3d stride/dilation/groups with bias, transposed views",
    gpu: ([x, w, b]) => conv3d(x, w, { ...opts, bias: b }),
    // checkOp feeds rank ≥ 2 inputs as transposed views of the same values.
    ref: ([x, w, b]) => R.conv3d(x, w, b, opts),
    inputs: [R.randomRef([2, 4, 5, 4, 6], 1), R.randomRef([3 * 2, 2, 3, 2, 2], 2), R.randomRef([6], 3)],
    asViews: true,
    ...TOL,
    // The loss is linear in each input, so central differences are exact up to rounding: eps 1e-2 keeps
    // that rounding (~1e-16 · Σ|terms| / eps) far below the f32 error of the GPU gradient.
    eps: 1e-2,
    gradRtol: 1e-4,
    gradAtol: 1e-4,
  });
  await checkOp({
    name: "conv2d with bias",
    gpu: ([x, w, b]) => conv2d(x, w, { bias: b, stride: 2, padding: 1 }),
    ref: ([x, w, b]) => R.conv2d(x, w, b, { stride: 2, padding: 1 }),
    inputs: [R.randomRef([2, 3, 7, 6], 4), R.randomRef([4, 3, 3, 3], 5), R.randomRef([4], 6)],
    ...TOL,
    eps: 1e-2,
    gradRtol: 1e-4,
    gradAtol: 1e-4,
  });
});

gpuTest(
  "conv3d/conv2d: invalid arguments throw errors naming the op, the shapes and what is accepted",
  () => {
    const x = V.zeros([1, 4, 5, 5, 5]);
    const w = V.zeros([6, 4, 3, 3, 3]);
    const x2 = V.zeros([1, 4, 5, 5]);
    const w2 = V.zeros([6, 4, 3, 3]);
    const wFew = V.zeros([6, 3, 3, 3, 3]);
    const bias5 = V.zeros([5]);
    const w2Few = V.zeros([6, 2, 3, 3]);
    try {
      assertThrows(() => conv3d(x2, w), /conv3d: x must be \[N, C, D, H, W\], got \[1, 4, 5, 5\]/);
      assertThrows(() => conv3d(x, w2), /conv3d: w must be \[Cout, Cin\/groups, kd, kh, kw\]/);
      assertThrows(() => conv3d(x, wFew), /expects 3 input channels per group.*has 4 channels/);
      assertThrows(() => conv3d(x, w, { groups: 3 }), /groups 3 must divide the input channels \(4/);
      assertThrows(() => conv3d(x, w, { groups: 0 }), /conv3d: groups 0 must be a positive integer/);
      assertThrows(() => conv3d(x, w, { stride: 0 }), /conv3d: stride 0 must be an integer >= 1/);
      assertThrows(
        () => conv3d(x, w, { padding: [1, 1] as unknown as Triple }),
        /padding \[1,1\] must be .* array of 3/,
      );
      assertThrows(() => conv3d(x, w, { bias: bias5 }), /conv3d: bias must have shape \[6\].*got \[5\]/);
      assertThrows(
        () => conv3d(x, w, { dilation: 3 }),
        /conv3d: the kernel \[3, 3, 3\] \(dilation \[3, 3, 3\]\) does not fit/,
      );
      assertThrows(() => conv2d(x, w2), /conv2d: x must be \[N, C, H, W\], got \[1, 4, 5, 5, 5\]/);
      assertThrows(
        () => conv2d(x2, w2, { dilation: 3 }),
        /conv2d: the kernel \[3, 3\] \(dilation \[3, 3\]\) does not fit the input \[1, 4, 5, 5\]/,
      );
      assertThrows(() => conv2d(x2, w2Few), /conv2d: w \[6, 2, 3, 3\] expects 2 input channels per group/);
    } finally {
      disposeAll(x, w, x2, w2, wFew, bias5, w2Few);
    }
  },
);

gpuTest("conv3d: an empty batch gives an empty output and zero weight and bias gradients", async () => {
  const x = V.zeros([0, 3, 5, 5, 5], { requiresGrad: true });
  const w = V.ones([4, 3, 3, 3, 3], { requiresGrad: true });
  const b = V.ones([4], { requiresGrad: true });
  const y = conv3d(x, w, { bias: b, padding: 1 });
  const loss = V.sum(y);
  const [dx, dw, db] = V.grad(loss, [x, w, b]);
  try {
    assertClose([...y.shape, ...dx.shape], [0, 4, 5, 5, 5, 0, 3, 5, 5, 5], { name: "shapes", atol: 0 });
    assertClose(await dw.toArray(), new Float32Array(4 * 81), { name: "dw", atol: 0 });
    assertClose(await db.toArray(), [0, 0, 0, 0], { name: "db", atol: 0 });
  } finally {
    disposeAll(x, w, b, y, loss, dx, dw, db);
  }
});

gpuTest("conv3d: the same step twice leaves no tensors or buffers behind", async () => {
  const x = V.tensor(
    Float32Array.from({ length: 2 * 3 * 5 * 4 * 6 }, (_, i) => Math.sin(i)),
    [2, 3, 5, 4, 6],
    {
      requiresGrad: true,
    },
  );
  const w = V.tensor(Float32Array.from({ length: 4 * 3 * 27 }, (_, i) => Math.cos(i)), [4, 3, 3, 3, 3], {
    requiresGrad: true,
  });
  const step = () =>
    V.scope(() => {
      const y = conv3d(x, w, { padding: 1, stride: 2 });
      return V.grad(V.sum(V.mul(y, y)), [x, w]);
    });
  const first = step();
  await V.sync();
  const bytes = V.memory().liveBytes;
  disposeAll(first);
  const second = step();
  await V.sync();
  assertClose([V.memory().liveBytes], [bytes], {
    name: "live bytes after the second step",
    rtol: 0,
    atol: 0,
  });
  disposeAll(second, x, w);
});
