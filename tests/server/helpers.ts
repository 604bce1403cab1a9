/**
 * Helpers of the server tests: a tiny random model file, the server as a subprocess on a free loopback
 * port, and clients for jobs and their event streams.
 *
 * @module
 */

import { injectAdapters } from "../../adapters/mod.ts";
import { noGrad } from "../../engine/autograd.ts";
import { ready } from "../../engine/device.ts";
import { scope } from "../../engine/memory.ts";
import { mul } from "../../engine/ops/elementwise.ts";
import { copyInto } from "../../engine/ops/map.ts";
import { tensor } from "../../engine/ops/create.ts";
import { baseModelHash, saveEmbeddingFile } from "../../pipelines/embedding.ts";
import { randn } from "../../engine/ops/random.ts";
import { AutoencoderKL, type AutoencoderKLOptions } from "../../models/autoencoder.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../../models/unet.ts";
import { saveLatentModelFile } from "../../pipelines/latent_modelfile.ts";
import { controlGeometry, createControl, saveControlFile } from "../../pipelines/control.ts";
import { TokenTable, type TokenVocabulary } from "../../models/tokens.ts";
import {
  disposeModel,
  loadModelFile,
  type ModelInfo,
  modelWeights,
  saveModelFile,
} from "../../pipelines/modelfile.ts";

const MAIN = new URL("../../server/main.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

/** The tiny model's affine: 2 mm voxels, shifted, so a test can tell it was written to the NIfTI. */
export const TINY_AFFINE: number[][] = [[2, 0, 0, -8], [0, 2, 0, -8], [0, 0, 2, -8], [0, 0, 0, 1]];

/** Writes a small random 3-D U-Net (8³ volumes, ~50 ms per step on lavapipe) as a voxgen model file. */
export async function makeTinyModel(
  path: string,
  extra: Partial<DiffusionModelUNetOptions> = {},
  conditions: Pick<ModelInfo, "tokens" | "conditioning"> = {},
): Promise<void> {
  await ready();
  const opts: DiffusionModelUNetOptions = {
    spatialDims: 3,
    inChannels: 1,
    outChannels: 1,
    channels: [8, 8],
    attentionLevels: [false, false],
    numResBlocks: 1,
    normNumGroups: 4,
    seed: 1,
    ...extra,
  };
  const unet = new DiffusionModelUNet(opts);
  // MONAI zero-initialises the output convolution (and the ResNet blocks' second convolutions), so a fresh
  // U-Net predicts ε = 0 everywhere: give those weights small random values, or adapters would change nothing.
  let seed = 1000 + (opts.seed ?? 0);
  for (const [, t] of unet.stateDict()) {
    if ((await t.toArray()).some((v) => v !== 0)) continue;
    const noise = randn(t.shape, { seed: seed++ });
    const small = mul(noise, 0.05);
    noGrad(() => copyInto(t, small));
    noise.dispose();
    small.dispose();
  }
  const tokens = conditions.tokens ? new TokenTable(conditions.tokens, { seed: 5 }) : undefined;
  await saveModelFile(path, modelWeights(unet, tokens), {
    unet: opts,
    scheduler: {},
    volume: { shape: [8, 8, 8], affine: TINY_AFFINE, range: [-1, 1] },
    description: "tiny random test model",
    ...conditions,
  });
  unet.dispose();
  tokens?.dispose();
}

/**
 * Writes a tiny random latent diffusion model (8³ images, an autoencoder that halves the grid once, 2 × 4³
 * latents, ε prediction, s = 0.8). The U-Net's zero-initialised weights get small random values (as in
 * {@linkcode makeTinyModel}); the posterior's log σ² is pinned near −16 so that z ≈ μ and a condition can
 * determine the latent a control module learns.
 */
export async function makeTinyLatentModel(path: string): Promise<void> {
  await ready();
  const ae: AutoencoderKLOptions = {
    spatialDims: 3,
    channels: [4, 4],
    attentionLevels: [false, false],
    numResBlocks: 1,
    normNumGroups: 2,
    latentChannels: 2,
    withEncoderNonlocalAttn: false,
    withDecoderNonlocalAttn: false,
    seed: 4,
  };
  const opts: DiffusionModelUNetOptions = {
    spatialDims: 3,
    inChannels: 2,
    outChannels: 2,
    channels: [8, 8],
    attentionLevels: [false, false],
    numResBlocks: 1,
    normNumGroups: 4,
    seed: 5,
  };
  const autoencoder = new AutoencoderKL(ae);
  const unet = new DiffusionModelUNet(opts);
  let seed = 2000;
  for (const [, t] of unet.stateDict()) {
    if ((await t.toArray()).some((v) => v !== 0)) continue;
    const small = noGrad(() => scope(() => mul(randn(t.shape, { seed: seed++ }), 0.05)));
    noGrad(() => copyInto(t, small));
    small.dispose();
  }
  const aeWeights = autoencoder.stateDict();
  const logSigma = aeWeights.get("quant_conv_log_sigma.conv.weight")!;
  const bias = aeWeights.get("quant_conv_log_sigma.conv.bias")!;
  noGrad(() => {
    const zeros = tensor(new Float32Array(logSigma.size), logSigma.shape);
    const low = tensor(new Float32Array(bias.size).fill(-16), bias.shape);
    copyInto(logSigma, zeros);
    copyInto(bias, low);
    zeros.dispose();
    low.dispose();
  });
  await saveLatentModelFile(path, unet.stateDict(), aeWeights, {
    unet: opts,
    scheduler: { clipSample: false },
    volume: { shape: [8, 8, 8], affine: TINY_AFFINE, range: [-1, 1] },
    autoencoder: ae,
    scaleFactor: 0.8,
    latentShape: [2, 4, 4, 4],
    description: "tiny random latent test model",
  });
  unet.dispose();
  autoencoder.dispose();
}

/**
 * Writes a VCM control file for the model at `modelPath` (image-space or latent: its condition takes the
 * image grid) with non-zero output layers (so it visibly steers).
 */
export async function makeTinyControl(modelPath: string, out: string): Promise<void> {
  const model = await loadModelFile(modelPath, { allowLatent: true });
  const control = await createControl("vcm", model.unet, {
    conditions: ["mask"],
    conditionChannels: [1],
    downsamplings: controlGeometry(model).downsamplings,
    vcm: {
      encoderChannels: [4],
      encoderGroups: 4,
      unet: { channels: [8, 8], attentionLevels: [false, false], numResBlocks: 1, normNumGroups: 4 },
      hiddenChannels: 8,
      headChannels: 8,
    },
  });
  // Non-zero output layers, so that the control visibly changes the sample.
  noGrad(() => {
    for (const [name, t] of control.module.namedParameters()) {
      if (!/^(mlp_gamma|mlp_beta|time_unet\.out\.2)\./.test(name)) continue;
      const w = randn(t.shape, { seed: t.size });
      copyInto(t, w);
      w.dispose();
    }
  });
  await saveControlFile(out, control);
  control.module.dispose();
  disposeModel(model);
}

/** The token table of {@linkcode makeTinyTokenModel}: <t1> (2 vectors) and <flair> (1), contexts of 4. */
export const TINY_TOKENS: TokenVocabulary = {
  contextLength: 4,
  dim: 8,
  concepts: [{ name: "<t1>", vectors: 2 }, { name: "<flair>", vectors: 1 }],
};

/** A tiny random cross-attention model conditioned on {@linkcode TINY_TOKENS}. */
export async function makeTinyTokenModel(path: string): Promise<void> {
  await makeTinyModel(path, { withConditioning: true, crossAttentionDim: 8 }, {
    tokens: TINY_TOKENS,
    conditioning: { uncondProb: 0.1 },
  });
}

/** Writes an embedding `name` of `n` fixed vectors (width 8) for the token model file at `modelPath`. */
export async function makeTinyEmbedding(
  modelPath: string,
  out: string,
  name: string,
  n: number,
): Promise<void> {
  await ready();
  const { unet, tokens } = await loadModelFile(modelPath);
  const vectors = tensor(Float32Array.from({ length: n * 8 }, (_, i) => Math.sin(i + 1)), [n, 8]);
  await saveEmbeddingFile(out, vectors, {
    name,
    numVectors: n,
    dim: 8,
    contextLength: tokens!.contextLength,
    baseModelHash: await baseModelHash(unet, tokens!),
  });
  vectors.dispose();
  unet.dispose();
  tokens!.dispose();
}

/**
 * Writes a LoCon adapter for the model file at `modelPath`, with random (not zero) cores so that it
 * changes the model's output.
 */
export async function makeTinyAdapter(modelPath: string, adapterPath: string): Promise<void> {
  await ready();
  const { unet } = await loadModelFile(modelPath);
  const set = await injectAdapters(unet, { kind: "locon", rank: 2, alpha: 2 });
  noGrad(() => {
    set.parameters().forEach((t, i) => {
      const noise = randn(t.shape, { seed: 100 + i });
      copyInto(t, noise);
      noise.dispose();
    });
  });
  await set.save(adapterPath);
  set.remove();
  unet.dispose();
}

/** A server subprocess. */
export interface ServerProcess {
  /** Base URL, e.g. "http://127.0.0.1:41234". */
  url: string;
  /** Its port. */
  port: number;
  /** The process. */
  child: Deno.ChildProcess;
  /** Everything it wrote to stderr so far. */
  log(): string;
  /** Sends `signal` and waits for the exit status. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/** Runs `deno run server/main.ts` with `args` and waits until it listens (port 0 = a free port). */
export function spawnServer(args: string[], env: Record<string, string> = {}): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", CONFIG, MAIN, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Starts a server and waits for its "listening on" line. */
export async function startServer(args: string[], env: Record<string, string> = {}): Promise<ServerProcess> {
  const child = spawnServer(["--port", "0", ...args], env);
  let stderr = "";
  const stderrDone = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (s) => void (stderr += s) }),
  );
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  let url: string | undefined;
  while (!url) {
    const { value, done } = await lines.read();
    if (done) {
      await stderrDone;
      throw new Error(`the server exited before listening:\n${stdout}\n${stderr}`);
    }
    stdout += value;
    url = /listening on (http:\/\/\S+?)\/? /.exec(stdout)?.[1];
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  (async () => {
    while (!(await lines.read()).done) { /* discard */ }
  })();
  const status = child.status;
  return {
    url,
    port: Number(new URL(url).port),
    child,
    log: () => stderr,
    async stop(signal: Deno.Signal = "SIGTERM") {
      try {
        child.kill(signal);
      } catch { /* already gone */ }
      const s = await status;
      await stderrDone;
      return s;
    },
  };
}

/** One Server-Sent Event. */
export interface SseEvent {
  /** Event name. */
  event: string;
  /** Parsed JSON data. */
  data: Record<string, unknown>;
}

/**
 * Reads a job's event stream until the server closes it (after the final state), calling `onEvent` for
 * each event as it arrives.
 */
export async function readEvents(
  url: string,
  id: string,
  headers: HeadersInit = {},
  onEvent: (e: SseEvent) => void = () => {},
): Promise<SseEvent[]> {
  const res = await fetch(`${url}/v1/jobs/${id}/events`, { headers });
  if (res.status !== 200) throw new Error(`events of ${id}: HTTP ${res.status} ${await res.text()}`);
  if (!res.headers.get("content-type")?.startsWith("text/event-stream")) {
    throw new Error(`events of ${id}: content-type ${res.headers.get("content-type")}`);
  }
  const events: SseEvent[] = [];
  let buffered = "";
  for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (!event || !data) continue; // keep-alive comments
      const e = { event, data: JSON.parse(data) };
      events.push(e);
      onEvent(e);
    }
  }
  return events;
}

/** The final state of job `id` (from its event stream). */
export async function waitForJob(
  url: string,
  id: string,
  headers: HeadersInit = {},
): Promise<Record<string, unknown>> {
  const events = await readEvents(url, id, headers);
  const last = events.at(-1);
  if (!last || last.event !== "state") throw new Error(`events of ${id} ended without a final state`);
  return last.data;
}

/** Resolves once job `id` is running (its first progress event), then stops reading. */
export async function waitUntilRunning(url: string, id: string, headers: HeadersInit = {}): Promise<void> {
  const res = await fetch(`${url}/v1/jobs/${id}/events`, { headers });
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("event: progress")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`job ${id} finished before it was seen running:\n${text}`);
    text += value;
  }
  await reader.cancel();
}

/** POSTs a sample request; returns the status and parsed body. */
export async function submit(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const res = await fetch(`${url}/v1/samples`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json(), headers: res.headers };
}

/** Sends raw bytes over TCP and returns the raw response (for what fetch will not send, e.g. a Host header). */
export async function rawHttp(port: number, request: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(request));
  let out = "";
  const buf = new Uint8Array(65536);
  while (true) {
    const n = await conn.read(buf);
    if (n === null) break;
    out += new TextDecoder().decode(buf.subarray(0, n));
    if (/\r\n\r\n/.test(out) && /content-length: (\d+)/i.test(out)) {
      const length = Number(/content-length: (\d+)/i.exec(out)![1]);
      if (out.length - out.indexOf("\r\n\r\n") - 4 >= length) break;
    }
  }
  conn.close();
  return out;
}
