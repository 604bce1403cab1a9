/**
 * Sampling in a web page with the page's own WebGPU: the entry point of the browser bundle the viewer page
 * loads (`GET /voxgen.js`, built by `deno bundle`). It takes a voxgen model file's bytes, samples one volume
 * exactly as `deno task sample` does with the DDIM sampler (same schedule, seed, noise stream and clipping),
 * and returns it with its NIfTI encoding. Nothing here uses Deno APIs.
 *
 * @module
 */

import { ready } from "../engine/device.ts";
import { scope } from "../engine/memory.ts";
import { map } from "../engine/ops/map.ts";
import { encodeNifti } from "../io/nifti.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";
import { sample } from "../samplers/sample.ts";
import { DDIMScheduler } from "../samplers/scheduler.ts";

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

/** Samples one volume from a voxgen model file's bytes. */
export async function generateVolume(
  model: Uint8Array,
  opts: GenerateOptions = {},
): Promise<GeneratedVolume> {
  const steps = opts.steps ?? 50;
  const seed = opts.seed ?? 0;
  const device = await ready();
  const { unet, info } = await loadModelFile(model);
  try {
    const [nx, ny, nz] = info.volume.shape;
    const x = await sample((xt, t) => unet.forward(xt, t), new DDIMScheduler({ ...info.scheduler }), {
      shape: [1, unet.config.inChannels, nz, ny, nx],
      steps,
      seed,
      onProgress: (p) => opts.onProgress?.(p.step, p.total),
    });
    const [lo, hi] = info.volume.range;
    const clipped = scope(() => map("clamp", "min(max(a, s0), s1)", [x], [lo, hi]));
    x.dispose();
    const data = (await clipped.toArray()).slice(0, nx * ny * nz);
    clipped.dispose();
    const nifti = encodeNifti(
      { data, shape: [nx, ny, nz], affine: info.volume.affine },
      { description: `voxgen sample seed ${seed}` },
    );
    return { data, shape: [nx, ny, nz], nifti, adapter: device.adapter };
  } finally {
    unet.dispose();
  }
}
