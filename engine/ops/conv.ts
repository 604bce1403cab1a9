/**
 * `conv3d` and `conv2d` with PyTorch semantics (cross-correlation, zero padding, stride, dilation,
 * groups, fused bias), differentiable w.r.t. input, weight and bias.
 *
 * - Forward on software adapters (lavapipe), for large convolutions with whole-vec4 output rows: the
 *   loop-free chunk kernel of `kernels/conv_chunk.ts` (an implicit GEMM over per-kw "planes" of the input;
 *   see {@linkcode convSettings}).
 * - Forward otherwise: the register-blocked direct convolution of `kernels/conv.ts` over the input zero-padded to
 *   whole tiles (one pass, so the kernel has no bounds checks) and weights packed as
 *   [groups, Cin/groups, taps, Cout/groups (padded)]. Geometries whose tiles do not fit workgroup memory
 *   (large dilations) or kernels above 125 taps use an unblocked fallback kernel.
 * - Gradient w.r.t. the input: a transposed convolution, computed as stride-1 convolutions of gradOut, one
 *   per stride phase (input positions i ≡ r mod stride): phase r sees only the taps t with
 *   (r + pad − t·dil) ≡ 0 mod stride, flipped and channel-transposed, and writes every stride-th input
 *   position. Exactly the forward's FLOPs, no zero insertion; for stride 1 it is the single phase with all
 *   taps and padding dil·(k − 1) − pad (which may be negative: a crop). Each phase runs on the kernel the
 *   forward would pick for its geometry.
 * - Gradient w.r.t. the weight: a reduction over batch and space (`convWeightGradKernel`), split over
 *   blocks of gradOut and summed; same padding scheme and fallback.
 * - Gradient w.r.t. the bias: the sum of gradOut over batch and space.
 *
 * - Tensors larger than one storage binding (`maxStorageBufferBindingSize`): the convolution runs as
 *   sub-convolutions of one batch item and a block of input and output channels each (copied out and
 *   accumulated back in place), so that every buffer a kernel binds fits (groups = 1).
 *
 * conv2d is conv3d on a depth-1 view.
 *
 * Files (engine/ops/conv/): `geometry.ts` (argument checking, shapes), `plan.ts` (kernel choice and
 * tilings), `blocks.ts` (packing, padding, planes), `forward.ts`, `input_grad.ts`, `weight_grad.ts`, and
 * `split.ts` (tensors larger than one storage binding).
 *
 * @module
 */

import { record } from "../autograd.ts";
import { profileLabel } from "../profile.ts";
import { formatShape } from "../shape.ts";
import type { Tensor } from "../tensor.ts";
import {
  checkTensor,
  type Conv2dOptions,
  type Conv3dOptions,
  geometry,
  type LiftedOptions,
  perAxis,
  profileName,
} from "./conv/geometry.ts";
import { forwardRaw, inputGradRaw, weightGradRaw } from "./conv/split.ts";
import { contiguous } from "./map.ts";
import { sum } from "./reduce.ts";
import { reshape } from "./view.ts";

export type { Conv2dOptions, Conv3dOptions } from "./conv/geometry.ts";
export { convSettings } from "./conv/plan.ts";

// --- Public ops ----------------------------------------------------------------------------------------

function conv3dImpl(
  op: string,
  x: Tensor,
  w: Tensor,
  bias: Tensor | undefined,
  opts: LiftedOptions,
  shown: { x: readonly number[]; w: readonly number[] } = { x: x.shape, w: w.shape },
): Tensor {
  const g = geometry(op, x, w, bias, opts, shown);
  const xc = contiguous(x);
  const wc = contiguous(w);
  const bc = bias ? contiguous(bias) : null;
  const y = profileLabel(() => profileName(op, "fwd", g), () => forwardRaw(xc, wc, bc, g));
  bc?.dispose();
  const inputs = bias ? [x, w, bias] : [x, w];
  const out = record(op, y, inputs, (gOut, [xs, ws], needs) => {
    const gy = contiguous(gOut);
    const grads: Array<Tensor | null> = [
      needs[0] ? profileLabel(() => profileName(op, "dx", g), () => inputGradRaw(gy, ws, g)) : null,
      needs[1] ? profileLabel(() => profileName(op, "dw", g), () => weightGradRaw(xs, gy, g)) : null,
    ];
    if (bias) {
      grads.push(needs[2] ? profileLabel(() => profileName(op, "db", g), () => sum(gy, [0, 2, 3, 4])) : null);
    }
    gy.dispose();
    return grads;
  }, [xc, wc]);
  xc.dispose();
  wc.dispose();
  return out;
}

/**
 * 3-D convolution, PyTorch's `F.conv3d(x, w, bias, stride, padding, dilation, groups)`: x [N, Cin, D, H, W],
 * w [Cout, Cin/groups, kd, kh, kw], bias [Cout] → [N, Cout, Do, Ho, Wo] with
 * Do = ⌊(D + 2·pad − dil·(kd − 1) − 1) / stride⌋ + 1 (likewise H, W). Differentiable w.r.t. x, w and bias.
 *
 * @example
 * ```ts
 * const y = conv3d(x, w, { bias: b, padding: 1 }); // 3×3×3 "same" convolution
 * ```
 */
export function conv3d(x: Tensor, w: Tensor, opts: Conv3dOptions = {}): Tensor {
  const op = "conv3d";
  checkTensor(op, "x", x);
  checkTensor(op, "w", w);
  if (opts.bias !== undefined) checkTensor(op, "bias", opts.bias);
  if (x.rank !== 5) throw new Error(`${op}: x must be [N, C, D, H, W], got ${formatShape(x.shape)}.`);
  if (w.rank !== 5) {
    throw new Error(`${op}: w must be [Cout, Cin/groups, kd, kh, kw], got ${formatShape(w.shape)}.`);
  }
  return conv3dImpl(op, x, w, opts.bias, {
    stride: perAxis(op, "stride", opts.stride, 1, 3, 1),
    padding: perAxis(op, "padding", opts.padding, 0, 3, 0),
    dilation: perAxis(op, "dilation", opts.dilation, 1, 3, 1),
    groups: opts.groups,
  });
}

/**
 * 2-D convolution, PyTorch's `F.conv2d`: x [N, Cin, H, W], w [Cout, Cin/groups, kh, kw], bias [Cout] →
 * [N, Cout, Ho, Wo]. Runs as {@linkcode conv3d} on a depth-1 view. Differentiable w.r.t. x, w and bias.
 */
export function conv2d(x: Tensor, w: Tensor, opts: Conv2dOptions = {}): Tensor {
  const op = "conv2d";
  checkTensor(op, "x", x);
  checkTensor(op, "w", w);
  if (opts.bias !== undefined) checkTensor(op, "bias", opts.bias);
  if (x.rank !== 4) throw new Error(`${op}: x must be [N, C, H, W], got ${formatShape(x.shape)}.`);
  if (w.rank !== 4) {
    throw new Error(`${op}: w must be [Cout, Cin/groups, kh, kw], got ${formatShape(w.shape)}.`);
  }
  const stride = perAxis(op, "stride", opts.stride, 1, 2, 1);
  const padding = perAxis(op, "padding", opts.padding, 0, 2, 0);
  const dilation = perAxis(op, "dilation", opts.dilation, 1, 2, 1);
  const [n, c, h, wd] = x.shape;
  const [co, ci, kh, kw] = w.shape;
  const x3 = reshape(x, [n, c, 1, h, wd]);
  const w3 = reshape(w, [co, ci, 1, kh, kw]);
  let y3: Tensor;
  try {
    y3 = conv3dImpl(op, x3, w3, opts.bias, {
      stride: [1, ...stride],
      padding: [0, ...padding],
      dilation: [1, ...dilation],
      groups: opts.groups,
    }, { x: x.shape, w: w.shape });
  } finally {
    x3.dispose();
    w3.dispose();
  }
  const [, , , ho, wo] = y3.shape;
  const y = reshape(y3, [n, co, ho, wo]);
  y3.dispose();
  return y;
}
