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
export * as metrics from "./metrics/mod.ts";
export * from "./nn/mod.ts";
export {
  type ConvertedStateDict,
  convertGenerativeStateDict,
  DiffusionModelUNet,
  type DiffusionModelUNetOptions,
  type MonaiConfigOptions,
  type ResolvedUNetOptions,
  resolveUNetOptions,
  type UNetForwardOptions,
  unetOptionsFromMonai,
} from "./models/unet.ts";
export {
  ControlNet,
  type ControlNetForwardOptions,
  type ControlNetOptions,
  controlNetOptionsFromMonai,
  type ControlNetResiduals,
  type ResolvedControlNetOptions,
} from "./models/controlnet.ts";
export {
  encoderDownsamplings,
  epsFromPrediction,
  modulate,
  type Modulation,
  type Prediction,
  predictionFromEps,
  type ResolvedVCMOptions,
  resolveVCMOptions,
  VCM,
  VCMConditionEncoder,
  type VCMForwardOptions,
  type VCMOptions,
  type VCMUNetOptions,
} from "./models/vcm.ts";
export {
  type DDIMOptions,
  DDIMScheduler,
  DDPMScheduler,
  EulerAncestralScheduler,
  type PredictionType,
  Scheduler,
  type SchedulerOptions,
  type StepOptions,
  type StepResult,
} from "./samplers/scheduler.ts";
export {
  makeSchedule,
  type NoiseSchedule,
  type ScheduleName,
  type ScheduleOptions,
} from "./samplers/schedule.ts";
export {
  type Conditioning,
  type Denoiser,
  sample,
  type SampleOptions,
  type SampleProgress,
  type WeightedCondition,
} from "./samplers/sample.ts";
export {
  loadSafetensors,
  loadSafetensorsFile,
  parseSafetensors,
  type RawTensor,
  type SafetensorsDType,
  type SafetensorsFile,
  saveSafetensors,
} from "./io/safetensors.ts";
export {
  type Affine,
  encodeNifti,
  type NiftiDatatype,
  type NiftiHeaderInfo,
  type NiftiVolume,
  type NiftiWriteInput,
  readNifti,
  writeNifti,
  type WriteNiftiOptions,
} from "./io/nifti.ts";
export { encodePng, type Image8, orthogonalSlices, writeSlicesPng } from "./io/png.ts";
export { warp3d, type WarpMode, type WarpOptions, type WarpPadding } from "./engine/ops/warp.ts";
export { augment, type Augmented, type AugmentOptions } from "./pipelines/augment.ts";
export {
  listNiftiFiles,
  loadLabels,
  loadVolume,
  type PreprocessOptions,
  type Volume,
  volumeTensor,
} from "./pipelines/dataset.ts";
export {
  type Batch,
  type ControlInput,
  describeChanges,
  type DiffusionNetwork,
  emaDecayAt,
  learningRate,
  ResumeMismatchError,
  type RunSetting,
  type SettingChange,
  type StepReport,
  train,
  type TrainOptions,
  type TrainResult,
} from "./pipelines/train.ts";
export { duration, Progress, type ProgressMode, type ProgressOptions } from "./io/progress.ts";
export {
  disposeModel,
  type LatentStage,
  type LoadedModel,
  loadModelFile,
  type LoadModelOptions,
  type ModelInfo,
  saveModelFile,
  type VolumeInfo,
} from "./pipelines/modelfile.ts";
export * from "./adapters/mod.ts";
export {
  AutoencoderKL,
  type AutoencoderKLOptions,
  autoencoderOptionsFromMonai,
  type ConvertedAutoencoderStateDict,
  convertGenerativeAutoencoderStateDict,
  type LatentPosterior,
  type LatentSamplingOptions,
  resolveAutoencoderOptions,
  type ResolvedAutoencoderOptions,
} from "./models/autoencoder.ts";
export {
  type DiscriminatorNorm,
  discriminatorOptionsFromMonai,
  leakyRelu,
  PatchDiscriminator,
  type PatchDiscriminatorOptions,
} from "./models/discriminator.ts";
export {
  adversarialActive,
  type AutoencoderLossWeights,
  discriminatorLoss,
  type GeneratorLoss,
  generatorLoss,
  klLoss,
  patchAdversarialLoss,
  type PerceptualLoss,
  type ReconstructionLoss,
  reconstructionLoss,
  type ResolvedLossWeights,
  resolveLossWeights,
} from "./pipelines/autoencoder_losses.ts";
export {
  type AutoencoderStepReport,
  type AutoencoderTrainOptions,
  type AutoencoderTrainResult,
  trainAutoencoder,
  validateAutoencoder,
  type ValidationScores,
} from "./pipelines/train_autoencoder.ts";
export {
  type AutoencoderInfo,
  decodeLatents,
  type LatentModelInfo,
  loadAutoencoderFile,
  type LoadedAutoencoder,
  type LoadedLatentModel,
  loadLatentModelFile,
  saveAutoencoderFile,
  saveLatentModelFile,
} from "./pipelines/latent_modelfile.ts";
export {
  CachedPosteriors,
  latentBatches,
  type LatentBatchOptions,
  type LatentTraining,
  type LatentTrainingOptions,
  posteriorSeed,
  prepareLatentTraining,
  scaleFactorOf,
} from "./pipelines/latent.ts";
export {
  ACCEPTED_SAMPLER_NAMES,
  DEFAULT_SAMPLER,
  findSampler,
  makeScheduler,
  SAMPLER_NAMES,
  SAMPLER_REGISTRY,
  type SamplerEntry,
} from "./samplers/registry.ts";
export {
  type ConditionSpec,
  generate,
  type GeneratedVolumes,
  type GenerationRequest,
  type Generator,
} from "./pipelines/generate.ts";
export { loadGenerator, type LoadGeneratorOptions, unetGenerator } from "./pipelines/modelfile.ts";
export { writeStackedFiles, writeVolumeFiles, type WrittenVolume } from "./pipelines/output.ts";
export { parsePrompt, type PromptPart } from "./models/prompt.ts";
export {
  BOS,
  checkConceptName,
  PAD,
  TokenTable,
  type TokenVocabulary,
  UnknownTokenError,
  vocabularyRows,
} from "./models/tokens.ts";
export { type ConditioningInfo, DEFAULT_MODEL, modelWeights, TOKEN_PREFIX } from "./pipelines/modelfile.ts";
export { predictGuided } from "./samplers/sample.ts";
