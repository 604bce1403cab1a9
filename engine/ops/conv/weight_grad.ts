/**
 * The gradient of a convolution w.r.t. its weight (no autograd): the weight-gradient chunk kernel on
 * software adapters, else the direct weight-gradient kernel's partial sums, or the fallback.
 *
 * @module
 */

import {
  convGradTile,
  type ConvShapeKey,
  convWeightGradKernel,
  convWeightGradNaiveKernel,
  inputSpan,
  NAIVE_WG,
  type Triple,
  WGRAD,
  WGRAD_NAIVE,
} from "../../../kernels/conv.ts";
import {
  type ConvWeightGradChunkConfig,
  convWeightGradChunkKernel,
  weightGradChunkUniforms,
} from "../../../kernels/conv_chunk.ts";
import { isSoftwareAdapter } from "../../device.ts";
import { dispatch } from "../../runtime.ts";
import { fromData, type Tensor } from "../../tensor.ts";
import { map } from "../map.ts";
import { sum } from "../reduce.ts";
import { reshape } from "../view.ts";
import { inputPlanes, launch, padVolume } from "./blocks.ts";
import type { Geometry } from "./geometry.ts";
import { convSettings, planWeightGrad, weightGradChunkConfigFor } from "./plan.ts";

/**
 * The weight gradient on the chunk kernel: the input's kw-planes (as the forward reads them), then one
 * dispatch per (batch item, chunk of 4·depth output positions), each adding its share into dW.
 */
export function weightGradChunk(x: Tensor, gy: Tensor, g: Geometry, cfg: ConvWeightGradChunkConfig): Tensor {
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const K = g.cin * taps;
  const [OD, OH, OW] = g.outDims;
  const positions = OD * OH * OW;
  const key: ConvShapeKey = { kernel: g.kernel, stride: g.stride, dilation: g.dil };
  const planes = inputPlanes(x, {
    key,
    n: g.n,
    cin: g.cin,
    inDims: g.inDims,
    pad: g.pad,
    outDims: g.outDims,
  });
  const [xChan, xPlane, xRowD, xRowH] = planes.strides;
  const dw = fromData(null, [g.cout, K]);
  const kernel = convWeightGradChunkKernel(key, cfg);
  const buffers = [
    planes.tensor.storage("conv3d").buffer,
    gy.storage("conv3d").buffer,
    dw.storage("conv3d").buffer,
  ];
  const grid: [number, number, number] = [Math.ceil(K / cfg.threads), Math.ceil(g.cout / cfg.rows), 1];
  const layout = weightGradChunkUniforms(cfg.depth);
  for (let n = 0; n < g.n; n++) {
    for (let p0 = 0; p0 < positions; p0 += 4 * cfg.depth) {
      const valid = Math.min(cfg.depth, (positions - p0) / 4);
      // Each position group's row in the planes: computed here once rather than divided out per thread.
      const rows = new Array<number>(cfg.depth).fill(0);
      for (let j = 0; j < valid; j++) {
        const q = p0 + 4 * j;
        const od = Math.floor(q / (OH * OW));
        const oh = Math.floor(q / OW) % OH;
        rows[j] = od * g.stride[0] * xRowD + oh * g.stride[1] * xRowH + (q % OW) / 4;
      }
      const p = layout.pack({
        K,
        cout: g.cout,
        xN: n * g.cin * xChan,
        xChan,
        xPlane,
        xRowD,
        xRowH,
        gOff4: (gy.offset + n * g.cout * positions + p0) / 4,
        gC4: positions / 4,
        valid,
        first: n === 0 && p0 === 0 ? 1 : 0,
        zero: 0,
        guard: 0,
        rows,
      });
      dispatch(kernel, p, buffers, grid);
    }
  }
  planes.tensor.dispose();
  const out = reshape(dw, [g.cout, g.cinG, ...g.kernel]);
  dw.dispose();
  return out;
}

/** The fallback weight gradient (x, gy contiguous). */
export function weightGradNaive(x: Tensor, gy: Tensor, g: Geometry): Tensor {
  const dw = fromData(null, [g.cout, g.cinG, ...g.kernel]);
  const [d, h, w] = g.inDims;
  const [od, oh, ow] = g.outDims;
  const [kd, kh, kw] = g.kernel;
  const [sd, sh, sw] = g.stride;
  const p = WGRAD_NAIVE.pack({
    cin: g.cin,
    d,
    h,
    w,
    cinG: g.cinG,
    coutG: g.coutG,
    cout: g.cout,
    padD: g.pad[0],
    padH: g.pad[1],
    padW: g.pad[2],
    od,
    oh,
    ow,
    batch: g.n,
    kd,
    kh,
    kw,
    sd,
    sh,
    sw,
    dd: g.dil[0],
    dh: g.dil[1],
    dw: g.dil[2],
    xOff: x.offset,
    gOff: gy.offset,
  });
  const kernel = convWeightGradNaiveKernel();
  launch(
    kernel,
    p,
    [x.storage("conv3d").buffer, gy.storage("conv3d").buffer, dw.storage("conv3d").buffer],
    Math.ceil(dw.size / NAIVE_WG),
  );
  return dw;
}

/** Gradient w.r.t. the weight (no autograd); x, gy contiguous. */
export function weightGradWhole(x: Tensor, gy: Tensor, g: Geometry): Tensor {
  // gradOut is read as vec4s: its offset must be whole vec4s (a fresh contiguous tensor's is 0).
  const chunk = g.n > 0 && g.cin > 0 && gy.offset % 4 === 0 ? weightGradChunkConfigFor(g) : null;
  if (chunk) return weightGradChunk(x, gy, g, chunk);
  const key: ConvShapeKey = { kernel: g.kernel, stride: g.stride, dilation: g.dil };
  const tiling = planWeightGrad(key, g.cinG, g.coutG, g.outDims);
  if (!tiling) return weightGradNaive(x, gy, g);
  const tile = convGradTile(key, tiling);
  const taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const [OD, OH, OW] = g.outDims;
  const blocksH = Math.ceil(OH / tiling.rows);
  const blocksW = Math.ceil(OW / tiling.cols);
  const blocks = g.n * OD * blocksH * blocksW;
  // No batch or no input channels: nothing to sum.
  if (blocks === 0 || g.cinG === 0) return map("fill", "s0", [], [0], [g.cout, g.cinG, ...g.kernel]);
  const coTiles = Math.ceil(g.coutG / tile.coChannels);
  const ciTiles = Math.ceil(g.cinG / tile.ciChannels);
  // Enough workgroups to fill the device, never fewer than one block each. Each split adds a partial copy
  // of dW that is summed afterwards, so a CPU adapter gets 4 per core rather than a GPU's few hundred
  // (at 32³ on 2 cores, 8 instead of 256 made forward + backward of a 3³ convolution 1.05–1.19× faster).
  const base = coTiles * ciTiles * g.groups;
  const target = convSettings.weightGradWorkgroups ||
    (isSoftwareAdapter() ? 4 * (navigator.hardwareConcurrency || 2) : 256);
  const splits = Math.max(1, Math.min(blocks, Math.ceil(target / base)));
  const perSplit = Math.ceil(blocks / splits);
  const used = Math.ceil(blocks / perSplit);
  // Both operands padded so that whole blocks (with the input's halo) are in bounds.
  const xDims: Triple = [
    inputSpan(OD, g.kernel[0], g.stride[0], g.dil[0]),
    (blocksH - 1) * tiling.rows * g.stride[1] + tile.inRows,
    (blocksW - 1) * tiling.cols * g.stride[2] + 4 * tile.rowVec4s,
  ];
  const xp = padVolume(x, xDims, [-g.pad[0], -g.pad[1], -g.pad[2]]);
  const gp = padVolume(gy, [OD, blocksH * tiling.rows, blocksW * tiling.cols], [0, 0, 0]);
  const partial = fromData(null, [g.cout * g.cinG * taps, used]);
  const p = WGRAD.pack({
    cin: g.cin,
    pd: xDims[0],
    ph: xDims[1],
    pw4: xDims[2] / 4,
    cinG: g.cinG,
    coutG: g.coutG,
    cout: g.cout,
    od: OD,
    gh: blocksH * tiling.rows,
    gw4: (blocksW * tiling.cols) / 4,
    blocksH,
    blocksW,
    blocks,
    perSplit,
    coTiles,
    ciTiles,
    groups: g.groups,
    splits: used,
    xOff4: 0,
    gOff4: 0,
    outOff: 0,
  });
  const kernel = convWeightGradKernel(key, tiling);
  launch(kernel, p, [
    xp.storage("conv3d").buffer,
    gp.storage("conv3d").buffer,
    partial.storage("conv3d").buffer,
  ], base * used);
  xp.dispose();
  gp.dispose();
  const wShape = [g.cout, g.cinG, ...g.kernel];
  if (used === 1) {
    const out = reshape(partial, wShape);
    partial.dispose();
    return out;
  }
  const summed = sum(partial, 1);
  partial.dispose();
  const out = reshape(summed, wShape);
  summed.dispose();
  return out;
}
