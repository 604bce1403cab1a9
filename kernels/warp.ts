/**
 * 3-D spatial warping: every output voxel (x, y, z) samples the source at
 * `M · (x, y, z, 1) + d(x, y, z)`, where M is a 3×4 affine in voxel units and d an optional smooth
 * displacement given on a coarse grid spanning the output (trilinearly interpolated, in source voxels).
 * Sampling is trilinear or nearest; outside the source the value is `fill` (or the nearest edge voxel).
 *
 * Layout: source `[C, nz, ny, nx]`, output `[C, oz, oy, ox]` (x fastest), coarse field `[3, gz, gy, gx]`
 * holding (dx, dy, dz).
 *
 * Parameters: {@linkcode WARP_UNIFORMS}.
 *
 * @module
 */

import { type Kernel, LINEAR_INDEX, WG } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** How the source is sampled. */
export type WarpMode = "linear" | "nearest";
/** What is read outside the source. */
export type WarpPadding = "fill" | "border";

const WARP_FIELDS = {
  /** Output extents x, y, z; source extents x, y, z; channels; displacement grid extents x, y, z. */
  outSize: ["u32", 3],
  srcSize: ["u32", 3],
  channels: "u32",
  gridSize: ["u32", 3],
  /** Element offset of the source; 1 when there is a displacement field. */
  srcOffset: "u32",
  hasField: "u32",
  /** The 3×4 matrix output voxel → source voxel, row by row; the value read outside the source. */
  matrix: ["f32", 12],
  fill: "f32",
} as const;

/** Uniform layout of the warp kernel. */
export const WARP_UNIFORMS: UniformLayout<typeof WARP_FIELDS> = uniforms("warp3d", WARP_FIELDS);

const U = WARP_UNIFORMS;

/** The warp kernel for a sampling mode and padding rule. */
export const warpKernel: (mode: WarpMode, padding: WarpPadding) => Kernel = defineKernel(
  (mode) => `warp3d:${mode}`,
  (mode: WarpMode, padding: WarpPadding): KernelSource => warpSource(mode, padding),
);

function warpSource(mode: WarpMode, padding: WarpPadding): KernelSource {
  const code = /* wgsl */ `
${U.wgsl}
${LINEAR_INDEX}
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> field: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

fn m(i: u32) -> f32 { return ${U.read("matrix", "i")}; }

// Value of channel base at integer voxel (x, y, z), honouring the padding rule.
fn voxel(base: u32, x: i32, y: i32, z: i32) -> f32 {
  let n = vec3<i32>(i32(${U.read("srcSize", 0)}), i32(${U.read("srcSize", 1)}), i32(${U.read("srcSize", 2)}));
  let p = vec3<i32>(x, y, z);
  ${
    padding === "border"
      ? "let q = clamp(p, vec3<i32>(0), n - vec3<i32>(1));"
      : `if (any(p < vec3<i32>(0)) || any(p >= n)) { return ${U.read("fill")}; }\n  let q = p;`
  }
  return src[base + u32(q.x) + u32(n.x) * (u32(q.y) + u32(n.y) * u32(q.z))];
}

// Trilinear interpolation of the coarse displacement field at output voxel o.
fn displacement(o: vec3<f32>) -> vec3<f32> {
  let g = vec3<u32>(${U.read("gridSize", 0)}, ${U.read("gridSize", 1)}, ${U.read("gridSize", 2)});
  let out_size = vec3<f32>(f32(${U.read("outSize", 0)}), f32(${U.read("outSize", 1)}), f32(${
    U.read("outSize", 2)
  }));
  // The grid's corners sit on the output's corner voxels.
  let gp = o * (vec3<f32>(g) - vec3<f32>(1.0)) / max(out_size - vec3<f32>(1.0), vec3<f32>(1.0));
  let i0 = min(vec3<u32>(floor(gp)), g - vec3<u32>(1u));
  let i1 = min(i0 + vec3<u32>(1u), g - vec3<u32>(1u));
  let t = gp - vec3<f32>(i0);
  let plane = g.x * g.y * g.z;
  var d = vec3<f32>(0.0);
  for (var c = 0u; c < 3u; c = c + 1u) {
    let b = c * plane;
    let c000 = field[b + i0.x + g.x * (i0.y + g.y * i0.z)];
    let c100 = field[b + i1.x + g.x * (i0.y + g.y * i0.z)];
    let c010 = field[b + i0.x + g.x * (i1.y + g.y * i0.z)];
    let c110 = field[b + i1.x + g.x * (i1.y + g.y * i0.z)];
    let c001 = field[b + i0.x + g.x * (i0.y + g.y * i1.z)];
    let c101 = field[b + i1.x + g.x * (i0.y + g.y * i1.z)];
    let c011 = field[b + i0.x + g.x * (i1.y + g.y * i1.z)];
    let c111 = field[b + i1.x + g.x * (i1.y + g.y * i1.z)];
    let x00 = mix(c000, c100, t.x);
    let x10 = mix(c010, c110, t.x);
    let x01 = mix(c001, c101, t.x);
    let x11 = mix(c011, c111, t.x);
    d[c] = mix(mix(x00, x10, t.y), mix(x01, x11, t.y), t.z);
  }
  return d;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  let ox = ${U.read("outSize", 0)}; let oy = ${U.read("outSize", 1)}; let oz = ${U.read("outSize", 2)};
  let voxels = ox * oy * oz;
  if (i >= voxels * ${U.read("channels")}) { return; }
  let c = i / voxels;
  let r = i % voxels;
  let o = vec3<f32>(f32(r % ox), f32((r / ox) % oy), f32(r / (ox * oy)));
  var p = vec3<f32>(
    m(0u) * o.x + m(1u) * o.y + m(2u) * o.z + m(3u),
    m(4u) * o.x + m(5u) * o.y + m(6u) * o.z + m(7u),
    m(8u) * o.x + m(9u) * o.y + m(10u) * o.z + m(11u));
  if (${U.read("hasField")} != 0u) { p = p + displacement(o); }
  let base = ${U.read("srcOffset")} + c * ${U.read("srcSize", 0)} * ${U.read("srcSize", 1)} * ${
    U.read("srcSize", 2)
  };
  ${
    mode === "nearest"
      ? "let q = vec3<i32>(floor(p + vec3<f32>(0.5)));\n  dst[i] = voxel(base, q.x, q.y, q.z);"
      : `let f = floor(p);
  let q = vec3<i32>(f);
  let t = p - f;
  let x00 = mix(voxel(base, q.x, q.y, q.z), voxel(base, q.x + 1, q.y, q.z), t.x);
  let x10 = mix(voxel(base, q.x, q.y + 1, q.z), voxel(base, q.x + 1, q.y + 1, q.z), t.x);
  let x01 = mix(voxel(base, q.x, q.y, q.z + 1), voxel(base, q.x + 1, q.y, q.z + 1), t.x);
  let x11 = mix(voxel(base, q.x, q.y + 1, q.z + 1), voxel(base, q.x + 1, q.y + 1, q.z + 1), t.x);
  dst[i] = mix(mix(x00, x10, t.y), mix(x01, x11, t.y), t.z);`
  }
}
`;
  return { code, bindings: ["read", "read", "write"] };
}
