/**
 * Sampling in a web page with the page's own WebGPU: the entry point of the browser bundle the viewer page
 * loads (`GET /voxgen.js`, built by `deno bundle`). It takes a voxgen model file's bytes, samples one volume
 * through the same generation pipeline as `deno task sample` with the DDIM sampler,
 * and returns it with its NIfTI encoding. Nothing here uses Deno APIs.
 *
 * @module
 */

import { ready } from "../engine/device.ts";
import { encodeNifti } from "../io/nifti.ts";
import { generate } from "../pipelines/generate.ts";
import { modelFromBytes, unetGenerator } from "../pipelines/model.ts";

/** Options of {@linkcode generateVolume}. */
export interface GenerateOptions {
  /** DDIM steps (default 50, as `deno task sample`). */
  steps?: number;
  /** Noise seed (default 0). */
  seed?: number;
  /** Called after every step. */
  onProgress?: (step: number, total: number) => void;
}

/** A generated volume. */
export interface GeneratedVolume {
  /** Values, x fastest, clipped to the model's intensity range. */
  data: Float32Array;
  /** [nx, ny, nz]. */
  shape: [number, number, number];
  /** The volume as an uncompressed NIfTI-1 file, with the model's affine. */
  nifti: Uint8Array;
  /** The GPU adapter that did the work. */
  adapter: string;
}

/** Samples one volume from a voxgen model file's bytes, through the pipeline `deno task sample` uses. */
export async function generateVolume(
  model: Uint8Array,
  opts: GenerateOptions = {},
): Promise<GeneratedVolume> {
  const steps = opts.steps ?? 50;
  const seed = opts.seed ?? 0;
  const device = await ready();
  const generator = unetGenerator(modelFromBytes(model, "the model file", { allowLatent: true }));
  try {
    const { volumes, shape, affine } = await generate(generator, {
      sampler: "ddim",
      steps,
      seed,
      onProgress: (p) => opts.onProgress?.(p.step, p.total),
    });
    const data = volumes[0];
    const nifti = encodeNifti({ data, shape, affine }, { description: `voxgen sample seed ${seed}` });
    return { data, shape, nifti, adapter: device.adapter };
  } finally {
    generator.dispose();
  }
}
