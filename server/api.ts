/**
 * The HTTP API: routing, authentication, request validation, Server-Sent Events and result downloads.
 * Every failure is JSON `{ error: { code, message } }` with a fitting status. The GPU work happens in the
 * {@linkcode JobQueue}'s worker; nothing here ever waits for the GPU.
 *
 * @module
 */

import { encodeNifti, gzip, readNifti } from "../io/nifti.ts";
import { sphereMask } from "../pipelines/inpaint.ts";
import { atomicWrite } from "../io/atomic.ts";
import { parsePrompt, type PromptPart } from "../models/prompt.ts";
import { type Catalog, type ModelSummary, safetensorsMetadata } from "./catalog.ts";
import { ApiError } from "./errors.ts";
import { ACCEPTED_SAMPLER_NAMES, DEFAULT_SAMPLER, findSampler } from "../samplers/registry.ts";
import {
  type AdapterChoice,
  type ControlChoice,
  type InpaintChoice,
  MAX_PRIORITY,
  type SampleRequest,
} from "./protocol.ts";
import { prometheusText } from "./metrics.ts";
import type { JobEvent, JobQueue } from "./queue.ts";
import { FINAL_STATES, type Job, type JobStatus } from "./store.ts";
import { browserBundle, niivueModule, viewerPage } from "./viewer.ts";

/** Limits and settings of the API. */
export interface ApiOptions {
  /** The job queue. */
  queue: JobQueue;
  /** Models and adapters. */
  catalog: Catalog;
  /** When set, every `/v1` request needs `Authorization: Bearer <token>`. */
  token?: string;
  /** Largest request body in bytes (413 beyond). */
  maxBodyBytes: number;
  /** Most sampling steps a request may ask for. */
  maxSteps: number;
  /** Most volumes per request. */
  maxBatch: number;
  /** Seconds between SSE keep-alive comments (default 15). */
  keepAliveSeconds?: number;
}

/** The request handler and what graceful shutdown needs from it. */
export interface Api {
  /** Answers one request. */
  handle(request: Request): Promise<Response>;
  /** Ends every open event stream (they would otherwise keep the server from shutting down). */
  closeStreams(): void;
}

/** The fields a sample request may have. */
const REQUEST_FIELDS = [
  "model",
  "adapters",
  "sampler",
  "steps",
  "seed",
  "guidanceScale",
  "batch",
  "priority",
  "prompt",
  "classLabel",
  "embeddings",
  "inpaint",
  "condition",
  "control",
];
const CONTROL_FIELDS = ["name", "conditions", "scale"];
/** Largest condition volume upload (a 128³ float32 volume with 4 channels is 32 MiB). */
const MAX_CONDITION_BYTES = 64 * 1024 * 1024;
const ADAPTER_FIELDS = ["name", "weight"];
const STATUSES: readonly JobStatus[] = ["queued", "running", "done", "failed", "cancelled"];
const MAX_ADAPTERS = 8;
const MAX_GUIDANCE = 30;

/** Builds the API handler. */
export function createApi(opts: ApiOptions): Api {
  const streams = new Set<() => void>();
  let closing = false;
  const keepAliveMs = (opts.keepAliveSeconds ?? 15) * 1000;

  async function route(req: Request, url: URL): Promise<Response> {
    const path = url.pathname;
    if (path === "/" || path === "/index.html") {
      allow(req, ["GET"]);
      return new Response(await viewerPage(), { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    if (path === "/niivue.js") {
      allow(req, ["GET"]);
      return new Response(await niivueModule(), {
        headers: {
          "content-type": "text/javascript; charset=utf-8",
          "cache-control": "public, max-age=86400",
        },
      });
    }
    if (path === "/voxgen.js") {
      allow(req, ["GET"]);
      return new Response(await browserBundle(), {
        headers: { "content-type": "text/javascript; charset=utf-8" },
      });
    }
    if (path === "/healthz") {
      allow(req, ["GET"]);
      const health = await opts.queue.health();
      return json(health.worker === "unavailable" ? 503 : 200, {
        status: health.worker === "ready" ? "ok" : health.worker,
        auth: Boolean(opts.token),
        ...health,
      });
    }
    if (path === "/metrics") {
      // Prometheus text; behind the token when there is one (a scraper sends it as a bearer token).
      allow(req, ["GET"]);
      await authorize(req);
      return new Response(prometheusText(await opts.queue.metrics()), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (path !== "/v1" && !path.startsWith("/v1/")) {
      throw new ApiError(404, "not_found", `No route ${path}.`);
    }
    await authorize(req);
    const parts = path.split("/").slice(2); // "/v1/jobs/x" → ["jobs", "x"]
    if (parts.length === 1 && parts[0] === "samples") {
      allow(req, ["POST"]);
      return await submit(req);
    }
    if (parts.length === 1 && parts[0] === "models") {
      allow(req, ["GET"]);
      return json(200, {
        models: await opts.catalog.models(),
        adapters: await opts.catalog.adapters(),
        embeddings: await opts.catalog.embeddings(),
        controls: await opts.catalog.controls(),
      });
    }
    if (parts.length === 2 && parts[0] === "conditions") {
      allow(req, ["PUT"]);
      return await uploadCondition(req, parts[1]);
    }
    if (parts.length === 3 && parts[0] === "models" && parts[2] === "file") {
      // The model file itself, for pages that sample with their own GPU.
      allow(req, ["GET"]);
      const { path } = await opts.catalog.model(decodeURIComponent(parts[1]));
      const file = await Deno.open(path);
      return new Response(file.readable, { headers: { "content-type": "application/octet-stream" } });
    }
    if (parts[0] === "jobs") {
      if (parts.length === 1) {
        allow(req, ["GET"]);
        return await listJobs(url);
      }
      const id = parts[1];
      if (parts.length === 2) {
        allow(req, ["GET", "DELETE"]);
        if (req.method === "GET") return json(200, view(await opts.queue.get(id)));
        const { job, settled } = await opts.queue.cancel(id);
        return json(settled ? 200 : 202, view(job));
      }
      if (parts.length === 3 && parts[2] === "events") {
        allow(req, ["GET"]);
        return await events(id);
      }
      if (parts.length === 3 && parts[2] === "result") {
        allow(req, ["GET"]);
        return await result(id, url);
      }
      if (parts.length === 3 && parts[2] === "condition") {
        allow(req, ["GET"]);
        return await conditionOf(id, url);
      }
    }
    throw new ApiError(404, "not_found", `No route ${path}.`);
  }

  function authorize(req: Request): Promise<void> | void {
    if (!opts.token) {
      // Without a token the server is loopback-only; a foreign Host header means a DNS-rebinding page.
      const host = new URL(req.url).hostname;
      if (!isLoopbackHost(host)) {
        throw new ApiError(
          403,
          "forbidden_host",
          `Host "${host}" is not a loopback name; start with --token to serve it.`,
        );
      }
      return;
    }
    const header = req.headers.get("authorization") ?? "";
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    const challenge = { "WWW-Authenticate": 'Bearer realm="voxgen"' };
    if (!match) {
      throw new ApiError(
        401,
        "unauthorized",
        "This server needs `Authorization: Bearer <token>`.",
        challenge,
      );
    }
    return sameSecret(match[1], opts.token).then((ok) => {
      if (!ok) throw new ApiError(401, "unauthorized", "The bearer token is not valid.", challenge);
    });
  }

  async function submit(req: Request): Promise<Response> {
    const type = req.headers.get("content-type") ?? "";
    if (!/^application\/json\s*(;|$)/i.test(type)) {
      throw new ApiError(
        415,
        "unsupported_media_type",
        `The body must be JSON with Content-Type: application/json (got ${JSON.stringify(type || null)}).`,
      );
    }
    const body = await readJson(req, opts.maxBodyBytes);
    const request = await validateRequest(body, opts);
    const job = await opts.queue.submit(request);
    return json(202, { id: job.id, status: job.status }, { location: `/v1/jobs/${job.id}` });
  }

  /** Stores an uploaded condition volume (a NIfTI file, gzipped or not) under `name`, atomically. */
  async function uploadCondition(req: Request, name: string): Promise<Response> {
    const path = opts.catalog.conditionPath(name);
    const bytes = await readBody(req, MAX_CONDITION_BYTES);
    let shape: number[];
    try {
      shape = (await readNifti(bytes)).shape;
    } catch (error) {
      throw new ApiError(
        422,
        "invalid_condition",
        `The body is not a NIfTI volume: ${(error as Error).message}`,
      );
    }
    await Deno.mkdir(opts.catalog.conditionsDir, { recursive: true });
    await atomicWrite(path, bytes);
    return json(201, { name, shape });
  }

  async function listJobs(url: URL): Promise<Response> {
    const limit = url.searchParams.get("limit") ?? "50";
    const n = Number(limit);
    if (!Number.isInteger(n) || n < 1 || n > 500) {
      throw new ApiError(400, "invalid_query", `limit=${limit}: expected an integer in 1..500.`);
    }
    const status = url.searchParams.get("status");
    if (status !== null && !STATUSES.includes(status as JobStatus)) {
      throw new ApiError(400, "invalid_query", `status=${status}: expected one of ${STATUSES.join(", ")}.`);
    }
    const jobs = await opts.queue.list(n, (status ?? undefined) as JobStatus | undefined);
    return json(200, { jobs: jobs.map(view) });
  }

  async function events(id: string): Promise<Response> {
    if (closing) throw new ApiError(503, "shutting_down", "The server is shutting down.");
    const first = await opts.queue.get(id);
    const encoder = new TextEncoder();
    let stop = () => {};
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        const write = (text: string) => {
          try {
            controller.enqueue(encoder.encode(text));
          } catch {
            stop(); // the stream is already closed
          }
        };
        const send = (event: string, data: unknown) =>
          write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
        send("state", view(first));
        if (FINAL_STATES.includes(first.status)) {
          controller.close();
          return;
        }
        const close = () => {
          stop();
          try {
            controller.close();
          } catch { /* already closed */ }
        };
        const unsubscribe = opts.queue.subscribe(id, (e: JobEvent) => {
          if (e.type === "progress") {
            const { status, progress } = e.job;
            send("progress", { id, status, progress, step: e.step, total: e.total });
            return;
          }
          send("state", view(e.job));
          if (FINAL_STATES.includes(e.job.status)) close();
        }, first.status);
        // Comments keep proxies and idle timeouts from dropping a quiet stream (a long queue wait).
        const keepAlive = setInterval(() => write(": keep-alive\n\n"), keepAliveMs);
        stop = () => {
          unsubscribe();
          clearInterval(keepAlive);
          streams.delete(close);
        };
        streams.add(close);
      },
      cancel() {
        stop(); // the client went away
      },
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  }

  async function result(id: string, url: URL): Promise<Response> {
    const job = await opts.queue.get(id);
    const format = url.searchParams.get("format") ?? "nifti";
    if (!["nifti", "png"].includes(format)) {
      throw new ApiError(400, "invalid_query", `format=${format}: expected nifti (default) or png.`);
    }
    if (job.status !== "done" || !job.result) {
      throw new ApiError(
        409,
        "result_not_ready",
        `Job ${id} is ${job.status}; results exist only for done jobs.`,
      );
    }
    const file = await opts.queue.openResult(job, format as "nifti" | "png");
    if (!file) {
      throw new ApiError(410, "result_missing", `The result file of job ${id} is no longer on the server.`);
    }
    const download = `voxgen-${id}.${format === "png" ? "png" : "nii.gz"}`;
    return new Response(file.body, {
      headers: {
        "content-type": format === "png" ? "image/png" : "application/gzip",
        "content-length": String(file.size),
        "content-disposition": `${format === "png" ? "inline" : "attachment"}; filename="${download}"`,
        // Results never change once written.
        "cache-control": "private, max-age=31536000, immutable",
      },
    });
  }

  /**
   * One of the condition volumes a job was made with (`?index=N` of those its view lists, default 0), as a
   * gzipped NIfTI on the result's grid: once the job is done it carries the result's affine, so that a viewer
   * overlays it voxel for voxel (conditions are defined on the model's voxel grid, whatever affine the upload had).
   */
  async function conditionOf(id: string, url: URL): Promise<Response> {
    const job = await opts.queue.get(id);
    const listed = jobConditions(job.request);
    if (listed.length === 0) {
      throw new ApiError(
        404,
        "no_condition",
        `Job ${id} was made without a condition volume (no control condition, model condition or inpainting mask).`,
      );
    }
    const text = url.searchParams.get("index") ?? "0";
    const index = Number(text);
    if (!Number.isInteger(index) || index < 0 || index >= listed.length) {
      throw new ApiError(
        404,
        "no_condition",
        `index=${text}: job ${id} has ${listed.length} condition volume(s) (${
          listed.map((c) => c.name).join(", ")
        }); index 0..${listed.length - 1}.`,
      );
    }
    const chosen = listed[index];
    let resultVolume: { shape: number[]; affine: number[][] } | null = null;
    if (job.status === "done" && job.result) {
      const file = await opts.queue.openResult(job, "nifti");
      if (file) {
        const bytes = file.body instanceof Uint8Array
          ? file.body
          : new Uint8Array(await new Response(file.body).arrayBuffer());
        resultVolume = await readNifti(bytes);
      }
    }
    let volume: { data: Float32Array; shape: number[]; affine?: number[][] };
    if (typeof chosen.volume === "string") {
      volume = await readNifti(Uint8Array.from(atob(chosen.volume), (c) => c.charCodeAt(0)));
    } else {
      if (!resultVolume) {
        throw new ApiError(
          409,
          "result_not_ready",
          `Job ${id} is ${job.status}: its inpainting sphere is drawn on the result's grid, which exists only ` +
            "for done jobs.",
        );
      }
      const shape = resultVolume.shape.slice(0, 3) as [number, number, number];
      volume = { data: sphereMask(shape, chosen.volume.center, chosen.volume.radius), shape };
    }
    const affine = resultVolume?.affine ?? volume.affine;
    const body = await gzip(encodeNifti({ data: volume.data, shape: volume.shape, affine }));
    return new Response(body as Uint8Array<ArrayBuffer>, {
      headers: {
        "content-type": "application/gzip",
        "content-length": String(body.byteLength),
        "content-disposition": `attachment; filename="voxgen-${id}-condition-${index}.nii.gz"`,
        "cache-control": "private, no-cache",
      },
    });
  }

  return {
    async handle(req: Request): Promise<Response> {
      const url = new URL(req.url);
      try {
        return await route(req, url);
      } catch (error) {
        if (error instanceof ApiError) {
          return json(error.status, { error: { code: error.code, message: error.message } }, error.headers);
        }
        console.error(`${req.method} ${url.pathname}: ${(error as Error).stack ?? error}`);
        return json(500, { error: { code: "internal_error", message: (error as Error).message } });
      }
    },
    closeStreams(): void {
      closing = true;
      for (const close of [...streams]) close();
    },
  };
}

/**
 * The condition volumes a request carried, in the order `GET /v1/jobs/:id/condition?index=N` serves them:
 * the control module's conditions (those given), the model's condition volume, the inpainting mask (base64
 * NIfTI, or a sphere drawn on the result's grid).
 */
function jobConditions(
  request: SampleRequest,
): Array<
  { name: string; kind: string; volume: string | { center: [number, number, number]; radius: number } }
> {
  const out: ReturnType<typeof jobConditions> = [];
  request.control?.volumes?.forEach((v, i) => {
    if (v !== null) {
      out.push({ name: request.control!.conditions[i] ?? `control ${i}`, kind: "control", volume: v });
    }
  });
  if (request.condition) out.push({ name: "condition", kind: "condition", volume: request.condition });
  if (request.inpaint) out.push({ name: "inpainting mask", kind: "mask", volume: request.inpaint.mask });
  return out;
}

/** A job as the API shows it: result files become URLs. */
function view(job: Job): Record<string, unknown> {
  const { id, status, progress, createdAt, startedAt, finishedAt, error, result } = job;
  const shown = {
    id,
    status,
    progress,
    createdAt,
    startedAt,
    finishedAt,
    error,
    request: shownRequest(job.request),
    ...conditionLinks(job),
  };
  if (!result) return shown;
  const base = `/v1/jobs/${job.id}/result`;
  return {
    ...shown,
    result: {
      shape: result.shape,
      batch: result.batch,
      bytes: result.bytes,
      seconds: result.seconds,
      nifti: base,
      png: `${base}?format=png`,
    },
  };
}

/** The job's condition volumes as links (absent when it has none). */
function conditionLinks(job: Job): { conditions?: Array<{ name: string; kind: string; nifti: string }> } {
  const listed = jobConditions(job.request);
  if (listed.length === 0) return {};
  return {
    conditions: listed.map((c, i) => ({
      name: c.name,
      kind: c.kind,
      nifti: `/v1/jobs/${job.id}/condition?index=${i}`,
    })),
  };
}

/** The request as jobs show it: inpainting, condition and control volumes as their size, not their base64 text. */
function shownRequest(request: SampleRequest): SampleRequest | Record<string, unknown> {
  const { inpaint, condition, control } = request;
  if (!inpaint && !condition && !control?.volumes) return request;
  const size = (b64: string) => `<${Math.floor((b64.length * 3) / 4)} bytes of NIfTI>`;
  return {
    ...request,
    ...(control?.volumes
      ? { control: { ...control, volumes: control.volumes.map((v) => v === null ? null : size(v)) } }
      : {}),
    ...(condition ? { condition: size(condition) } : {}),
    ...(inpaint
      ? {
        inpaint: {
          ...inpaint,
          image: size(inpaint.image),
          mask: typeof inpaint.mask === "string" ? size(inpaint.mask) : inpaint.mask,
        },
      }
      : {}),
  };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

function allow(req: Request, methods: string[]): void {
  if (!methods.includes(req.method)) {
    throw new ApiError(
      405,
      "method_not_allowed",
      `${req.method} is not allowed here; use ${methods.join(" or ")}.`,
      {
        Allow: methods.join(", "),
      },
    );
  }
}

/** Reads a body of at most `max` bytes (counted as they arrive, whatever Content-Length claims). */
async function readBody(req: Request, max: number): Promise<Uint8Array> {
  const tooLarge = () =>
    new ApiError(413, "body_too_large", `The request body exceeds the ${max}-byte limit.`);
  const declared = Number(req.headers.get("content-length") ?? 0);
  if (declared > max) throw tooLarge();
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (req.body) {
    const reader = req.body.getReader();
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > max) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  return bytes;
}

/** Reads a JSON body of at most `max` bytes. */
async function readJson(req: Request, max: number): Promise<unknown> {
  const bytes = await readBody(req, max);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ApiError(400, "invalid_json", "The body is not UTF-8 text.");
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ApiError(400, "invalid_json", `The body is not valid JSON: ${(error as Error).message}`);
  }
}

/**
 * Validates a sample request body against the API's rules and the catalog, filling in defaults:
 * 400 for structure and types, 404 for unknown names, 422 for values out of range.
 */
export async function validateRequest(
  body: unknown,
  limits: ValidationContext,
): Promise<SampleRequest> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ApiError(400, "invalid_body", 'The body must be a JSON object, e.g. {"steps": 50}.');
  }
  const b = body as Record<string, unknown>;
  rejectUnknown(b, REQUEST_FIELDS, "request");
  const model = optional(b, "model", "string", "default") as string;
  const sampler = optional(b, "sampler", "string", DEFAULT_SAMPLER) as string;
  const steps = integer(b, "steps", 50, 1, limits.maxSteps);
  const batch = integer(b, "batch", 1, 1, limits.maxBatch);
  const seed = integer(b, "seed", Math.floor(Math.random() * 2 ** 32), 0, Number.MAX_SAFE_INTEGER);
  const guidanceScale = optional(b, "guidanceScale", "number", 1) as number;
  if (!Number.isFinite(guidanceScale) || guidanceScale < 0 || guidanceScale > MAX_GUIDANCE) {
    throw new ApiError(422, "out_of_range", `guidanceScale ${guidanceScale} is outside 0..${MAX_GUIDANCE}.`);
  }
  if (!findSampler(sampler)) {
    throw new ApiError(
      422,
      "invalid_value",
      `sampler "${sampler}" is not one of ${ACCEPTED_SAMPLER_NAMES.join(", ")}.`,
    );
  }
  const adapters = parseAdapters(b.adapters);

  const { summary } = await limits.catalog.model(model);
  for (const a of adapters) await limits.catalog.adapter(a.name);
  const conditions = await validateConditions(b, model, summary, guidanceScale, limits);
  const inpaint = b.inpaint === undefined ? undefined : await validateInpaint(b.inpaint, summary, limits);
  const request: SampleRequest = {
    model,
    adapters,
    sampler,
    steps,
    seed,
    guidanceScale,
    batch,
    ...conditions,
  };
  if (inpaint) request.inpaint = inpaint;
  const condition = await validateConditionVolume(b.condition, model, summary);
  if (condition) request.condition = condition;
  if (b.control !== undefined) request.control = await parseControl(b.control, limits.catalog);
  // Only when asked for, so the stored request of an ordinary job stays as it was.
  if (b.priority !== undefined) request.priority = integer(b, "priority", 0, 0, MAX_PRIORITY);
  return request;
}

/** What validation needs besides the catalog and limits: the finished jobs and where files go. */
type ValidationContext =
  & Pick<ApiOptions, "catalog" | "maxSteps" | "maxBatch">
  & Partial<Pick<ApiOptions, "queue">>;

/** The prompt, class label and embeddings of a request, checked against the model (422 when they do not fit). */
async function validateConditions(
  b: Record<string, unknown>,
  model: string,
  summary: ModelSummary,
  guidanceScale: number,
  limits: ValidationContext,
): Promise<Pick<SampleRequest, "prompt" | "classLabel" | "embeddings">> {
  const prompt = optional(b, "prompt", "string", undefined) as string | undefined;
  const embeddings = parseNames(b.embeddings, "embeddings");
  const out: Pick<SampleRequest, "prompt" | "classLabel" | "embeddings"> = {};
  if (!summary.conditional) {
    if (guidanceScale !== 1) {
      throw new ApiError(
        422,
        "invalid_value",
        `guidanceScale ${guidanceScale}: model "${model}" is unconditional, so only 1 (no guidance) applies.`,
      );
    }
    for (
      const [key, given] of [["prompt", prompt !== undefined], ["classLabel", b.classLabel !== undefined], [
        "embeddings",
        embeddings.length > 0,
      ]] as const
    ) {
      if (given) throw new ApiError(422, "invalid_value", `${key}: model "${model}" is unconditional.`);
    }
    return out;
  }
  if (summary.classes !== undefined) {
    if (b.classLabel === undefined) {
      throw new ApiError(
        422,
        "conditional_model",
        `Model "${model}" is class-conditional: give classLabel, an integer in 0..${summary.classes - 1}.`,
      );
    }
    out.classLabel = integer(b, "classLabel", 0, 0, summary.classes - 1);
    if (guidanceScale !== 1 && summary.nullClass === undefined) {
      throw new ApiError(
        422,
        "invalid_value",
        `guidanceScale ${guidanceScale}: model "${model}" learned no null class, so only 1 applies.`,
      );
    }
  } else if (b.classLabel !== undefined) {
    throw new ApiError(422, "invalid_value", `classLabel: model "${model}" has no classes.`);
  }
  if (!summary.concepts) {
    if (prompt !== undefined || embeddings.length > 0) {
      throw new ApiError(
        422,
        "invalid_value",
        `${prompt !== undefined ? "prompt" : "embeddings"}: model "${model}" has no token table.`,
      );
    }
    return out;
  }
  const known = summary.concepts.map((c) => c.name);
  for (const name of embeddings) {
    const { summary: e } = await limits.catalog.embedding(name);
    if (e.dim !== summary.tokenDim) {
      throw new ApiError(
        422,
        "invalid_embedding",
        `Embedding "${name}" has width ${e.dim}; model "${model}" has tokens of width ${summary.tokenDim}.`,
      );
    }
    if (known.includes(e.token!)) {
      throw new ApiError(
        422,
        "invalid_embedding",
        `Embedding "${name}": model "${model}" already has ${e.token}.`,
      );
    }
    known.push(e.token!);
  }
  let parts: PromptPart[];
  try {
    parts = parsePrompt(prompt ?? "");
  } catch (error) {
    throw new ApiError(422, "invalid_prompt", (error as Error).message);
  }
  const unknown = [...new Set(parts.flatMap((p) => p.tokens).filter((t) => !known.includes(t)))];
  if (unknown.length > 0) {
    throw new ApiError(
      422,
      "unknown_token",
      `Unknown token${unknown.length > 1 ? "s" : ""} ${unknown.join(", ")} in the prompt; model "${model}"` +
        `${embeddings.length ? " with the requested embeddings" : ""} knows ${known.join(", ")} ` +
        '(and "" for the null prompt). GET /v1/models lists models, their concepts and the embeddings.',
    );
  }
  if (prompt !== undefined) out.prompt = prompt;
  if (embeddings.length > 0) out.embeddings = embeddings;
  return out;
}

const INPAINT_FIELDS = ["image", "mask", "normalize"];
const NORMALIZE = ["auto", "none", "percentile"];

/**
 * The inpainting inputs of a request: the image from a finished job (`{ job, index }`, its result read
 * through the queue) or an upload (`{ nifti: base64 }`), the mask as an upload or `{ sphere: { center,
 * radius } }` in voxels. Uploads are checked (NIfTI on the model's grid); the volumes travel with the request.
 */
async function validateInpaint(
  value: unknown,
  summary: ModelSummary,
  limits: ValidationContext,
): Promise<InpaintChoice> {
  const obj = (v: unknown, what: string, fields: string[]): Record<string, unknown> => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw new ApiError(
        400,
        "invalid_type",
        `${what} must be an object with ${fields.join(" or ")}, not ${describe(v)}.`,
      );
    }
    rejectUnknown(v as Record<string, unknown>, fields, what);
    return v as Record<string, unknown>;
  };
  const inpaint = obj(value, "inpaint", INPAINT_FIELDS);
  const normalize = optional(inpaint, "normalize", "string", "auto") as string;
  if (!NORMALIZE.includes(normalize)) {
    throw new ApiError(
      422,
      "invalid_value",
      `inpaint.normalize "${normalize}" is not one of ${NORMALIZE.join(", ")}.`,
    );
  }
  const [nx, ny, nz] = summary.shape ?? [0, 0, 0];
  const image = obj(inpaint.image, "inpaint.image", ["job", "index", "nifti"]);
  let imageData: string;
  let fromJob: string | undefined;
  let index = 0;
  if (image.job !== undefined) {
    if (typeof image.job !== "string") {
      throw new ApiError(400, "invalid_type", "inpaint.image.job must be a job id.");
    }
    if (!limits.queue) throw new ApiError(422, "invalid_value", "inpaint.image.job: no job store here.");
    const job = await limits.queue.get(image.job);
    if (job.status !== "done" || !job.result) {
      throw new ApiError(
        422,
        "invalid_value",
        `inpaint.image.job: job ${image.job} is ${job.status}, not done.`,
      );
    }
    if (job.result.shape.join() !== [nx, ny, nz].join()) {
      throw new ApiError(
        422,
        "invalid_value",
        `inpaint.image.job: job ${image.job} made ${job.result.shape.join("×")} volumes; the model makes ` +
          `${nx}×${ny}×${nz}.`,
      );
    }
    index = integer(image, "index", 0, 0, job.result.batch - 1);
    const file = await limits.queue.openResult(job, "nifti");
    if (!file) {
      throw new ApiError(410, "result_missing", `inpaint.image.job: the result of job ${image.job} is gone.`);
    }
    const bytes = file.body instanceof Uint8Array
      ? file.body
      : new Uint8Array(await new Response(file.body).arrayBuffer());
    imageData = toBase64(bytes);
    fromJob = image.job;
  } else if (image.nifti !== undefined) {
    imageData = await checkUpload(image.nifti, "inpaint.image.nifti", [nx, ny, nz]);
  } else {
    throw new ApiError(
      400,
      "invalid_body",
      'inpaint.image needs "job" (a finished job\'s id) or "nifti" (base64).',
    );
  }
  const maskSpec = obj(inpaint.mask, "inpaint.mask", ["nifti", "sphere"]);
  let mask: InpaintChoice["mask"];
  if (maskSpec.sphere !== undefined) {
    const sphere = obj(maskSpec.sphere, "inpaint.mask.sphere", ["center", "radius"]);
    const center = sphere.center;
    const radius = sphere.radius;
    if (
      !Array.isArray(center) || center.length !== 3 || center.some((c) =>
        typeof c !== "number" || !Number.isFinite(c)
      ) ||
      typeof radius !== "number" || !(radius > 0)
    ) {
      throw new ApiError(
        422,
        "invalid_value",
        "inpaint.mask.sphere needs center [x, y, z] (voxels) and a positive radius (voxels).",
      );
    }
    mask = { center: center as [number, number, number], radius };
  } else if (maskSpec.nifti !== undefined) {
    mask = await checkUpload(maskSpec.nifti, "inpaint.mask.nifti", [nx, ny, nz]);
  } else {
    throw new ApiError(
      400,
      "invalid_body",
      'inpaint.mask needs "nifti" (base64) or "sphere" ({ center, radius }).',
    );
  }
  return {
    image: imageData,
    ...(fromJob ? { fromJob } : {}),
    index,
    mask,
    normalize: normalize as InpaintChoice["normalize"],
  };
}

/** The request's condition volumes (base64 NIfTI): required by, and only by, a model trained with them. */
async function validateConditionVolume(
  value: unknown,
  model: string,
  summary: ModelSummary,
): Promise<string | undefined> {
  const channels = summary.conditionChannels ?? 0;
  if (value === undefined) {
    if (channels === 0) return undefined;
    throw new ApiError(
      422,
      "conditional_model",
      `Model "${model}" takes ${channels} condition volume(s): give condition (base64 NIfTI on its grid).`,
    );
  }
  if (channels === 0) throw new ApiError(422, "invalid_value", `condition: model "${model}" takes none.`);
  return await checkUpload(value, "condition", summary.shape ?? [0, 0, 0], channels);
}

/** Checks a base64 NIfTI upload against the model's grid (and `volumes` volumes); returns it as given. */
async function checkUpload(value: unknown, what: string, shape: number[], volumes = 1): Promise<string> {
  if (typeof value !== "string") throw new ApiError(400, "invalid_type", `${what} must be a base64 string.`);
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = Uint8Array.from(atob(value), (c) => c.charCodeAt(0));
  } catch {
    throw new ApiError(400, "invalid_body", `${what} is not valid base64.`);
  }
  let volume;
  try {
    volume = await readNifti(bytes);
  } catch (error) {
    throw new ApiError(422, "invalid_value", `${what} is not a NIfTI volume: ${(error as Error).message}`);
  }
  if (volume.shape.slice(0, 3).join() !== shape.join() || (volume.shape[3] ?? 1) !== volumes) {
    throw new ApiError(
      422,
      "invalid_value",
      `${what} is ${volume.shape.join("×")}; the model needs ${volumes} volume(s) of ${shape.join("×")}.`,
    );
  }
  return value;
}

/** Base64 of bytes (in chunks: spreading a large array into one call overflows the stack). */
function toBase64(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

/** A list of names (embeddings), each at most once. */
function parseNames(value: unknown, key: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== "string")) {
    throw new ApiError(400, "invalid_type", `${key} must be an array of names, not ${describe(value)}.`);
  }
  if (value.length > MAX_ADAPTERS) {
    throw new ApiError(422, "out_of_range", `${value.length} ${key}; at most ${MAX_ADAPTERS} are allowed.`);
  }
  if (new Set(value).size !== value.length) {
    throw new ApiError(422, "invalid_value", `${key} lists a name twice.`);
  }
  return value as string[];
}

function rejectUnknown(obj: Record<string, unknown>, known: string[], what: string): void {
  const unknown = Object.keys(obj).filter((k) => !known.includes(k));
  if (unknown.length > 0) {
    throw new ApiError(
      400,
      "unknown_field",
      `Unknown field${unknown.length > 1 ? "s" : ""} ${
        unknown.map((k) => JSON.stringify(k)).join(", ")
      } in the ` +
        `${what}; accepted: ${known.join(", ")}.`,
    );
  }
}

function optional(
  obj: Record<string, unknown>,
  key: string,
  type: "string" | "number",
  fallback: unknown,
): unknown {
  const v = obj[key];
  if (v === undefined) return fallback;
  const fits = type === "string" ? typeof v === "string" : typeof v === "number";
  if (!fits) throw new ApiError(400, "invalid_type", `${key} must be a ${type}, not ${describe(v)}.`);
  return v;
}

function integer(
  obj: Record<string, unknown>,
  key: string,
  fallback: number,
  min: number,
  max: number,
): number {
  const v = optional(obj, key, "number", fallback) as number;
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new ApiError(422, "out_of_range", `${key} ${v} is not an integer in ${min}..${max}.`);
  }
  return v;
}

function parseAdapters(value: unknown): AdapterChoice[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) {
    throw new ApiError(
      400,
      "invalid_type",
      `adapters must be an array of { name, weight }, not ${describe(value)}.`,
    );
  }
  if (value.length > MAX_ADAPTERS) {
    throw new ApiError(422, "out_of_range", `${value.length} adapters; at most ${MAX_ADAPTERS} are allowed.`);
  }
  const out: AdapterChoice[] = [];
  for (const [i, item] of value.entries()) {
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      throw new ApiError(
        400,
        "invalid_type",
        `adapters[${i}] must be an object { name, weight }, not ${describe(item)}.`,
      );
    }
    const a = item as Record<string, unknown>;
    rejectUnknown(a, ADAPTER_FIELDS, `adapters[${i}]`);
    if (typeof a.name !== "string") {
      throw new ApiError(
        400,
        "invalid_type",
        `adapters[${i}].name must be a string, not ${describe(a.name)}.`,
      );
    }
    const weight = optional(a, "weight", "number", 1) as number;
    if (!Number.isFinite(weight) || Math.abs(weight) > 10) {
      throw new ApiError(422, "out_of_range", `adapters[${i}].weight ${weight} is outside -10..10.`);
    }
    if (out.some((o) => o.name === a.name)) {
      throw new ApiError(422, "invalid_value", `adapter "${a.name}" is listed twice.`);
    }
    out.push({ name: a.name, weight });
  }
  return out;
}

/**
 * Checks a request's `control` ({ name, conditions, scale }) against the catalog: the module exists, takes as
 * many conditions as given, and every named condition volume was uploaded. (Grids are checked by the job.)
 */
async function parseControl(value: unknown, catalog: Catalog): Promise<ControlChoice> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ApiError(
      400,
      "invalid_type",
      `control must be an object { name, conditions, scale }, not ${describe(value)}.`,
    );
  }
  const c = value as Record<string, unknown>;
  rejectUnknown(c, CONTROL_FIELDS, "control");
  if (typeof c.name !== "string") {
    throw new ApiError(400, "invalid_type", `control.name must be a string, not ${describe(c.name)}.`);
  }
  const conditions = c.conditions;
  if (!Array.isArray(conditions) || !conditions.every((x) => typeof x === "string" || x === null)) {
    throw new ApiError(
      400,
      "invalid_type",
      "control.conditions must be an array of uploaded condition names (PUT /v1/conditions/:name) or null.",
    );
  }
  const scale = optional(c, "scale", "number", 1) as number;
  if (!Number.isFinite(scale) || Math.abs(scale) > 10) {
    throw new ApiError(422, "out_of_range", `control.scale ${scale} is outside -10..10.`);
  }
  const path = await catalog.control(c.name);
  const takes: string[] = JSON.parse((await safetensorsMetadata(path)).conditions ?? "[]");
  if (takes.length !== conditions.length) {
    throw new ApiError(
      422,
      "invalid_value",
      `Control module "${c.name}" takes ${takes.length} condition(s) (${takes.join(", ")}); ` +
        `${conditions.length} given.`,
    );
  }
  // The uploads' bytes go into the request, so that any worker host can run it (as inpainting images do).
  const volumes = await Promise.all(
    (conditions as Array<string | null>).map(async (name) =>
      name === null ? null : toBase64(await Deno.readFile(await catalog.condition(name)))
    ),
  );
  return { name: c.name, conditions: conditions as Array<string | null>, scale, volumes };
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `${typeof v} ${JSON.stringify(v)}`;
}

/** True for names and addresses that can only mean this machine. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h.endsWith(".localhost") || h === "::1" || /^127(\.\d{1,3}){3}$/.test(h);
}

/** Compares secrets in time independent of where they differ (both are hashed to equal length first). */
async function sameSecret(given: string, expected: string): Promise<boolean> {
  const digest = async (s: string) =>
    new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
  const [a, b] = await Promise.all([digest(given), digest(expected)]);
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}
