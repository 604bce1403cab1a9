/**
 * Gradient checkpointing: a block's forward runs without recording its intermediates, and its backward
 * recomputes the block (recording this time) to get the gradients. Training memory then holds the block's
 * inputs instead of all its activations, for about one more forward of the block per step.
 *
 * @module
 */

import { enableGrad, grad, needsGrad, noGrad, record } from "../autograd.ts";
import { scope } from "../memory.ts";
import { Tensor } from "../tensor.ts";
import { mul } from "./elementwise.ts";
import { sum } from "./reduce.ts";

/** A new leaf over `t`'s storage that requires a gradient (the recomputation's input). */
function leafOf(t: Tensor): Tensor {
  const storage = t.storage("checkpoint");
  storage.retain();
  return new Tensor({
    shape: t.shape,
    strides: t.strides,
    offset: t.offset,
    dtype: t.dtype,
    storage,
    requiresGrad: true,
  });
}

/**
 * `fn(...inputs)` with gradient checkpointing: the same value and the same gradients w.r.t. `inputs` and
 * `params` (every tensor `fn` uses that may need a gradient, e.g. a module's `parameters()`), without keeping
 * `fn`'s intermediates between forward and backward. `fn` must be deterministic (it runs again in backward)
 * and return one tensor. Outside gradient recording it is just `fn(...inputs)`.
 */
export function checkpoint(
  fn: (...inputs: Tensor[]) => Tensor,
  inputs: readonly Tensor[],
  params: readonly Tensor[],
): Tensor {
  const all = [...inputs, ...params];
  if (!needsGrad(all)) return fn(...inputs);
  const y = noGrad(() => fn(...inputs));
  return record("checkpoint", y, all, (g, saved, needs) =>
    scope(() => {
      const leaves = saved.map(leafOf);
      const wrt: Tensor[] = [];
      const slots: number[] = [];
      all.forEach((_, i) => {
        if (!needs[i]) return;
        wrt.push(i < inputs.length ? leaves[i] : params[i - inputs.length]);
        slots.push(i);
      });
      // The vector-Jacobian product of the recomputed block: d/dθ Σ fn(…) ⊙ g.
      const grads = enableGrad(() => {
        const out = fn(...leaves);
        return grad(sum(mul(out, g)), wrt, { allowUnused: true });
      });
      const result: Array<Tensor | null> = all.map(() => null);
      slots.forEach((slot, k) => (result[slot] = grads[k]));
      return result;
    }), inputs);
}
