/**
 * PNG previews on disk (Deno). The encoder and slice layout are io/png_codec.ts, re-exported here.
 *
 * @module
 */

import { atomicWrite } from "./atomic.ts";
import { encodePng, orthogonalSlices } from "./png_codec.ts";

export * from "./png_codec.ts";

/** Writes a PNG preview of a volume's orthogonal mid-slices, atomically. */
export async function writeSlicesPng(
  path: string,
  data: ArrayLike<number>,
  shape: readonly number[],
  opts: { window?: [number, number]; upscale?: number } = {},
): Promise<void> {
  await atomicWrite(path, await encodePng(orthogonalSlices(data, shape, opts)));
}
