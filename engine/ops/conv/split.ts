/**
 * Convolutions whose tensors exceed one storage binding: sub-convolutions of one batch item and a block of
 * input and output channels each, copied (or added) into place.
 *
 * @module
 */

import { sizeOf } from "../../shape.ts";
import { fromData, type Tensor } from "../../tensor.ts";
import { copyInto, map } from "../map.ts";
import { view } from "../view.ts";
import { forwardWhole } from "./forward.ts";
import { contiguousStrides5, type Geometry, subGeometry } from "./geometry.ts";
import { inputGradWhole } from "./input_grad.ts";
import { splitChannels } from "./plan.ts";
import { weightGradWhole } from "./weight_grad.ts";

/** A contiguous copy of `t[n, c0 : c0 + count]` (dimension 1 sliced, dimension 0 a single item). */
export function channelBlock(t: Tensor, n: number, c0: number, count: number): Tensor {
  const [, c, ...rest] = t.shape;
  const inner = sizeOf(rest);
  const v = view(
    t,
    [1, count, ...rest],
    [c * inner, inner, ...contiguousStrides5(t.shape).slice(2)],
    t.offset + (n * c + c0) * inner,
  );
  const out = map("copy", "a", [v]);
  v.dispose();
  return out;
}

/** A contiguous copy of the weight block `w[o0 : o0 + oc, i0 : i0 + ic]`. */
export function weightBlock(w: Tensor, o0: number, oc: number, i0: number, ic: number): Tensor {
  const [, ci, ...k] = w.shape;
  const taps = sizeOf(k);
  const v = view(
    w,
    [oc, ic, ...k],
    [ci * taps, taps, k[1] * k[2], k[2], 1],
    w.offset + (o0 * ci + i0) * taps,
  );
  const out = map("copy", "a", [v]);
  v.dispose();
  return out;
}

/** Writes (first) or adds `src` into the view of `dst` with `src`'s shape at element `offset`. */
export function placeBlock(
  dst: Tensor,
  src: Tensor,
  offset: number,
  strides: readonly number[],
  add: boolean,
): void {
  const v = view(dst, src.shape, strides, offset);
  // A kernel cannot read and write one buffer: the sum goes through a temporary.
  const value = add ? map("add", "a + b", [v, src]) : src;
  copyInto(v, value);
  if (add) value.dispose();
  v.dispose();
}

/** Forward convolution (no autograd); x, w contiguous. Split into channel blocks when too large. */
export function forwardRaw(x: Tensor, w: Tensor, bias: Tensor | null, g: Geometry): Tensor {
  const block = splitChannels("conv3d", g, x);
  if (block === null) return forwardWhole(x, w, bias, g);
  const y = fromData(null, [g.n, g.cout, ...g.outDims]);
  const yStrides = contiguousStrides5(y.shape);
  for (let n = 0; n < g.n; n++) {
    for (let o0 = 0; o0 < g.cout; o0 += block) {
      const oc = Math.min(block, g.cout - o0);
      const b = bias ? view(bias, [oc], [1], bias.offset + o0) : null;
      for (let i0 = 0; i0 < g.cin; i0 += block) {
        const ic = Math.min(block, g.cin - i0);
        const xs = channelBlock(x, n, i0, ic);
        const ws = weightBlock(w, o0, oc, i0, ic);
        const ys = forwardWhole(xs, ws, i0 === 0 ? b : null, subGeometry(g, ic, oc));
        placeBlock(y, ys, n * yStrides[0] + o0 * yStrides[1], yStrides, i0 > 0);
        for (const t of [xs, ws, ys]) t.dispose();
      }
      b?.dispose();
    }
  }
  return y;
}

/** Gradient w.r.t. the input (no autograd); gy, w contiguous. Split into channel blocks when too large. */
export function inputGradRaw(gy: Tensor, w: Tensor, g: Geometry): Tensor {
  const block = splitChannels("conv3d", g, gy);
  if (block === null) return inputGradWhole(gy, w, g);
  const dx = fromData(null, [g.n, g.cin, ...g.inDims]);
  const dxStrides = contiguousStrides5(dx.shape);
  for (let n = 0; n < g.n; n++) {
    for (let i0 = 0; i0 < g.cin; i0 += block) {
      const ic = Math.min(block, g.cin - i0);
      for (let o0 = 0; o0 < g.cout; o0 += block) {
        const oc = Math.min(block, g.cout - o0);
        const gs = channelBlock(gy, n, o0, oc);
        const ws = weightBlock(w, o0, oc, i0, ic);
        const dxs = inputGradWhole(gs, ws, subGeometry(g, ic, oc));
        placeBlock(dx, dxs, n * dxStrides[0] + i0 * dxStrides[1], dxStrides, o0 > 0);
        for (const t of [gs, ws, dxs]) t.dispose();
      }
    }
  }
  return dx;
}

/** Gradient w.r.t. the weight (no autograd); x, gy contiguous. Split into channel blocks when too large. */
export function weightGradRaw(x: Tensor, gy: Tensor, g: Geometry): Tensor {
  const block = splitChannels("conv3d", g, x);
  if (block === null) return weightGradWhole(x, gy, g);
  const dw = fromData(null, [g.cout, g.cin, ...g.kernel]);
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const dwStrides = [g.cin * taps, taps, g.kernel[1] * g.kernel[2], g.kernel[2], 1];
  for (let o0 = 0; o0 < g.cout; o0 += block) {
    const oc = Math.min(block, g.cout - o0);
    for (let i0 = 0; i0 < g.cin; i0 += block) {
      const ic = Math.min(block, g.cin - i0);
      for (let n = 0; n < g.n; n++) {
        const xs = channelBlock(x, n, i0, ic);
        const gs = channelBlock(gy, n, o0, oc);
        const dws = weightGradWhole(xs, gs, subGeometry(g, ic, oc));
        placeBlock(dw, dws, o0 * dwStrides[0] + i0 * dwStrides[1], dwStrides, n > 0);
        for (const t of [xs, gs, dws]) t.dispose();
      }
    }
  }
  return dw;
}
