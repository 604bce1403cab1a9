/**
 * The sampling server's HTTP API against a real server process on loopback: the happy path, every error
 * class, auth, 8 concurrent jobs, cancellation, a full queue, and jobs that lose the GPU device or crash
 * the worker. The model is a tiny random U-Net (8³), so a few sampling steps take well under a second.
 */

import { deepStrictEqual, equal, match, notDeepStrictEqual, ok, rejects } from "node:assert";
import { readNifti } from "../../io/nifti.ts";
import { Catalog } from "../../server/catalog.ts";
import type { ApiError } from "../../server/errors.ts";
import {
  makeTinyAdapter,
  makeTinyModel,
  readEvents,
  type ServerProcess,
  spawnServer,
  startServer,
  submit,
  TINY_AFFINE,
  waitForJob,
  waitUntilRunning,
} from "./helpers.ts";

const TOKEN = "test-token-5d1c";
const AUTH = { authorization: `Bearer ${TOKEN}` };
const LOSE_DEVICE_SEED = 666;
const CRASH_SEED = 667;
const LOSE_DEVICE_IDLE_SEED = 668;

const serverTest = (name: string, fn: (t: Deno.TestContext) => Promise<void>) =>
  Deno.test({ name, sanitizeResources: false, sanitizeOps: false, fn });

Deno.test("the server refuses to listen on a non-loopback address without a token", async () => {
  const dir = await Deno.makeTempDir();
  const { code, stderr } = await spawnServer(["--host", "0.0.0.0", "--port", "0", "--data-dir", dir])
    .output();
  equal(code, 1);
  match(new TextDecoder().decode(stderr), /refusing to listen on 0\.0\.0\.0 without a token/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("without the embedded model, a request naming no model is a 404 that says what to do", async () => {
  const dir = await Deno.makeTempDir();
  const catalog = new Catalog(dir, `${dir}/missing.safetensors`);
  await rejects(catalog.model("default"), (e: ApiError) => {
    deepStrictEqual([e.status, e.code], [404, "model_not_found"]);
    match(e.message, /not installed.*--default-model/);
    return true;
  });
  deepStrictEqual(await catalog.models(), []);
  await Deno.remove(dir, { recursive: true });
});

serverTest("sampling server API (token auth, queue of 10)", async (t) => {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/models`);
  await Deno.mkdir(`${dir}/adapters`);
  await makeTinyModel(`${dir}/default.safetensors`);
  await makeTinyModel(`${dir}/models/tiny.safetensors`);
  await makeTinyModel(`${dir}/models/conditional.safetensors`, { numClassEmbeds: 3 });
  await Deno.writeTextFile(`${dir}/models/broken.safetensors`, "not a safetensors file");
  await makeTinyAdapter(`${dir}/models/tiny.safetensors`, `${dir}/adapters/style.safetensors`);
  await makeTinyModel(`${dir}/other.safetensors`, { seed: 2 });
  await makeTinyAdapter(`${dir}/other.safetensors`, `${dir}/adapters/for-other.safetensors`);
  await Deno.writeFile(
    `${dir}/adapters/fake.safetensors`,
    safetensorsWithMetadata({ kind: "locon", rank: "4" }),
  );
  await Deno.writeTextFile(`${dir}/secret.safetensors`, "outside the models directory");
  await Deno.symlink(`${dir}/secret.safetensors`, `${dir}/models/escape.safetensors`);
  const server = await startServer(
    [
      "--token",
      TOKEN,
      "--data-dir",
      dir,
      "--default-model",
      `${dir}/default.safetensors`,
      "--queue-size",
      "10",
    ],
    {
      VOXGEN_TEST_FAULTS:
        `${LOSE_DEVICE_SEED}:lose-device,${CRASH_SEED}:crash,${LOSE_DEVICE_IDLE_SEED}:lose-device-idle`,
    },
  );
  const api = (path: string, init: RequestInit = {}) =>
    fetch(`${server.url}${path}`, { ...init, headers: { ...AUTH, ...init.headers } });
  try {
    await t.step("/healthz reports the adapter and the queue without auth", async () => {
      const res = await fetch(`${server.url}/healthz`);
      equal(res.status, 200);
      const health = await res.json();
      equal(health.status, "ok");
      equal(health.auth, true);
      equal(typeof health.device.adapter, "string");
      ok(health.device.adapter.length > 0);
      deepStrictEqual([health.depth, health.capacity, health.running], [0, 10, null]);
    });

    await t.step("every /v1 request needs the bearer token", async () => {
      for (const authorization of [undefined, "Bearer wrong", `Basic ${btoa(`x:${TOKEN}`)}`, TOKEN]) {
        const res = await fetch(`${server.url}/v1/models`, {
          headers: authorization ? { authorization } : {},
        });
        equal(res.status, 401, `authorization ${authorization}`);
        equal(res.headers.get("www-authenticate"), 'Bearer realm="voxgen"');
        equal((await res.json()).error.code, "unauthorized");
      }
      const post = await submit(server.url, {});
      equal(post.status, 401);
      const ok200 = await api("/v1/models");
      equal(ok200.status, 200);
    });

    await t.step("GET /v1/models lists the models and adapters of the data directory", async () => {
      const { models, adapters } = await (await api("/v1/models")).json();
      deepStrictEqual(models.map((m: { name: string }) => m.name), [
        "default",
        "broken",
        "conditional",
        "tiny",
      ]);
      const tiny = models.find((m: { name: string }) => m.name === "tiny");
      deepStrictEqual([tiny.shape, tiny.range, tiny.conditional, tiny.default], [
        [8, 8, 8],
        [-1, 1],
        false,
        false,
      ]);
      match(
        models.find((m: { name: string }) => m.name === "broken").error,
        /header length|not plausible|too short/,
      );
      deepStrictEqual(adapters.map((a: { name: string }) => a.name), ["fake", "for-other", "style"]);
      const style = adapters.find((a: { name: string }) => a.name === "style").metadata;
      deepStrictEqual([style.format, style.kind, style.rank], ["voxgen-adapter", "locon", "2"]);
      ok(/^[0-9a-f]{64}$/.test(style.base_hash), "the base model hash is listed");
    });

    let firstId = "";
    await t.step(
      "happy path: defaults sample the default model; SSE progress; NIfTI and PNG results",
      async () => {
        const { status, body, headers } = await submit(server.url, {}, AUTH);
        equal(status, 202);
        deepStrictEqual(Object.keys(body).sort(), ["id", "status"]);
        equal(body.status, "queued");
        firstId = body.id as string;
        equal(headers.get("location"), `/v1/jobs/${firstId}`);

        const events = await readEvents(server.url, firstId, AUTH);
        const progress = events.filter((e) => e.event === "progress");
        // 50 default steps, each reported in order.
        deepStrictEqual(progress.map((e) => e.data.step), Array.from({ length: 50 }, (_, i) => i + 1));
        ok(progress.every((e) => e.data.total === 50 && e.data.progress === (e.data.step as number) / 50));
        const final = events.at(-1)!;
        deepStrictEqual([final.event, final.data.status], ["state", "done"]);

        const job = await (await api(`/v1/jobs/${firstId}`)).json();
        equal(job.status, "done");
        equal(job.progress, 1);
        for (const k of ["createdAt", "startedAt", "finishedAt"]) {
          ok(!isNaN(Date.parse(job[k])), `${k} ${job[k]}`);
        }
        ok(
          Date.parse(job.createdAt) <= Date.parse(job.startedAt) &&
            Date.parse(job.startedAt) <= Date.parse(job.finishedAt),
        );
        const { seed, ...rest } = job.request;
        deepStrictEqual(rest, {
          model: "default",
          adapters: [],
          sampler: "ddim",
          steps: 50,
          guidanceScale: 1,
          batch: 1,
        });
        ok(Number.isSafeInteger(seed) && seed >= 0, "a random seed is chosen and recorded");
        deepStrictEqual(job.result.shape, [8, 8, 8]);

        const res = await api(job.result.nifti);
        equal(res.status, 200);
        equal(res.headers.get("content-type"), "application/gzip");
        equal(res.headers.get("content-disposition"), `attachment; filename="voxgen-${firstId}.nii.gz"`);
        const bytes = new Uint8Array(await res.arrayBuffer());
        deepStrictEqual([bytes[0], bytes[1]], [0x1f, 0x8b]);
        equal(Number(res.headers.get("content-length")), bytes.length);
        const volume = await readNifti(bytes);
        deepStrictEqual(volume.shape, [8, 8, 8]);
        deepStrictEqual(volume.affine, TINY_AFFINE);
        ok(
          volume.data.every((v) => Number.isFinite(v) && v >= -1 && v <= 1),
          "values in the model's range",
        );
        ok(new Set(volume.data).size > 1, "a sample, not a constant");

        const png = await api(`${job.result.png}`);
        equal(png.status, 200);
        equal(png.headers.get("content-type"), "image/png");
        deepStrictEqual([...new Uint8Array(await png.arrayBuffer()).subarray(0, 4)], [
          0x89,
          0x50,
          0x4e,
          0x47,
        ]);
      },
    );

    await t.step("errors: JSON { error: { code, message } } with the right status", async () => {
      const big = JSON.stringify({ model: "x".repeat(20_000) });
      const cases: Array<[string, RequestInit & { path?: string }, number, string]> = [
        ["malformed JSON", { body: "{steps: 5" }, 400, "invalid_json"],
        ["not an object", { body: "[1, 2]" }, 400, "invalid_body"],
        ["unknown field", { body: '{"stpes": 5}' }, 400, "unknown_field"],
        [
          "unknown adapter field",
          { body: '{"adapters": [{"name": "style", "scale": 1}]}' },
          400,
          "unknown_field",
        ],
        ["steps as a string", { body: '{"steps": "5"}' }, 400, "invalid_type"],
        ["model as a number", { body: '{"model": 3}' }, 400, "invalid_type"],
        ["batch null", { body: '{"batch": null}' }, 400, "invalid_type"],
        ["adapters not an array", { body: '{"adapters": "style"}' }, 400, "invalid_type"],
        ["steps 0", { body: '{"steps": 0}' }, 422, "out_of_range"],
        ["steps 1001", { body: '{"steps": 1001}' }, 422, "out_of_range"],
        ["steps 2.5", { body: '{"steps": 2.5}' }, 422, "out_of_range"],
        ["batch 0", { body: '{"batch": 0}' }, 422, "out_of_range"],
        ["batch 9", { body: '{"batch": 9}' }, 422, "out_of_range"],
        ["seed -1", { body: '{"seed": -1}' }, 422, "out_of_range"],
        ["seed 2^53", { body: '{"seed": 9007199254740992}' }, 422, "out_of_range"],
        ["guidance 100", { body: '{"guidanceScale": 100}' }, 422, "out_of_range"],
        ["guidance on an unconditional model", { body: '{"guidanceScale": 3}' }, 422, "invalid_value"],
        ["unknown sampler", { body: '{"sampler": "plms"}' }, 422, "invalid_value"],
        ["unknown precision", { body: '{"precision": "bf16"}' }, 422, "invalid_value"],
        ["precision as a number", { body: '{"precision": 16}' }, 400, "invalid_type"],
        ["conditional model", { body: '{"model": "conditional"}' }, 422, "conditional_model"],
        ["unusable model file", { body: '{"model": "broken"}' }, 422, "invalid_model"],
        [
          "not an adapter file",
          { body: '{"adapters": [{"name": "fake", "weight": 0.5}]}' },
          422,
          "invalid_adapter",
        ],
        [
          "adapter listed twice",
          { body: '{"adapters": [{"name": "style"}, {"name": "style"}]}' },
          422,
          "invalid_value",
        ],
        [
          "adapter weight 11",
          { body: '{"adapters": [{"name": "style", "weight": 11}]}' },
          422,
          "out_of_range",
        ],
        [
          "adapter weight as a string",
          { body: '{"adapters": [{"name": "style", "weight": "1"}]}' },
          400,
          "invalid_type",
        ],
        ["unknown model", { body: '{"model": "nope"}' }, 404, "model_not_found"],
        [
          "unknown adapter",
          { body: '{"adapters": [{"name": "nope", "weight": 1}]}' },
          404,
          "adapter_not_found",
        ],
        ["model ../", { body: '{"model": "../default"}' }, 400, "invalid_name"],
        ["model with a slash", { body: '{"model": "sub/tiny"}' }, 400, "invalid_name"],
        ["model absolute path", { body: '{"model": "/etc/passwd"}' }, 400, "invalid_name"],
        ["model ..", { body: '{"model": ".."}' }, 400, "invalid_name"],
        ["model through a symlink out", { body: '{"model": "escape"}' }, 400, "invalid_name"],
        [
          "adapter ../",
          { body: '{"adapters": [{"name": "../models/tiny", "weight": 1}]}' },
          400,
          "invalid_name",
        ],
        ["body over the limit", { body: big }, 413, "body_too_large"],
        [
          "streamed body over the limit",
          { body: ReadableStream.from([new TextEncoder().encode(big)]) },
          413,
          "body_too_large",
        ],
        [
          "not JSON content",
          { body: "{}", headers: { "content-type": "text/plain" } },
          415,
          "unsupported_media_type",
        ],
        ["unknown route", { path: "/v1/nothing", method: "GET" }, 404, "not_found"],
        ["wrong method", { path: "/v1/samples", method: "GET" }, 405, "method_not_allowed"],
        ["unknown job", { path: "/v1/jobs/nope", method: "GET" }, 404, "job_not_found"],
        ["events of an unknown job", { path: "/v1/jobs/nope/events", method: "GET" }, 404, "job_not_found"],
        ["cancel an unknown job", { path: "/v1/jobs/nope", method: "DELETE" }, 404, "job_not_found"],
        ["cancel a finished job", { path: `/v1/jobs/${firstId}`, method: "DELETE" }, 409, "job_finished"],
        [
          "result format",
          { path: `/v1/jobs/${firstId}/result?format=jpeg`, method: "GET" },
          400,
          "invalid_query",
        ],
        ["job list limit", { path: "/v1/jobs?limit=0", method: "GET" }, 400, "invalid_query"],
        ["job list status", { path: "/v1/jobs?status=lost", method: "GET" }, 400, "invalid_query"],
      ];
      for (const [name, { path = "/v1/samples", ...init }, status, code] of cases) {
        const res = await api(path, {
          method: "POST",
          ...init,
          headers: { "content-type": "application/json", ...init.headers },
        });
        const body = await res.json();
        equal(res.status, status, `${name}: ${JSON.stringify(body)}`);
        equal(body.error?.code, code, `${name}: ${JSON.stringify(body)}`);
        ok(typeof body.error.message === "string" && body.error.message.length > 10, `${name}: a message`);
        deepStrictEqual(Object.keys(body), ["error"]);
      }
      const res = await api("/v1/samples", { method: "GET" });
      equal(res.headers.get("allow"), "POST");
      await res.body?.cancel();
      // None of them queued anything.
      equal((await (await fetch(`${server.url}/healthz`)).json()).depth, 0);
    });

    await t.step("8 concurrent submissions all complete with valid NIfTI results", async () => {
      const posts = await Promise.all(
        Array.from(
          { length: 8 },
          (_, i) => submit(server.url, { model: "tiny", steps: 3, seed: i, batch: 1 + (i % 2) }, AUTH),
        ),
      );
      ok(posts.every((p) => p.status === 202), JSON.stringify(posts.map((p) => p.body)));
      const ids = posts.map((p) => p.body.id as string);
      equal(new Set(ids).size, 8);
      const jobs = await Promise.all(ids.map((id) => waitForJob(server.url, id, AUTH)));
      deepStrictEqual(jobs.map((j) => j.status), Array(8).fill("done"));
      const volumes = await Promise.all(ids.map(async (id) => {
        const res = await api(`/v1/jobs/${id}/result`);
        equal(res.status, 200);
        return readNifti(new Uint8Array(await res.arrayBuffer()));
      }));
      volumes.forEach((v, i) => {
        // Odd jobs asked for a batch of 2: one 4-D file, t = batch index.
        deepStrictEqual(v.shape, i % 2 ? [8, 8, 8, 2] : [8, 8, 8]);
        ok(v.data.every(Number.isFinite));
      });
      // Different seeds give different samples, and the volumes of a batch differ.
      notDeepStrictEqual(volumes[0].data, volumes[2].data);
      notDeepStrictEqual(volumes[1].data.subarray(0, 512), volumes[1].data.subarray(512));
      const list = await (await api("/v1/jobs?limit=8&status=done")).json();
      deepStrictEqual(list.jobs.map((j: { id: string }) => j.id).sort(), [...ids].sort());
    });

    await t.step("the same request twice gives the same volume", async () => {
      const a = await submit(server.url, { model: "tiny", steps: 3, seed: 42, sampler: "ddpm" }, AUTH);
      const b = await submit(server.url, { model: "tiny", steps: 3, seed: 42, sampler: "ddpm" }, AUTH);
      const [ja, jb] = await Promise.all(
        [a, b].map((p) => waitForJob(server.url, p.body.id as string, AUTH)),
      );
      deepStrictEqual([ja.status, jb.status], ["done", "done"]);
      const bytes = await Promise.all(
        [a, b].map(async (p) =>
          new Uint8Array(await (await api(`/v1/jobs/${p.body.id}/result`)).arrayBuffer())
        ),
      );
      deepStrictEqual((await readNifti(bytes[0])).data, (await readNifti(bytes[1])).data);
    });

    await t.step(
      "adapters are merged with their weight; one for another base model fails the job",
      async () => {
        const request = { model: "tiny", steps: 3, seed: 5 };
        const posts = await Promise.all([
          submit(server.url, request, AUTH),
          submit(server.url, { ...request, adapters: [{ name: "style", weight: 0 }] }, AUTH),
          submit(server.url, { ...request, adapters: [{ name: "style", weight: 1 }] }, AUTH),
          submit(server.url, { ...request, adapters: [{ name: "for-other", weight: 1 }] }, AUTH),
        ]);
        const jobs = await Promise.all(posts.map((p) => waitForJob(server.url, p.body.id as string, AUTH)));
        deepStrictEqual(jobs.map((j) => j.status), ["done", "done", "done", "failed"]);
        match(jobs[3].error as string, /trained on another base model/);
        const [base, zero, full] = await Promise.all(
          posts.slice(0, 3).map(async (p) => {
            const res = await api(`/v1/jobs/${p.body.id}/result`);
            return (await readNifti(new Uint8Array(await res.arrayBuffer()))).data;
          }),
        );
        // Weight 0 merges nothing: the base model's sample, bit for bit. Weight 1 changes it.
        deepStrictEqual(zero, base);
        notDeepStrictEqual(full, base);
      },
    );

    await t.step("DELETE cancels a queued job at once and a running one at its next step", async () => {
      const restartsBefore = (await (await fetch(`${server.url}/healthz`)).json()).workerRestarts;
      const long = await submit(server.url, { model: "tiny", steps: 1000 }, AUTH);
      const queued = await submit(server.url, { model: "tiny", steps: 1000 }, AUTH);
      await waitUntilRunning(server.url, long.body.id as string, AUTH);
      const events = readEvents(server.url, long.body.id as string, AUTH);

      const r1 = await api(`/v1/jobs/${queued.body.id}`, { method: "DELETE" });
      equal(r1.status, 200);
      const c1 = await r1.json();
      deepStrictEqual([c1.status, c1.error, c1.startedAt], ["cancelled", "cancelled by request", undefined]);

      const r2 = await api(`/v1/jobs/${long.body.id}`, { method: "DELETE" });
      equal(r2.status, 200);
      const c2 = await r2.json();
      equal(c2.status, "cancelled");
      ok(c2.progress > 0 && c2.progress < 1, `stopped part way (${c2.progress})`);
      // The event stream ends with the cancelled state.
      equal((await events).at(-1)!.data.status, "cancelled");

      const again = await api(`/v1/jobs/${long.body.id}`, { method: "DELETE" });
      equal(again.status, 409);
      await again.body?.cancel();
      const result = await api(`/v1/jobs/${long.body.id}/result`);
      deepStrictEqual([result.status, (await result.json()).error.code], [409, "result_not_ready"]);

      // The worker stopped cleanly: it is not replaced, and the next job runs on it.
      const next = await submit(server.url, { model: "tiny", steps: 2 }, AUTH);
      equal((await waitForJob(server.url, next.body.id as string, AUTH)).status, "done");
      equal((await (await fetch(`${server.url}/healthz`)).json()).workerRestarts, restartsBefore);
    });

    await t.step("a full queue answers 429 with Retry-After", async () => {
      const running = await submit(server.url, { model: "tiny", steps: 1000 }, AUTH);
      await waitUntilRunning(server.url, running.body.id as string, AUTH);
      const waiting = [];
      for (let i = 0; i < 10; i++) {
        waiting.push(await submit(server.url, { model: "tiny", steps: 1000 }, AUTH));
      }
      ok(waiting.every((w) => w.status === 202));
      const full = await submit(server.url, { model: "tiny", steps: 2 }, AUTH);
      equal(full.status, 429);
      equal((full.body.error as { code: string }).code, "queue_full");
      const retryAfter = Number(full.headers.get("retry-after"));
      ok(Number.isInteger(retryAfter) && retryAfter >= 1, `Retry-After ${full.headers.get("retry-after")}`);
      const health = await (await fetch(`${server.url}/healthz`)).json();
      deepStrictEqual([health.depth, health.running], [10, running.body.id]);
      for (const w of [...waiting, running]) {
        const res = await api(`/v1/jobs/${w.body.id}`, { method: "DELETE" });
        equal(res.status, 200);
        await res.body?.cancel();
      }
    });

    await t.step(
      "a lost GPU device or a crashed worker fails the job; a new worker runs the next",
      async () => {
        const before = (await (await fetch(`${server.url}/healthz`)).json()).workerRestarts;
        const faults = [[LOSE_DEVICE_SEED, /GPU device was lost/], [
          CRASH_SEED,
          /GPU worker crashed/,
        ]] as const;
        for (const [seed, reason] of faults) {
          const bad = await submit(server.url, { model: "tiny", steps: 20, seed }, AUTH);
          const after = await submit(server.url, { model: "tiny", steps: 2 }, AUTH);
          const failed = await waitForJob(server.url, bad.body.id as string, AUTH);
          equal(failed.status, "failed");
          match(failed.error as string, reason);
          equal((await waitForJob(server.url, after.body.id as string, AUTH)).status, "done");
        }
        // A device lost between jobs: the worker reports it at once and is replaced before the next job.
        const last = await submit(server.url, { model: "tiny", steps: 2, seed: LOSE_DEVICE_IDLE_SEED }, AUTH);
        equal((await waitForJob(server.url, last.body.id as string, AUTH)).status, "done");
        for (let i = 0; i < 100; i++) {
          const { workerRestarts } = await (await fetch(`${server.url}/healthz`)).json();
          if (workerRestarts === before + 3) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        const next = await submit(server.url, { model: "tiny", steps: 2 }, AUTH);
        equal((await waitForJob(server.url, next.body.id as string, AUTH)).status, "done");
        const health = await (await fetch(`${server.url}/healthz`)).json();
        deepStrictEqual([health.status, health.workerRestarts], ["ok", before + 3]);
      },
    );
  } finally {
    await stopAndCheck(server);
    await Deno.remove(dir, { recursive: true });
  }
});

/** Stops a server with SIGTERM and checks it exits cleanly. */
async function stopAndCheck(server: ServerProcess): Promise<void> {
  const status = await server.stop("SIGTERM");
  if (status.code !== 0) throw new Error(`server exited with ${status.code}:\n${server.log()}`);
}

/** A valid safetensors file with no tensors and the given metadata. */
function safetensorsWithMetadata(metadata: Record<string, string>): Uint8Array {
  const header = new TextEncoder().encode(JSON.stringify({ __metadata__: metadata }));
  const out = new Uint8Array(8 + header.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.length), true);
  out.set(header, 8);
  return out;
}
