/**
 * The gradient of a convolution w.r.t. its input (no autograd): a transposed convolution computed as
 * stride-1 convolutions of gradOut, one per stride phase, each on the kernel the forward would pick.
 *
 * @module
 */

import { fromData, type Tensor } from "../../tensor.ts";
import { map } from "../map.ts";
import { packWeights } from "./blocks.ts";
import { runConv } from "./forward.ts";
import { contiguousStrides5, type ConvCall, type Geometry } from "./geometry.ts";

export function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/**
 * One axis of one stride phase of the transposed convolution: input positions i = q·s + r receive the
 * taps t with (r + pad − t·dil) ≡ 0 (mod s), from gradOut position q + (r + pad − t·dil)/s. Taps are
 * listed by decreasing t (increasing gradOut offset) so that the phase is a correlation with dilation
 * dil/gcd(s, dil) and padding −(first offset).
 */
export function phaseAxis(k: number, s: number, p: number, dil: number, r: number, inExtent: number) {
  const extent = Math.ceil((inExtent - r) / s);
  let first = -1;
  for (let t = k - 1; t >= 0; t--) {
    if ((((r + p - t * dil) % s) + s) % s === 0) {
      first = t;
      break;
    }
  }
  if (first < 0 || extent < 1) return null;
  const step = s / gcd(s, dil);
  const taps = Math.floor(first / step) + 1;
  return {
    taps,
    start: first,
    step: -step,
    dilation: dil / gcd(s, dil),
    pad: -((r + p - first * dil) / s),
    extent,
  };
}

/** Gradient w.r.t. the input (no autograd); gy, w contiguous. */
export function inputGradWhole(gy: Tensor, w: Tensor, g: Geometry): Tensor {
  const xShape = [g.n, g.cin, ...g.inDims];
  const [, H, W] = g.inDims;
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const axes = [0, 1, 2].map((a) =>
    Array.from(
      { length: g.stride[a] },
      (_, r) => phaseAxis(g.kernel[a], g.stride[a], g.pad[a], g.dil[a], r, g.inDims[a]),
    )
  );
  // Positions no tap reaches (phases without taps) keep the zeros of the fill.
  const complete = axes.every((phases) => phases.every((ph) => ph !== null));
  const dx = complete ? fromData(null, xShape) : map("fill", "s0", [], [0], xShape);
  const strides = contiguousStrides5(xShape);
  for (const [rd, pd] of axes[0].entries()) {
    for (const [rh, ph] of axes[1].entries()) {
      for (const [rw, pw] of axes[2].entries()) {
        if (!pd || !ph || !pw) continue;
        const call: ConvCall = {
          key: {
            kernel: [pd.taps, ph.taps, pw.taps],
            stride: [1, 1, 1],
            dilation: [pd.dilation, ph.dilation, pw.dilation],
          },
          n: g.n,
          cin: g.cout,
          inDims: g.outDims,
          cinG: g.coutG,
          coutG: g.cinG,
          groups: g.groups,
          pad: [pd.pad, ph.pad, pw.pad],
          outDims: [pd.extent, ph.extent, pw.extent],
          outOff: rd * H * W + rh * W + rw,
          outStrides: [strides[0], strides[1], g.stride[0] * H * W, g.stride[1] * W, g.stride[2]],
        };
        const packFor = (coP: number) =>
          packWeights(w, call, coP, {
            sG: g.coutG * g.cinG * taps,
            sCi: g.cinG * taps,
            sCo: taps,
            sK: [g.kernel[1] * g.kernel[2], g.kernel[2], 1],
            start: [pd.start, ph.start, pw.start],
            step: [pd.step, ph.step, pw.step],
          });
        runConv(gy, packFor, null, dx, call);
      }
    }
  }
  return dx;
}
