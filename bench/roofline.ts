/**
 * The adapter's own roofline: an FMA-bound kernel for peak FLOP/s and a vec4 copy kernel for bandwidth.
 * Both go through the engine's dispatcher (the {@linkcode Kernel} contract of `kernels/types.ts`).
 *
 * @module
 */

import { defineKernel, type KernelSource } from "../kernels/program.ts";
import { type Kernel, LINEAR_INDEX, paramsBlock } from "../kernels/types.ts";
import { gpu } from "../engine/device.ts";
import { dispatch } from "../engine/runtime.ts";

/** Independent vec4 FMA chains per thread of the peak kernel. */
export const FMA_CHAINS = 6;
/** FMAs per chain in one (unrolled) loop iteration. */
const FMA_UNROLL = 8;
/** Threads per workgroup of the peak kernel. */
const FMA_WG = 64;

/**
 * The FMA-bound kernel: each thread runs `chains` independent chains `a = fma(a, m, c)` on vec4s for
 * `iters × unroll` steps, then writes their sum (so nothing is dead code). `m` and `c` come from the
 * parameter block, so the compiler cannot fold the chains.
 */
export function fmaPeakKernel(chains = FMA_CHAINS, unroll = FMA_UNROLL): Kernel {
  return fmaPeakProgram(chains, unroll);
}

const fmaPeakProgram = defineKernel("bench:fma", (chains: number, unroll: number): KernelSource => {
  const decl = [...Array(chains).keys()].map((i) => `var a${i} = vec4<f32>(f32(gid.x) * 1e-7 + ${i}.0);`);
  const step = [...Array(chains).keys()].map((i) => `a${i} = fma(a${i}, m, c);`).join(" ");
  const body = Array(unroll).fill(`    ${step}`).join("\n");
  const total = [...Array(chains).keys()].map((i) => `a${i}`).join(" + ");
  const code = /* wgsl */ `
${paramsBlock(3)}
${LINEAR_INDEX}
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@compute @workgroup_size(${FMA_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32, @builtin(global_invocation_id) gid: vec3<u32>) {
  let iters = pu(0u);
  let m = vec4<f32>(pf(1u));
  let c = vec4<f32>(pf(2u));
  ${decl.join("\n  ")}
  for (var i = 0u; i < iters; i = i + 1u) {
${body}
  }
  out[linear_workgroup(wid, nwg) * ${FMA_WG}u + li] = ${total};
}
`;
  return { code, bindings: ["write"] };
});

/** A recorded FMA-peak workload: `run()` records one dispatch of `flops` floating-point operations. */
export interface Workload {
  /** Records one repetition. */
  run: () => void;
  /** FLOPs (2 per FMA lane) or bytes moved per repetition. */
  amount: number;
  /** Frees the GPU buffers. */
  dispose: () => void;
}

/** The FMA peak workload: `workgroups` × 64 threads, `iters` loop iterations each. */
export function fmaPeak(workgroups = 1024, iters = 256, chains = FMA_CHAINS, unroll = FMA_UNROLL): Workload {
  const kernel = fmaPeakKernel(chains, unroll);
  const out = gpu().createBuffer({ size: workgroups * FMA_WG * 16, usage: GPUBufferUsage.STORAGE });
  const params = new Uint32Array(3);
  params[0] = iters;
  new Float32Array(params.buffer, 4, 2).set([0.9999, 1e-4]);
  const flops = workgroups * FMA_WG * iters * unroll * chains * 4 * 2;
  return {
    run: () => dispatch(kernel, params, [out], workgroups),
    amount: flops,
    dispose: () => out.destroy(),
  };
}

/** A vec4 copy kernel over `n` vec4s (grid folded past 65535 workgroups). */
export const copyKernel: () => Kernel = defineKernel("bench:copy4", (): KernelSource => {
  const code = /* wgsl */ `
${paramsBlock(1)}
${LINEAR_INDEX}
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = linear_workgroup(wid, nwg) * 256u + li;
  if (i < pu(0u)) { dst[i] = src[i]; }
}
`;
  return { code, bindings: ["read", "write"] };
});

/** The copy workload over `bytes` bytes (read + write counted). */
export function copyBandwidth(bytes = 64 << 20): Workload {
  const kernel = copyKernel();
  const usage = GPUBufferUsage.STORAGE;
  const src = gpu().createBuffer({ size: bytes, usage });
  const dst = gpu().createBuffer({ size: bytes, usage });
  const n = bytes / 16;
  const params = new Uint32Array([n]);
  return {
    run: () => dispatch(kernel, params, [src, dst], Math.ceil(n / 256)),
    amount: 2 * bytes,
    dispose: () => {
      src.destroy();
      dst.destroy();
    },
  };
}
