/**
 * File formats in memory, with no file system: safetensors (decode, encode, straight to GPU tensors),
 * NIfTI-1/-2 (decode, encode), PNG (encode, orthogonal-slice previews) and PyTorch checkpoints
 * (`torch.save` files, read through a restricted unpickler that refuses anything but tensors). Runs wherever
 * WebGPU does; reading and writing files is `@voxgen/voxgen/files`.
 *
 * @example
 * ```ts
 * import { decodeNifti, encodeNifti } from "@voxgen/voxgen/io";
 * const bytes = encodeNifti({ data: new Float32Array(8), shape: [2, 2, 2], spacing: [1, 1, 1] });
 * const volume = await decodeNifti(bytes);
 * console.log(volume.shape); // [2, 2, 2]
 * ```
 *
 * @module
 */

export {
  decodeTensorData,
  encodeSafetensors,
  parseSafetensors,
  type RawTensor,
  safetensorsBytes,
  type SafetensorsDType,
  type SafetensorsFile,
  tensorsFromSafetensors,
} from "./safetensors_codec.ts";
export {
  type Affine,
  decodeNifti,
  encodeNifti,
  type NiftiDatatype,
  type NiftiHeaderInfo,
  type NiftiVolume,
  type NiftiWriteInput,
  type WriteNiftiOptions,
} from "./nifti_codec.ts";
export { encodePng, type Image8, orthogonalSlices, percentileWindow } from "./png_codec.ts";
export {
  CheckpointTensor,
  findStateDict,
  isTorchCheckpoint,
  readTorchCheckpoint,
} from "./torch_checkpoint.ts";
export { RefusedGlobalError } from "./pickle.ts";
