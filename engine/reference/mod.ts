/**
 * Float64 reference implementations of every op the GPU engine provides, used as ground truth by the
 * kernel tests. See each module for semantics; all follow PyTorch / NumPy conventions.
 *
 * @module
 */

export * from "./tensor.ts";
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./shape.ts";
export * from "./matmul.ts";
export * from "./conv.ts";
export * from "./norm.ts";
export * from "./attention.ts";
export * from "./resample.ts";
export * from "./einsum.ts";
export * from "./random.ts";
export * from "./philox.ts";
export * from "./adamw.ts";
export * from "./metrics.ts";
