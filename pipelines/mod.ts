/**
 * Training and data (Deno): NIfTI datasets resampled to RAS grids with label maps (and manifests), GPU
 * augmentation, the training loop (EMA, resumable checkpoints, loss plots, previews), ControlNet / VCM and
 * class-conditional training, autoencoder and latent-diffusion training, textual inversion, inpainting, and
 * the generation pipeline also exported from the main entry point.
 *
 * @module
 */

export { augment, type Augmented, type AugmentOptions } from "./augment.ts";
export {
  listNiftiFiles,
  loadLabels,
  loadVolume,
  type PreprocessOptions,
  type Volume,
  volumeTensor,
} from "./dataset.ts";
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
} from "./train.ts";
export {
  type ConditionSpec,
  generate,
  type GeneratedVolumes,
  type GenerationRequest,
  type Generator,
  type VolumeInfo,
} from "./generate.ts";
export {
  type ConditionVolume,
  type Control,
  CONTROL_KINDS,
  controlBatches,
  type ControlGeometry,
  controlGeometry,
  type ControlInfo,
  type ControlKind,
  controlledDenoiser,
  controlledGenerator,
  controlledPrediction,
  type ControlRequest,
  controlTrainingNetwork,
  type ControlTrainingOptions,
  createControl,
  type CreateControlOptions,
  loadControlFile,
  nullConditioning,
  saveControlFile,
  type VCMPreset,
} from "./control.ts";
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
} from "./autoencoder_losses.ts";
export {
  type AutoencoderStepReport,
  type AutoencoderTrainOptions,
  type AutoencoderTrainResult,
  trainAutoencoder,
  validateAutoencoder,
  type ValidationScores,
} from "./train_autoencoder.ts";
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
} from "./latent_modelfile.ts";
export {
  CachedPosteriors,
  latentBatches,
  type LatentBatchOptions,
  type LatentTraining,
  type LatentTrainingOptions,
  posteriorSeed,
  prepareLatentTraining,
  scaleFactorOf,
} from "./latent.ts";
export {
  attachEmbedding,
  baseModelHash,
  EMBEDDING_FORMAT,
  type EmbeddingInfo,
  type LoadedEmbedding,
  loadEmbeddingFile,
  saveEmbeddingFile,
} from "./embedding.ts";
export {
  type InpaintNormalize,
  prepareInpainting,
  type PrepareInpaintingOptions,
  sphereMask,
  type VolumeData,
} from "./inpaint.ts";
export {
  conditionalBatches,
  type ConditionalBatchOptions,
  ConditionalNetwork,
  type SampleCondition,
} from "./conditional.ts";
export { isManifestPath, type Manifest, type ManifestItem, parseManifest, readManifest } from "./manifest.ts";
export { initialVectors, invertConcept, type InvertOptions, type InvertResult } from "./invert.ts";
