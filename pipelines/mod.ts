/**
 * Training and data (Deno): NIfTI datasets resampled to RAS grids with label maps, GPU augmentation, the
 * training loop (EMA, resumable checkpoints, loss plots, previews) and ControlNet / VCM training, plus the
 * generation pipeline also exported from the main entry point.
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
  type Control,
  CONTROL_KINDS,
  type ControlInfo,
  type ControlKind,
  controlledDenoiser,
  createControl,
  type CreateControlOptions,
  loadControlFile,
  saveControlFile,
  type VCMPreset,
} from "./control.ts";
