/**
 * One call checks a GPU op against its float64 reference: forward values, and the gradient of
 * L = Σ op(inputs) ⊙ r (random r) for every input against central finite differences on the reference.
 *
 * @module
 */

import { grad, mul, sum, type Tensor, transpose } from "../../mod.ts";
import {
  randomRef,
  type RefTensor,
  roundToF32,
  transpose as refTranspose,
} from "../../engine/reference/mod.ts";
import { assertClose } from "./check.ts";
import { numericGrad } from "./gradcheck.ts";
import { disposeAll, fromRef, toRef } from "./gpu.ts";

/** What {@linkcode checkOp} compares. */
export interface OpCase {
  /** Name used in failure messages. */
  name: string;
  /** The op under test on engine tensors. */
  gpu: (xs: Tensor[]) => Tensor;
  /** The float64 reference of the same op. */
  ref: (xs: RefTensor[]) => RefTensor;
  /** Input values (rounded to f32 before use so both sides see the same numbers). */
  inputs: RefTensor[];
  /** Indices of inputs to gradient-check (default: all). Pass [] for non-differentiable ops. */
  gradWrt?: number[];
  /** Feed rank ≥ 2 inputs as non-contiguous (transposed) views. */
  asViews?: boolean;
  /** Forward tolerance (default rtol 1e-5, atol 1e-6). */
  rtol?: number;
  atol?: number;
  /** Gradient tolerance (default rtol 1e-3, atol 1e-4). */
  gradRtol?: number;
  gradAtol?: number;
  /** Finite-difference step (default 1e-6). */
  eps?: number;
}

function upload(r: RefTensor, asView: boolean): { leaf: Tensor; input: Tensor } {
  if (asView && r.shape.length >= 2) {
    const leaf = fromRef(refTranspose(r), { requiresGrad: true });
    return { leaf, input: transpose(leaf) };
  }
  const leaf = fromRef(r, { requiresGrad: true });
  return { leaf, input: leaf };
}

/**
 * Forward tolerance default: f32 results of element-wise math are within a few ulp (~1e-7 relative) of the
 * float64 reference; 1e-5 leaves room for transcendental approximations in WGSL. Gradient default: the
 * GPU's f32 gradient against an O(1e-9)-accurate finite difference of the float64 reference; 1e-3 relative
 * covers f32 accumulation in reductions and the ~1e-7 erf approximation.
 */
export async function checkOp(c: OpCase): Promise<void> {
  const inputs = c.inputs.map(roundToF32);
  const uploaded = inputs.map((r) => upload(r, c.asViews ?? false));
  const xs = uploaded.map((u) => u.input);
  const y = c.gpu(xs);
  const expected = c.ref(inputs);
  try {
    assertClose(await toRef(y), expected, {
      rtol: c.rtol ?? 1e-5,
      atol: c.atol ?? 1e-6,
      name: `${c.name} forward`,
    });
    const wrt = c.gradWrt ?? inputs.map((_, i) => i);
    if (wrt.length === 0) return;
    const r = roundToF32(randomRef(expected.shape, 7));
    const rt = fromRef(r);
    const weighted = mul(y, rt);
    const loss = sum(weighted);
    const grads = grad(loss, wrt.map((i) => xs[i]));
    disposeAll(rt, weighted, loss);
    try {
      for (let k = 0; k < wrt.length; k++) {
        const numeric = numericGrad(c.ref, inputs, wrt[k], r, c.eps ?? 1e-6);
        assertClose(await toRef(grads[k]), numeric, {
          rtol: c.gradRtol ?? 1e-3,
          atol: c.gradAtol ?? 1e-4,
          name: `${c.name} gradient wrt input ${wrt[k]}`,
        });
      }
    } finally {
      disposeAll(grads);
    }
  } finally {
    y.dispose();
    for (const u of uploaded) disposeAll(u.leaf, u.input === u.leaf ? null : u.input);
  }
}
