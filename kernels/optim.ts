/**
 * Fused optimizer kernels: one thread per parameter element reads the gradient and updates the parameter
 * and its moment buffers in place, so an optimizer step is one dispatch per parameter tensor.
 *
 * @module
 */

import { type Kernel, LINEAR_INDEX, WG } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

const ADAMW_FIELDS = {
  /** Elements, element offset of the gradient. */
  n: "u32",
  gradOffset: "u32",
  /** 1 − lr·wd, lr/(1 − β1ᵗ), β1, 1 − β1, β2, 1 − β2, 1/√(1 − β2ᵗ), eps (computed in float64 on the host). */
  decay: "f32",
  stepSize: "f32",
  beta1: "f32",
  oneMinusBeta1: "f32",
  beta2: "f32",
  oneMinusBeta2: "f32",
  invSqrtBias2: "f32",
  eps: "f32",
} as const;

/** Uniform layout of the AdamW kernel. */
export const ADAMW_UNIFORMS: UniformLayout<typeof ADAMW_FIELDS> = uniforms("optim:adamw", ADAMW_FIELDS);

const U = ADAMW_UNIFORMS;

/** Packs the AdamW parameters (see {@linkcode ADAMW_UNIFORMS}). */
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
  const { decay, stepSize, beta1, beta2, invSqrtBias2, eps } = factors;
  return U.pack({
    n,
    gradOffset,
    decay,
    stepSize,
    beta1,
    oneMinusBeta1: 1 - beta1,
    beta2,
    oneMinusBeta2: 1 - beta2,
    invSqrtBias2,
    eps,
  });
}

/**
 * AdamW (PyTorch semantics, decoupled weight decay): bindings `grad` (read, from `gradOffset`), then
 * `param`, `m`, `v` (read-write, contiguous from 0).
 */
export const adamwKernel: () => Kernel = defineKernel(
  "optim:adamw",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${U.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> grad: array<f32>;
  @group(0) @binding(2) var<storage, read_write> param: array<f32>;
  @group(0) @binding(3) var<storage, read_write> moment1: array<f32>;
  @group(0) @binding(4) var<storage, read_write> moment2: array<f32>;

  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = linear_workgroup(wid, nwg) * ${WG}u + li;
    if (i >= ${U.read("n")}) { return; }
    let g = grad[${U.read("gradOffset")} + i];
    let m = ${U.read("beta1")} * moment1[i] + ${U.read("oneMinusBeta1")} * g;
    let v = ${U.read("beta2")} * moment2[i] + ${U.read("oneMinusBeta2")} * g * g;
    moment1[i] = m;
    moment2[i] = v;
    // p·(1 − lr·wd) − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)
    param[i] = param[i] * ${U.read("decay")} - ${U.read("stepSize")} * m /
      (sqrt(v) * ${U.read("invSqrtBias2")} + ${U.read("eps")});
  }
  `;
    return { code, bindings: ["read", "write", "write", "write"] };
  },
);
