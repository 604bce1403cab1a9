/**
 * The engine: WebGPU device, tensors (views over reference-counted GPU buffers), reverse-mode autograd,
 * scoped memory, the differentiable ops and the AdamW optimiser. Runs wherever WebGPU does (Deno, browsers).
 *
 * @example
 * ```ts
 * import { grad, mul, ready, sum, tensor } from "@voxgen/voxgen/engine";
 * await ready();
 * const x = tensor([1, 2, 3], [3], { requiresGrad: true });
 * const [dx] = grad(sum(mul(x, x)), [x]);
 * console.log(await dx.toArray()); // Float32Array [2, 4, 6]
 * ```
 *
 * @module
 */

export { type DeviceInfo, deviceInfo, ready, type ReadyOptions } from "./device.ts";
export { type DType, Storage, Tensor, type TensorInit } from "./tensor.ts";
export { type Backward, grad, GradNode, type GradOptions, noGrad, type Parent } from "./autograd.ts";
export { keep, memory, type MemoryInfo, releaseCachedMemory, scope } from "./memory.ts";
export { runtimeStats, sync } from "./runtime.ts";
export * from "./ops/create.ts";
export * from "./ops/elementwise.ts";
export * from "./ops/reduce.ts";
export * from "./ops/softmax.ts";
export * from "./ops/matmul.ts";
export { concat, expand, pad, permute, reshape, slice, transpose } from "./ops/view.ts";
export { contiguous } from "./ops/map.ts";
export { conv2d, type Conv2dOptions, conv3d, type Conv3dOptions } from "./ops/conv.ts";
export { attention, type AttentionOptions } from "./ops/attention.ts";
export { groupNorm, groupNormSilu, layerNorm } from "./ops/norm.ts";
export { avgPool2d, avgPool3d, interpolate, type InterpolateOptions } from "./ops/resample.ts";
export { rand, randn, type RandomOptions } from "./ops/random.ts";
export { type ContractionPlan, type ContractionStep, einsum, einsumPath } from "./ops/einsum.ts";
export { checkpoint } from "./ops/checkpoint.ts";
export { cast, castInPlace, type FloatDType } from "./ops/cast.ts";
export {
  checkPrecision,
  parsePrecision,
  type Precision,
  precisionProblem,
  PRECISIONS,
  withPrecision,
} from "./precision.ts";
export { warp3d, type WarpMode, type WarpOptions, type WarpPadding } from "./ops/warp.ts";
export { AdamW, type AdamWOptions } from "./optim.ts";
