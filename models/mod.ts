/**
 * Networks with MONAI's parameter names, so MONAI state dicts load unchanged: the diffusion U-Net
 * (`DiffusionModelUNet`), its ControlNet, the VCM condition modulator, the learned-token prompts of
 * token-conditioned models, and the latent-diffusion autoencoder (`AutoencoderKL`) with its patch discriminator. Runs wherever WebGPU does.
 *
 * @example
 * ```ts
 * import { ready, randn } from "@voxgen/voxgen/engine";
 * import { DiffusionModelUNet } from "@voxgen/voxgen/models";
 * await ready();
 * const unet = new DiffusionModelUNet({ spatialDims: 3, channels: [8, 8], attentionLevels: [false, false], normNumGroups: 4 });
 * const y = unet.forward(randn([1, 1, 8, 8, 8], { seed: 1 }), [500]);
 * console.log(y.shape); // [1, 1, 8, 8, 8]
 * ```
 *
 * @module
 */

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
} from "./unet.ts";
export {
  ControlNet,
  type ControlNetForwardOptions,
  type ControlNetOptions,
  controlNetOptionsFromMonai,
  type ControlNetResiduals,
  type ResolvedControlNetOptions,
} from "./controlnet.ts";
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
} from "./vcm.ts";
export { parsePrompt, type PromptPart } from "./prompt.ts";
export {
  BOS,
  checkConceptName,
  PAD,
  TokenTable,
  type TokenVocabulary,
  UnknownTokenError,
  vocabularyRows,
} from "./tokens.ts";
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
} from "./autoencoder.ts";
export {
  type DiscriminatorNorm,
  discriminatorOptionsFromMonai,
  leakyRelu,
  PatchDiscriminator,
  type PatchDiscriminatorOptions,
} from "./discriminator.ts";
export {
  type ResolvedSliceUNetOptions,
  SliceDiffusionUNet,
  type SliceForwardOptions,
  type SliceInputs,
  type SliceUNetOptions,
} from "./slice_unet.ts";
