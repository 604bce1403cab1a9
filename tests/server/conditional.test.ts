/**
 * The server with a conditional model: prompts with guidance, embeddings from the data directory (listed,
 * checked, refused on another base), 422 with the known tokens for an unknown one, and inpainting from a
 * finished job's result with a sphere mask and from an uploaded volume.
 */

import { deepStrictEqual, equal, match, ok } from "node:assert";
import { encodeNifti, readNifti } from "../../io/nifti.ts";
import { sphereMask } from "../../pipelines/inpaint.ts";
import {
  makeTinyEmbedding,
  makeTinyModel,
  makeTinyTokenModel,
  startServer,
  submit,
  TINY_AFFINE,
  TINY_TOKENS,
  waitForJob,
} from "./helpers.ts";

Deno.test({
  name: "server: conditional jobs with prompts, embeddings and inpainting; 422 for unknown tokens",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const dir = await Deno.makeTempDir();
    await Deno.mkdir(`${dir}/models`);
    await Deno.mkdir(`${dir}/embeddings`);
    await makeTinyModel(`${dir}/default.safetensors`);
    await makeTinyTokenModel(`${dir}/models/cond.safetensors`);
    await makeTinyEmbedding(
      `${dir}/models/cond.safetensors`,
      `${dir}/embeddings/lesion.ti.safetensors`,
      "<lesion>",
      2,
    );
    // The same architecture with other weights: its embedding must be refused on "cond".
    await makeTinyModel(
      `${dir}/other.safetensors`,
      { withConditioning: true, crossAttentionDim: 8, seed: 9 },
      {
        tokens: TINY_TOKENS,
      },
    );
    await makeTinyEmbedding(
      `${dir}/other.safetensors`,
      `${dir}/embeddings/foreign.ti.safetensors`,
      "<foreign>",
      1,
    );
    await makeTinyModel(`${dir}/models/withcond.safetensors`, { inChannels: 2 }, {
      conditioning: { conditionChannels: 1 },
    });
    const server = await startServer(["--data-dir", dir, "--default-model", `${dir}/default.safetensors`]);
    const run = async (body: Record<string, unknown>) => {
      const r = await submit(server.url, body);
      equal(r.status, 202, JSON.stringify(r.body));
      return await waitForJob(server.url, r.body.id as string);
    };
    try {
      await t.step("GET /v1/models lists the concepts and the embeddings", async () => {
        const { models, embeddings } = await (await fetch(`${server.url}/v1/models`)).json();
        const cond = models.find((m: { name: string }) => m.name === "cond");
        deepStrictEqual([cond.conditional, cond.contextLength, cond.tokenDim], [true, 4, 8]);
        deepStrictEqual(cond.concepts, [{ name: "<t1>", vectors: 2 }, { name: "<flair>", vectors: 1 }]);
        deepStrictEqual(embeddings.map((e: { name: string; token: string }) => [e.name, e.token]), [
          ["foreign", "<foreign>"],
          ["lesion", "<lesion>"],
        ]);
        ok(/^[0-9a-f]{64}$/.test(embeddings[1].baseModelHash));
      });

      await t.step("unknown tokens and bad prompts are 422s that list the known tokens", async () => {
        const r = await submit(server.url, { model: "cond", prompt: "<t1> AND <t2>" });
        deepStrictEqual([r.status, (r.body.error as { code: string }).code], [422, "unknown_token"]);
        match(
          (r.body.error as { message: string }).message,
          /Unknown token <t2> in the prompt; model "cond" knows <t1>, <flair> \(and "" for the null prompt\)/,
        );
        const withEmbedding = await submit(server.url, {
          model: "cond",
          prompt: "<x>",
          embeddings: ["lesion"],
        });
        match(
          (withEmbedding.body.error as { message: string }).message,
          /with the requested embeddings knows <t1>, <flair>, <lesion>/,
        );
        const syntax = await submit(server.url, { model: "cond", prompt: "t1" });
        deepStrictEqual([syntax.status, (syntax.body.error as { code: string }).code], [
          422,
          "invalid_prompt",
        ]);
        const missing = await submit(server.url, { model: "cond", embeddings: ["nope"] });
        equal(missing.status, 404);
        const uncond = await submit(server.url, { prompt: "<t1>" });
        deepStrictEqual([uncond.status, (uncond.body.error as { code: string }).code], [
          422,
          "invalid_value",
        ]);
      });

      let first = "";
      await t.step("a guided composable prompt with an embedding runs; the request is kept", async () => {
        const job = await run({
          model: "cond",
          prompt: "<t1>:0.5 AND <lesion>:0.5",
          guidanceScale: 3,
          embeddings: ["lesion"],
          steps: 3,
          seed: 4,
          batch: 2,
        });
        equal(job.status, "done", JSON.stringify(job));
        const request = job.request as Record<string, unknown>;
        deepStrictEqual([request.prompt, request.guidanceScale, request.embeddings], [
          "<t1>:0.5 AND <lesion>:0.5",
          3,
          ["lesion"],
        ]);
        first = job.id as string;
      });

      await t.step(
        "an embedding learned on another base model fails the job with a clear error",
        async () => {
          const job = await run({ model: "cond", prompt: "<foreign>", embeddings: ["foreign"], steps: 1 });
          equal(job.status, "failed");
          match(String(job.error), /learned on another base model/);
        },
      );

      await t.step("inpainting from a finished job's result (sphere mask) and from an upload", async () => {
        const source = await readNifti(`${dir}/results/${first}.nii.gz`);
        const job = await run({
          model: "cond",
          prompt: "<flair>",
          steps: 3,
          seed: 5,
          inpaint: { image: { job: first, index: 1 }, mask: { sphere: { center: [4, 4, 4], radius: 2 } } },
        });
        equal(job.status, "done", JSON.stringify(job));
        const out = await readNifti(`${dir}/results/${job.id}.nii.gz`);
        const inside = sphereMask([8, 8, 8], [4, 4, 4], 2);
        let changed = 0;
        for (let i = 0; i < 512; i++) {
          if (inside[i] === 0) equal(out.data[i], source.data[512 + i], `kept voxel ${i}`);
          else if (out.data[i] !== source.data[512 + i]) changed++;
        }
        ok(changed > 0, "the sphere was generated");
        // The job links its mask: the sphere drawn on the result's grid and affine (for the viewer's overlay).
        deepStrictEqual(job.conditions, [{
          name: "inpainting mask",
          kind: "mask",
          nifti: `/v1/jobs/${job.id}/condition?index=0`,
        }]);
        const served = await readNifti(
          new Uint8Array(await (await fetch(`${server.url}/v1/jobs/${job.id}/condition`)).arrayBuffer()),
        );
        deepStrictEqual([served.shape, served.data, served.affine], [[8, 8, 8], inside, source.affine]);

        const image = Float32Array.from({ length: 512 }, (_, i) => (i % 7) / 7);
        const mask = Float32Array.from({ length: 512 }, (_, i) => (i < 64 ? 1 : 0));
        const b64 = (data: Float32Array, shape = [8, 8, 8]) =>
          btoa(String.fromCharCode(...encodeNifti({ data, shape, affine: TINY_AFFINE })));
        const upload = await run({
          model: "cond",
          steps: 2,
          seed: 1,
          inpaint: { image: { nifti: b64(image) }, mask: { nifti: b64(mask) } },
        });
        equal(upload.status, "done", JSON.stringify(upload));
        const up = await readNifti(`${dir}/results/${upload.id}.nii.gz`);
        for (let i = 64; i < 512; i++) equal(up.data[i], image[i], `kept uploaded voxel ${i}`);

        const wrong = await submit(server.url, {
          model: "cond",
          inpaint: {
            image: { nifti: b64(image.slice(0, 64), [4, 4, 4]) },
            mask: { sphere: { center: [1, 1, 1], radius: 1 } },
          },
        });
        equal(wrong.status, 422);
      });

      await t.step(
        "a model trained with condition volumes needs them: 422 without, a job with one",
        async () => {
          const b64 = (data: Float32Array, shape = [8, 8, 8]) =>
            btoa(String.fromCharCode(...encodeNifti({ data, shape, affine: TINY_AFFINE })));
          const models = (await (await fetch(`${server.url}/v1/models`)).json()).models;
          equal(models.find((m: { name: string }) => m.name === "withcond").conditionChannels, 1);
          const without = await submit(server.url, { model: "withcond", steps: 1 });
          deepStrictEqual([without.status, (without.body.error as { code: string }).code], [
            422,
            "conditional_model",
          ]);
          const wrong = await submit(server.url, {
            model: "withcond",
            condition: b64(new Float32Array(64), [4, 4, 4]),
          });
          equal(wrong.status, 422);
          const other = await submit(server.url, { model: "cond", condition: b64(new Float32Array(512)) });
          equal(other.status, 422);
          const mask = Float32Array.from({ length: 512 }, (_, i) => (i % 8 < 4 ? 1 : 0));
          const job = await run({
            model: "withcond",
            steps: 2,
            seed: 3,
            condition: b64(mask),
            guidanceScale: 2,
          });
          equal(job.status, "done", JSON.stringify(job));
          match(String((job.request as { condition: string }).condition), /^<\d+ bytes of NIfTI>$/);
        },
      );
    } finally {
      const status = await server.stop();
      await Deno.remove(dir, { recursive: true });
      equal(status.code, 0, server.log());
    }
  },
});
