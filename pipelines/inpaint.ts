/**
 * Inpainting inputs from volumes: the image whose voxels are kept and the mask of what the model
 * regenerates, checked against the model's grid and brought into its intensity range. Used by
 * `deno task sample --inpaint-image/--inpaint-mask` and by the server (uploads and earlier results).
 *
 * @module
 */

import { normalizeIntensity } from "./dataset.ts";
import type { GenerationRequest, VolumeInfo } from "./generate.ts";

/** A volume as read from a NIfTI file: values x fastest, shape [nx, ny, nz] or [nx, ny, nz, nt]. */
export interface VolumeData {
  /** Values, x fastest. */
  data: Float32Array;
  /** Shape. */
  shape: readonly number[];
}

/** How the image's intensities reach the model's range. */
export type InpaintNormalize = "auto" | "none" | "percentile";

/** Options of {@linkcode prepareInpainting}. */
export interface PrepareInpaintingOptions {
  /**
   * "none" keeps the values (e.g. a sample of this model); "percentile" maps the 0.5–99.5th percentiles
   * to the model's range as training does; "auto" (default) is "none" when every value already lies in
   * the range, else "percentile".
   */
  normalize?: InpaintNormalize;
  /** Volume of a 4-D image to use (default 0), e.g. one item of a batch result. */
  index?: number;
}

/**
 * The `inpaint` field of a generation request from an image and a mask (non-zero = regenerate) on the
 * model's grid. `names` say where they came from, for errors.
 */
export function prepareInpainting(
  image: VolumeData,
  mask: VolumeData,
  volume: VolumeInfo,
  opts: PrepareInpaintingOptions = {},
  names: { image: string; mask: string } = { image: "the inpainting image", mask: "the inpainting mask" },
): NonNullable<GenerationRequest["inpaint"]> {
  const [nx, ny, nz] = volume.shape;
  const voxels = nx * ny * nz;
  const pick = (v: VolumeData, name: string, index: number): Float32Array => {
    const [x, y, z, t = 1] = v.shape;
    if (x !== nx || y !== ny || z !== nz || v.shape.length > 4) {
      throw new Error(
        `${name} is ${
          v.shape.join("×")
        }; the model generates ${nx}×${ny}×${nz} volumes, so it must be on that ` +
          "grid (e.g. a sample of this model, or a volume resampled to it).",
      );
    }
    if (!Number.isInteger(index) || index < 0 || index >= t) {
      throw new Error(`${name} has ${t} volume(s); volume ${index} does not exist.`);
    }
    return v.data.slice(index * voxels, (index + 1) * voxels);
  };
  const data = pick(image, names.image, opts.index ?? 0);
  const maskData = pick(mask, names.mask, 0);
  if (!maskData.some((m) => m !== 0)) {
    throw new Error(
      `${names.mask} is all zeros: nothing to regenerate (non-zero voxels mark what to generate).`,
    );
  }
  const [lo, hi] = volume.range;
  let mode = opts.normalize ?? "auto";
  if (mode === "auto") mode = data.every((v) => v >= lo && v <= hi) ? "none" : "percentile";
  if (mode === "percentile") normalizeIntensity(data, { normalize: "percentile", range: [lo, hi] });
  else if (mode !== "none") {
    throw new Error(`inpainting normalisation "${mode}" is not auto, none or percentile.`);
  }
  return { image: data, mask: maskData };
}

/** A spherical mask (1 inside) of `radius` voxels around `center` [x, y, z] on a grid of `shape`. */
export function sphereMask(
  shape: readonly [number, number, number],
  center: readonly number[],
  radius: number,
): Float32Array {
  const [nx, ny, nz] = shape;
  if (center.length !== 3 || center.some((c) => !Number.isFinite(c)) || !(radius > 0)) {
    throw new Error(`a sphere needs a center [x, y, z] and a positive radius (got ${center}, ${radius}).`);
  }
  const out = new Float32Array(nx * ny * nz);
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        const d2 = (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2;
        if (d2 <= radius * radius) out[x + nx * (y + ny * z)] = 1;
      }
    }
  }
  return out;
}
