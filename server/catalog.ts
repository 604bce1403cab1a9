/**
 * The models, adapters and embeddings a server offers: `<data>/models/<name>.safetensors` (voxgen model
 * files), `<data>/adapters/<name>.safetensors` and `<data>/embeddings/<name>.ti.safetensors` (textual
 * inversion), plus the embedded default model under the name "default"; control modules
 * `<data>/controls/<name>.safetensors` and the condition volumes uploaded for them,
 * `<data>/conditions/<name>.nii`. Only the safetensors header is read here (the weights are the worker's
 * business), and names are checked so that
 * no request can reach a file outside those directories.
 *
 * @module
 */

import { ApiError } from "./errors.ts";

/** A model as `GET /v1/models` lists it. */
export interface ModelSummary {
  /** Name to use in requests. */
  name: string;
  /** True for the model used when a request names none. */
  default: boolean;
  /** File size in bytes. */
  bytes: number;
  /** Spatial size [nx, ny, nz] of its volumes. */
  shape?: [number, number, number];
  /** Intensity range of its volumes. */
  range?: [number, number];
  /** Whether it takes a condition (prompt or class label). */
  conditional?: boolean;
  /** Concepts a prompt may use (a model with a token table), with their vector counts. */
  concepts?: Array<{ name: string; vectors: number }>;
  /** Tokens per context and their width (a model with a token table). */
  contextLength?: number;
  /** Width of a token (its crossAttentionDim). */
  tokenDim?: number;
  /** Number of classes (a class-conditional model). */
  classes?: number;
  /** The class meaning "no class", which guidance of a class-conditional model needs. */
  nullClass?: number;
  /** Condition volumes the model takes as input channels (requests must give them). */
  conditionChannels?: number;
  /** The model file's description. */
  description?: string;
  /** Why the file cannot be used, when it cannot. */
  error?: string;
}

/** An adapter as `GET /v1/models` lists it. */
export interface AdapterSummary {
  /** Name to use in requests. */
  name: string;
  /** File size in bytes. */
  bytes: number;
  /** From the adapter file's metadata: format, kind, rank, alpha, base_hash, trainable (or error). */
  metadata: Record<string, string>;
}

/** A textual-inversion embedding as `GET /v1/models` lists it. */
export interface EmbeddingSummary {
  /** Name to use in requests (the file name without `.ti.safetensors`). */
  name: string;
  /** File size in bytes. */
  bytes: number;
  /** The concept's token, usable in prompts once the embedding is requested. */
  token?: string;
  /** Vectors of the concept. */
  numVectors?: number;
  /** Width of a vector. */
  dim?: number;
  /** Hash of the base model it was learned on (absent for an imported diffusers file). */
  baseModelHash?: string;
  /** Why the file cannot be used, when it cannot. */
  error?: string;
}

/** A model resolved for a job. */
export interface ResolvedModel {
  /** Absolute path of the file. */
  path: string;
  /** Its summary (shape, range, conditional). */
  summary: ModelSummary;
}

/** Names: a letter or digit, then letters, digits, ".", "_" or "-" — no "/", no leading ".". */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const MAX_HEADER = 100 * 1024 * 1024;
const MODEL_FORMAT = "voxgen-diffusion-unet";
/** The `format` of latent diffusion model files (pipelines/latent_modelfile.ts). */
const LATENT_KIND = "voxgen-latent-diffusion";
/** Slice-model files (cDPM, pipelines/slice_model.ts): their volumes are built stage by stage. */
const SLICE_KIND = "voxgen-slice-unet";
const ADAPTER_FORMAT = "voxgen-adapter";
const CONTROL_FORMAT = "voxgen-control";
type Kind = "model" | "adapter" | "embedding" | "control" | "condition";
const ADAPTER_SUMMARY = ["format", "kind", "rank", "alpha", "base_hash", "trainable", "error"];
const EMBEDDING_SUFFIX = ".ti.safetensors";

/** Reads the `__metadata__` of a safetensors file without reading its tensors. */
export async function safetensorsMetadata(path: string): Promise<Record<string, string>> {
  const meta = (await safetensorsHeader(path)).__metadata__ ?? {};
  return typeof meta === "object" ? meta as Record<string, string> : {};
}

/** Reads the JSON header of a safetensors file (tensor entries and `__metadata__`), not its tensors. */
async function safetensorsHeader(path: string): Promise<Record<string, unknown>> {
  using file = await Deno.open(path);
  const head = new Uint8Array(8);
  if ((await file.read(head)) !== 8) throw new Error("file too short for a safetensors header");
  const length = Number(new DataView(head.buffer).getBigUint64(0, true));
  if (length > MAX_HEADER) throw new Error(`header length ${length} is not plausible (not safetensors?)`);
  const header = new Uint8Array(length);
  let at = 0;
  while (at < length) {
    const n = await file.read(header.subarray(at));
    if (n === null) throw new Error("file ends inside its header (truncated?)");
    at += n;
  }
  const parsed = JSON.parse(new TextDecoder().decode(header));
  if (typeof parsed !== "object" || parsed === null) throw new Error("the header is not a JSON object");
  return parsed;
}

/** The models and adapters found in a data directory. */
export class Catalog {
  readonly #modelsDir: string;
  readonly #adaptersDir: string;
  readonly #embeddingsDir: string;
  /** Control modules (`train-control`). */
  readonly controlsDir: string;
  /** Uploaded condition volumes. */
  readonly conditionsDir: string;
  readonly #summaries = new Map<string, { stamp: string; summary: ModelSummary }>();

  /**
   * The catalog of a data directory.
   *
   * @param dataDir the server's data directory (absolute)
   * @param defaultModel path of the model used when a request names none
   */
  constructor(dataDir: string, readonly defaultModel: string) {
    this.#modelsDir = `${dataDir}/models`;
    this.#adaptersDir = `${dataDir}/adapters`;
    this.#embeddingsDir = `${dataDir}/embeddings`;
    this.controlsDir = `${dataDir}/controls`;
    this.conditionsDir = `${dataDir}/conditions`;
  }

  /** Every control module, in name order, with its short metadata (kind, conditions) or an error. */
  async controls(): Promise<AdapterSummary[]> {
    const out: AdapterSummary[] = [];
    for (const name of await listNames(this.controlsDir)) {
      const path = await this.#resolve("control", name, this.controlsDir).catch(() => null);
      if (!path) continue;
      const meta: Record<string, string> = await safetensorsMetadata(path).catch((e) => ({
        error: (e as Error).message,
      }));
      const metadata = Object.fromEntries(
        Object.entries(meta).filter(([k]) =>
          ["format", "kind", "conditions", "baseHash", "error"].includes(k)
        ),
      );
      out.push({ name, bytes: (await Deno.stat(path)).size, metadata });
    }
    return out;
  }

  /** Resolves a control module name: 400 bad name, 404 none, 422 not a voxgen control file. */
  async control(name: string): Promise<string> {
    const path = await this.#resolve("control", name, this.controlsDir);
    const meta = await safetensorsMetadata(path).catch((e) =>
      ({ error: (e as Error).message }) as Record<string, string>
    );
    if (meta.format !== CONTROL_FORMAT) {
      throw new ApiError(
        422,
        "invalid_control",
        `Control module "${name}" cannot be used: ${
          meta.error ?? `not a voxgen control file (format ${JSON.stringify(meta.format ?? null)})`
        }.`,
      );
    }
    return path;
  }

  /** Resolves an uploaded condition volume: 400 bad name, 404 not uploaded. */
  condition(name: string): Promise<string> {
    return this.#resolve("condition", name, this.conditionsDir, ".nii");
  }

  /** The path an upload named `name` is stored at (400 for a bad name). */
  conditionPath(name: string): string {
    checkName("condition", name);
    return `${this.conditionsDir}/${name}.nii`;
  }

  /** Every model: the default one first, then the data directory's in name order. */
  async models(): Promise<ModelSummary[]> {
    const out: ModelSummary[] = [];
    if (await exists(this.defaultModel)) out.push(await this.#summary("default", this.defaultModel));
    for (const name of await listNames(this.#modelsDir)) {
      const path = name === "default"
        ? null
        : await this.#resolve("model", name, this.#modelsDir).catch(() => null);
      if (path) out.push(await this.#summary(name, path));
    }
    return out;
  }

  /** Every adapter in the data directory, in name order. */
  async adapters(): Promise<AdapterSummary[]> {
    const out: AdapterSummary[] = [];
    for (const name of await listNames(this.#adaptersDir)) {
      const path = await this.#resolve("adapter", name, this.#adaptersDir).catch(() => null);
      if (!path) continue; // e.g. a link leading out of the directory
      const meta: Record<string, string> = await safetensorsMetadata(path).catch((e) => ({
        error: (e as Error).message,
      }));
      // The short fields only: the full layer description can be long.
      const metadata = Object.fromEntries(Object.entries(meta).filter(([k]) => ADAPTER_SUMMARY.includes(k)));
      out.push({ name, bytes: (await Deno.stat(path)).size, metadata });
    }
    return out;
  }

  /** Every textual-inversion embedding (`<data>/embeddings/<name>.ti.safetensors`), in name order. */
  async embeddings(): Promise<EmbeddingSummary[]> {
    const out: EmbeddingSummary[] = [];
    for (const name of await listNames(this.#embeddingsDir, EMBEDDING_SUFFIX)) {
      const path = await this.#resolve("embedding", name, this.#embeddingsDir, EMBEDDING_SUFFIX).catch(() =>
        null
      );
      if (path) out.push(await embeddingSummary(name, path));
    }
    return out;
  }

  /**
   * Resolves an embedding name to its file and summary: 400 for a bad name, 404 when there is none, 422
   * when the file is not an embedding. (Whether it fits the model's base is checked when the job runs.)
   */
  async embedding(name: string): Promise<{ path: string; summary: EmbeddingSummary }> {
    const path = await this.#resolve("embedding", name, this.#embeddingsDir, EMBEDDING_SUFFIX);
    const summary = await embeddingSummary(name, path);
    if (summary.error) {
      throw new ApiError(422, "invalid_embedding", `Embedding "${name}" cannot be used: ${summary.error}`);
    }
    return { path, summary };
  }

  /** Resolves a model name: 400 for a bad name, 404 when there is no such model, 422 when it is unusable. */
  async model(name: string): Promise<ResolvedModel> {
    let path: string;
    if (name === "default") {
      path = this.defaultModel;
      if (!(await exists(path))) {
        throw new ApiError(
          404,
          "model_not_found",
          `The default model (${path}) is not installed; name a model from GET /v1/models, or start the ` +
            "server with --default-model FILE.",
        );
      }
    } else {
      path = await this.#resolve("model", name, this.#modelsDir);
    }
    const summary = await this.#summary(name, path);
    if (summary.error) {
      throw new ApiError(422, "invalid_model", `Model "${name}" cannot be used: ${summary.error}`);
    }
    return { path, summary };
  }

  /**
   * Resolves an adapter name to its file: 400 for a bad name, 404 when there is no such adapter, 422 when
   * the file is not a voxgen adapter. (Whether it fits the model is checked when the job runs.)
   */
  async adapter(name: string): Promise<string> {
    const path = await this.#resolve("adapter", name, this.#adaptersDir);
    const meta = await safetensorsMetadata(path).catch((e) =>
      ({ error: (e as Error).message }) as Record<string, string>
    );
    if (meta.format !== ADAPTER_FORMAT) {
      throw new ApiError(
        422,
        "invalid_adapter",
        `Adapter "${name}" cannot be used: ${
          meta.error ?? `not a voxgen adapter file (format ${JSON.stringify(meta.format ?? null)})`
        }.`,
      );
    }
    return path;
  }

  async #resolve(kind: Kind, name: string, dir: string, suffix = ".safetensors"): Promise<string> {
    checkName(kind, name);
    const path = `${dir}/${name}${suffix}`;
    let real: string;
    try {
      real = await Deno.realPath(path);
    } catch {
      throw new ApiError(404, `${kind}_not_found`, `No ${kind} named "${name}"; GET /v1/models lists them.`);
    }
    // A symbolic link must not lead out of the directory either.
    const realDir = await Deno.realPath(dir);
    if (!real.startsWith(`${realDir}/`)) {
      throw new ApiError(400, "invalid_name", `${kind} "${name}" points outside the ${kind}s directory.`);
    }
    return real;
  }

  async #summary(name: string, path: string): Promise<ModelSummary> {
    const stat = await Deno.stat(path);
    const stamp = `${stat.mtime?.getTime()}:${stat.size}`;
    const hit = this.#summaries.get(path);
    if (hit?.stamp === stamp) return { ...hit.summary, name };
    const summary: ModelSummary = { name, default: name === "default", bytes: stat.size };
    try {
      const meta = await safetensorsMetadata(path);
      // Latent diffusion model files sample like the others (the worker decodes their latents).
      if (meta.format !== MODEL_FORMAT && meta.format !== LATENT_KIND && meta.format !== SLICE_KIND) {
        throw new Error(`not a voxgen model file (metadata format ${JSON.stringify(meta.format ?? null)})`);
      }
      const unet = JSON.parse(meta.format === SLICE_KIND ? meta.network : meta.unet);
      const volume = JSON.parse(meta.volume);
      summary.shape = volume.shape;
      summary.range = volume.range;
      summary.conditional = Boolean(unet.withConditioning || unet.numClassEmbeds);
      if (meta.tokens) {
        const tokens = JSON.parse(meta.tokens);
        summary.concepts = tokens.concepts;
        summary.contextLength = tokens.contextLength;
        summary.tokenDim = tokens.dim;
      }
      if (unet.numClassEmbeds) summary.classes = unet.numClassEmbeds;
      const conditioning = meta.conditioning ? JSON.parse(meta.conditioning) : {};
      if (conditioning.nullClass !== undefined) summary.nullClass = conditioning.nullClass;
      if (conditioning.conditionChannels) {
        summary.conditionChannels = conditioning.conditionChannels;
        summary.conditional = true;
      }
      if (meta.description) summary.description = meta.description;
    } catch (error) {
      summary.error = (error as Error).message;
    }
    this.#summaries.set(path, { stamp, summary });
    return summary;
  }
}

function checkName(kind: Kind, name: string): void {
  if (!NAME.test(name)) {
    throw new ApiError(
      400,
      "invalid_name",
      `${kind} name ${
        JSON.stringify(name)
      } is not allowed: names are 1–100 letters, digits, ".", "_" or "-", ` +
        "starting with a letter or digit (no paths).",
    );
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** The summary of an embedding file, from its header (voxgen metadata, or a diffusers file's one key). */
async function embeddingSummary(name: string, path: string): Promise<EmbeddingSummary> {
  const summary: EmbeddingSummary = { name, bytes: (await Deno.stat(path)).size };
  try {
    const header = await safetensorsHeader(path);
    const keys = Object.keys(header).filter((k) => k !== "__metadata__");
    if (keys.length !== 1) throw new Error(`an embedding file holds one tensor; this one has ${keys.length}`);
    const meta = (header.__metadata__ ?? {}) as Record<string, string>;
    const shape = (header[keys[0]] as { shape: number[] }).shape;
    summary.token = /^<.*>$/.test(keys[0]) ? keys[0] : `<${keys[0]}>`;
    summary.numVectors = shape.length === 1 ? 1 : shape[0];
    summary.dim = shape.at(-1);
    if (meta.format === "voxgen-ti") summary.baseModelHash = meta.baseModelHash;
  } catch (error) {
    summary.error = (error as Error).message;
  }
  return summary;
}

async function listNames(dir: string, suffix = ".safetensors"): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      const name = entry.name.slice(0, -suffix.length);
      if (entry.name.endsWith(suffix) && NAME.test(name)) names.push(name);
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return names.sort();
}
