/**
 * `warp3d`: resamples volumes through an affine map plus an optional smooth displacement field, with
 * trilinear or nearest sampling. Used for augmentation (random affine + elastic deformation, identical
 * for images and label maps), reorientation, resampling to a spacing and resizing. Not differentiable:
 * the result is a constant.
 *
 * @module
 */

import { WARP_UNIFORMS, warpKernel, type WarpMode, type WarpPadding } from "../../kernels/warp.ts";
import { WG } from "../../kernels/types.ts";
import { dispatch } from "../runtime.ts";
import { formatShape, sizeOf } from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { contiguous } from "./map.ts";

export type { WarpMode, WarpPadding };

/** Options of {@linkcode warp3d}. */
export interface WarpOptions {
  /** Output spatial size [oz, oy, ox] (default: the source's). */
  size?: readonly [number, number, number];
  /**
   * Affine from output voxel (x, y, z, 1) to source voxel coordinates, as 3 rows of 4 (default: identity).
   * Note the order x, y, z: x is the last (fastest) tensor axis.
   */
  matrix?: readonly (readonly number[])[];
  /** Coarse displacement field [3, gz, gy, gx] of (dx, dy, dz) in source voxels, spanning the output. */
  field?: Tensor;
  /** "linear" (trilinear, default) or "nearest" (for label maps). */
  mode?: WarpMode;
  /** Outside the source: "fill" with `fill` (default 0), or repeat the "border" voxel. */
  padding?: WarpPadding;
  /** Value outside the source with padding "fill". */
  fill?: number;
}

const IDENTITY = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]];

/** Warps `x` [C, nz, ny, nx] (or [N, C, nz, ny, nx], every sample the same way). */
export function warp3d(x: Tensor, opts: WarpOptions = {}): Tensor {
  if (!(x instanceof Tensor)) throw new Error("warp3d: x must be a Tensor.");
  x.storage("warp3d");
  if (x.rank !== 4 && x.rank !== 5) {
    throw new Error(`warp3d: x ${formatShape(x.shape)} must be [C, D, H, W] or [N, C, D, H, W].`);
  }
  const [nz, ny, nx] = x.shape.slice(-3);
  const lead = x.shape.slice(0, -3);
  const channels = sizeOf(lead);
  const [oz, oy, ox] = opts.size ?? [nz, ny, nx];
  if (![oz, oy, ox].every((d) => Number.isInteger(d) && d > 0)) {
    throw new Error(`warp3d: size ${JSON.stringify(opts.size)} must be three positive integers.`);
  }
  const matrix = opts.matrix ?? IDENTITY;
  if (matrix.length !== 3 || matrix.some((r) => r.length !== 4 || r.some((v) => !Number.isFinite(v)))) {
    throw new Error("warp3d: matrix must be 3 rows of 4 finite numbers (output voxel → source voxel).");
  }
  const field = opts.field;
  if (field) {
    field.storage("warp3d");
    if (field.rank !== 4 || field.shape[0] !== 3 || field.shape.slice(1).some((d) => d < 1)) {
      throw new Error(`warp3d: field ${formatShape(field.shape)} must be [3, gz, gy, gx].`);
    }
  }
  const src = contiguous(x);
  const fieldData = field ? contiguous(field) : fromData(new Float32Array(4), [4]);
  const out = fromData(null, [...lead, oz, oy, ox]);
  const [gz, gy, gx] = field ? field.shape.slice(1) : [1, 1, 1];
  const params = WARP_UNIFORMS.pack({
    outSize: [ox, oy, oz],
    srcSize: [nx, ny, nz],
    channels,
    gridSize: [gx, gy, gz],
    srcOffset: src.offset,
    hasField: field ? 1 : 0,
    matrix: matrix.flat(),
    fill: opts.fill ?? 0,
  });
  const buffers = [
    src.storage("warp3d").buffer,
    fieldData.storage("warp3d").buffer,
    out.storage("warp3d").buffer,
  ];
  dispatch(
    warpKernel(opts.mode ?? "linear", opts.padding ?? "fill"),
    params,
    buffers,
    Math.ceil(out.size / WG),
  );
  src.dispose();
  fieldData.dispose();
  return out;
}
