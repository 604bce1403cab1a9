/**
 * The forward convolution (no autograd): the chunk kernel on software adapters, else the direct kernel over
 * the input padded to whole tiles, or the unblocked fallback.
 *
 * @module
 */

import { CONV, convTile, NAIVE, NAIVE_WG, type Triple } from "../../../kernels/conv.ts";
import { CHUNK, type ConvChunkConfig, convChunkKernel } from "../../../kernels/conv_chunk.ts";
import { dispatch } from "../../runtime.ts";
import { sizeOf } from "../../shape.ts";
import { fromData, type Tensor } from "../../tensor.ts";
import { inputPlanes, launch, packWeights, padVolume } from "./blocks.ts";
import { contiguousStrides5, type ConvCall, type Geometry } from "./geometry.ts";
import { chunkConfigFor, planConv } from "./plan.ts";

/** Runs `call` with the chunk kernel: w-planes of the input, then one dispatch per input-channel chunk. */
export function runConvChunk(
  x: Tensor,
  packFor: (coP: number) => Tensor,
  bias: Tensor | null,
  out: Tensor,
  call: ConvCall,
  cfg: ConvChunkConfig,
): void {
  const [od, oh, ow] = call.outDims;
  const planes = inputPlanes(x, call);
  const coP = Math.ceil(call.coutG / cfg.rows) * cfg.rows;
  const packed = packFor(coP);
  const kernel = convChunkKernel(call.key, cfg);
  const positions = od * oh * ow;
  const [xChan, xPlane, xRowD, xRowH] = planes.strides;
  const p = {
    positions,
    oh,
    ow,
    cinG: call.cinG,
    coutG: call.coutG,
    coP,
    groups: call.groups,
    cin: call.cin,
    xChan,
    xPlane,
    xRowD,
    xRowH,
    outOff4: call.outOff / 4,
    oN4: call.outStrides[0] / 4,
    oC4: call.outStrides[1] / 4,
    biasOff: bias ? bias.offset : 0,
    hasBias: bias ? 1 : 0,
    zero: 0,
    guard: 0,
  };
  const buffers = [
    planes.tensor.storage("conv3d").buffer,
    packed.storage("conv3d").buffer,
    (bias ?? packed).storage("conv3d").buffer,
    out.storage("conv3d").buffer,
  ];
  const grid: [number, number, number] = [
    Math.ceil(positions / (4 * cfg.threads)),
    coP / cfg.rows,
    call.n * call.groups,
  ];
  for (let ci0 = 0; ci0 < call.cinG; ci0 += cfg.channels) {
    dispatch(kernel, CHUNK.pack({ ...p, ci0, first: ci0 === 0 ? 1 : 0 }), buffers, grid);
  }
  planes.tensor.dispose();
  packed.dispose();
}

/**
 * Runs one convolution of the contiguous input `x` into `out`. `packFor(coP)` packs the weights for the
 * chosen tile's padded channel count.
 */
export function runConv(
  x: Tensor,
  packFor: (coP: number) => Tensor,
  bias: Tensor | null,
  out: Tensor,
  call: ConvCall,
): void {
  const chunk = chunkConfigFor(call);
  if (chunk) return runConvChunk(x, packFor, bias, out, call, chunk);
  const plan = planConv(call.key, call.outDims, call.coutG);
  const tile = plan.tiling ? convTile(call.key, plan.tiling) : null;
  const coTiles = tile ? Math.ceil(call.coutG / tile.channels) : 1;
  const coP = tile ? coTiles * tile.channels : call.coutG;
  const packed = packFor(coP);
  const biasBuffer = (bias ?? packed).storage("conv3d").buffer;
  const outBuffer = out.storage("conv3d").buffer;
  if (!tile) {
    const [d, h, w] = call.inDims;
    const [od, oh, ow] = call.outDims;
    const [kd, kh, kw] = call.key.kernel;
    const [sd, sh, sw] = call.key.stride;
    const [dd, dh, dw] = call.key.dilation;
    const [oN, oC, oD, oH, oW] = call.outStrides;
    const p = NAIVE.pack({
      cin: call.cin,
      d,
      h,
      w,
      cinG: call.cinG,
      coutG: call.coutG,
      coP,
      padD: call.pad[0],
      padH: call.pad[1],
      padW: call.pad[2],
      od,
      oh,
      ow,
      batch: call.n,
      groups: call.groups,
      kd,
      kh,
      kw,
      sd,
      sh,
      sw,
      dd,
      dh,
      dw,
      xOff: x.offset,
      outOff: call.outOff,
      biasOff: bias ? bias.offset : 0,
      hasBias: bias ? 1 : 0,
      oN,
      oC,
      oD,
      oH,
      oW,
    });
    const threads = call.n * call.groups * call.coutG * sizeOf(call.outDims);
    launch(plan.kernel, p, [
      x.storage("conv3d").buffer,
      packed.storage("conv3d").buffer,
      biasBuffer,
      outBuffer,
    ], Math.ceil(threads / NAIVE_WG));
    packed.dispose();
    return;
  }
  const tiles = call.outDims.map((o, a) => Math.ceil(o / tile.out[a]));
  // Pad so that every tile's reads, halo included, are in bounds.
  const padded = [0, 1, 2].map((a) => (tiles[a] - 1) * tile.out[a] * call.key.stride[a] + tile.in[a]);
  padded[2] = (tiles[2] - 1) * tile.out[2] * call.key.stride[2] + 4 * tile.rowVec4s;
  const xp = padVolume(x, padded as unknown as Triple, [-call.pad[0], -call.pad[1], -call.pad[2]]);
  const [oN, oC, oD, oH, oW] = call.outStrides;
  const p = CONV.pack({
    cin: call.cin,
    pd: padded[0],
    ph: padded[1],
    pw4: padded[2] / 4,
    cinG: call.cinG,
    coutG: call.coutG,
    coP,
    od: call.outDims[0],
    oh: call.outDims[1],
    ow: call.outDims[2],
    tilesD: tiles[0],
    tilesH: tiles[1],
    tilesW: tiles[2],
    coTiles,
    groups: call.groups,
    xOff4: 0,
    outOff: call.outOff,
    biasOff: bias ? bias.offset : 0,
    hasBias: bias ? 1 : 0,
    oN,
    oC,
    oD,
    oH,
    oW,
  });
  const workgroups = tiles[0] * tiles[1] * tiles[2] * coTiles * call.groups * call.n;
  launch(plan.kernel, p, [
    xp.storage("conv3d").buffer,
    packed.storage("conv3d").buffer,
    biasBuffer,
    outBuffer,
  ], workgroups);
  xp.dispose();
  packed.dispose();
}

/** Forward convolution (no autograd); x, w contiguous. */
export function forwardWhole(x: Tensor, w: Tensor, bias: Tensor | null, g: Geometry): Tensor {
  const outShape = [g.n, g.cout, ...g.outDims];
  const out = fromData(null, outShape);
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const call: ConvCall = {
    key: { kernel: g.kernel, stride: g.stride, dilation: g.dil },
    n: g.n,
    cin: g.cin,
    inDims: g.inDims,
    cinG: g.cinG,
    coutG: g.coutG,
    groups: g.groups,
    pad: g.pad,
    outDims: g.outDims,
    outOff: 0,
    outStrides: contiguousStrides5(outShape),
  };
  const packFor = (coP: number) =>
    packWeights(w, call, coP, {
      sG: g.coutG * g.cinG * taps,
      sCi: taps,
      sCo: g.cinG * taps,
      sK: [g.kernel[1] * g.kernel[2], g.kernel[2], 1],
      start: [0, 0, 0],
      step: [1, 1, 1],
    });
  runConv(x, packFor, bias, out, call);
  return out;
}
