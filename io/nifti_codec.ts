/**
 * NIfTI-1/-2 decoding (`.nii`, `.nii.gz`, either endianness, every common datatype, `scl_slope`/`scl_inter`
 * applied) and NIfTI-1 encoding with a correct header (sform + qform from the affine, pixdim, units,
 * f32 or a scaled integer type), in memory. Files on disk: io/nifti.ts.
 *
 * Voxel order is the file's: x fastest, then y, then z (then t). As a tensor a volume is `[1, 1, nz, ny, nx]`
 * (`[N, C, D, H, W]` with W = x), so no transpose is ever needed.
 *
 * @module
 */

// A full npm: specifier (not the import map's name): modules run from a URL see no deno.json.
// deno-lint-ignore no-import-prefix
import * as nifti from "npm:nifti-reader-js@^0.6.8";

/** A 4×4 affine (row-major rows), voxel (i, j, k) → world (x, y, z) in mm. */
export type Affine = number[][];

/** NIfTI datatypes voxgen reads, by name. */
export type NiftiDatatype =
  | "uint8"
  | "int8"
  | "int16"
  | "uint16"
  | "int32"
  | "uint32"
  | "float32"
  | "float64"
  | "int64"
  | "uint64";

/** A decoded NIfTI volume. */
export interface NiftiVolume {
  /** Voxel values after `scl_slope`/`scl_inter`, x fastest. */
  data: Float32Array;
  /** [nx, ny, nz] or [nx, ny, nz, nt]. */
  shape: number[];
  /** Voxel size in mm along x, y, z (and the t step). */
  spacing: number[];
  /** Voxel → world (mm): from sform, else qform, else pixdim. */
  affine: Affine;
  /** The datatype stored in the file. */
  datatype: NiftiDatatype;
  /** Selected raw header fields. */
  header: NiftiHeaderInfo;
}

/** Header fields kept from the file. */
export interface NiftiHeaderInfo {
  /** 1 or 2. */
  version: 1 | 2;
  /** True when the file was little-endian. */
  littleEndian: boolean;
  /** sform code (0 = none). */
  sformCode: number;
  /** qform code (0 = none). */
  qformCode: number;
  /** Raw `xyzt_units`. */
  xyztUnits: number;
  /** Scaling slope as stored (0 means none). */
  sclSlope: number;
  /** Scaling intercept as stored. */
  sclInter: number;
  /** Description string. */
  description: string;
  /** Which transform gave `affine`. */
  affineSource: "sform" | "qform" | "pixdim";
}

const TYPES: Record<number, { name: NiftiDatatype; bytes: number }> = {
  2: { name: "uint8", bytes: 1 },
  4: { name: "int16", bytes: 2 },
  8: { name: "int32", bytes: 4 },
  16: { name: "float32", bytes: 4 },
  64: { name: "float64", bytes: 8 },
  256: { name: "int8", bytes: 1 },
  512: { name: "uint16", bytes: 2 },
  768: { name: "uint32", bytes: 4 },
  1024: { name: "int64", bytes: 8 },
  1280: { name: "uint64", bytes: 8 },
};
const UNSUPPORTED: Record<number, string> = {
  1: "binary (1-bit)",
  32: "complex64",
  128: "RGB24",
  1536: "float128",
  1792: "complex128",
  2048: "complex256",
  2304: "RGBA32",
};

function fail(source: string, message: string): never {
  throw new Error(`NIfTI ${source}: ${message}`);
}

async function gunzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new DecompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Compresses bytes with gzip (the platform's CompressionStream). */
export async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * Decodes NIfTI bytes (gzip detected from the content). Complex, RGB and 1-bit data, `.hdr/.img` pairs,
 * truncated data and non-NIfTI data are refused with a clear error; `source` names the data in errors.
 */
export async function decodeNifti(bytes: Uint8Array, source = "<bytes>"): Promise<NiftiVolume> {
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = await gunzip(bytes);
    } catch (error) {
      fail(source, `gzip data is corrupt or truncated: ${(error as Error).message}`);
    }
  }
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
  if (buffer.byteLength < 348) {
    fail(source, `only ${buffer.byteLength} bytes: not a NIfTI file (a header has 348).`);
  }
  if (!nifti.isNIFTI(buffer)) {
    if (nifti.isNIFTI(buffer, true)) {
      fail(source, "this is the header of a .hdr/.img pair, which voxgen does not read; convert it to .nii.");
    }
    fail(source, "not a NIfTI-1 or NIfTI-2 file (no n+1/n+2 magic).");
  }
  const h = nifti.readHeader(headerOnly(buffer));
  if (!h) fail(source, "the header could not be parsed.");
  const version = h instanceof nifti.NIFTI2 ? 2 : 1;
  const type = TYPES[h.datatypeCode];
  if (!type) {
    const what = UNSUPPORTED[h.datatypeCode] ?? `code ${h.datatypeCode}`;
    fail(
      source,
      `datatype ${what} is not supported; accepted: ${Object.values(TYPES).map((t) => t.name).join(", ")}.`,
    );
  }
  const ndim = h.dims[0];
  if (ndim < 1 || ndim > 7) fail(source, `dim[0] = ${ndim} is invalid (1..7).`);
  const shape = h.dims.slice(1, 1 + Math.max(3, ndim)).map((d: number) => Math.max(d, 1));
  while (shape.length > 3 && shape[shape.length - 1] === 1) shape.pop();
  if (shape.length > 4) {
    fail(
      source,
      `${shape.length}-D data (shape ${shape.join("×")}) is not supported; voxgen reads 3-D and 4-D volumes.`,
    );
  }
  const count = shape.reduce((a: number, b: number) => a * b, 1);
  const start = Number(h.vox_offset);
  const end = start + count * type.bytes;
  if (end > buffer.byteLength) {
    fail(
      source,
      `image data needs bytes ${start}..${end} but the file has ${buffer.byteLength} (truncated?).`,
    );
  }
  const view = new DataView(buffer, start, count * type.bytes);
  const le = h.littleEndian;
  const data = new Float32Array(count);
  const read: (i: number) => number = {
    uint8: (i: number) => view.getUint8(i),
    int8: (i: number) => view.getInt8(i),
    int16: (i: number) => view.getInt16(2 * i, le),
    uint16: (i: number) => view.getUint16(2 * i, le),
    int32: (i: number) => view.getInt32(4 * i, le),
    uint32: (i: number) => view.getUint32(4 * i, le),
    float32: (i: number) => view.getFloat32(4 * i, le),
    float64: (i: number) => view.getFloat64(8 * i, le),
    int64: (i: number) => Number(view.getBigInt64(8 * i, le)),
    uint64: (i: number) => Number(view.getBigUint64(8 * i, le)),
  }[type.name];
  // NIfTI: scl_slope = 0 means "no scaling".
  const slope = h.scl_slope && Number.isFinite(h.scl_slope) ? h.scl_slope : 1;
  const inter = h.scl_slope && Number.isFinite(h.scl_inter) ? h.scl_inter : 0;
  for (let i = 0; i < count; i++) data[i] = read(i) * slope + inter;
  const { affine, affineSource } = affineOf(h, buffer, version);
  return {
    data,
    shape,
    spacing: h.pixDims.slice(1, 1 + shape.length).map((p: number) => Math.abs(p) || 1),
    affine,
    datatype: type.name,
    header: {
      version,
      littleEndian: le,
      sformCode: h.sform_code,
      qformCode: h.qform_code,
      xyztUnits: h.xyzt_units,
      sclSlope: h.scl_slope,
      sclInter: h.scl_inter,
      description: h.description ?? "",
      affineSource,
    },
  };
}

/**
 * The header bytes with the extension flag cleared: voxgen does not use extensions, and the library's
 * extension parser logs to the console and throws on some real files.
 */
function headerOnly(buffer: ArrayBuffer): ArrayBuffer {
  const head = buffer.slice(0, Math.min(buffer.byteLength, 544));
  const view = new DataView(head);
  const size = [view.getInt32(0, true), view.getInt32(0, false)].find((s) => s === 348 || s === 540) ?? 348;
  if (head.byteLength >= size + 4) new Uint8Array(head, size, 4).fill(0);
  return head;
}

/** The affine from sform (read from the raw header), else the library's qform conversion, else pixdim. */
function affineOf(
  h: nifti.NIFTI1 | nifti.NIFTI2,
  buffer: ArrayBuffer,
  version: 1 | 2,
): { affine: Affine; affineSource: NiftiHeaderInfo["affineSource"] } {
  const view = new DataView(buffer);
  if (h.sform_code > 0) {
    const rows: Affine = [];
    for (let r = 0; r < 3; r++) {
      const row: number[] = [];
      for (let c = 0; c < 4; c++) {
        row.push(
          version === 1
            ? view.getFloat32(280 + (r * 4 + c) * 4, h.littleEndian)
            : view.getFloat64(400 + (r * 4 + c) * 8, h.littleEndian),
        );
      }
      rows.push(row);
    }
    rows.push([0, 0, 0, 1]);
    return { affine: rows, affineSource: "sform" };
  }
  if (h.qform_code > 0) return { affine: h.affine.map((r: number[]) => [...r]), affineSource: "qform" };
  const p = h.pixDims;
  return {
    affine: [[p[1] || 1, 0, 0, 0], [0, p[2] || 1, 0, 0], [0, 0, p[3] || 1, 0], [0, 0, 0, 1]],
    affineSource: "pixdim",
  };
}

/** Options of {@linkcode writeNifti}. */
export interface WriteNiftiOptions {
  /** Stored type: "float32" (default) or an integer type, with scl_slope/scl_inter chosen to fit the range. */
  datatype?: "float32" | "uint8" | "int16" | "int32";
  /** Header description (≤ 79 characters). */
  description?: string;
}

/** What {@linkcode writeNifti} needs: values (x fastest), shape, and the affine (or spacing). */
export interface NiftiWriteInput {
  /** Values, x fastest. */
  data: Float32Array | ArrayLike<number>;
  /** [nx, ny, nz] or [nx, ny, nz, nt]. */
  shape: readonly number[];
  /** Voxel → world affine; default diag(spacing). */
  affine?: Affine;
  /** Voxel size when no affine is given (default 1 mm). */
  spacing?: readonly number[];
}

/** Column norms of the 3×3 part: voxel sizes. */
function voxelSizes(a: Affine): number[] {
  return [0, 1, 2].map((c) => Math.hypot(a[0][c], a[1][c], a[2][c]) || 1);
}

/**
 * The NIfTI quaternion (b, c, d) and qfac of the rotation part of `a` (after removing voxel sizes), as
 * nifti1_io's `mat44_to_quatern` for orthogonal matrices.
 */
function quaternion(a: Affine): { b: number; c: number; d: number; qfac: number } {
  const s = voxelSizes(a);
  const r = [0, 1, 2].map((i) => [0, 1, 2].map((j) => a[i][j] / s[j]));
  const det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) -
    r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0]) +
    r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
  const qfac = det < 0 ? -1 : 1;
  if (qfac < 0) { for (let i = 0; i < 3; i++) r[i][2] = -r[i][2]; }
  const trace = r[0][0] + r[1][1] + r[2][2] + 1;
  let qa: number, qb: number, qc: number, qd: number;
  if (trace > 0.5) {
    qa = 0.5 * Math.sqrt(trace);
    qb = 0.25 * (r[2][1] - r[1][2]) / qa;
    qc = 0.25 * (r[0][2] - r[2][0]) / qa;
    qd = 0.25 * (r[1][0] - r[0][1]) / qa;
  } else {
    const xd = 1 + r[0][0] - (r[1][1] + r[2][2]);
    const yd = 1 + r[1][1] - (r[0][0] + r[2][2]);
    const zd = 1 + r[2][2] - (r[0][0] + r[1][1]);
    if (xd > 1) {
      qb = 0.5 * Math.sqrt(xd);
      qc = 0.25 * (r[0][1] + r[1][0]) / qb;
      qd = 0.25 * (r[0][2] + r[2][0]) / qb;
      qa = 0.25 * (r[2][1] - r[1][2]) / qb;
    } else if (yd > 1) {
      qc = 0.5 * Math.sqrt(yd);
      qb = 0.25 * (r[0][1] + r[1][0]) / qc;
      qd = 0.25 * (r[1][2] + r[2][1]) / qc;
      qa = 0.25 * (r[0][2] - r[2][0]) / qc;
    } else {
      qd = 0.5 * Math.sqrt(zd);
      qb = 0.25 * (r[0][2] + r[2][0]) / qd;
      qc = 0.25 * (r[1][2] + r[2][1]) / qd;
      qa = 0.25 * (r[1][0] - r[0][1]) / qd;
    }
    if (qa < 0) [qb, qc, qd] = [-qb, -qc, -qd];
  }
  return { b: qb, c: qc, d: qd, qfac };
}

/** Encodes a volume as NIfTI-1 bytes (uncompressed). */
export function encodeNifti(volume: NiftiWriteInput, opts: WriteNiftiOptions = {}): Uint8Array {
  const shape = [...volume.shape];
  if (shape.length < 1 || shape.length > 4 || shape.some((d) => !Number.isInteger(d) || d < 1 || d > 32767)) {
    throw new Error(`writeNifti: shape ${JSON.stringify(shape)} is invalid; expected 1–4 sizes in 1..32767.`);
  }
  const count = shape.reduce((a, b) => a * b, 1);
  if (volume.data.length !== count) {
    throw new Error(
      `writeNifti: ${volume.data.length} values for shape ${shape.join("×")} (${count} voxels).`,
    );
  }
  const spacing = volume.spacing ?? [1, 1, 1];
  const affine = volume.affine ??
    [[spacing[0] ?? 1, 0, 0, 0], [0, spacing[1] ?? 1, 0, 0], [0, 0, spacing[2] ?? 1, 0], [0, 0, 0, 1]];
  const datatype = opts.datatype ?? "float32";
  const types = { float32: [16, 4], uint8: [2, 1], int16: [4, 2], int32: [8, 4] } as const;
  if (!(datatype in types)) {
    throw new Error(
      `writeNifti: datatype "${datatype}" not supported; accepted: ${Object.keys(types).join(", ")}.`,
    );
  }
  const [code, bytesPer] = types[datatype];
  // Integer output: choose slope/intercept so the data range maps onto the type's range.
  let slope = 1;
  let inter = 0;
  if (datatype !== "float32") {
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < count; i++) {
      const v = volume.data[i];
      if (!Number.isFinite(v)) {
        throw new Error(`writeNifti: value ${v} at voxel ${i} cannot be stored as ${datatype}.`);
      }
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const [tmin, tmax] = datatype === "uint8"
      ? [0, 255]
      : datatype === "int16"
      ? [-32768, 32767]
      : [-2147483648, 2147483647];
    const isInteger = Array.from({ length: Math.min(count, 100000) }, (_, i) => volume.data[i]).every(
      Number.isInteger,
    );
    if (isInteger && lo >= tmin && hi <= tmax) {
      slope = 1;
      inter = 0;
    } else {
      slope = hi > lo ? (hi - lo) / (tmax - tmin) : 1;
      inter = lo - tmin * slope;
    }
  }
  const voxOffset = 352;
  const out = new Uint8Array(voxOffset + count * bytesPer);
  const v = new DataView(out.buffer);
  v.setInt32(0, 348, true);
  v.setInt16(40, shape.length, true);
  for (let i = 0; i < 7; i++) v.setInt16(42 + 2 * i, shape[i] ?? 1, true);
  v.setInt16(70, code, true);
  v.setInt16(72, bytesPer * 8, true);
  const q = quaternion(affine);
  const sizes = voxelSizes(affine);
  v.setFloat32(76, q.qfac, true);
  for (let i = 0; i < 3; i++) v.setFloat32(80 + 4 * i, sizes[i], true);
  for (let i = 3; i < 7; i++) v.setFloat32(80 + 4 * i, i === 3 ? (spacing[3] ?? 1) : 1, true);
  v.setFloat32(108, voxOffset, true);
  v.setFloat32(112, datatype === "float32" ? 1 : slope, true);
  v.setFloat32(116, datatype === "float32" ? 0 : inter, true);
  v.setUint8(123, 2 | 8); // mm, seconds
  const desc = new TextEncoder().encode((opts.description ?? "voxgen").slice(0, 79));
  out.set(desc, 148);
  v.setInt16(252, 1, true); // qform: scanner-anatomical
  v.setInt16(254, 1, true); // sform: scanner-anatomical
  v.setFloat32(256, q.b, true);
  v.setFloat32(260, q.c, true);
  v.setFloat32(264, q.d, true);
  v.setFloat32(268, affine[0][3], true);
  v.setFloat32(272, affine[1][3], true);
  v.setFloat32(276, affine[2][3], true);
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 4; c++) v.setFloat32(280 + (r * 4 + c) * 4, affine[r][c], true);
  }
  out.set([0x6e, 0x2b, 0x31, 0x00], 344); // "n+1\0"
  // bytes 348..351: no extensions
  const body = new DataView(out.buffer, voxOffset);
  for (let i = 0; i < count; i++) {
    const x = volume.data[i];
    switch (datatype) {
      case "float32":
        body.setFloat32(4 * i, x, true);
        break;
      case "uint8":
        body.setUint8(i, Math.min(255, Math.max(0, Math.round((x - inter) / slope))));
        break;
      case "int16":
        body.setInt16(2 * i, Math.min(32767, Math.max(-32768, Math.round((x - inter) / slope))), true);
        break;
      case "int32":
        body.setInt32(
          4 * i,
          Math.min(2147483647, Math.max(-2147483648, Math.round((x - inter) / slope))),
          true,
        );
        break;
    }
  }
  return out;
}
