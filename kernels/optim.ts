/**
 * Fused optimizer kernels: one thread per parameter element reads the gradient and updates the parameter
 * and its moment buffers in place, so an optimizer step is one dispatch per parameter tensor.
 *
 * @module
 */

import { type Kernel, LINEAR_INDEX, paramsBlock, WG } from "./types.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/**
 * Word count of the AdamW parameter block: `[n, gradOffset, decay, stepSize, beta1, 1 − beta1, beta2,
 * 1 − beta2, 1/√(1 − beta2ᵗ), eps]` (f32 bits from word 2 on; the host computes the factors in float64).
 */
export const ADAMW_PARAM_WORDS = 10;

/** Packs the AdamW parameter block (see {@linkcode ADAMW_PARAM_WORDS}). */
export function adamwParams(
  n: number,
  gradOffset: number,
  factors: {
    decay: number;
    stepSize: number;
    beta1: number;
    beta2: number;
    invSqrtBias2: number;
    eps: number;
  },
): Uint32Array {
  const params = new Uint32Array(ADAMW_PARAM_WORDS);
  params[0] = n;
  params[1] = gradOffset;
  const { decay, stepSize, beta1, beta2, invSqrtBias2, eps } = factors;
  new Float32Array(params.buffer, 8).set([
    decay,
    stepSize,
    beta1,
    1 - beta1,
    beta2,
    1 - beta2,
    invSqrtBias2,
    eps,
  ]);
  return params;
}

/**
 * AdamW (PyTorch semantics, decoupled weight decay): bindings `grad` (read, from `gradOffset`), then
 * `param`, `m`, `v` (read-write, contiguous from 0).
 */
export const adamwKernel: () => Kernel = defineKernel(
  "optim:adamw",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${paramsBlock(ADAMW_PARAM_WORDS)}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> grad: array<f32>;
  @group(0) @binding(2) var<storage, read_write> param: array<f32>;
  @group(0) @binding(3) var<storage, read_write> moment1: array<f32>;
  @group(0) @binding(4) var<storage, read_write> moment2: array<f32>;

  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = linear_workgroup(wid, nwg) * ${WG}u + li;
    if (i >= pu(0u)) { return; }
    let g = grad[pu(1u) + i];
    let m = pf(4u) * moment1[i] + pf(5u) * g;
    let v = pf(6u) * moment2[i] + pf(7u) * g * g;
    moment1[i] = m;
    moment2[i] = v;
    // p·(1 − lr·wd) − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)
    param[i] = param[i] * pf(2u) - pf(3u) * m / (sqrt(v) * pf(8u) + pf(9u));
  }
  `;
    return { code, bindings: ["read", "write", "write", "write"] };
  },
);
