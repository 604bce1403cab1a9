/**
 * Minimal PNG encoding (8-bit grey or RGB, zlib via the platform's CompressionStream) and orthogonal-slice
 * previews of volumes: the axial, coronal and sagittal mid-planes side by side, windowed to the
 * 0.5–99.5th percentile so a glance shows the anatomy. Writing them to disk: io/png.ts.
 *
 * @module
 */

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function zlib(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("deflate"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** An 8-bit image: `channels` = 1 (grey) or 3 (RGB), rows top to bottom. */
export interface Image8 {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** 1 (grey) or 3 (RGB). */
  channels: 1 | 3;
  /** Pixel bytes, row-major, `channels` per pixel. */
  pixels: Uint8Array;
}

/** Encodes an image as PNG bytes. */
export async function encodePng(image: Image8): Promise<Uint8Array> {
  const { width, height, channels, pixels } = image;
  if (pixels.length !== width * height * channels) {
    throw new Error(`encodePng: ${pixels.length} bytes for ${width}×${height}×${channels}.`);
  }
  const stride = width * channels;
  const raw = new Uint8Array((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    raw.set(pixels.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  }
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr.set([8, channels === 1 ? 0 : 2, 0, 0, 0], 8);
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", await zlib(raw)),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Intensity window [lo, hi] at the given percentiles of `data` (sampled for speed). */
export function percentileWindow(data: ArrayLike<number>, lowPct = 0.5, highPct = 99.5): [number, number] {
  const step = Math.max(1, Math.floor(data.length / 200000));
  const sample: number[] = [];
  for (let i = 0; i < data.length; i += step) if (Number.isFinite(data[i])) sample.push(data[i]);
  if (sample.length === 0) return [0, 1];
  sample.sort((a, b) => a - b);
  const at = (p: number) =>
    sample[Math.min(sample.length - 1, Math.max(0, Math.round((p / 100) * (sample.length - 1))))];
  const lo = at(lowPct);
  const hi = at(highPct);
  return hi > lo ? [lo, hi] : [lo, lo + 1];
}

/**
 * Axial (z), coronal (y) and sagittal (x) mid-slices of a volume (x fastest, shape [nx, ny, nz]) side by
 * side in one grey image, each flipped so that up is superior/anterior as radiologists expect.
 * `upscale` repeats pixels so small volumes are visible.
 */
export function orthogonalSlices(data: ArrayLike<number>, shape: readonly number[], opts: {
  window?: [number, number];
  upscale?: number;
} = {}): Image8 {
  const [nx, ny, nz] = shape;
  if (!nx || !ny || !nz || data.length < nx * ny * nz) {
    throw new Error(`orthogonalSlices: shape ${JSON.stringify(shape)} does not fit ${data.length} values.`);
  }
  const [lo, hi] = opts.window ?? percentileWindow(data);
  const s = opts.upscale ?? Math.max(1, Math.floor(160 / Math.max(nx, ny, nz)));
  const at = (x: number, y: number, z: number) => data[x + nx * (y + ny * z)];
  const panels: Array<{ w: number; h: number; get: (u: number, v: number) => number }> = [
    { w: nx, h: ny, get: (u, v) => at(u, ny - 1 - v, nz >> 1) }, // axial: x right, y up
    { w: nx, h: nz, get: (u, v) => at(u, ny >> 1, nz - 1 - v) }, // coronal: x right, z up
    { w: ny, h: nz, get: (u, v) => at(nx >> 1, u, nz - 1 - v) }, // sagittal: y right, z up
  ];
  const gap = 2 * s;
  const width = panels.reduce((n, p) => n + p.w * s, 0) + gap * (panels.length - 1);
  const height = Math.max(...panels.map((p) => p.h * s));
  const pixels = new Uint8Array(width * height);
  let x0 = 0;
  for (const p of panels) {
    const top = (height - p.h * s) >> 1;
    for (let v = 0; v < p.h * s; v++) {
      for (let u = 0; u < p.w * s; u++) {
        const value = (p.get(Math.floor(u / s), Math.floor(v / s)) - lo) / (hi - lo);
        pixels[(top + v) * width + x0 + u] = Math.round(255 * Math.min(1, Math.max(0, value)));
      }
    }
    x0 += p.w * s + gap;
  }
  return { width, height, channels: 1, pixels };
}

/** Grey images one under the other, 4 px apart (e.g. the previews of a batch, or an input above its reconstruction). */
export function stackRows(images: Image8[]): Image8 {
  if (images.length === 1) return images[0];
  const gap = 4;
  const width = Math.max(...images.map((i) => i.width));
  const height = images.reduce((n, i) => n + i.height, 0) + gap * (images.length - 1);
  const pixels = new Uint8Array(width * height);
  let top = 0;
  for (const image of images) {
    for (let y = 0; y < image.height; y++) {
      pixels.set(image.pixels.subarray(y * image.width, (y + 1) * image.width), (top + y) * width);
    }
    top += image.height + gap;
  }
  return { width, height, channels: 1, pixels };
}
