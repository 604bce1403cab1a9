/**
 * The contract between WGSL kernel generators (this layer) and the engine's dispatcher.
 *
 * Every kernel binds its parameters as a uniform block at `@binding(0)` and its storage buffers at
 * `@binding(1..n)` of group 0, in the order of {@linkcode Kernel.bindings}. Generators are declared with
 * `defineKernel` (program.ts), which derives the cache key; parameters are declared with `uniforms`
 * (uniforms.ts), which generates both the WGSL reads and the host's packing.
 *
 * @module
 */

/** How a kernel uses one storage binding. */
export type BindingAccess = "read" | "write";

/**
 * A compiled-on-demand compute kernel. Made by a generator declared with `defineKernel` (program.ts), which
 * derives the key from the generator's arguments.
 */
export interface Kernel {
  /** Unique cache key: the kernel family plus everything baked into the code (see program.ts). */
  readonly key: string;
  /** The kernel family, two fields such as `"conv3d:chunk"` or `"map:add"` (the profiler groups by it). */
  readonly family: string;
  /** WGSL source. */
  readonly code: string;
  /** Access of storage bindings 1..n. */
  readonly bindings: readonly BindingAccess[];
}

/** Threads per workgroup of the 1-D kernels. */
export const WG = 256;

/**
 * WGSL prelude for 1-D kernels whose grid may be folded into two dimensions when it exceeds the 65535
 * workgroups per dimension limit. `linearIndex()` gives the global thread index.
 */
export const LINEAR_INDEX = /* wgsl */ `
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wid.x + wid.y * nwg.x + wid.z * nwg.x * nwg.y;
}
`;

/**
 * WGSL functions for IEEE infinities. WGSL has no literal for them, naga cannot bitcast in a const, and
 * Chromium's Tint rejects a constant expression that evaluates to infinity ("value inf cannot be
 * represented as 'f32'"): the bits go through a variable, so the bitcast happens at run time.
 */
export const INF = /* wgsl */ `
fn f32_inf() -> f32 { var bits = 0x7f800000u; return bitcast<f32>(bits); }
fn f32_neg_inf() -> f32 { var bits = 0xff800000u; return bitcast<f32>(bits); }
`;

/**
 * WGSL accessor for a parameter block of `count` u32 words packed as vec4s (uniform arrays need 16-byte
 * strides). Kernels use it through a declared layout (`uniforms` in uniforms.ts), not by word numbers.
 */
export function paramsBlock(count: number): string {
  const vecs = Math.max(1, Math.ceil(count / 4));
  return /* wgsl */ `
struct Params { w: array<vec4<u32>, ${vecs}> }
@group(0) @binding(0) var<uniform> P: Params;
fn pu(i: u32) -> u32 { return P.w[i >> 2u][i & 3u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(P.w[i >> 2u][i & 3u]); }
`;
}
