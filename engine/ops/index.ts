/**
 * The engine's differentiable ops, gathered.
 *
 * @module
 */

export * from "./create.ts";
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./softmax.ts";
export * from "./matmul.ts";
export { concat, expand, pad, permute, reshape, slice, transpose } from "./view.ts";
export { contiguous } from "./map.ts";
export * from "./conv.ts";
export type { ConvChunkConfig, ConvWeightGradChunkConfig } from "../../kernels/conv_chunk.ts";
export { attention, type AttentionOptions } from "./attention.ts";
export { groupNorm, groupNormSilu, layerNorm } from "./norm.ts";
export { avgPool2d, avgPool3d, interpolate, type InterpolateOptions } from "./resample.ts";
export { rand, randn, type RandomOptions } from "./random.ts";
export { type ContractionPlan, type ContractionStep, einsum, einsumPath } from "./einsum.ts";
export { checkpoint } from "./checkpoint.ts";
