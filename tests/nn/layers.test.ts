/**
 * The U-Net's layers against float64 compositions of the reference ops: each module is loaded with random
 * weights through `loadStateDict` (so the parameter names are exercised too) and its forward compared with
 * the same computation written with `engine/reference`.
 */

import { deepStrictEqual, throws } from "node:assert";
import * as R from "../../engine/reference/mod.ts";
import { randomRef, type RefTensor } from "../../engine/reference/mod.ts";
import { grad, memory, mul, noGrad, sum, type Tensor, tensor } from "../../mod.ts";
import { ConvNd, Convolution, type Layer } from "../../nn/conv.ts";
import { Module } from "../../nn/module.ts";
import { GroupNorm, LayerNorm } from "../../nn/norm.ts";
import { Embedding, timestepEmbedding } from "../../nn/embedding.ts";
import {
  CrossAttention,
  GegluMlp,
  SelfAttention,
  SpatialAttentionBlock,
  SpatialTransformer,
} from "../../nn/attention.ts";
import { Downsample, ResnetBlock, Upsample } from "../../nn/blocks.ts";
import { assertClose } from "../helpers/check.ts";
import { numericGrad } from "../helpers/gradcheck.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";

// --- helpers ------------------------------------------------------------------------------------------

/** Parameters of a module as float64 reference tensors (values rounded to f32, as loaded). */
type Params = Map<string, RefTensor>;

/**
 * Loads random values into every parameter of `m` (norm scales around 1) and returns them. The module's
 * own initialisation is irrelevant: the test sees exactly the values it loaded.
 */
function loadRandom(m: Module, seed: number): Params {
  const params: Params = new Map();
  const state = new Map<string, Tensor>();
  m.namedParameters().forEach(([name, t], i) => {
    const isNormScale = /(^|\.)norm\d?\.weight$/.test(name);
    const [lo, hi] = isNormScale ? [0.5, 1.5] : [-0.6, 0.6];
    const r = R.roundToF32(randomRef(t.shape as number[], seed * 1000 + i, lo, hi));
    params.set(name, r);
    state.set(name, fromRef(r));
  });
  m.loadStateDict(state);
  for (const t of state.values()) t.dispose();
  return params;
}

function p(params: Params, name: string): RefTensor {
  const t = params.get(name);
  if (!t) throw new Error(`test: no parameter ${name}`);
  return t;
}

function refLinear(x: RefTensor, params: Params, prefix: string): RefTensor {
  const y = R.matmul(x, R.transpose(p(params, `${prefix}.weight`)));
  return params.has(`${prefix}.bias`) ? R.add(y, p(params, `${prefix}.bias`)) : y;
}

function refConv(x: RefTensor, params: Params, prefix: string, stride = 1, padding = 0): RefTensor {
  const w = p(params, `${prefix}.weight`);
  const b = params.get(`${prefix}.bias`);
  const y = x.shape.length === 5
    ? R.conv3d(x, w, b, { stride, padding })
    : R.conv2d(x, w, b, { stride, padding });
  return y;
}

function refGroupNorm(x: RefTensor, params: Params, prefix: string, groups: number, eps: number): RefTensor {
  return R.groupNorm(x, groups, p(params, `${prefix}.weight`), p(params, `${prefix}.bias`), eps);
}

/** [B, N, H·d] → [B, H, N, d]. */
function refSplitHeads(x: RefTensor, heads: number): RefTensor {
  const [b, n, c] = x.shape;
  return R.permute(R.reshape(x, [b, n, heads, c / heads]), [0, 2, 1, 3]);
}

function refMergeHeads(x: RefTensor): RefTensor {
  const [b, h, n, d] = x.shape;
  return R.reshape(R.permute(x, [0, 2, 1, 3]), [b, n, h * d]);
}

function refAttention(
  x: RefTensor,
  ctx: RefTensor,
  params: Params,
  prefix: string,
  heads: number,
  opts: { combined?: boolean; fc?: boolean } = {},
): RefTensor {
  let q: RefTensor, k: RefTensor, v: RefTensor;
  if (opts.combined) {
    const qkv = refLinear(x, params, `${prefix}.qkv`);
    const inner = qkv.shape[2] / 3;
    [q, k, v] = [0, 1, 2].map((i) =>
      R.slice(qkv, [0, 0, i * inner], [qkv.shape[0], qkv.shape[1], (i + 1) * inner])
    );
  } else {
    q = refLinear(x, params, `${prefix}.to_q`);
    k = refLinear(ctx, params, `${prefix}.to_k`);
    v = refLinear(ctx, params, `${prefix}.to_v`);
  }
  const d = q.shape[2] / heads;
  const o = refMergeHeads(
    R.attention(refSplitHeads(q, heads), refSplitHeads(k, heads), refSplitHeads(v, heads), d ** -0.5),
  );
  return opts.fc === false ? o : refLinear(o, params, `${prefix}.out_proj`);
}

function refGeglu(x: RefTensor, params: Params, prefix: string): RefTensor {
  const h = refLinear(x, params, `${prefix}.linear1`);
  const [b, n, c2] = h.shape;
  const value = R.slice(h, [0, 0, 0], [b, n, c2 / 2]);
  const gate = R.slice(h, [0, 0, c2 / 2], [b, n, c2]);
  return refLinear(R.mul(value, R.gelu(gate)), params, `${prefix}.linear2`);
}

/** Tokens [B, S, C] of a feature map [B, C, ...spatial]. */
function refTokens(x: RefTensor): RefTensor {
  const [b, c] = x.shape;
  return R.transpose(R.reshape(x, [b, c, -1]), 1, 2);
}

function refGrid(t: RefTensor, shape: readonly number[]): RefTensor {
  return R.reshape(R.transpose(t, 1, 2), shape);
}

function rms(x: RefTensor): number {
  let s = 0;
  for (const v of x.data) s += v * v;
  return Math.sqrt(s / x.data.length);
}

/**
 * Compares a module's output with the float64 reference. Tolerance: these layers chain a handful of f32 ops
 * whose sums have at most a few hundred terms, so the error is ~1e-6 of the output scale; 2e-5 of the
 * reference's RMS (absolute) plus 2e-5 relative leaves room for lavapipe's exp/erf polynomials.
 */
async function expectClose(name: string, y: Tensor, ref: RefTensor, tol = 2e-5): Promise<void> {
  assertClose(await toRef(y), ref, { name, rtol: tol, atol: tol * rms(ref) });
}

// --- convolutions --------------------------------------------------------------------------------------

gpuTest(
  "ConvNd: 2-D and 3-D, kernels 1 and 3, strides 1 and 2, odd sizes, batch 2, vs reference",
  async () => {
    const cases = [
      { dims: 3 as const, cin: 3, cout: 5, k: 3, stride: 1, padding: 1, size: [5, 4, 6] },
      { dims: 3 as const, cin: 4, cout: 2, k: 3, stride: 2, padding: 1, size: [7, 5, 6] },
      { dims: 3 as const, cin: 6, cout: 3, k: 1, stride: 1, padding: 0, size: [3, 5, 2] },
      { dims: 2 as const, cin: 3, cout: 4, k: 3, stride: 1, padding: 1, size: [7, 9] },
      { dims: 2 as const, cin: 5, cout: 3, k: 3, stride: 2, padding: 1, size: [9, 6] },
    ];
    for (const [i, c] of cases.entries()) {
      const conv = new ConvNd(c.dims, c.cin, c.cout, {
        kernelSize: c.k,
        stride: c.stride,
        padding: c.padding,
      });
      const params = loadRandom(conv, 10 + i);
      const xr = randomRef([2, c.cin, ...c.size], 100 + i);
      const x = fromRef(xr);
      const y = conv.forward(x);
      await expectClose(`ConvNd case ${i}`, y, refConvRoot(xr, params, c.stride, c.padding));
      disposeAll(x, y);
      conv.dispose();
    }
  },
);

/** refConv for a module whose parameters are at the root ("weight", "bias"). */
function refConvRoot(x: RefTensor, params: Params, stride: number, padding: number): RefTensor {
  const w = p(params, "weight");
  const b = params.get("bias");
  return x.shape.length === 5
    ? R.conv3d(x, w, b, { stride, padding })
    : R.conv2d(x, w, b, { stride, padding });
}

gpuTest(
  "Convolution: MONAI's wrapper names its layer conv; replaceChild swaps the layer that runs",
  async () => {
    const conv = new Convolution(3, 2, 3, { kernelSize: 3, padding: 1, seed: 4 });
    deepStrictEqual(conv.namedParameters().map(([n, t]) => [n, [...t.shape]]), [
      ["conv.weight", [3, 2, 3, 3, 3]],
      ["conv.bias", [3]],
    ]);
    const params = loadRandom(conv, 3);
    const xr = randomRef([1, 2, 4, 3, 5], 7);
    const x = fromRef(xr);
    const y = conv.forward(x);
    await expectClose("Convolution", y, refConv(xr, params, "conv", 1, 1));
    // An adapter-like layer standing in for the convolution: its output doubles the original's.
    class Doubled extends Module implements Layer {
      constructor(readonly inner: Layer) {
        super();
        this.child("inner", inner);
      }
      forward(t: Tensor): Tensor {
        const z = this.inner.forward(t);
        const out = mul(z, 2);
        z.dispose();
        return out;
      }
    }
    conv.replaceChild("conv", new Doubled(conv.conv));
    const y2 = conv.forward(x);
    await expectClose("Convolution after replaceChild", y2, R.mul(refConv(xr, params, "conv", 1, 1), 2));
    disposeAll(x, y, y2);
    conv.dispose();
  },
);

gpuTest("ConvNd: zeroInit starts at zero; bad sizes and inputs give clear errors", async () => {
  const conv = new ConvNd(2, 3, 4, { zeroInit: true });
  deepStrictEqual([...await conv.weight.toArray()].every((v) => v === 0), true);
  const x = tensor(new Float32Array(2 * 5 * 4 * 4), [2, 5, 4, 4]);
  throws(() => conv.forward(x), /Conv2d\(3 → 4\): input \[2, 5, 4, 4\] must be \[N, C, H, W\] with C = 3/);
  throws(() => new ConvNd(4 as 3, 1, 1), /spatialDims must be 2 or 3/);
  throws(() => new ConvNd(3, 0, 1), /inChannels must be an integer ≥ 1/);
  disposeAll(x);
  conv.dispose();
});

// --- normalisation ----------------------------------------------------------------------------------------

gpuTest("GroupNorm and LayerNorm modules (and fused GN → SiLU) vs reference", async () => {
  const gn = new GroupNorm(3, 6, { eps: 1e-6 });
  deepStrictEqual(gn.namedParameters().map(([n]) => n), ["weight", "bias"]);
  const gp = new Map([["norm.weight", R.roundToF32(randomRef([6], 1, 0.5, 1.5))], [
    "norm.bias",
    R.roundToF32(randomRef([6], 2)),
  ]]);
  const gnState = new Map([["weight", fromRef(p(gp, "norm.weight"))], ["bias", fromRef(p(gp, "norm.bias"))]]);
  gn.loadStateDict(gnState);
  disposeAll([...gnState.values()]);
  const xr = randomRef([2, 6, 3, 5, 2], 3, -2, 3);
  const x = fromRef(xr);
  const y = gn.forward(x);
  const ys = gn.forwardSilu(x);
  const ref = refGroupNorm(xr, gp, "norm", 3, 1e-6);
  await expectClose("GroupNorm", y, ref);
  await expectClose("GroupNorm + SiLU", ys, R.silu(ref));
  throws(() => new GroupNorm(4, 6), /numChannels \(6\) must be a positive multiple of numGroups \(4\)/);
  const bad = tensor(new Float32Array(2 * 4 * 3), [2, 4, 3]);
  throws(() => gn.forward(bad), /GroupNorm\(3, 6\): input \[2, 4, 3\] must be \[N, 6, \.\.\.\]/);

  const ln = new LayerNorm(5);
  const lp = loadRandom(ln, 9);
  const tr = randomRef([2, 3, 5], 4, -1, 2);
  const t = fromRef(tr);
  const lt = ln.forward(t);
  await expectClose("LayerNorm", lt, R.layerNorm(tr, [5], p(lp, "weight"), p(lp, "bias"), 1e-5));
  disposeAll(x, y, ys, bad, t, lt);
  gn.dispose();
  ln.dispose();
});

// --- embeddings ------------------------------------------------------------------------------------------

/** MONAI's get_timestep_embedding in float64 from the float32 arguments PyTorch forms. */
function refTimestepEmbedding(ts: number[], dim: number): RefTensor {
  const half = Math.floor(dim / 2);
  const out = R.refZeros([ts.length, dim]);
  ts.forEach((t, n) => {
    for (let i = 0; i < half; i++) {
      const f = Math.fround(Math.exp(Math.fround(Math.fround(Math.fround(-Math.log(10000)) * i) / half)));
      const arg = Math.fround(Math.fround(t) * f);
      out.data[n * dim + i] = Math.cos(arg);
      out.data[n * dim + half + i] = Math.sin(arg);
    }
  });
  return out;
}

gpuTest("timestepEmbedding: numbers and tensors, even and odd sizes, vs MONAI's formula", async () => {
  const ts = [0, 1, 17, 500, 999, 37.5];
  for (const dim of [4, 7, 32, 128]) {
    const ref = refTimestepEmbedding(ts, dim);
    const fromNumbers = timestepEmbedding(ts, dim);
    // CPU path: cos/sin in float64 rounded once to f32.
    assertClose(await toRef(fromNumbers), ref, { name: `numbers dim ${dim}`, rtol: 0, atol: 6e-8 });
    // GPU path: the argument (up to ~1000 rad) is reduced to [−π, π] in f32 (error ≤ a few ulp of 2π·k ≈
    // 1e-6) before WGSL's sin/cos; 4e-6 absolute on values in [−1, 1].
    const t = tensor(Float32Array.from(ts), [ts.length]);
    const fromTensor = timestepEmbedding(t, dim);
    assertClose(await toRef(fromTensor), ref, { name: `tensor dim ${dim}`, rtol: 0, atol: 4e-6 });
    disposeAll(fromNumbers, t, fromTensor);
  }
  const one = timestepEmbedding(250, 8);
  deepStrictEqual(one.shape, [1, 8]);
  const bad = tensor(new Float32Array(4), [2, 2]);
  throws(() => timestepEmbedding(bad, 8), /timesteps must be a 1-D tensor \[N\], got \[2, 2\]/);
  throws(() => timestepEmbedding([1, NaN], 8), /timesteps must be finite numbers/);
  disposeAll(one, bad);
});

gpuTest(
  "Embedding: rows by number or tensor index; the table's gradient counts each row's uses",
  async () => {
    const emb = new Embedding(5, 3, { seed: 2 });
    const table = await toRef(emb.weight);
    const labels = [4, 0, 4, 2];
    const a = emb.forward(labels);
    const idx = tensor(Float32Array.from(labels), [4]);
    const b = emb.forward(idx);
    const rows = R.concat(labels.map((l) => R.slice(table, [l], [l + 1])), 0);
    assertClose(await toRef(a), rows, { name: "Embedding numbers", rtol: 0, atol: 0 });
    assertClose(await toRef(b), rows, { name: "Embedding tensor", rtol: 0, atol: 0 });
    const total = sum(b);
    const [g] = grad(total, [emb.weight]);
    const counts = [1, 0, 1, 0, 2];
    assertClose(await g.toArray(), counts.flatMap((c) => [c, c, c]), {
      name: "Embedding grad",
      rtol: 0,
      atol: 0,
    });
    throws(() => emb.forward([5]), /indices \[5\] must be integers in \[0, 5\)/);
    disposeAll(a, idx, b, total, g);
    emb.dispose();
  },
);

// --- attention ---------------------------------------------------------------------------------------------

gpuTest("SelfAttention: separate and combined qkv, with and without out_proj, several heads", async () => {
  const variants = [
    { combined: false, fc: true, heads: 2, bias: true },
    { combined: true, fc: true, heads: 3, bias: false },
    { combined: true, fc: false, heads: 1, bias: true },
    { combined: false, fc: false, heads: 6, bias: false },
  ];
  for (const [i, v] of variants.entries()) {
    const att = new SelfAttention({
      hiddenSize: 6,
      numHeads: v.heads,
      qkvBias: v.bias,
      includeFc: v.fc,
      useCombinedLinear: v.combined,
    });
    const names = att.namedParameters().map(([n]) => n);
    deepStrictEqual(names.includes("qkv.weight"), v.combined);
    deepStrictEqual(names.includes("to_q.weight"), !v.combined);
    deepStrictEqual(names.includes("out_proj.weight"), v.fc);
    deepStrictEqual(names.includes(v.combined ? "qkv.bias" : "to_q.bias"), v.bias);
    const params = loadRandom(att, 20 + i);
    const xr = randomRef([2, 7, 6], 30 + i);
    const x = fromRef(xr);
    const y = att.forward(x);
    await expectClose(`SelfAttention ${JSON.stringify(v)}`, y, refRootAttention(xr, xr, params, v.heads, v));
    disposeAll(x, y);
    att.dispose();
  }
});

/** refAttention for a module whose layers are at the root. */
function refRootAttention(
  x: RefTensor,
  ctx: RefTensor,
  params: Params,
  heads: number,
  opts: { combined?: boolean; fc?: boolean } = {},
): RefTensor {
  const prefixed: Params = new Map([...params].map(([k, v]) => [`a.${k}`, v]));
  return refAttention(x, ctx, prefixed, "a", heads, opts);
}

gpuTest(
  "CrossAttention: context tokens, a shared batch-1 context, and self-attention without context",
  async () => {
    const att = new CrossAttention({
      hiddenSize: 8,
      numHeads: 2,
      hiddenInputSize: 6,
      contextInputSize: 5,
      dimHead: 4,
    });
    deepStrictEqual(att.namedParameters().map(([n, t]) => [n, [...t.shape]]), [
      ["out_proj.weight", [6, 8]],
      ["out_proj.bias", [6]],
      ["to_q.weight", [8, 6]],
      ["to_k.weight", [8, 5]],
      ["to_v.weight", [8, 5]],
    ]);
    const params = loadRandom(att, 40);
    const xr = randomRef([2, 9, 6], 41);
    const cr = randomRef([2, 3, 5], 42);
    const x = fromRef(xr);
    const c = fromRef(cr);
    const y = att.forward(x, c);
    await expectClose("CrossAttention", y, refRootAttention(xr, cr, params, 2));
    const c1r = randomRef([1, 4, 5], 43);
    const c1 = fromRef(c1r);
    const y1 = att.forward(x, c1);
    await expectClose(
      "CrossAttention shared context",
      y1,
      refRootAttention(xr, R.expand(c1r, [2, 4, 5]), params, 2),
    );
    throws(() => att.forward(x), /a context \[B, T, 5\] is required/);
    const selfAtt = new CrossAttention({ hiddenSize: 6, numHeads: 3 });
    const sp = loadRandom(selfAtt, 44);
    const ys = selfAtt.forward(x);
    await expectClose("CrossAttention without context", ys, refRootAttention(xr, xr, sp, 3));
    disposeAll(x, c, y, c1, y1, ys);
    att.dispose();
    selfAtt.dispose();
  },
);

gpuTest("GegluMlp: linear1 to 2·hidden, value·gelu(gate), linear2", async () => {
  const mlp = new GegluMlp(4, 16);
  deepStrictEqual(mlp.namedParameters().map(([n, t]) => [n, [...t.shape]]), [
    ["linear1.weight", [32, 4]],
    ["linear1.bias", [32]],
    ["linear2.weight", [4, 16]],
    ["linear2.bias", [4]],
  ]);
  const params = loadRandom(mlp, 50);
  const xr = randomRef([2, 5, 4], 51, -2, 2);
  const x = fromRef(xr);
  const y = mlp.forward(x);
  const prefixed: Params = new Map([...params].map(([k, v]) => [`ff.${k}`, v]));
  await expectClose("GegluMlp", y, refGeglu(xr, prefixed, "ff"));
  disposeAll(x, y);
  mlp.dispose();
});

gpuTest("SpatialAttentionBlock (2-D and 3-D) vs reference", async () => {
  for (const [dims, size] of [[3, [3, 2, 4]], [2, [5, 3]]] as const) {
    const block = new SpatialAttentionBlock(dims, 8, { numHeadChannels: 4, normNumGroups: 4 });
    const params = loadRandom(block, 60 + dims);
    const xr = randomRef([2, 8, ...size], 61 + dims);
    const x = fromRef(xr);
    const y = block.forward(x);
    const h = refGroupNorm(xr, params, "norm", 4, 1e-6);
    const a = refAttention(refTokens(h), refTokens(h), params, "attn", 2);
    await expectClose(`SpatialAttentionBlock ${dims}D`, y, R.add(refGrid(a, xr.shape), xr));
    disposeAll(x, y);
    block.dispose();
  }
  throws(
    () => new SpatialAttentionBlock(2, 8, { numHeadChannels: 3 }),
    /8 must be divisible by numHeadChannels 3/,
  );
});

gpuTest("SpatialTransformer: two transformer blocks with cross-attention (3-D) vs reference", async () => {
  const st = new SpatialTransformer(3, 6, 2, 3, { numLayers: 2, normNumGroups: 3, crossAttentionDim: 4 });
  const params = loadRandom(st, 70);
  const xr = randomRef([2, 6, 2, 3, 2], 71);
  const cr = randomRef([2, 3, 4], 72);
  const x = fromRef(xr);
  const c = fromRef(cr);
  const y = st.forward(x, c);
  let t = refTokens(refConv(refGroupNorm(xr, params, "norm", 3, 1e-6), params, "proj_in.conv"));
  for (const l of [0, 1]) {
    const pre = `transformer_blocks.${l}`;
    const ln = (v: RefTensor, n: string) =>
      R.layerNorm(v, [6], p(params, `${pre}.${n}.weight`), p(params, `${pre}.${n}.bias`), 1e-5);
    const n1 = ln(t, "norm1");
    t = R.add(refAttention(n1, n1, params, `${pre}.attn1`, 2), t);
    t = R.add(refAttention(ln(t, "norm2"), cr, params, `${pre}.attn2`, 2), t);
    t = R.add(refGeglu(ln(t, "norm3"), params, `${pre}.ff`), t);
  }
  const ref = R.add(refConv(refGrid(t, [2, 6, 2, 3, 2]), params, "proj_out.conv"), xr);
  await expectClose("SpatialTransformer", y, ref);
  disposeAll(x, c, y);
  st.dispose();
});

gpuTest("attention layers: dropout is refused in training mode and ignored in eval mode", () => {
  const att = new SelfAttention({ hiddenSize: 4, numHeads: 2, dropout: 0.1 });
  const x = tensor(new Float32Array(2 * 3 * 4).fill(0.5), [2, 3, 4]);
  throws(() => att.forward(x), /dropout 0\.1 in training mode is not supported/);
  const y = att.eval().forward(x);
  deepStrictEqual(y.shape, [2, 3, 4]);
  disposeAll(x, y);
  att.dispose();
});

// --- ResnetBlock, Downsample, Upsample --------------------------------------------------------------------

function refResnet(
  xr: RefTensor,
  er: RefTensor,
  params: Params,
  groups: number,
  mode: "none" | "up" | "down",
): RefTensor {
  const dims = xr.shape.length - 2;
  const resample = (v: RefTensor) =>
    mode === "up"
      ? R.interpolate(v, { scaleFactor: 2, mode: "nearest" })
      : mode === "down"
      ? (dims === 3 ? R.avgPool3d(v, 2, 2) : R.avgPool2d(v, 2, 2))
      : v;
  let h = resample(R.silu(refGroupNorm(xr, params, "norm1", groups, 1e-6)));
  h = refConv(h, params, "conv1.conv", 1, 1);
  const temb = refLinear(R.silu(er), params, "time_emb_proj");
  h = R.add(h, R.reshape(temb, [...temb.shape, ...new Array(dims).fill(1)]));
  h = refConv(R.silu(refGroupNorm(h, params, "norm2", groups, 1e-6)), params, "conv2.conv", 1, 1);
  const skip = params.has("skip_connection.conv.weight")
    ? refConv(resample(xr), params, "skip_connection.conv")
    : resample(xr);
  return R.add(skip, h);
}

gpuTest(
  "ResnetBlock: channel change (1×1 skip), up and down variants, 2-D and 3-D, vs reference",
  async () => {
    const cases = [
      { dims: 3 as const, cin: 4, cout: 8, size: [4, 2, 6], mode: "none" as const },
      { dims: 3 as const, cin: 4, cout: 4, size: [2, 4, 2], mode: "up" as const },
      { dims: 2 as const, cin: 6, cout: 6, size: [6, 4], mode: "down" as const },
      { dims: 2 as const, cin: 4, cout: 2, size: [5, 3], mode: "none" as const },
    ];
    for (const [i, c] of cases.entries()) {
      const block = new ResnetBlock(c.dims, c.cin, 12, {
        outChannels: c.cout,
        normNumGroups: 2,
        up: c.mode === "up",
        down: c.mode === "down",
      });
      const names = block.namedParameters().map(([n]) => n);
      deepStrictEqual(names.includes("skip_connection.conv.weight"), c.cin !== c.cout);
      const params = loadRandom(block, 80 + i);
      const xr = randomRef([2, c.cin, ...c.size], 90 + i);
      const er = randomRef([2, 12], 95 + i);
      const x = fromRef(xr);
      const e = fromRef(er);
      const y = block.forward(x, e);
      await expectClose(`ResnetBlock ${JSON.stringify(c)}`, y, refResnet(xr, er, params, 2, c.mode));
      disposeAll(x, e, y);
      block.dispose();
    }
  },
);

gpuTest(
  "Downsample (strided conv or average pool) and Upsample (nearest + postconv) vs reference",
  async () => {
    const down = new Downsample(3, 4, true);
    deepStrictEqual(down.namedParameters().map(([n]) => n), ["op.conv.weight", "op.conv.bias"]);
    const dp = loadRandom(down, 100);
    const xr = randomRef([2, 4, 4, 6, 2], 101);
    const x = fromRef(xr);
    const y = down.forward(x);
    await expectClose("Downsample conv", y, refConv(xr, dp, "op.conv", 2, 1));
    const pool = new Downsample(3, 4, false);
    const yp = pool.forward(x);
    await expectClose("Downsample pool", yp, R.avgPool3d(xr, 2, 2));
    throws(() => new Downsample(2, 4, false, { outChannels: 8 }), /outChannels 8 must equal numChannels 4/);
    const up = new Upsample(2, 3);
    deepStrictEqual(up.namedParameters().map(([n]) => n), ["postconv.conv.weight", "postconv.conv.bias"]);
    const upParams = loadRandom(up, 102);
    const ur = randomRef([2, 3, 3, 5], 103);
    const u = fromRef(ur);
    const yu = up.forward(u);
    await expectClose(
      "Upsample",
      yu,
      refConv(R.interpolate(ur, { scaleFactor: 2, mode: "nearest" }), upParams, "postconv.conv", 1, 1),
    );
    disposeAll(x, y, yp, u, yu);
    down.dispose();
    up.dispose();
  },
);

gpuTest("layers release their intermediates: live tensors are unchanged after a forward under noGrad", () => {
  const st = new SpatialTransformer(2, 4, 2, 2, { normNumGroups: 2, crossAttentionDim: 3 });
  const block = new ResnetBlock(2, 4, 8, { outChannels: 6, normNumGroups: 2, down: true });
  const x = tensor(new Float32Array(2 * 4 * 4 * 4).map((_, i) => Math.sin(i)), [2, 4, 4, 4]);
  const c = tensor(new Float32Array(2 * 2 * 3).fill(0.3), [2, 2, 3]);
  const e = tensor(new Float32Array(2 * 8).fill(0.1), [2, 8]);
  noGrad(() => {
    const before = memory().liveTensors;
    const a = st.forward(x, c);
    const b = block.forward(a, e);
    deepStrictEqual(b.shape, [2, 6, 2, 2]);
    deepStrictEqual(memory().liveTensors, before + 2); // only the two outputs
    disposeAll(a, b);
  });
  disposeAll(x, c, e);
  st.dispose();
  block.dispose();
});

// --- gradients through whole layers -------------------------------------------------------------------

/**
 * Checks the GPU gradients of Σ y ⊙ gradOut (random gradOut) with respect to `wrt` against central
 * differences of the float64 reference `ref(refInputs)`, where `refInputs[k]` holds the values of `wrt[k]`.
 * The ops' own backward passes are checked in tests/engine; this checks that the layers wire them together
 * (views, broadcasts, residual adds) correctly. Tolerance 1e-4 of the gradient's RMS (absolute) plus 1e-4
 * relative: f32 backward through GroupNorm and attention (sums of a few hundred terms) against a float64
 * difference accurate to ~1e-9.
 */
async function checkLayerGrads(
  name: string,
  y: Tensor,
  wrt: Tensor[],
  ref: (rs: RefTensor[]) => RefTensor,
  refInputs: RefTensor[],
): Promise<void> {
  const gOut = randomRef([...y.shape], 999);
  const g = fromRef(gOut);
  const product = mul(y, g);
  const weighted = sum(product);
  const grads = grad(weighted, wrt);
  for (let k = 0; k < wrt.length; k++) {
    const expected = numericGrad(ref, refInputs, k, gOut);
    assertClose(await toRef(grads[k]), expected, {
      name: `${name}: gradient ${k}`,
      rtol: 1e-4,
      atol: 1e-4 * rms(expected),
    });
  }
  disposeAll(g, product, weighted, grads);
}

gpuTest(
  "ResnetBlock gradients: input, embedding, conv1 and time_emb_proj weights vs finite differences",
  async () => {
    const block = new ResnetBlock(2, 4, 6, { outChannels: 6, normNumGroups: 2, down: true });
    const params = loadRandom(block, 300);
    const xr = randomRef([2, 4, 4, 6], 301);
    const er = randomRef([2, 6], 302);
    const x = fromRef(xr, { requiresGrad: true });
    const e = fromRef(er, { requiresGrad: true });
    const byName = new Map(block.namedParameters());
    const names = ["conv1.conv.weight", "time_emb_proj.weight"];
    const y = block.forward(x, e);
    await checkLayerGrads(
      "ResnetBlock",
      y,
      [x, e, ...names.map((n) => byName.get(n)!)],
      ([xv, ev, w1, wt]) =>
        refResnet(xv, ev, new Map([...params, [names[0], w1], [names[1], wt]]), 2, "down"),
      [xr, er, ...names.map((n) => p(params, n))],
    );
    disposeAll(x, e, y);
    block.dispose();
  },
);

gpuTest(
  "SpatialTransformer gradients: input, context and attention weights vs finite differences",
  async () => {
    const st = new SpatialTransformer(2, 4, 2, 2, { normNumGroups: 2, crossAttentionDim: 3 });
    const params = loadRandom(st, 310);
    const xr = randomRef([2, 4, 3, 2], 311);
    const cr = randomRef([2, 2, 3], 312);
    const x = fromRef(xr, { requiresGrad: true });
    const c = fromRef(cr, { requiresGrad: true });
    const names = ["transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.attn2.to_k.weight"];
    const byName = new Map(st.namedParameters());
    const ref = ([xv, cv, wq, wk]: RefTensor[]): RefTensor => {
      const ps = new Map([...params, [names[0], wq], [names[1], wk]]);
      let t = refTokens(refConv(refGroupNorm(xv, ps, "norm", 2, 1e-6), ps, "proj_in.conv"));
      const pre = "transformer_blocks.0";
      const ln = (v: RefTensor, n: string) =>
        R.layerNorm(v, [4], p(ps, `${pre}.${n}.weight`), p(ps, `${pre}.${n}.bias`), 1e-5);
      const n1 = ln(t, "norm1");
      t = R.add(refAttention(n1, n1, ps, `${pre}.attn1`, 2), t);
      t = R.add(refAttention(ln(t, "norm2"), cv, ps, `${pre}.attn2`, 2), t);
      t = R.add(refGeglu(ln(t, "norm3"), ps, `${pre}.ff`), t);
      return R.add(refConv(refGrid(t, xv.shape), ps, "proj_out.conv"), xv);
    };
    const y = st.forward(x, c);
    await checkLayerGrads(
      "SpatialTransformer",
      y,
      [x, c, ...names.map((n) => byName.get(n)!)],
      ref,
      [xr, cr, ...names.map((n) => p(params, n))],
    );
    disposeAll(x, c, y);
    st.dispose();
  },
);
