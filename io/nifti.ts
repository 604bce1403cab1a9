/**
 * NIfTI files on disk (Deno): reading (path or bytes) and atomic writing (`.nii`, or gzip-compressed for
 * `.nii.gz`). The format itself is io/nifti_codec.ts, re-exported here.
 *
 * @module
 */

import { atomicWrite } from "./atomic.ts";
import {
  decodeNifti,
  encodeNifti,
  gzip,
  type NiftiVolume,
  type NiftiWriteInput,
  type WriteNiftiOptions,
} from "./nifti_codec.ts";

export * from "./nifti_codec.ts";

/**
 * Reads a NIfTI file (path or bytes; gzip detected from the content). Complex, RGB and 1-bit data,
 * `.hdr/.img` pairs, truncated files and non-NIfTI files are refused with a clear error.
 */
export async function readNifti(pathOrBytes: string | Uint8Array): Promise<NiftiVolume> {
  if (typeof pathOrBytes !== "string") return await decodeNifti(pathOrBytes);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(pathOrBytes);
  } catch (error) {
    throw new Error(`NIfTI ${pathOrBytes}: cannot read the file: ${(error as Error).message}`);
  }
  return await decodeNifti(bytes, pathOrBytes);
}

/** Writes a NIfTI-1 file (`.nii`, or gzip-compressed for `.nii.gz`) atomically. */
export async function writeNifti(
  path: string,
  volume: NiftiWriteInput,
  opts: WriteNiftiOptions = {},
): Promise<void> {
  if (!path.endsWith(".nii") && !path.endsWith(".nii.gz")) {
    throw new Error(`writeNifti: "${path}" must end in .nii or .nii.gz.`);
  }
  const raw = encodeNifti(volume, opts);
  await atomicWrite(path, path.endsWith(".gz") ? await gzip(raw) : raw);
}
