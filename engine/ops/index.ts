/**
 * The engine's differentiable ops, gathered. Importing this module also wires the ops that autograd and
 * `expand` need into those modules (they cannot import them directly without a cycle).
 *
 * @module
 */

import { installAutogradOps } from "../autograd.ts";
import { add } from "./elementwise.ts";
import { onesLike, zerosLike } from "./create.ts";
import { sumTo } from "./reduce.ts";
import { installSumTo } from "./view.ts";

installAutogradOps({ add: (a, b) => add(a, b), onesLike, zerosLike });
installSumTo(sumTo);

export * from "./create.ts";
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./softmax.ts";
export * from "./matmul.ts";
export { concat, expand, pad, permute, reshape, slice, transpose } from "./view.ts";
export { contiguous } from "./map.ts";
export { rand, randn, type RandomOptions } from "./random.ts";
