import { encodePng, orthogonalSlices, percentileWindow } from "../../io/png.ts";
import { deepStrictEqual, throws } from "node:assert";

async function inflate(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new DecompressionStream("deflate"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

Deno.test("encodePng writes a valid PNG whose IDAT holds the filtered scanlines", async () => {
  const pixels = Uint8Array.from({ length: 3 * 2 * 3 }, (_, i) => i * 10);
  const png = await encodePng({ width: 3, height: 2, channels: 3, pixels });
  deepStrictEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const view = new DataView(png.buffer);
  deepStrictEqual(new TextDecoder().decode(png.subarray(12, 16)), "IHDR");
  deepStrictEqual([view.getUint32(16), view.getUint32(20), png[24], png[25]], [3, 2, 8, 2]);
  const idatLen = view.getUint32(33);
  deepStrictEqual(new TextDecoder().decode(png.subarray(37, 41)), "IDAT");
  const raw = await inflate(png.subarray(41, 41 + idatLen));
  deepStrictEqual([...raw], [0, ...pixels.subarray(0, 9), 0, ...pixels.subarray(9)]);
  throws(() => orthogonalSlices([1, 2], [2, 2, 2]), /does not fit 2 values/);
});

Deno.test("orthogonal slices: three panels of a volume, windowed and oriented", () => {
  const [nx, ny, nz] = [4, 3, 2];
  const data = Float32Array.from({ length: nx * ny * nz }, (_, i) => i);
  const img = orthogonalSlices(data, [nx, ny, nz], { window: [0, 23], upscale: 1 });
  // Widths: axial nx + coronal nx + sagittal ny, with 2-pixel gaps.
  deepStrictEqual([img.width, img.height], [4 + 2 + 4 + 2 + 3, 3]);
  // Axial panel at z = 1: its top row is y = ny − 1 (anterior up): values x + 4·2 + 12.
  deepStrictEqual([...img.pixels.subarray(0, 4)], [20, 21, 22, 23].map((v) => Math.round((255 * v) / 23)));
  deepStrictEqual(percentileWindow([5, 5, 5]), [5, 6]);
});
