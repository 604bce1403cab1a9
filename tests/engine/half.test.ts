/**
 * f16 storage (`--precision f16`): the WGSL rewrite that gives any kernel f16 bindings, the casts, reading
 * and writing f16 tensors, and every kernel family of the U-Net's forward with f16 inputs and outputs against
 * the float64 reference evaluated on the same (f16-rounded) inputs.
 *
 * Tolerances: f16 keeps 11 significant bits, so storing a result rounds it by at most 2^-11 relative
 * (≈ 4.9e-4); the kernels compute and accumulate in f32 (2^-24 per operation, negligible here). Kernels
 * that accumulate over several dispatches (the chunk convolution over input-channel chunks, the chunk
 * matmul over K) store partial sums in the output between dispatches, each rounded to f16: with P partial
 * stores the error stays below P·2^-11 of the largest partial sum, so the bound used is
 * rtol 2^-10 plus atol (P + 1)·2^-11·max|y|, with P ≤ 3 in these shapes.
 */

import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert";
import * as R from "../../engine/reference/mod.ts";
import * as V from "../../mod.ts";
import { halfStorage } from "../../kernels/half.ts";
import { conv3d, convSettings } from "../../engine/ops/conv.ts";
import { poolStats, resetPeak } from "../../engine/pool.ts";
import { runtimeSettings } from "../../engine/runtime.ts";
import { copyInto } from "../../engine/ops/map.ts";
import { DiffusionModelUNet } from "../../models/unet.ts";
import { timestepEmbedding } from "../../nn/embedding.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";

const HALF_ULP = 2 ** -11;

/** Reference inputs rounded to f16, uploaded as float16 tensors. */
function halfInputs(refs: R.RefTensor[]): { rounded: R.RefTensor[]; tensors: V.Tensor[] } {
  const rounded = refs.map(R.roundToF16);
  const tensors = rounded.map((r) => {
    const f = fromRef(r);
    const h = V.cast(f, "float16");
    f.dispose();
    return h;
  });
  return { rounded, tensors };
}

/** Runs `op` on f16 inputs in f16 precision and checks its f16 output against `ref` on the same values. */
async function checkHalf(
  name: string,
  op: (xs: V.Tensor[]) => V.Tensor,
  ref: (xs: R.RefTensor[]) => R.RefTensor,
  inputs: R.RefTensor[],
  partialStores = 0,
): Promise<void> {
  const { rounded, tensors } = halfInputs(inputs);
  const y = V.withPrecision("f16", () => op(tensors));
  try {
    assertEquals(y.dtype, "float16", `${name}: output dtype`);
    const expected = ref(rounded);
    const scale = expected.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    assertClose(await toRef(y), expected, {
      name: `${name} (f16)`,
      rtol: 2 * HALF_ULP,
      atol: (partialStores + 1) * HALF_ULP * scale,
    });
  } finally {
    disposeAll(y, tensors);
  }
}

Deno.test("halfStorage rewrites declarations, loads and stores of the chosen bindings only", () => {
  const kernel = {
    key: "t",
    family: "test:t",
    code: `
@group(0) @binding(0) var<uniform> P: vec4<u32>;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> Out: array<f32>;
fn main() {
  let v = A[B2[0]];
  Out[u32(B[1])] = dot(A[0], vec4<f32>(B[2])) + Out[3];
}`,
    bindings: ["read", "read", "write"] as const,
  };
  const half = halfStorage({ ...kernel, bindings: [...kernel.bindings] }, [1, 3]);
  assert(half.code.startsWith("enable f16;"));
  assert(half.key.endsWith("|f16:1,3"));
  assert(half.code.includes("A: array<vec4<f16>>"));
  assert(half.code.includes("B: array<f32>"), "binding 2 stays f32");
  assert(half.code.includes("Out: array<f16>"));
  assert(half.code.includes("let v = vec4<f32>(A[B2[0]]);"));
  assert(
    half.code.includes("Out[u32(B[1])] = f16(dot(vec4<f32>(A[0]), vec4<f32>(B[2])) + f32(Out[3]));"),
    half.code,
  );
  assertEquals(halfStorage(kernel as never, []), kernel);
});

Deno.test("halfStorage refuses what it cannot narrow: in-place updates and non-f32 bindings", () => {
  const code = `@group(0) @binding(1) var<storage, read_write> Acc: array<f32>;
@group(0) @binding(2) var<storage, read> T: array<u32>;
fn main() { Acc[0] += 1.0; }`;
  throws(
    () => halfStorage({ key: "k", family: "test:k", code, bindings: ["write", "read"] }, [1]),
    /in\ place/,
  );
  throws(
    () => halfStorage({ key: "k", family: "test:k", code, bindings: ["write", "read"] }, [2]),
    /not\ an\ f32/,
  );
});

Deno.test("f16Round: the binary16 grid, ties to even, subnormals and overflow", () => {
  assertEquals(R.f16Round(1 + 2 ** -11), 1); // tie between 1 and 1 + 2^-10: even
  assertEquals(R.f16Round(1 + 3 * 2 ** -11), 1 + 2 ** -9); // tie: even is 1 + 2·2^-10
  assertEquals(R.f16Round(1 + 2 ** -11 + 2 ** -20), 1 + 2 ** -10);
  assertEquals(R.f16Round(2 ** -25), 0); // half the smallest subnormal: tie to even 0
  assertEquals(R.f16Round(3 * 2 ** -25), 2 ** -23);
  assertEquals(R.f16Round(-65519), -65504);
  assertEquals(R.f16Round(65520), Infinity);
  assertEquals(R.f16Round(0.1), 0.0999755859375);
});

gpuTest(
  "cast: f32 → f16 rounds like binary16, f16 → f32 is exact, views and odd offsets read back",
  async () => {
    const values = [0.1, -1 / 3, 1 + 2 ** -11, 65519, 70000, -70000, 2 ** -20, 3 * 2 ** -25, 0, -2.5, 1e-8];
    const x = V.tensor(values, [values.length]);
    const h = V.cast(x, "float16");
    const back = V.cast(h, "float32");
    const tail = V.slice(h, [3], [values.length]); // odd element offset: a read not on a 4-byte boundary
    try {
      assertEquals(h.dtype, "float16");
      assertEquals(back.dtype, "float32");
      const expected = values.map((v) => R.f16Round(Math.fround(v)));
      assertEquals([...await h.toArray()], expected);
      assertEquals([...await back.toArray()], expected);
      assertEquals([...await tail.toArray()], expected.slice(3));
      assertEquals(h.storage().bytes, values.length * 2);
    } finally {
      disposeAll(x, h, back, tail);
    }
  },
);

gpuTest("cast is differentiable: the gradient comes back in the input's type", async () => {
  const x = V.tensor([1, 2, 3], [3], { requiresGrad: true });
  const dx = V.scope(() => {
    const loss = V.sum(V.mul(V.cast(V.cast(x, "float16"), "float32"), V.tensor([1, 2, 3], [3])));
    return V.grad(loss, [x])[0];
  });
  try {
    assertEquals(dx.dtype, "float32");
    assertEquals([...await dx.toArray()], [1, 2, 3]);
  } finally {
    disposeAll(x, dx);
  }
});

gpuTest("f16 element-wise maps (vec4 and strided) against the reference", async () => {
  const a = R.randomRef([2, 3, 8, 8], 1);
  const b = R.randomRef([3, 1, 8], 2);
  await checkHalf("add (broadcast, strided)", ([x, y]) => V.add(x, y), ([x, y]) => R.add(x, y), [a, b]);
  await checkHalf("add (vec4)", ([x, y]) => V.add(x, y), ([x, y]) => R.add(x, y), [a, a]);
  await checkHalf("silu", ([x]) => V.silu(x), ([x]) => R.silu(x), [a]);
  // A mixed-type op: an f32 input with an f16 one, written as f16.
  const f = fromRef(R.roundToF16(b));
  try {
    await checkHalf("mul (f16 · f32)", ([x]) => V.mul(x, f), ([x]) => R.mul(x, R.roundToF16(b)), [a]);
  } finally {
    f.dispose();
  }
});

gpuTest("f16 group norm (+SiLU, affine) against the reference; statistics stay f32", async () => {
  const x = R.randomRef([2, 8, 4, 4, 4], 3);
  const w = R.randomRef([8], 4);
  const b = R.randomRef([8], 5);
  await checkHalf(
    "groupNorm",
    ([t, tw, tb]) => V.groupNorm(t, 4, tw, tb),
    ([t, tw, tb]) => R.groupNorm(t, 4, tw, tb, 1e-5),
    [x, w, b],
  );
  await checkHalf(
    "groupNormSilu",
    ([t, tw, tb]) => V.groupNormSilu(t, 4, tw, tb),
    ([t, tw, tb]) => R.silu(R.groupNorm(t, 4, tw, tb, 1e-5)),
    [x, w, b],
  );
});

gpuTest("f16 conv3d on every forward path (chunk, direct, k1, strided) against the reference", async () => {
  const saved = { ...convSettings, chunk: { ...convSettings.chunk } };
  try {
    for (const path of ["chunk", "direct"] as const) {
      convSettings.path = path;
      convSettings.minChunkMacs = 0;
      convSettings.chunk = { channels: 4 }; // 12 input channels: 3 chunks, 2 partial sums stored in f16
      const x = R.randomRef([1, 12, 6, 6, 8], 6);
      const w = R.randomRef([8, 12, 3, 3, 3], 7);
      const bias = R.randomRef([8], 8);
      await checkHalf(
        `conv3d k3 (${path})`,
        ([t, tw, tb]) => conv3d(t, tw, { bias: tb, padding: 1 }),
        ([t, tw, tb]) => R.conv3d(t, tw, tb, { padding: [1, 1, 1] }),
        [x, w, bias],
        path === "chunk" ? 2 : 0,
      );
      await checkHalf(
        `conv3d k1 (${path})`,
        ([t, tw]) => conv3d(t, tw),
        ([t, tw]) => R.conv3d(t, tw),
        [x, R.randomRef([4, 12, 1, 1, 1], 9)],
        path === "chunk" ? 2 : 0,
      );
      await checkHalf(
        `conv3d k3 stride 2 (${path})`,
        ([t, tw]) => conv3d(t, tw, { padding: 1, stride: 2 }),
        ([t, tw]) => R.conv3d(t, tw, undefined, { padding: [1, 1, 1], stride: [2, 2, 2] }),
        [x, R.randomRef([8, 12, 3, 3, 3], 10)],
        path === "chunk" ? 2 : 0,
      );
    }
  } finally {
    Object.assign(convSettings, saved);
  }
});

gpuTest("f16 matmul, attention and interpolation against the reference", async () => {
  await checkHalf(
    "matmul",
    ([a, b]) => V.matmul(a, b),
    ([a, b]) => R.matmul(a, b),
    [R.randomRef([2, 24, 40], 11), R.randomRef([2, 40, 20], 12)],
    3,
  );
  await checkHalf(
    "attention",
    ([q, k, v]) => V.attention(q, k, v),
    ([q, k, v]) => R.attention(q, k, v),
    [R.randomRef([1, 2, 20, 16], 13), R.randomRef([1, 2, 20, 16], 14), R.randomRef([1, 2, 20, 16], 15)],
  );
  await checkHalf(
    "interpolate nearest ×2",
    ([x]) => V.interpolate(x, { scaleFactor: 2, mode: "nearest" }),
    ([x]) => R.interpolate(x, { scaleFactor: 2, mode: "nearest" }),
    [R.randomRef([1, 3, 4, 4, 4], 16)],
  );
});

gpuTest(
  "f16 tensors larger than a (forced small) binding: the ops split them into windows of 2-byte elements",
  async () => {
    // The shapes and limits of split.test.ts: the ops split by element counts, so the same pieces arise, and
    // each window's byte offsets and element shifts are computed for 2-byte elements.
    const KiB = 1024;
    const saved = { ...convSettings };
    try {
      runtimeSettings.maxBindingBytes = 4 * KiB;
      await checkHalf(
        "add (broadcast, windows)",
        ([x, y]) => V.add(x, y),
        ([x, y]) => R.add(x, y),
        [R.randomRef([3, 5, 40, 40], 1), R.randomRef([5, 1, 40], 2)],
      );
      await checkHalf(
        "interpolate nearest ×2 (blocks of planes)",
        ([x]) => V.interpolate(x, { scaleFactor: 2, mode: "nearest" }),
        ([x]) => R.interpolate(x, { scaleFactor: 2, mode: "nearest" }),
        [R.randomRef([2, 3, 4, 4, 4], 31)],
      );
      runtimeSettings.maxBindingBytes = 2 * KiB;
      await checkHalf(
        "groupNormSilu (blocks of groups)",
        ([x, w, b]) => V.groupNormSilu(x, 2, w, b),
        ([x, w, b]) => R.silu(R.groupNorm(x, 2, w, b, 1e-5)),
        [R.randomRef([2, 4, 4, 6, 6], 21), R.randomRef([4], 22), R.randomRef([4], 23)],
      );
      runtimeSettings.maxBindingBytes = 64 * KiB;
      for (const path of ["direct", "chunk"] as const) {
        convSettings.path = path;
        await checkHalf(
          `conv3d (channel blocks, ${path})`,
          ([x, w, b]) => conv3d(x, w, { bias: b, padding: 1 }),
          ([x, w, b]) => R.conv3d(x, w, b, { padding: [1, 1, 1] }),
          [R.randomRef([2, 6, 6, 8, 16], 40), R.randomRef([5, 6, 3, 3, 3], 41), R.randomRef([5], 42)],
          3,
        );
      }
    } finally {
      runtimeSettings.maxBindingBytes = 0;
      Object.assign(convSettings, saved);
    }
  },
);

gpuTest("precision: parsing, and the refusal on an adapter without shader-f16 names the problem", () => {
  assertEquals(V.parsePrecision("f16"), "f16");
  throws(() => V.parsePrecision("bf16"), /precision\ must\ be\ one\ of\ f32,\ f16/);
  const noF16 = { ...V.deviceInfo(), adapter: "test adapter", features: ["timestamp-query"] };
  assertEquals(V.precisionProblem("f32", noF16), null);
  const problem = V.precisionProblem("f16", noF16)!;
  assert(problem.includes(`"shader-f16"`) && problem.includes("test adapter"), problem);
  throws(() => V.checkPrecision("f16", noF16), /shader\-f16/);
});

gpuTest(
  "timestep embeddings of a timestep tensor stay f32 inside an f16 forward (arguments reach 1000 rad)",
  async () => {
    const t = V.tensor([999, 17], [2]);
    const f32 = timestepEmbedding(t, 32);
    const f16 = V.withPrecision("f16", () => timestepEmbedding(t, 32));
    try {
      assertEquals(f16.dtype, "float32");
      assertEquals([...await f16.toArray()], [...await f32.toArray()]);
    } finally {
      disposeAll(t, f32, f16);
    }
  },
);

/** A tiny default-architecture U-Net (attention at the last level) with every parameter non-zero. */
async function tinyUNet(): Promise<DiffusionModelUNet> {
  const net = new DiffusionModelUNet({
    spatialDims: 3,
    inChannels: 1,
    outChannels: 1,
    channels: [8, 16],
    attentionLevels: [false, true],
    numHeadChannels: 8,
    numResBlocks: 1,
    normNumGroups: 4,
    seed: 1,
  }).eval();
  // MONAI zero-initialises output convolutions; random values make every layer count.
  let seed = 100;
  for (const t of net.parameters()) {
    if ((await t.toArray()).every((v) => v === 0)) {
      V.noGrad(() => V.scope(() => copyInto(t, V.mul(V.randn(t.shape, { seed: seed++ }), 0.1))));
    }
  }
  return net;
}

gpuTest("U-Net forward in f16 stays within 1% of f32 and needs half the memory", async () => {
  const net = await tinyUNet();
  const x = V.randn([1, 1, 8, 8, 8], { seed: 2 });
  const run = async () => {
    resetPeak();
    const live = poolStats().liveBytes;
    const y = V.noGrad(() => net.forward(x, 300));
    const peak = poolStats().peakBytes - live;
    try {
      assertEquals(y.dtype, "float32");
      return { values: await y.toArray(), peak };
    } finally {
      y.dispose();
    }
  };
  try {
    const f32 = await run();
    const paramBytes = net.parameters().reduce((n, t) => n + t.storage().bytes, 0);
    net.toPrecision("f16");
    assertEquals(net.precision, "f16");
    assert(net.parameters().every((t) => t.dtype === "float16"));
    assertEquals(net.parameters().reduce((n, t) => n + t.storage().bytes, 0), paramBytes / 2);
    const f16 = await run();
    let num = 0;
    let den = 0;
    for (let i = 0; i < f32.values.length; i++) {
      num += (f16.values[i] - f32.values[i]) ** 2;
      den += f32.values[i] ** 2;
    }
    const rel = Math.sqrt(num / den);
    // A dozen layers each rounding to 2^-11: ~1e-3 expected; 1e-2 would mean an f16 path lost precision.
    assert(rel < 1e-2, `relative L2 difference f16 vs f32: ${rel}`);
    assert(rel > 0, "f16 gave bit-identical results: the f16 path did not run");
    // Activations in f16: the forward's peak (above the live parameters and input) halves, up to the pool's
    // bucket rounding.
    assert(f16.peak <= 0.6 * f32.peak, `peak f16 ${f16.peak} B vs f32 ${f32.peak} B`);
    throws(() => new V.AdamW(net.parameters()), /float16/);
  } finally {
    x.dispose();
    net.dispose();
  }
});
