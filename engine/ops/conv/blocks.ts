/**
 * Building blocks the convolution passes share: dispatching, weight packing, zero padding and the
 * chunk kernels' kw-planes of the input.
 *
 * @module
 */

import {
  convPackKernel,
  convPadKernel,
  inputSpan,
  PACK,
  PACK_WG,
  PAD,
  PAD_WG,
  type Triple,
} from "../../../kernels/conv.ts";
import { convPlanesKernel, PLANES, PLANES_WG } from "../../../kernels/conv_chunk.ts";
import type { Kernel } from "../../../kernels/types.ts";
import { dispatch } from "../../runtime.ts";
import { fromData, Tensor } from "../../tensor.ts";
import type { ConvCall } from "./geometry.ts";

/** Records a dispatch of `count` workgroups; nothing for an empty grid (the runtime would run one). */
export function launch(kernel: Kernel, params: Uint32Array, buffers: GPUBuffer[], count: number): void {
  if (count > 0) dispatch(kernel, params, buffers, count);
}

/** Packs weights for `call`'s convolution (see `convPackKernel`); `source` describes where tap j comes from. */
export function packWeights(
  w: Tensor,
  call: ConvCall,
  coP: number,
  src: { sG: number; sCi: number; sCo: number; sK: Triple; start: Triple; step: Triple },
): Tensor {
  const [kd, kh, kw] = call.key.kernel;
  const taps = kd * kh * kw;
  const count = call.groups * call.cinG * taps * coP;
  const packed = fromData(null, [count]);
  const p = PACK.pack({
    count,
    cin: call.cinG,
    taps,
    kh,
    kw,
    coP,
    cout: call.coutG,
    sG: src.sG,
    sCi: src.sCi,
    sCo: src.sCo,
    sKd: src.sK[0],
    sKh: src.sK[1],
    sKw: src.sK[2],
    dStart: src.start[0],
    dStep: src.step[0],
    hStart: src.start[1],
    hStep: src.step[1],
    wStart: src.start[2],
    wStep: src.step[2],
    wOff: w.offset,
  });
  launch(
    convPackKernel(),
    p,
    [w.storage("conv3d").buffer, packed.storage("conv3d").buffer],
    Math.ceil(count / PACK_WG),
  );
  return packed;
}

/**
 * A zero-padded copy of the contiguous [n, c, d, h, w] tensor `x` with extents `dims` (w rounded up to whole
 * vec4s) whose index 0 along each axis is source coordinate `origin` (negative: padding; positive: a crop).
 */
export function padVolume(x: Tensor, dims: Triple, origin: Triple): Tensor {
  const [n, c, d, h, w] = x.shape;
  const pw4 = Math.ceil(dims[2] / 4);
  const rows = n * c * dims[0] * dims[1];
  const out = fromData(null, [rows * pw4 * 4]);
  const p = PAD.pack({
    rows,
    pd: dims[0],
    ph: dims[1],
    pw4,
    d,
    h,
    w,
    d0: origin[0],
    h0: origin[1],
    w0: origin[2],
    xOff: x.offset,
  });
  launch(
    convPadKernel(),
    p,
    [x.storage("conv3d").buffer, out.storage("conv3d").buffer],
    Math.ceil(rows / PAD_WG),
  );
  return out;
}

/** The kw-planes of `x` for `call` (see `convPlanesKernel`) and their strides in vec4s. */
export interface Planes {
  tensor: Tensor;
  /** vec4s per input channel, per kw plane, per padded d row, per padded h row. */
  strides: [number, number, number, number];
}

/** Copies the contiguous input `x` into the per-kw planes the chunk kernels read. */
export function inputPlanes(
  x: Tensor,
  call: Pick<ConvCall, "key" | "n" | "cin" | "inDims" | "pad" | "outDims">,
): Planes {
  const kw = call.key.kernel[2];
  const ow = call.outDims[2];
  const span = (a: number) =>
    inputSpan(call.outDims[a], call.key.kernel[a], call.key.stride[a], call.key.dilation[a]);
  const [pd, ph] = [span(0), span(1)];
  const row4 = ow / 4;
  const planeVec4s = pd * ph * row4;
  const strides: Planes["strides"] = [kw * planeVec4s, planeVec4s, ph * row4, row4];
  // A pointwise kernel at stride 1 without padding reads the input as it is (its one plane would be a copy).
  const identity = kw === 1 && call.key.stride[2] === 1 && call.pad.every((p) => p === 0) &&
    pd === call.inDims[0] && ph === call.inDims[1] && ow === call.inDims[2] && x.offset === 0;
  if (identity) {
    const storage = x.storage("conv3d");
    storage.retain();
    return { tensor: new Tensor({ shape: [x.size], storage }), strides };
  }
  const count = call.n * call.cin * kw * pd * ph;
  const tensor = fromData(null, [count * row4 * 4]);
  const q = PLANES.pack({
    count,
    kw,
    pd,
    ph,
    row4,
    d: call.inDims[0],
    h: call.inDims[1],
    w: call.inDims[2],
    d0: -call.pad[0],
    h0: -call.pad[1],
    w0: -call.pad[2],
    sw: call.key.stride[2],
    dw: call.key.dilation[2],
    ow,
    xOff: x.offset,
  });
  launch(
    convPlanesKernel(),
    q,
    [x.storage("conv3d").buffer, tensor.storage("conv3d").buffer],
    Math.ceil(count / PLANES_WG),
  );
  return { tensor, strides };
}
