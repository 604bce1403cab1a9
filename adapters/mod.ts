/**
 * Parameter-efficient fine-tuning adapters: LoCon, LoHa, LoKr (LyCORIS), TenVOO-L/Q (Li et al.) and QuanTA.
 *
 * @example
 * ```ts
 * const adapters = await injectAdapters(unet, { kind: "tenvoo-l", rank: 4 });
 * console.log(adapterSummary(adapters));
 * // … train `unet`: only the adapter cores have requiresGrad …
 * await adapters.save("adapter.safetensors");
 * // later, on the same base model:
 * const loaded = await loadAdapters(unet, "adapter.safetensors");
 * loaded.merge(); // zero-overhead inference
 * ```
 *
 * @module
 */

export {
  type AdapterOptions,
  adapterParameterCount,
  AdapterSet,
  DEFAULT_TARGETS,
  injectAdapters,
  MIDDLE_BLOCK_TARGETS,
} from "./inject.ts";
export {
  type AdapterSpec,
  type LoadAdapterOptions,
  loadAdapters,
  mergeAdapterFiles,
  readAdapterInfo,
} from "./io.ts";
export { adapterSummary } from "./summary.ts";
export { modelHash, parameterHash } from "./hash.ts";
export {
  type AdaptedLayerInfo,
  ADAPTER_FORMAT,
  ADAPTER_FORMAT_VERSION,
  type AdapterInfo,
  trainableCount,
} from "./format.ts";
export {
  ADAPTER_KINDS,
  type AdapterKind,
  type CoreInit,
  type LayerMethod,
  type WeightShape,
} from "./method.ts";
export { type AdaptableLayer, AdaptedLayer } from "./layer.ts";
