/**
 * Network building blocks with PyTorch/MONAI parameter names.
 *
 * @module
 */

export { type LoadOptions, type LoadReport, Module, ModuleList } from "./module.ts";
export { Linear, type LinearOptions } from "./linear.ts";
export { ConvNd, Convolution, type ConvOptions, type Layer, type SpatialDims } from "./conv.ts";
export { GroupNorm, type GroupNormOptions, LayerNorm, type LayerNormOptions } from "./norm.ts";
export { Embedding, type EmbeddingOptions, timestepEmbedding, type Timesteps } from "./embedding.ts";
export {
  CrossAttention,
  type CrossAttentionOptions,
  GegluMlp,
  SelfAttention,
  type SelfAttentionOptions,
  SpatialAttentionBlock,
  type SpatialAttentionOptions,
  SpatialTransformer,
  type SpatialTransformerOptions,
  TransformerBlock,
  type TransformerBlockOptions,
} from "./attention.ts";
export { Downsample, type NormSettings, ResnetBlock, type ResnetBlockOptions, Upsample } from "./blocks.ts";
export {
  AEKLDownsample,
  AEKLResBlock,
  type AEKLResBlockOptions,
  ConvTranspose,
  DeconvUpsample,
} from "./autoencoder_blocks.ts";
export {
  RelativePositionNet,
  relativeSliceAttention,
  type RelativeTerms,
  SliceAttention,
  type SliceAttentionOptions,
  type SlotLayout,
  type SlotRole,
} from "./slice_attention.ts";
