/**
 * `softmax` and `logSoftmax` along one axis, numerically stable (the row maximum is subtracted first).
 *
 * @module
 */

import { noGrad, record } from "../autograd.ts";
import { normalizeAxis } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { map } from "./map.ts";
import { max, sum } from "./reduce.ts";

function check(op: string, x: Tensor, axis: number): number {
  if (!(x instanceof Tensor)) throw new Error(`${op}: x must be a Tensor.`);
  x.storage(op);
  return normalizeAxis(op, axis, x.rank);
}

/** exp(x − max) and its sum along `axis` (keepDims), without autograd. */
function shiftedExp(x: Tensor, axis: number): { shifted: Tensor; e: Tensor; total: Tensor } {
  return noGrad(() => {
    const m = max(x, axis, true);
    const shifted = map("sub", "a - b", [x, m]);
    m.dispose();
    const e = map("exp", "exp(a)", [shifted]);
    const total = sum(e, axis, true);
    return { shifted, e, total };
  });
}

/** softmax along `axis` (default: last): exp(x) / Σ exp(x). */
export function softmax(x: Tensor, axis = -1): Tensor {
  const ax = check("softmax", x, axis);
  const { shifted, e, total } = shiftedExp(x, ax);
  const y = map("div", "a / b", [e, total]);
  shifted.dispose();
  e.dispose();
  total.dispose();
  return record("softmax", y, [x], (g, [ys]) => {
    const gy = map("mul", "a * b", [g, ys]);
    const s = sum(gy, ax, true);
    gy.dispose();
    const gx = map("softmax_grad", "c * (a - b)", [g, s, ys]);
    s.dispose();
    return [gx];
  }, [y]);
}

/** log(softmax(x)) along `axis` (default: last), computed as x − max − log Σ exp(x − max). */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  const ax = check("logSoftmax", x, axis);
  const { shifted, e, total } = shiftedExp(x, ax);
  const y = map("log_softmax", "a - log(b)", [shifted, total]);
  shifted.dispose();
  e.dispose();
  total.dispose();
  return record("logSoftmax", y, [x], (g, [ys]) => {
    const s = sum(g, ax, true);
    const gx = map("log_softmax_grad", "a - exp(c) * b", [g, s, ys]);
    s.dispose();
    return [gx];
  }, [y]);
}
