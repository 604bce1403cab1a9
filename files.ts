/**
 * Files on disk and on the web (Deno): reading any path or URL, atomic writes, safetensors and NIfTI files,
 * PNG previews, voxgen model files (load, save, the embedded default model, adapters merged on load) and
 * the generated volumes' output files. The in-memory formats these build on are `@voxgen/voxgen/io`.
 *
 * @example
 * ```ts
 * import { ready, generate } from "@voxgen/voxgen";
 * import { DEFAULT_MODEL, loadGenerator, writeNifti } from "@voxgen/voxgen/files";
 * await ready();
 * const model = await loadGenerator(DEFAULT_MODEL);
 * const { volumes, shape, affine } = await generate(model, { sampler: "ddim", steps: 20, seed: 1 });
 * model.dispose();
 * await writeNifti("sample.nii.gz", { data: volumes[0], shape, affine });
 * ```
 *
 * @module
 */

export { isUrl, pathOrUrl, readBytes, readText } from "./io/read.ts";
export { atomicWrite } from "./io/atomic.ts";
export {
  loadSafetensors,
  loadSafetensorsFile,
  readSafetensorsMetadata,
  saveSafetensors,
} from "./io/safetensors.ts";
export { readNifti, writeNifti } from "./io/nifti.ts";
export { writeSlicesPng } from "./io/png.ts";
export { DEFAULT_MODEL, DEFAULT_MODEL_URL, loadModelFile, saveModelFile } from "./pipelines/modelfile.ts";
export { loadGenerator, type LoadGeneratorOptions } from "./pipelines/generators.ts";
export { writeStackedFiles, writeVolumeFiles, type WrittenVolume } from "./pipelines/output.ts";
export {
  loadAutoencoderFile,
  loadLatentModelFile,
  saveAutoencoderFile,
  saveLatentModelFile,
} from "./pipelines/latent_modelfile.ts";
export { loadEmbeddingFile, saveEmbeddingFile } from "./pipelines/embedding.ts";
export { readManifest } from "./pipelines/manifest.ts";
