/**
 * voxgen: 3D medical image diffusion on WebGPU.
 *
 * Tensors live in GPU buffers; WGSL kernels do the work; reverse-mode autograd lets models be trained.
 *
 * @example
 * ```ts
 * import { grad, ready, sum, tensor, mul } from "@voxgen/voxgen";
 * await ready();
 * const x = tensor([1, 2, 3], [3], { requiresGrad: true });
 * const [dx] = grad(sum(mul(x, x)), [x]);
 * console.log(await dx.toArray()); // Float32Array [2, 4, 6]
 * ```
 *
 * @module
 */

export { type DeviceInfo, deviceInfo, ready, type ReadyOptions } from "./engine/device.ts";
export { type DType, Storage, Tensor, type TensorInit } from "./engine/tensor.ts";
export { type Backward, grad, GradNode, type GradOptions, noGrad, type Parent } from "./engine/autograd.ts";
export { keep, memory, type MemoryInfo, releaseCachedMemory, scope } from "./engine/memory.ts";
export { runtimeStats, sync } from "./engine/runtime.ts";
export * from "./engine/ops/index.ts";
export { AdamW, type AdamWOptions } from "./engine/optim.ts";
