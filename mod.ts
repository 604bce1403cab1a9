/**
 * voxgen: 3D medical image diffusion on WebGPU, in Deno and in browsers.
 *
 * This entry point is the everyday API and runs wherever WebGPU does: the engine (tensors, autograd, ops,
 * AdamW), the networks (MONAI's `DiffusionModelUNet`, ControlNet, VCM), the samplers, building a model
 * from a model file's bytes, and the generation pipeline. The layers have their own entry points
 * (`@voxgen/voxgen/engine`, `/nn`, `/models`, `/samplers`, `/adapters`, `/metrics`, `/io`); files on disk,
 * training and datasets are in `@voxgen/voxgen/files` and `/pipelines` (Deno), and the command line and the
 * HTTP server in `/cli` and `/server`.
 *
 * @example
 * ```ts
 * import { grad, mul, ready, sum, tensor } from "@voxgen/voxgen";
 * await ready();
 * const x = tensor([1, 2, 3], [3], { requiresGrad: true });
 * const [dx] = grad(sum(mul(x, x)), [x]);
 * console.log(await dx.toArray()); // Float32Array [2, 4, 6]
 * ```
 *
 * @example Sampling from a model file's bytes (fetched, or read with Deno)
 * ```ts
 * import { generate, modelFromBytes, ready, unetGenerator } from "@voxgen/voxgen";
 * await ready();
 * const bytes = new Uint8Array(await (await fetch("https://example.org/brain32.safetensors")).arrayBuffer());
 * const model = unetGenerator(modelFromBytes(bytes));
 * const { volumes, shape } = await generate(model, { sampler: "ddim", steps: 50, seed: 0 });
 * model.dispose();
 * console.log(shape, volumes[0].length);
 * ```
 *
 * @module
 */

export * from "./engine/mod.ts";
export * from "./nn/mod.ts";
export * from "./models/mod.ts";
export * from "./samplers/mod.ts";
export {
  type ConditionSpec,
  generate,
  type GeneratedVolumes,
  type GenerationRequest,
  type Generator,
  type VolumeInfo,
} from "./pipelines/generate.ts";
export {
  type ConditioningInfo,
  disposeModel,
  type LatentStage,
  type LoadedModel,
  type LoadModelOptions,
  MODEL_FORMAT,
  modelFileMetadata,
  modelFromBytes,
  type ModelInfo,
  modelWeights,
  TOKEN_PREFIX,
  unetGenerator,
} from "./pipelines/model.ts";
export type { Affine } from "./io/nifti_codec.ts";
