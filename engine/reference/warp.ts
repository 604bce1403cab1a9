/**
 * Float64 reference of `warp3d` (see kernels/warp.ts for the semantics).
 *
 * @module
 */

import type { RefTensor } from "./tensor.ts";

/** Options mirroring the GPU op. */
export interface RefWarpOptions {
  /** Output [oz, oy, ox]. */
  size?: [number, number, number];
  /** 3×4 output-voxel → source-voxel affine over (x, y, z). */
  matrix?: number[][];
  /** Coarse displacement [3, gz, gy, gx]. */
  field?: RefTensor;
  /** Sampling. */
  mode?: "linear" | "nearest";
  /** Outside handling. */
  padding?: "fill" | "border";
  /** Fill value. */
  fill?: number;
}

/** Reference warp of x [C, nz, ny, nx] (leading dims flattened into C). */
export function warp3d(x: RefTensor, opts: RefWarpOptions = {}): RefTensor {
  const [nz, ny, nx] = x.shape.slice(-3);
  const lead = x.shape.slice(0, -3);
  const C = lead.reduce((a, b) => a * b, 1);
  const [oz, oy, ox] = opts.size ?? [nz, ny, nx];
  const M = opts.matrix ?? [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]];
  const fill = opts.fill ?? 0;
  const voxel = (c: number, px: number, py: number, pz: number): number => {
    if (opts.padding === "border") {
      px = Math.min(Math.max(px, 0), nx - 1);
      py = Math.min(Math.max(py, 0), ny - 1);
      pz = Math.min(Math.max(pz, 0), nz - 1);
    } else if (px < 0 || py < 0 || pz < 0 || px >= nx || py >= ny || pz >= nz) return fill;
    return x.data[c * nx * ny * nz + px + nx * (py + ny * pz)];
  };
  const disp = (o: number[]): number[] => {
    const f = opts.field!;
    const [, gz, gy, gx] = f.shape;
    const g = [gx, gy, gz];
    const outSize = [ox, oy, oz];
    const gp = o.map((v, a) => (v * (g[a] - 1)) / Math.max(outSize[a] - 1, 1));
    const i0 = gp.map((v, a) => Math.min(Math.floor(v), g[a] - 1));
    const i1 = i0.map((v, a) => Math.min(v + 1, g[a] - 1));
    const t = gp.map((v, a) => v - i0[a]);
    return [0, 1, 2].map((c) => {
      let s = 0;
      for (const [wx, ix] of [[1 - t[0], i0[0]], [t[0], i1[0]]]) {
        for (const [wy, iy] of [[1 - t[1], i0[1]], [t[1], i1[1]]]) {
          for (const [wz, iz] of [[1 - t[2], i0[2]], [t[2], i1[2]]]) {
            s += wx * wy * wz * f.data[c * gx * gy * gz + ix + gx * (iy + gy * iz)];
          }
        }
      }
      return s;
    });
  };
  const out = new Float64Array(C * ox * oy * oz);
  for (let c = 0; c < C; c++) {
    for (let z = 0; z < oz; z++) {
      for (let y = 0; y < oy; y++) {
        for (let xo = 0; xo < ox; xo++) {
          let p = [0, 1, 2].map((r) => M[r][0] * xo + M[r][1] * y + M[r][2] * z + M[r][3]);
          if (opts.field) {
            const d = disp([xo, y, z]);
            p = p.map((v, a) => v + d[a]);
          }
          let v: number;
          if (opts.mode === "nearest") {
            v = voxel(c, Math.floor(p[0] + 0.5), Math.floor(p[1] + 0.5), Math.floor(p[2] + 0.5));
          } else {
            const f = p.map(Math.floor);
            const t = p.map((q, a) => q - f[a]);
            v = 0;
            for (let dz = 0; dz < 2; dz++) {
              for (let dy = 0; dy < 2; dy++) {
                for (let dx = 0; dx < 2; dx++) {
                  const w = (dx ? t[0] : 1 - t[0]) * (dy ? t[1] : 1 - t[1]) * (dz ? t[2] : 1 - t[2]);
                  v += w * voxel(c, f[0] + dx, f[1] + dy, f[2] + dz);
                }
              }
            }
          }
          out[c * ox * oy * oz + xo + ox * (y + oy * z)] = v;
        }
      }
    }
  }
  return { shape: [...lead, oz, oy, ox], data: out };
}
