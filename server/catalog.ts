/**
 * The models and adapters a server offers: `<data>/models/<name>.safetensors` (voxgen model files) and
 * `<data>/adapters/<name>.safetensors`, plus the embedded default model under the name "default". Only the
 * safetensors header is read here (the weights are the worker's business), and names are checked so that
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
  /** Whether it needs a condition (the server samples unconditional models only). */
  conditional?: boolean;
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
const ADAPTER_FORMAT = "voxgen-adapter";
const ADAPTER_SUMMARY = ["format", "kind", "rank", "alpha", "base_hash", "trainable", "error"];

/** Reads the `__metadata__` of a safetensors file without reading its tensors. */
export async function safetensorsMetadata(path: string): Promise<Record<string, string>> {
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
  const meta = parsed?.__metadata__ ?? {};
  return typeof meta === "object" ? meta : {};
}

/** The models and adapters found in a data directory. */
export class Catalog {
  readonly #modelsDir: string;
  readonly #adaptersDir: string;
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

  async #resolve(kind: "model" | "adapter", name: string, dir: string): Promise<string> {
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
    const path = `${dir}/${name}.safetensors`;
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
      if (meta.format !== MODEL_FORMAT && meta.format !== LATENT_KIND) {
        throw new Error(`not a voxgen model file (metadata format ${JSON.stringify(meta.format ?? null)})`);
      }
      const unet = JSON.parse(meta.unet);
      const volume = JSON.parse(meta.volume);
      summary.shape = volume.shape;
      summary.range = volume.range;
      summary.conditional = Boolean(unet.withConditioning || unet.numClassEmbeds);
      if (meta.description) summary.description = meta.description;
    } catch (error) {
      summary.error = (error as Error).message;
    }
    this.#summaries.set(path, { stamp, summary });
    return summary;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

async function listNames(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      const name = entry.name.replace(/\.safetensors$/, "");
      if (entry.name.endsWith(".safetensors") && NAME.test(name)) names.push(name);
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return names.sort();
}
