/**
 * Writing generated volumes: NIfTI files and PNG previews of the orthogonal mid-slices, either one file per
 * volume (the CLI) or one 4-D NIfTI with all previews stacked in one image (the server).
 *
 * @module
 */

import { atomicWrite } from "../io/atomic.ts";
import { writeNifti } from "../io/nifti.ts";
import { encodePng, orthogonalSlices, stackRows } from "../io/png.ts";
import type { GeneratedVolumes } from "./generate.ts";

/** The files written for one volume. */
export interface WrittenVolume {
  /** NIfTI path. */
  nifti: string;
  /** PNG preview path. */
  png: string;
}

/** `out` for a single volume, `out` with `_<index>` before the extension for a batch. */
export function batchFileName(out: string, index: number, batch: number): string {
  return batch === 1 ? out : out.replace(/(\.nii(\.gz)?)$/, `_${index}$1`);
}

/**
 * Writes each volume to its own NIfTI (`out`, or `out` with `_0`, `_1`, … for a batch) with a PNG preview
 * beside it (`png` for a single volume when given).
 */
export async function writeVolumeFiles(
  generated: GeneratedVolumes,
  out: string,
  opts: { png?: string; description?: string } = {},
): Promise<WrittenVolume[]> {
  if (!/\.nii(\.gz)?$/.test(out)) throw new Error(`"${out}" must end in .nii or .nii.gz.`);
  const { volumes, shape, affine, range } = generated;
  const written: WrittenVolume[] = [];
  for (const [b, data] of volumes.entries()) {
    const nifti = batchFileName(out, b, volumes.length);
    await writeNifti(nifti, { data, shape, affine }, { description: opts.description });
    const png = opts.png && volumes.length === 1 ? opts.png : nifti.replace(/\.nii(\.gz)?$/, ".png");
    await atomicWrite(png, await encodePng(orthogonalSlices(data, shape, { window: range })));
    written.push({ nifti, png });
  }
  return written;
}

/**
 * Writes all volumes as one NIfTI (a batch of several is 4-D, t = batch index) and one PNG with their
 * previews one under the other.
 */
export async function writeStackedFiles(
  generated: GeneratedVolumes,
  nifti: string,
  png: string,
  opts: { description?: string } = {},
): Promise<void> {
  const { volumes, shape, affine, range } = generated;
  const data = volumes.length === 1 ? volumes[0] : concat(volumes);
  const fullShape = volumes.length === 1 ? shape : [...shape, volumes.length];
  await writeNifti(nifti, { data, shape: fullShape, affine }, { description: opts.description });
  const previews = volumes.map((v) => orthogonalSlices(v, shape, { window: range }));
  await atomicWrite(png, await encodePng(stackRows(previews)));
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
