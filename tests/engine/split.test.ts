/**
 * Tensors larger than one storage binding: every op splits its work into bound windows or blocks. The
 * binding limit is forced down (`runtimeSettings.maxBindingBytes`) so that the splitting paths run on small
 * data; any op that still tried to bind a too-large buffer would throw from `dispatch`.
 */

import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { conv3d, convSettings } from "../../engine/ops/conv.ts";
import { mapInto } from "../../engine/ops/map.ts";
import { runtimeSettings } from "../../engine/runtime.ts";
import { assertClose } from "../helpers/check.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";

/** Runs `fn` with the largest binding forced to `bytes`. */
async function withLimit<T>(bytes: number, fn: () => Promise<T>): Promise<T> {
  runtimeSettings.maxBindingBytes = bytes;
  try {
    return await fn();
  } finally {
    runtimeSettings.maxBindingBytes = 0;
  }
}

const KiB = 1024;

gpuTest(
  "split: element-wise maps over windows (broadcast, strided views, concat) match the reference",
  async () => {
    // 3·5·40·40 = 24,000 elements = 94 KiB against 4 KiB bindings: pieces along all outer dimensions.
    await withLimit(4 * KiB, async () => {
      await checkOp({
        name: "add (broadcast)",
        gpu: ([a, b]) => V.add(a, b),
        ref: ([a, b]) => R.add(a, b),
        inputs: [R.randomRef([3, 5, 40, 40], 1), R.randomRef([5, 1, 40], 2)],
        gradWrt: [],
      });
      await checkOp({
        name: "mul of transposed views",
        gpu: ([a, b]) => V.mul(a, b),
        ref: ([a, b]) => R.mul(a, b),
        inputs: [R.randomRef([60, 70], 3), R.randomRef([60, 70], 4)],
        asViews: true,
        gradWrt: [],
      });
      const a = R.randomRef([2, 3, 30, 30], 5);
      const b = R.randomRef([2, 4, 30, 30], 6);
      const [ta, tb] = [fromRef(a), fromRef(b)];
      const c = V.concat([ta, tb], 1);
      try {
        assertClose(await toRef(c), R.concat([R.roundToF32(a), R.roundToF32(b)], 1), { rtol: 0, atol: 0 });
      } finally {
        disposeAll(ta, tb, c);
      }
    });
  },
);

gpuTest("split: expressions of the element index count over the whole space, not per piece", async () => {
  // 3000 elements (12 KiB) against 1 KiB bindings: arange runs in ≥ 12 pieces. Exact: integers below 2^24.
  // Then a transposed (strided) target of rank 3, cut along its outer dimensions: `i` is the row-major index
  // over the view's shape.
  await withLimit(1 * KiB, async () => {
    const a = V.arange(3000);
    const b = V.arange(5, 5 + 2 * 3000, 2);
    const base = V.zeros([20, 15, 4]);
    const t = V.permute(base, [2, 1, 0]);
    mapInto(t, "index", "f32(i)", []);
    try {
      const got3 = await base.toArray();
      for (let x = 0; x < 20; x++) {
        for (let y = 0; y < 15; y++) {
          for (let z = 0; z < 4; z++) {
            const v = got3[(x * 15 + y) * 4 + z];
            if (v !== (z * 15 + y) * 20 + x) throw new Error(`index map at view [${z}, ${y}, ${x}]: ${v}`);
          }
        }
      }
      const got = await a.toArray();
      const bad = got.findIndex((v, i) => v !== i);
      if (bad >= 0) throw new Error(`arange(3000)[${bad}] = ${got[bad]}`);
      const gotB = await b.toArray();
      const badB = gotB.findIndex((v, i) => v !== 5 + 2 * i);
      if (badB >= 0) throw new Error(`arange(5, 6005, 2)[${badB}] = ${gotB[badB]}`);
    } finally {
      disposeAll(a, b, t, base);
    }
  });
});

gpuTest("split: reductions over rows and over rows longer than a binding match the reference", async () => {
  await withLimit(4 * KiB, async () => {
    const x = R.randomRef([7, 3000], 11);
    const t = fromRef(x);
    const all = V.sum(t);
    const rows = V.sum(t, 1);
    const cols = V.max(t, 0);
    const xr = R.roundToF32(x);
    try {
      // Sums of ≤ 21,000 values in [−1, 1]: f32 rounding stays below 1e-4 absolute.
      assertClose(await toRef(all), R.sum(xr), { rtol: 1e-5, atol: 1e-3, name: "sum all" });
      assertClose(await toRef(rows), R.sum(xr, 1), { rtol: 1e-5, atol: 1e-4, name: "sum rows" });
      assertClose(await toRef(cols), R.max(xr, 0), { rtol: 0, atol: 0, name: "max" });
    } finally {
      disposeAll(t, all, rows, cols);
    }
  });
});

gpuTest("split: randn in pieces continues the Philox stream exactly", async () => {
  const whole = V.randn([5, 1001], { seed: 3, offset: 9 });
  const expected = await whole.toArray();
  whole.dispose();
  await withLimit(4 * KiB, async () => {
    const pieces = V.randn([5, 1001], { seed: 3, offset: 9 });
    try {
      const got = await pieces.toArray();
      const diff = got.findIndex((v, i) => v !== expected[i]);
      if (diff >= 0) throw new Error(`randn differs at ${diff}: ${got[diff]} vs ${expected[diff]}`);
    } finally {
      pieces.dispose();
    }
  });
});

gpuTest("split: groupNorm(+SiLU) and layerNorm by blocks of groups: values and gradients", async () => {
  // [2, 4, 4, 6, 6] = 1152 elements (4.5 KiB) against 2 KiB bindings: one group (2 channels, 288
  // values) per piece, so pieces cover channel ranges within a sample.
  await withLimit(2 * KiB, async () => {
    const inputs = [R.randomRef([2, 4, 4, 6, 6], 21), R.randomRef([4], 22), R.randomRef([4], 23)];
    await checkOp({
      name: "groupNormSilu",
      gpu: ([x, w, b]) => V.groupNormSilu(x, 2, w, b),
      ref: ([x, w, b]) => R.silu(R.groupNorm(x, 2, w, b)),
      inputs,
    });
    await checkOp({
      name: "layerNorm",
      gpu: ([x, w, b]) => V.layerNorm(x, [40], w, b),
      ref: ([x, w, b]) => R.layerNorm(x, [40], w, b),
      inputs: [R.randomRef([30, 40], 24), R.randomRef([40], 25), R.randomRef([40], 26)],
    });
  });
});

gpuTest("split: nearest upsampling and average pooling by blocks of planes", async () => {
  // Planes of 64 and 512 values against 4 KiB bindings.
  await withLimit(4 * KiB, async () => {
    await checkOp({
      name: "interpolate nearest ×2",
      gpu: ([x]) => V.interpolate(x, { scaleFactor: 2, mode: "nearest" }),
      ref: ([x]) => R.interpolate(x, { scaleFactor: 2, mode: "nearest" }),
      inputs: [R.randomRef([2, 3, 4, 4, 4], 31)],
    });
    await checkOp({
      name: "avgPool3d 2",
      gpu: ([x]) => V.avgPool3d(x, 2),
      ref: ([x]) => R.avgPool3d(x, [2, 2, 2]),
      inputs: [R.randomRef([2, 3, 8, 8, 8], 32)],
    });
  });
});

/**
 * conv3d split into channel blocks: forward and all gradients of Σ y ⊙ r against the float64 reference.
 * Tolerance as in conv.test.ts: sums of ≤ 6·27 products per output, of a few thousand per weight gradient.
 */
async function checkSplitConv(stride: number, seed: number): Promise<void> {
  const opts = { stride, padding: 1 };
  const xr = R.roundToF32(R.randomRef([2, 6, 6, 8, 16], seed));
  const wr = R.roundToF32(R.randomRef([5, 6, 3, 3, 3], seed + 1));
  const br = R.roundToF32(R.randomRef([5], seed + 2));
  const yr = R.conv3d(xr, wr, br, opts);
  const rr = R.roundToF32(R.randomRef(yr.shape, seed + 3));
  const ref = R.conv3dBackward(xr, wr, rr, opts);
  const x = fromRef(xr, { requiresGrad: true });
  const w = fromRef(wr, { requiresGrad: true });
  const b = fromRef(br, { requiresGrad: true });
  const r = fromRef(rr);
  const y = conv3d(x, w, { ...opts, bias: b });
  const weighted = V.mul(y, r);
  const loss = V.sum(weighted);
  const grads = V.grad(loss, [x, w, b]);
  const tol = { rtol: 1e-5, atol: 1e-4 };
  try {
    assertClose(await toRef(y), yr, { ...tol, name: `stride ${stride} forward` });
    assertClose(await toRef(grads[0]), ref.dx, { ...tol, name: `stride ${stride} dx` });
    assertClose(await toRef(grads[1]), ref.dw, { ...tol, name: `stride ${stride} dw` });
    assertClose(await toRef(grads[2]), ref.db, { ...tol, name: `stride ${stride} db` });
  } finally {
    disposeAll(x, w, b, r, y, weighted, loss, grads);
  }
}

gpuTest("split: conv3d by channel blocks (direct and chunk kernels, stride 1 and 2)", async () => {
  // One channel's padded input is ≤ 9.5k elements: 64 KiB bindings hold one block of one channel, while
  // the whole problem (2 samples × 6 channels) does not fit.
  await withLimit(64 * KiB, async () => {
    await checkSplitConv(1, 40);
    await checkSplitConv(2, 50);
    convSettings.path = "chunk";
    try {
      await checkSplitConv(1, 60);
    } finally {
      convSettings.path = "auto";
    }
  });
});

gpuTest("split: a tiny U-Net's forward and gradients are the same with 64 KiB bindings", async () => {
  const unet = new V.DiffusionModelUNet({
    spatialDims: 3,
    inChannels: 1,
    outChannels: 1,
    channels: [8, 8],
    attentionLevels: [false, false],
    numResBlocks: 1,
    normNumGroups: 8,
    seed: 5,
  });
  const x = V.randn([1, 1, 16, 16, 16], { seed: 1 });
  const run = async () => {
    const { y, g } = V.scope(() => {
      const y = unet.forward(x, [10]);
      const [g] = V.grad(V.mean(V.square(y)), [unet.parameters()[0]]);
      return { y, g };
    });
    const out = { y: await y.toArray(), g: await g.toArray() };
    disposeAll(y, g);
    return out;
  };
  try {
    const whole = await run();
    const split = await withLimit(64 * KiB, run);
    // Same kernels on the same data, except sub-convolutions summing input channels in blocks and the
    // norms' statistics per piece: f32 reassociation only.
    assertClose({ shape: [whole.y.length], data: Float64Array.from(split.y) }, {
      shape: [whole.y.length],
      data: Float64Array.from(whole.y),
    }, { rtol: 1e-4, atol: 1e-5, name: "forward" });
    assertClose({ shape: [whole.g.length], data: Float64Array.from(split.g) }, {
      shape: [whole.g.length],
      data: Float64Array.from(whole.g),
    }, { rtol: 1e-3, atol: 1e-5, name: "gradient of conv_in.weight" });
  } finally {
    x.dispose();
    unet.dispose();
  }
});
