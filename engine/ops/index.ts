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
export { rand, randn, type RandomOptions } from "./random.ts";
