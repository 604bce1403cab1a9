/**
 * Fused scaled dot-product attention, differentiable with respect to q, k and v. The Nq×Nk score matrix is
 * never stored, in the forward or the backward pass, so memory grows linearly with the number of tokens.
 *
 * @module
 */

import {
  ATTENTION_UNIFORMS,
  attentionBackwardKeyKernel,
  attentionBackwardQueryKernel,
  type AttentionDims,
  attentionForwardKernel,
  type AttentionPass,
  attentionRowDotKernel,
  type AttentionTiling,
  attentionTiling,
  MAX_HEAD_DIM,
  ROW_DOT_THREADS,
  ROW_DOT_UNIFORMS,
} from "../../kernels/attention.ts";
import { record } from "../autograd.ts";
import { deviceInfo, limit } from "../device.ts";
import { dispatch } from "../runtime.ts";
import { formatShape } from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { contiguous, map } from "./map.ts";

/** Options of {@linkcode attention}. */
export interface AttentionOptions {
  /** Multiplier of q·kᵀ before the softmax (default 1/√d). */
  scale?: number;
}

interface Problem {
  B: number;
  H: number;
  Nq: number;
  Nk: number;
  dims: AttentionDims;
  scale: number;
}

function validate(q: unknown, k: unknown, v: unknown, opts: AttentionOptions): Problem {
  const expect = "q [B, H, Nq, d], k [B, H, Nk, d], v [B, H, Nk, dv]";
  for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (!(t instanceof Tensor)) throw new Error(`attention: ${name} must be a Tensor (${expect}).`);
    t.storage("attention");
    if (t.dtype !== "float32") {
      throw new Error(`attention: ${name} has dtype ${t.dtype}; only float32 is supported.`);
    }
  }
  const [qt, kt, vt] = [q, k, v] as Tensor[];
  const shapes = `got q ${formatShape(qt.shape)}, k ${formatShape(kt.shape)}, v ${formatShape(vt.shape)}`;
  if (qt.rank !== 4 || kt.rank !== 4 || vt.rank !== 4) {
    throw new Error(`attention: expected 4-D ${expect}; ${shapes}.`);
  }
  const [B, H, Nq, d] = qt.shape;
  const [, , Nk, dv] = vt.shape;
  const mismatch = kt.shape[0] !== B || kt.shape[1] !== H || vt.shape[0] !== B || vt.shape[1] !== H ||
    kt.shape[3] !== d || kt.shape[2] !== Nk;
  if (mismatch) {
    throw new Error(
      `attention: shapes do not match ${expect} (equal B and H, k and v with the same Nk, q and k the same d); ` +
        `${shapes}.`,
    );
  }
  if (d < 1 || dv < 1 || d > MAX_HEAD_DIM || dv > MAX_HEAD_DIM) {
    throw new Error(
      `attention: head dims d = ${d} and dv = ${dv} must be in [1, ${MAX_HEAD_DIM}]; ${shapes}.`,
    );
  }
  if (Nk === 0 && B * H * Nq > 0) {
    throw new Error(
      `attention: k and v have no keys (Nk = 0); softmax over no keys is undefined; ${shapes}.`,
    );
  }
  // Every matrix is bound whole; the largest of q, k, v and the output must fit one binding.
  const maxBinding = limit("maxStorageBufferBindingSize");
  const largest = Math.max(qt.size, kt.size, vt.size, B * H * Nq * dv) * 4;
  if (largest > maxBinding) {
    throw new Error(
      `attention: a ${largest}-byte matrix exceeds the device's maxStorageBufferBindingSize of ` +
        `${maxBinding} bytes; ${shapes}. Split the batch or the heads into several calls.`,
    );
  }
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  if (typeof scale !== "number" || !Number.isFinite(scale)) {
    throw new Error(`attention: scale must be a finite number, got ${opts.scale}.`);
  }
  return { B, H, Nq, Nk, dims: { d, dv }, scale };
}

/** Picks the tiling of one attention pass (see {@linkcode overrideAttentionTiling}). */
export type AttentionTilingChooser = (
  pass: AttentionPass,
  dims: AttentionDims,
  ownedRows: number,
  streamedRows: number,
  heads: number,
) => AttentionTiling;

let chooser: AttentionTilingChooser | null = null;

/**
 * Replaces the tiling heuristic (for tests that exercise every tiling on any adapter, and for tuning
 * benchmarks); `null` restores the default. Not part of the public API.
 */
export function overrideAttentionTiling(choose: AttentionTilingChooser | null): void {
  chooser = choose;
}

function tilingFor(
  pass: AttentionPass,
  dims: AttentionDims,
  ownedRows: number,
  streamedRows: number,
  heads: number,
): AttentionTiling {
  if (chooser) return chooser(pass, dims, ownedRows, streamedRows, heads);
  return attentionTiling(pass, dims, ownedRows, streamedRows, heads, deviceInfo().isFallbackAdapter);
}

/**
 * A contiguous version of `t` laid out as the kernels read it: matrices whose rows are a multiple of 4
 * floats are bound as vec4s, so they must start on a vec4 (a view at another offset is copied).
 */
function kernelLayout(t: Tensor, width: number): Tensor {
  const dense = contiguous(t);
  if (width % 4 !== 0 || dense.offset % 4 === 0) return dense;
  const copy = map("copy", "a", [dense]);
  dense.dispose();
  return copy;
}

/** The uniforms of the three main kernels. */
function params(
  p: Problem,
  blocks: number,
  offsets: { q: number; k: number; v: number; g?: number },
): Uint32Array {
  return ATTENTION_UNIFORMS.pack({
    Nq: p.Nq,
    Nk: p.Nk,
    scale: p.scale,
    blocks,
    qOffset: offsets.q,
    kOffset: offsets.k,
    vOffset: offsets.v,
    gOffset: offsets.g ?? 0,
  });
}

/** Runs one of the three main kernels: forward and dq own query rows, dkv owns key rows. */
function run(
  pass: AttentionPass,
  make: typeof attentionForwardKernel,
  p: Problem,
  offsets: { q: number; k: number; v: number; g?: number },
  buffers: GPUBuffer[],
): void {
  const heads = p.B * p.H;
  const [owned, streamed] = pass === "dkv" ? [p.Nk, p.Nq] : [p.Nq, p.Nk];
  const tiling = tilingFor(pass, p.dims, owned, streamed, heads);
  const blocks = Math.ceil(owned / (tiling.threads * tiling.rows));
  const kernel = make(p.dims, tiling);
  dispatch(kernel, params(p, blocks, offsets), buffers, heads * blocks);
}

/**
 * Scaled dot-product attention softmax(q·kᵀ·scale)·v, fused flash style: q `[B, H, Nq, d]`, k `[B, H, Nk, d]`,
 * v `[B, H, Nk, dv]` → `[B, H, Nq, dv]`. Self- and cross-attention (any Nk ≥ 1), head dims up to 256,
 * `scale` defaulting to 1/√d. Differentiable with respect to q, k and v. Memory is linear in the number of
 * tokens: the forward pass keeps only the per-row log-sum-exp ([B, H, Nq]) besides its output, and the
 * backward pass recomputes the attention weights block by block. Non-contiguous inputs are copied.
 *
 * @example
 * ```ts
 * const q = randn([1, 8, 4096, 32], { seed: 1 }); // 16³ tokens, 8 heads of 32 channels
 * const y = attention(q, q, q); // [1, 8, 4096, 32]
 * ```
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  const p = validate(q, k, v, opts);
  const { B, H, Nq, dims } = p;
  const qc = kernelLayout(q, dims.d);
  const kc = kernelLayout(k, dims.d);
  const vc = kernelLayout(v, dims.dv);
  const out = fromData(null, [B, H, Nq, dims.dv]);
  const lse = fromData(null, [B, H, Nq]);
  run("forward", attentionForwardKernel, p, { q: qc.offset, k: kc.offset, v: vc.offset }, [
    qc.storage("attention").buffer,
    kc.storage("attention").buffer,
    vc.storage("attention").buffer,
    out.storage("attention").buffer,
    lse.storage("attention").buffer,
  ]);
  const y = record(
    "attention",
    out,
    [q, k, v],
    (g, saved, needs) => attentionBackward(p, g, saved, needs),
    [qc, kc, vc, out, lse],
  );
  for (const t of [qc, kc, vc, lse]) t.dispose();
  return y;
}

/** Gradients of q, k, v from the output gradient `g` and the saved q, k, v, output and log-sum-exp. */
function attentionBackward(
  p: Problem,
  g: Tensor,
  [qs, ks, vs, os, lse]: readonly Tensor[],
  needs: readonly boolean[],
): Array<Tensor | null> {
  const { B, H, Nq, Nk, dims } = p;
  const gc = kernelLayout(g, dims.dv);
  const rows = B * H * Nq;
  const dsum = fromData(null, [B, H, Nq]);
  const buf = (t: Tensor): GPUBuffer => t.storage("attention backward").buffer;
  dispatch(
    attentionRowDotKernel(dims.dv),
    ROW_DOT_UNIFORMS.pack({ rows, gOffset: gc.offset, oOffset: os.offset }),
    [buf(gc), buf(os), buf(dsum)],
    Math.ceil(rows / ROW_DOT_THREADS),
  );
  const offsets = { q: qs.offset, k: ks.offset, v: vs.offset, g: gc.offset };
  const inputs = [buf(qs), buf(ks), buf(vs), buf(gc), buf(lse), buf(dsum)];
  let dq: Tensor | null = null;
  let dk: Tensor | null = null;
  let dv: Tensor | null = null;
  if (needs[0]) {
    dq = fromData(null, [B, H, Nq, dims.d]);
    run("dq", attentionBackwardQueryKernel, p, offsets, [...inputs, buf(dq)]);
  }
  if (needs[1] || needs[2]) {
    // One kernel computes both (they share P); the one not needed is dropped.
    dk = fromData(null, [B, H, Nk, dims.d]);
    dv = fromData(null, [B, H, Nk, dims.dv]);
    run("dkv", attentionBackwardKeyKernel, p, offsets, [...inputs, buf(dk), buf(dv)]);
    if (!needs[1]) dk = (dk.dispose(), null);
    if (!needs[2]) dv = (dv.dispose(), null);
  }
  gc.dispose();
  dsum.dispose();
  return [dq, dk, dv];
}
