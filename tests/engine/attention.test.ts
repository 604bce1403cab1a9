import * as V from "../../mod.ts";
import { attention, overrideAttentionTiling } from "../../engine/ops/attention.ts";
import { attention as refAttention } from "../../engine/reference/attention.ts";
import { randomRef, type RefTensor, roundToF32 } from "../../engine/reference/mod.ts";
import { resetPeak } from "../../engine/pool.ts";
import { type AttentionTiling, attentionTiling } from "../../kernels/attention.ts";
import { assertClose } from "../helpers/check.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { numericGrad } from "../helpers/gradcheck.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";
import { throws } from "node:assert";

type Case = [B: number, H: number, Nq: number, Nk: number, d: number, dv: number];

function inputs([B, H, Nq, Nk, d, dv]: Case, seed: number, magnitude = 1): RefTensor[] {
  return [
    randomRef([B, H, Nq, d], seed, -magnitude, magnitude),
    randomRef([B, H, Nk, d], seed + 1, -magnitude, magnitude),
    randomRef([B, H, Nk, dv], seed + 2),
  ];
}

// Forward tolerance: a score is an f32 dot product of d ≤ 128 products of magnitude ≤ 1, times scale = 1/√d,
// so its absolute error is ≲ d·scale·2⁻²⁴ = √d·6e-8 ≤ 7e-7, which is also the relative error it puts on
// the softmax weights. Outputs are convex combinations of values in [-1, 1] (f32 sums of ≤ 77 terms), so
// their error is ~1e-6 at most; 1e-5 leaves a 10× margin (observed errors are ~1e-7).
const FORWARD = { rtol: 1e-5, atol: 1e-5 };

const SHAPES: Case[] = [
  [1, 1, 1, 1, 4, 4], // one query, one key: the output is v itself
  [2, 3, 3, 37, 4, 4], // B·H > 1, cross-attention, partial key block
  [1, 2, 37, 3, 32, 32], // more queries than keys
  [2, 1, 77, 77, 33, 33], // self-attention with a head dim that is not a multiple of 4
  [1, 3, 37, 1, 32, 20], // Nk = 1 (weights all 1), d ≠ dv
  [1, 1, 77, 37, 4, 33], // wide values, narrow keys
  [1, 2, 37, 77, 128, 128], // the widest heads diffusion U-Nets use
];

gpuTest("attention forward matches the float64 reference on odd shapes", async () => {
  for (const [i, c] of SHAPES.entries()) {
    const [q, k, v] = inputs(c, 10 * i).map(roundToF32);
    const tq = fromRef(q), tk = fromRef(k), tv = fromRef(v);
    const y = attention(tq, tk, tv);
    assertClose(await toRef(y), refAttention(q, k, v), {
      ...FORWARD,
      name: `attention ${JSON.stringify(c)}`,
    });
    disposeAll(tq, tk, tv, y);
  }
});

gpuTest("attention gradients of q, k and v match finite differences of the reference", async () => {
  // Small shapes: the finite differences run the float64 reference twice per input element. The gradient
  // tolerance (checkOp default: rtol 1e-3, atol 1e-4) covers f32 dot products of ≤ 128 terms and sums over
  // ≤ 9 keys or queries of O(1) products (errors ~1e-6), against differences accurate to ~1e-9.
  const cases: Array<[Case, number | undefined]> = [
    [[2, 2, 3, 5, 4, 4], undefined],
    [[1, 2, 7, 1, 4, 3], undefined], // Nk = 1: the output is v whatever q and k (zero q/k gradients)
    [[1, 1, 5, 9, 33, 5], undefined], // d = 33
    [[1, 3, 9, 4, 4, 6], 0.9], // custom scale, d ≠ dv
    [[1, 1, 3, 5, 128, 4], undefined], // head dim 128 (dv = 128 is covered by the forward test)
  ];
  for (const [i, [c, scale]] of cases.entries()) {
    await checkOp({
      name: `attention ${JSON.stringify(c)} scale ${scale}`,
      gpu: ([q, k, v]) => attention(q, k, v, { scale }),
      ref: ([q, k, v]) => refAttention(q, k, v, scale),
      inputs: inputs(c, 100 + i),
      ...FORWARD,
    });
  }
});

gpuTest("attention accepts non-contiguous inputs (forward and gradients)", async () => {
  await checkOp({
    name: "attention of transposed views",
    gpu: ([q, k, v]) => attention(q, k, v),
    ref: ([q, k, v]) => refAttention(q, k, v),
    inputs: inputs([1, 2, 6, 5, 4, 3], 200),
    asViews: true,
    ...FORWARD,
  });
  // k and v as slices of one fused projection [B, H, Nk, 2d] (strided views into a shared buffer).
  const kv = roundToF32(randomRef([2, 2, 37, 8], 210));
  const q = roundToF32(randomRef([2, 2, 5, 4], 211));
  const tkv = fromRef(kv), tq = fromRef(q);
  const tk = V.slice(tkv, [0, 0, 0, 0], [2, 2, 37, 4]);
  const tv = V.slice(tkv, [0, 0, 0, 4], [2, 2, 37, 8]);
  const y = attention(tq, tk, tv);
  assertClose(await toRef(y), refAttention(q, await toRef(tk), await toRef(tv)), {
    ...FORWARD,
    name: "attention of slices",
  });
  // A contiguous view starting at element 1: the vec4 path (d = 4) must not read it misaligned.
  const flat = fromRef(roundToF32(randomRef([1 + 2 * 3 * 4], 212)));
  const tail = V.slice(flat, [1], [1 + 2 * 3 * 4]);
  const shifted = V.reshape(tail, [1, 2, 3, 4]);
  const y2 = attention(shifted, shifted, shifted);
  const sr = await toRef(shifted);
  assertClose(await toRef(y2), refAttention(sr, sr, sr), { ...FORWARD, name: "attention at offset 1" });
  disposeAll(tkv, tq, tk, tv, y, flat, tail, shifted, y2);
});

gpuTest("attention is stable for large logits", async () => {
  // |q|, |k| ≤ 20 with d = 32 gives logits up to ~2000: exp would overflow without the running max. Each
  // f32 score then carries an absolute error of ~|s|·d·2⁻²⁴ ≈ 4e-3 (relative error of the softmax weights),
  // so the outputs, mixtures of values in [-1, 1], are compared at 1e-2 absolute.
  const [q, k, v] = inputs([2, 2, 37, 77, 32, 32], 300, 20).map(roundToF32);
  const tq = fromRef(q, { requiresGrad: true }), tk = fromRef(k), tv = fromRef(v);
  const y = attention(tq, tk, tv);
  const out = await toRef(y);
  assertClose(out, refAttention(q, k, v), { rtol: 0, atol: 1e-2, name: "attention with large logits" });
  const loss = V.sum(y);
  const [g] = V.grad(loss, [tq]);
  const gv = await g.toArray();
  if (!gv.every(Number.isFinite)) throw new Error("attention: non-finite gradient with large logits");
  disposeAll(tq, tk, tv, y, loss, g);
});

gpuTest("every tiling agrees with the reference (CPU and GPU heuristics, many rows per lane)", async () => {
  // The heuristic picks few rows per invocation for small problems; force the big tilings used on large
  // ones, including partial row blocks (Nq, Nk not multiples of threads · rows) and partial staged blocks.
  // Head dims 5 and 6 take the element-wise load path, 8 and 4 the vec4 path.
  const cases: Array<[AttentionTiling, Case]> = [
    [{ threads: 8, rows: 8, block: 4 }, [2, 1, 13, 30, 8, 4]],
    [{ threads: 8, rows: 3, block: 5 }, [1, 2, 19, 7, 5, 6]],
    [{ threads: 64, rows: 2, block: 16 }, [1, 2, 19, 7, 5, 6]],
    [{ threads: 64, rows: 1, block: 16 }, [2, 1, 13, 30, 8, 4]],
  ];
  try {
    for (const [i, [tiling, shape]] of cases.entries()) {
      overrideAttentionTiling(() => tiling);
      await checkOp({
        name: `attention tiling ${JSON.stringify(tiling)} shape ${JSON.stringify(shape)}`,
        gpu: ([q, k, v]) => attention(q, k, v),
        ref: ([q, k, v]) => refAttention(q, k, v),
        inputs: inputs(shape, 400 + i),
        ...FORWARD,
      });
    }
  } finally {
    overrideAttentionTiling(null);
  }
});

gpuTest("attention gradient of only k or only v (the dQ kernel is skipped)", async () => {
  const refs = inputs([1, 2, 6, 9, 4, 5], 500).map(roundToF32);
  const r = roundToF32(randomRef([1, 2, 6, 5], 501));
  for (const which of [1, 2]) {
    const [q, k, v] = refs.map((x, i) => fromRef(x, { requiresGrad: i === which }));
    const tr = fromRef(r);
    const y = attention(q, k, v);
    const weighted = V.mul(y, tr);
    const loss = V.sum(weighted);
    const [g] = V.grad(loss, [[q, k, v][which]]);
    // Same tolerance as checkOp's gradients, against central differences of the float64 reference.
    const expected = numericGrad(([a, b, c]) => refAttention(a, b, c), refs, which, r);
    assertClose(await toRef(g), expected, {
      rtol: 1e-3,
      atol: 1e-4,
      name: `attention gradient of input ${which}`,
    });
    disposeAll(q, k, v, tr, y, weighted, loss, g);
  }
});

gpuTest("attention rejects bad shapes with a clear error", () => {
  const z = (...shape: number[]) => V.zeros(shape);
  const [q, k, v] = [z(1, 2, 3, 4), z(1, 2, 5, 4), z(1, 2, 5, 6)];
  const [rank3, kWrongD, vWrongN, vWrongH, k0, v0] = [
    z(2, 3, 4),
    z(1, 2, 5, 3),
    z(1, 2, 4, 6),
    z(1, 1, 5, 6),
    z(1, 2, 0, 4),
    z(1, 2, 0, 6),
  ];
  const bad: Array<[() => unknown, RegExp]> = [
    [() => attention(rank3, k, v), /attention: expected 4-D q \[B, H, Nq, d\].*got q \[2, 3, 4\]/],
    [() => attention(q, kWrongD, v), /attention: shapes do not match.*k \[1, 2, 5, 3\]/],
    [() => attention(q, k, vWrongN), /attention: shapes do not match.*v \[1, 2, 4, 6\]/],
    [() => attention(q, k, vWrongH), /attention: shapes do not match.*v \[1, 1, 5, 6\]/],
    [() => attention(q, k0, v0), /attention: k and v have no keys \(Nk = 0\)/],
    [() => attention(q, k, v, { scale: NaN }), /attention: scale must be a finite number/],
    [() => attention(q, k, "v" as unknown as V.Tensor), /attention: v must be a Tensor/],
  ];
  for (const [fn, message] of bad) throws(fn, message);
  disposeAll(q, k, v, rank3, kWrongD, vWrongN, vWrongH, k0, v0);
});

/**
 * Float64 attention of one head streamed row by row (memory O(n)), and the gradients of Σ output at the
 * sampled rows (queries for dq, keys for dk and dv). With dO = 1: dp_ij = Σ_c v_jc, D_i = Σ_c o_ic,
 * dS = P ⊙ (dp − D); dq_i = scale·Σ_j dS_ij k_j, dk_j = scale·Σ_i dS_ij q_i, dv_j = Σ_i P_ij.
 */
function streamedReference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  n: number,
  d: number,
  rows: number[],
) {
  const scale = 1 / Math.sqrt(d);
  const lse = new Float64Array(n);
  const dsum = new Float64Array(n);
  const out = new Float64Array(rows.length * d);
  const vsum = Float64Array.from(
    { length: n },
    (_, j) => v.subarray(j * d, (j + 1) * d).reduce((a, b) => a + b),
  );
  const score = (i: number, j: number) => {
    let dot = 0;
    for (let c = 0; c < d; c++) dot += q[i * d + c] * k[j * d + c];
    return dot * scale;
  };
  const s = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let j = 0; j < n; j++) m = Math.max(m, s[j] = score(i, j));
    let z = 0;
    let dv = 0;
    for (let j = 0; j < n; j++) {
      s[j] = Math.exp(s[j] - m);
      z += s[j];
      dv += s[j] * vsum[j];
    }
    lse[i] = m + Math.log(z);
    dsum[i] = dv / z;
    const r = rows.indexOf(i);
    if (r >= 0) {
      for (let j = 0; j < n; j++) for (let c = 0; c < d; c++) out[r * d + c] += (s[j] / z) * v[j * d + c];
    }
  }
  const dq = new Float64Array(rows.length * d);
  const dk = new Float64Array(rows.length * d);
  const dv = new Float64Array(rows.length * d);
  rows.forEach((t, r) => {
    for (let other = 0; other < n; other++) {
      const pq = Math.exp(score(t, other) - lse[t]); // t as a query row, other as a key
      const pk = Math.exp(score(other, t) - lse[other]); // t as a key row, other as a query
      const dsq = pq * (vsum[other] - dsum[t]);
      const dsk = pk * (vsum[t] - dsum[other]);
      for (let c = 0; c < d; c++) {
        dq[r * d + c] += scale * dsq * k[other * d + c];
        dk[r * d + c] += scale * dsk * q[other * d + c];
        dv[r * d + c] += pk;
      }
    }
  });
  return { out, dq, dk, dv };
}

gpuTest("4096 tokens: sampled rows and gradients match, memory stays linear", async () => {
  const n = 4096, d = 32;
  const random = (seed: number) => Float32Array.from(randomRef([n * d], seed).data);
  const [qa, ka, va] = [random(600), random(601), random(602)];
  const q = V.tensor(qa, [1, 1, n, d], { requiresGrad: true });
  const k = V.tensor(ka, [1, 1, n, d], { requiresGrad: true });
  const v = V.tensor(va, [1, 1, n, d], { requiresGrad: true });
  const scoreBytes = n * n * 4; // 64 MiB: what a non-fused attention would allocate, at least

  const before = V.memory().liveBytes;
  resetPeak();
  const y = attention(q, k, v);
  await V.sync();
  const forwardPeak = V.memory().peakBytes - before;
  const loss = V.sum(y);
  const beforeBackward = V.memory().liveBytes;
  resetPeak();
  const grads = V.grad(loss, [q, k, v]);
  await V.sync();
  const backwardPeak = V.memory().peakBytes - beforeBackward;
  // Forward: output (512 KiB) + log-sum-exp (16 KiB). Backward: dQ, dK, dV, dO, D, all linear in n.
  for (const [what, bytes] of [["forward", forwardPeak], ["backward", backwardPeak]] as const) {
    if (bytes > scoreBytes / 16) {
      throw new Error(
        `${what} at ${n} tokens allocated ${bytes} bytes; the score matrix alone is ${scoreBytes}`,
      );
    }
  }

  const rows = [0, 1, 7, 8, 127, 128, 2047, 4000, 4095];
  const pick = (a: Float32Array) =>
    Float64Array.from(rows.flatMap((i) => [...a.subarray(i * d, (i + 1) * d)]));
  const expected = streamedReference(qa, ka, va, n, d, rows);
  // Sums over 4096 keys (or queries) in f32: relative error ≲ 4096·2⁻²⁴ ≈ 2.4e-4 in the worst case and ~1e-6
  // typically; outputs and gradients are O(1e-2..1), so 1e-4 relative + 1e-5 absolute.
  const tol = { rtol: 1e-4, atol: 1e-5 };
  assertClose(pick(await y.toArray()), expected.out, { ...tol, name: "4096 tokens output" });
  for (const [i, name] of ["dq", "dk", "dv"].entries()) {
    const want = expected[name as "dq" | "dk" | "dv"];
    assertClose(pick(await grads[i].toArray()), want, { ...tol, name: `4096 tokens ${name}` });
  }
  disposeAll(q, k, v, y, loss, grads);
});

gpuTest("the tiling heuristic keeps enough workgroups and fits the register budget", () => {
  const dims = { d: 32, dv: 32 };
  const big = attentionTiling("forward", dims, 32768, 32768, 8, true);
  if (big.rows !== 24) {
    throw new Error(`32768 tokens should get 24 rows per lane, got ${JSON.stringify(big)}`);
  }
  const test = attentionTiling("dkv", dims, 4096, 4096, 1, true);
  if (test.rows !== 4) {
    throw new Error(`small problems should get the small budget, got ${JSON.stringify(test)}`);
  }
  const tiny = attentionTiling("forward", dims, 37, 37, 2, true);
  if (tiny.rows !== 1) {
    throw new Error(`tiny problems should spread over workgroups, got ${JSON.stringify(tiny)}`);
  }
  const wide = attentionTiling("dkv", { d: 128, dv: 128 }, 32768, 32768, 8, true);
  if (wide.rows !== 3) throw new Error(`d = 128 should keep few rows, got ${JSON.stringify(wide)}`);
});
