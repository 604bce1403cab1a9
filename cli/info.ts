/**
 * `deno task info`: the WebGPU adapter and device voxgen uses (limits, features) and a tiny compute
 * self-check through the engine; or, given files, what they hold, read on the CPU (no GPU needed):
 *
 * - a NIfTI image: its header (shape, datatype, voxel spacing, affine and the transform it came from,
 *   scaling, description, NIfTI version, endianness) and its value range;
 * - a voxgen model file: the U-Net configuration, noise schedule, volume geometry, description and
 *   parameter count;
 * - an adapter file (also with `--adapter FILE`): its per-layer table and totals;
 * - any other safetensors file: its metadata, tensors (name, dtype, shape) and total parameters.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { adapterSummary, readAdapterInfo } from "../adapters/mod.ts";
import { ADAPTER_FORMAT, decodeAdapterMetadata } from "../adapters/format.ts";
import { deviceInfo, ready } from "../engine/device.ts";
import { tensor } from "../engine/ops/create.ts";
import { mul } from "../engine/ops/elementwise.ts";
import { type Affine, type NiftiVolume, readNifti } from "../io/nifti.ts";
import { parseSafetensors, type RawTensor } from "../io/safetensors.ts";
import { resolveUNetOptions } from "../models/unet.ts";
import { type TokenVocabulary, vocabularyRows } from "../models/tokens.ts";
import { EMBEDDING_FORMAT } from "../pipelines/embedding.ts";
import type { ConditioningInfo, ModelInfo } from "../pipelines/modelfile.ts";
import { DDPMScheduler } from "../samplers/scheduler.ts";

const HELP = `Usage: deno task info [FILE ...] [--adapter FILE]

  (no arguments)   the WebGPU adapter, its limits and features, and a compute self-check
  FILE             what a file holds (read on the CPU, no GPU needed):
                     a NIfTI image (.nii, .nii.gz): its header and value range
                     a voxgen model file: U-Net configuration, scheduler, volume geometry, parameter count
                     an adapter file: its adapted layers and trainable parameters
                     any other safetensors file: its tensors (name, dtype, shape) and total parameters
  --adapter FILE   an adapter file's method, base model hash, adapted layers and trainable parameters
                   (repeat for several files)
`;

/** The limits that decide which volume sizes and kernels fit. */
const KEY_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupsPerDimension",
];

/** The `format` metadata of voxgen model files (see pipelines/modelfile.ts). */
const MODEL_FORMAT = "voxgen-diffusion-unet";

/** Runs the command with `args`. */
export async function main(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      adapter: { type: "string", multiple: true },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (positionals.length > 0 || values.adapter?.length) {
    // Printed one by one, so a bad file further down the list still shows the ones before it.
    let separator = "";
    for (const path of positionals) {
      console.log(`${separator}${await describeFile(path)}`);
      separator = "\n";
    }
    for (const path of values.adapter ?? []) {
      await mustExist(path, "--adapter: ");
      console.log(`${separator}${path}\n${adapterSummary(await readAdapterInfo(path))}`);
      separator = "\n";
    }
    return;
  }

  await ready();
  const info = deviceInfo();
  console.log(`adapter:   ${info.adapter}${info.vendor ? ` (vendor ${info.vendor})` : ""}`);
  console.log(`fallback:  ${info.isFallbackAdapter}${info.isFallbackAdapter ? " (software)" : ""}`);
  console.log("limits:");
  for (const name of KEY_LIMITS) {
    if (name in info.limits) console.log(`  ${name.padEnd(34)} ${info.limits[name]}`);
  }
  console.log(`features:  ${info.features.join(", ") || "(none)"}`);
  const out = await selfCheck();
  if (out.join() !== "2,4,6,8") throw new Error(`self-check: FAILED: expected [2,4,6,8], got [${out}].`);
  console.log("self-check: ok (the engine doubled [1,2,3,4] -> [2,4,6,8] on the GPU)");
}

/**
 * A plain-text description of a NIfTI image, a voxgen model file, an adapter file, an embedding or any other safetensors
 * file (chosen by the file's content, or by its extension when the content is not recognisable). Reads the
 * file on the CPU; never touches the GPU.
 */
export async function describeFile(path: string): Promise<string> {
  const bytes = await mustExist(path);
  const lower = path.toLowerCase();
  if (looksLikeNifti(bytes) || /\.(nii|nii\.gz|hdr|img)$/.test(lower)) {
    return describeNifti(path, await readNifti(path));
  }
  if (looksLikeSafetensors(bytes) || lower.endsWith(".safetensors")) {
    const file = parseSafetensors(bytes, path);
    if (file.metadata.format === MODEL_FORMAT) return describeModel(path, file.tensors, file.metadata);
    if (file.metadata.format === ADAPTER_FORMAT) {
      return `${path}\n${adapterSummary(decodeAdapterMetadata(file.metadata, path))}`;
    }
    if (file.metadata.format === EMBEDDING_FORMAT) return describeEmbedding(path, file.metadata);
    return describeSafetensors(path, file.tensors, file.metadata);
  }
  const head = [...bytes.subarray(0, 4)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
  throw new Error(
    `${path} is neither a NIfTI image (.nii, .nii.gz) nor a safetensors file (it starts with bytes ${head}); ` +
      "info describes those two kinds of file.",
  );
}

/** Reads the whole file, or says clearly that it is missing. */
async function mustExist(path: string, prefix = ""): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new Error(`${prefix}no such file ${path}.`);
    if (error instanceof Deno.errors.IsADirectory) throw new Error(`${prefix}${path} is a directory.`);
    throw new Error(`${prefix}cannot read ${path}: ${(error as Error).message}`);
  }
}

/** gzip data, or the NIfTI-1 magic at byte 344 / the NIfTI-2 magic at byte 4. */
function looksLikeNifti(bytes: Uint8Array): boolean {
  const text = (at: number) => new TextDecoder().decode(bytes.subarray(at, at + 3));
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) return true;
  return ["n+1", "ni1"].includes(text(344)) || ["n+2", "ni2"].includes(text(4));
}

/** An 8-byte little-endian header length that fits the file, followed by a JSON object. */
function looksLikeSafetensors(bytes: Uint8Array): boolean {
  if (bytes.byteLength < 10) return false;
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  return headerLength <= BigInt(bytes.byteLength - 8) && bytes[8] === 0x7b; // "{"
}

// ---- NIfTI ----

const SPACE_UNITS: Record<number, string> = { 0: "(unknown unit)", 1: "m", 2: "mm", 3: "µm" };
const TIME_UNITS: Record<number, string> = { 0: "(unknown unit)", 8: "s", 16: "ms", 24: "µs" };

function describeNifti(path: string, nii: NiftiVolume): string {
  const h = nii.header;
  const spaceUnit = SPACE_UNITS[h.xyztUnits & 0x07] ?? `(unit code ${h.xyztUnits & 0x07})`;
  const timeUnit = TIME_UNITS[h.xyztUnits & 0x38] ?? `(unit code ${h.xyztUnits & 0x38})`;
  let spacing = `${nii.spacing.slice(0, 3).map(num).join(" × ")} ${spaceUnit}`;
  if (nii.shape.length > 3) spacing += `; time step ${num(nii.spacing[3])} ${timeUnit}`;
  const source = {
    sform: `sform (sform_code ${h.sformCode}; qform_code ${h.qformCode})`,
    qform: `qform (qform_code ${h.qformCode}; no sform)`,
    pixdim: "pixdim (neither sform nor qform is set)",
  }[h.affineSource];
  // NIfTI: scl_slope = 0 (or not finite) means the stored values are used as they are.
  const scaled = h.sclSlope !== 0 && Number.isFinite(h.sclSlope);
  const identity = !scaled || (h.sclSlope === 1 && h.sclInter === 0);
  const scaling = `scl_slope ${num(h.sclSlope)}, scl_inter ${num(h.sclInter)} (${
    !scaled ? "none: slope 0 means unscaled" : identity ? "identity" : "applied"
  })`;
  const [lo, hi, mean] = valueRange(nii.data);
  return [
    `${path}: NIfTI-${h.version} image, ${h.littleEndian ? "little" : "big"}-endian`,
    field("shape", `${nii.shape.join(" × ")} (${nii.data.length.toLocaleString("en-US")} voxels)`),
    field("datatype", nii.datatype),
    field("spacing", spacing),
    field("affine", `from ${source}`),
    ...affineRows(nii.affine),
    field("scaling", scaling),
    field("description", h.description ? JSON.stringify(h.description) : "(none)"),
    field("values", `${num(lo)} … ${num(hi)}, mean ${num(mean)}${identity ? "" : " (after scaling)"}`),
  ].join("\n");
}

function valueRange(data: Float32Array): [number, number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  let sum = 0;
  for (const v of data) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
    sum += v;
  }
  return [lo, hi, sum / Math.max(data.length, 1)];
}

// ---- safetensors ----

function describeModel(path: string, tensors: Map<string, RawTensor>, meta: Record<string, string>): string {
  const parse = <T>(key: string): T => {
    try {
      return JSON.parse(meta[key]);
    } catch {
      throw new Error(`${path}: the model file's "${key}" metadata is missing or not valid JSON.`);
    }
  };
  const info: ModelInfo = {
    unet: parse("unet"),
    scheduler: parse("scheduler"),
    volume: parse("volume"),
    description: meta.description,
  };
  const yesNo = (b: boolean) => (b ? "yes" : "no");
  // Defaults filled in for whatever the file leaves out; both are plain CPU work.
  const u = checked(path, "unet", () => resolveUNetOptions(info.unet));
  const s = checked(path, "scheduler", () => new DDPMScheduler(info.scheduler));
  const betas = s.schedule.betas;
  const [nx, ny, nz] = info.volume.shape;
  const { count, bytes } = totals(tensors);
  return [
    `${path}: voxgen model file (${MODEL_FORMAT})`,
    field("description", info.description || "(none)"),
    field("parameters", `${grouped(count)} in ${tensors.size} tensors (${megabytes(bytes)} in the file)`),
    "  U-Net (DiffusionModelUNet)",
    field("spatial dims", String(u.spatialDims), 4),
    field("in → out", `${u.inChannels} → ${u.outChannels} channels`, 4),
    field("channels", u.channels.join(", "), 4),
    field("attention", u.attentionLevels.map(yesNo).join(", "), 4),
    field("res blocks", u.numResBlocks.join(", "), 4),
    field("head channels", u.numHeadChannels.join(", "), 4),
    field("norm groups", `${u.normNumGroups} (eps ${num(u.normEps)})`, 4),
    field("resblock up/down", yesNo(u.resblockUpdown), 4),
    field(
      "conditioning",
      u.withConditioning
        ? `cross-attention, context width ${u.crossAttentionDim}, ${u.transformerNumLayers} transformer layer(s)`
        : "none",
      4,
    ),
    field("class labels", u.numClassEmbeds === null ? "none" : `${u.numClassEmbeds} classes`, 4),
    ...tokenLines(path, meta),
    "  scheduler",
    field("timesteps", String(s.numTrainTimesteps), 4),
    field(
      "schedule",
      `${info.scheduler.schedule ?? "linear_beta"}, β ${num(betas[0])} … ${num(betas[betas.length - 1])}`,
      4,
    ),
    field("prediction", s.predictionType, 4),
    field("clip x0", s.clipSample ? `[${s.clipRange.map(num).join(", ")}]` : "no", 4),
    "  volume",
    field("shape", `${nx} × ${ny} × ${nz} (tensor [1, ${u.inChannels}, ${nz}, ${ny}, ${nx}])`, 4),
    field("spacing", `${columnNorms(info.volume.affine).map(num).join(" × ")} mm`, 4),
    field("affine", "", 4),
    ...affineRows(info.volume.affine, 6),
    field("range", `[${info.volume.range.map(num).join(", ")}]`, 4),
  ].join("\n");
}

/** A textual-inversion embedding file: its token, size, and the base model it belongs to. */
function describeEmbedding(path: string, meta: Record<string, string>): string {
  return [
    `${path}: voxgen textual-inversion embedding (${EMBEDDING_FORMAT})`,
    field("token", meta.name),
    field("vectors", `${meta.numVectors} × ${meta.dim} (contexts of ${meta.contextLength} tokens)`),
    field("base model", `${meta.baseModelHash} (hash of its weights)`),
    field("trained", `${meta.steps ?? "?"} steps, lr ${meta.lr ?? "?"}, init ${meta.init ?? "?"}`),
  ].join("\n");
}

/** The token table's lines (context length, concepts with their vectors), when the model has one. */
function tokenLines(path: string, meta: Record<string, string>): string[] {
  const lines: string[] = [];
  if (meta.tokens) {
    const v = checked<TokenVocabulary>(path, "tokens", () => {
      const parsed = JSON.parse(meta.tokens);
      vocabularyRows(parsed);
      return parsed;
    });
    const concepts = v.concepts.map((c) => `${c.name} (${c.vectors} vector${c.vectors > 1 ? "s" : ""})`);
    lines.push(
      field(
        "tokens",
        `context of ${v.contextLength} tokens × ${v.dim}; <bos>, <pad> and ${v.concepts.length} concepts`,
        4,
      ),
      field("concepts", concepts.join(", ") || "(none)", 4),
    );
  }
  if (meta.conditioning) {
    const c = checked<ConditioningInfo>(path, "conditioning", () => JSON.parse(meta.conditioning));
    const parts = [
      c.uncondProb !== undefined ? `condition dropout ${num(c.uncondProb)}` : "",
      c.nullClass !== undefined ? `null class ${c.nullClass}` : "",
    ].filter(Boolean);
    lines.push(field("trained with", parts.join(", ") || "(nothing recorded)", 4));
  }
  return lines;
}

/** Runs `make`, naming the file and its metadata entry when the options it reads are invalid. */
function checked<T>(path: string, key: string, make: () => T): T {
  try {
    return make();
  } catch (error) {
    throw new Error(`${path}: the model file's "${key}" metadata is invalid: ${(error as Error).message}`);
  }
}

function describeSafetensors(
  path: string,
  tensors: Map<string, RawTensor>,
  meta: Record<string, string>,
): string {
  const rows = [...tensors].map(([name, t]) => [name, t.dtype, `[${t.shape.join(", ")}]`]);
  const widths = [0, 1].map((c) => Math.max(...rows.map((r) => r[c].length), 6));
  const { count, bytes } = totals(tensors);
  const metaLines = Object.entries(meta).map(([k, v]) => {
    const flat = v.replace(/\s+/g, " ");
    return field(k, flat.length > 90 ? `${flat.slice(0, 87)}…` : flat, 4);
  });
  return [
    `${path}: safetensors file, ${tensors.size} tensors${meta.format ? ` (format "${meta.format}")` : ""}`,
    ...(metaLines.length > 0 ? ["  metadata", ...metaLines] : []),
    "  tensors",
    ...rows.map(([name, dtype, shape]) =>
      `    ${name.padEnd(widths[0])}  ${dtype.padEnd(widths[1])}  ${shape}`
    ),
    field("parameters", `${grouped(count)} (${megabytes(bytes)} in the file)`),
  ].join("\n");
}

const DTYPE_BYTES: Record<string, number> = { F64: 8, I64: 8, F32: 4, I32: 4, F16: 2, BF16: 2, I16: 2 };

/** Total elements and their bytes as stored. */
function totals(tensors: Map<string, RawTensor>): { count: number; bytes: number } {
  let count = 0;
  let bytes = 0;
  for (const t of tensors.values()) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    count += n;
    bytes += n * (DTYPE_BYTES[t.dtype] ?? 1);
  }
  return { count, bytes };
}

// ---- formatting ----

/** `  name          value`, the values in one column. */
function field(name: string, value: string, indent = 2): string {
  return `${" ".repeat(indent)}${name.padEnd(21 - indent)} ${value}`.trimEnd();
}

/** A number with at most 6 significant digits, without trailing zeros; tiny ones as 1e-6, "-0" as "0". */
function num(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const rounded = Number(v.toPrecision(6)) + 0;
  return rounded !== 0 && Math.abs(rounded) < 1e-3 ? rounded.toExponential() : String(rounded);
}

function grouped(n: number): string {
  return n.toLocaleString("en-US");
}

function megabytes(bytes: number): string {
  return bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

/** The affine's rows, columns aligned. */
function affineRows(affine: Affine, indent = 4): string[] {
  const cells = affine.map((row) => row.map(num));
  const width = Math.max(...cells.flat().map((c) => c.length));
  return cells.map((row) => `${" ".repeat(indent)}[ ${row.map((c) => c.padStart(width)).join("  ")} ]`);
}

/** Voxel size along each voxel axis: the lengths of the affine's first three columns. */
function columnNorms(affine: Affine): number[] {
  return [0, 1, 2].map((c) => Math.hypot(affine[0][c], affine[1][c], affine[2][c]));
}

/** Doubles [1, 2, 3, 4] with an engine op and reads it back. */
async function selfCheck(): Promise<number[]> {
  const x = tensor([1, 2, 3, 4], [4]);
  const y = mul(x, 2);
  try {
    return [...await y.toArray()];
  } finally {
    x.dispose();
    y.dispose();
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`info: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
