/**
 * Prompts and the token table: the parser and its errors; contexts are [<bos>, token rows, <pad>…] of the
 * table's own rows; added concepts splice in; unknown tokens list the known ones; model files carry the
 * table; `info` lists the concepts; `generate` takes prompts on a cross-attention model.
 */

import { deepStrictEqual, match, ok, rejects, strictEqual, throws } from "node:assert";
import { describeFile } from "../../cli/info.ts";
import { tensor } from "../../engine/ops/create.ts";
import { parsePrompt } from "../../models/prompt.ts";
import { TokenTable, UnknownTokenError } from "../../models/tokens.ts";
import { generate } from "../../pipelines/generate.ts";
import { loadGenerator } from "../../pipelines/generators.ts";
import { loadModelFile } from "../../pipelines/modelfile.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { makeTinyTokenModel, TINY_TOKENS } from "../server/helpers.ts";

Deno.test("parsePrompt: tokens, AND, weights (negative too), and the null prompt", () => {
  deepStrictEqual(parsePrompt("<t1>"), [{ tokens: ["<t1>"], weight: 1 }]);
  deepStrictEqual(parsePrompt("  "), []);
  deepStrictEqual(parsePrompt(""), []);
  deepStrictEqual(parsePrompt("<t1> <lesion>:2"), [{ tokens: ["<t1>", "<lesion>"], weight: 2 }]);
  deepStrictEqual(parsePrompt("<t1>:0.25 AND <flair>:0.75"), [
    { tokens: ["<t1>"], weight: 0.25 },
    { tokens: ["<flair>"], weight: 0.75 },
  ]);
  deepStrictEqual(parsePrompt("<t1> : -1.5e-1 AND <flair>"), [
    { tokens: ["<t1>"], weight: -0.15 },
    { tokens: ["<flair>"], weight: 1 },
  ]);
  // "and" in lower case is not the operator (as in A1111), so it is an error here, not a token.
  throws(() => parsePrompt("<t1> and <flair>"), /"and" is not a token; tokens are names in angle brackets/);
  throws(() => parsePrompt("t1"), /"t1" is not a token/);
  throws(() => parsePrompt("<t1>:abc"), /":abc" is not a token/);
  throws(() => parsePrompt(":0.5 AND <t1>"), /a sub-prompt has no token/);
  throws(() => parsePrompt("<t1> AND "), /a sub-prompt has no token/);
});

gpuTest("TokenTable.encode: [<bos>, rows of each token, <pad>…] of the table's own rows", async () => {
  const table = new TokenTable(TINY_TOKENS, { seed: 3 });
  const w = await table.weight.toArray();
  const row = (i: number) => [...w.subarray(i * 8, (i + 1) * 8)];
  const rowsOf = async (t: ReturnType<TokenTable["encode"]>) => {
    deepStrictEqual(t.shape, [1, 4, 8]);
    const v = await t.toArray();
    t.dispose();
    return Array.from({ length: 4 }, (_, i) => [...v.subarray(i * 8, (i + 1) * 8)]);
  };
  // Rows: 0 <bos>, 1 <pad>, 2–3 <t1>, 4 <flair>. One-hot gathering is exact in f32.
  deepStrictEqual(await rowsOf(table.encode([])), [row(0), row(1), row(1), row(1)]);
  deepStrictEqual(await rowsOf(table.encode(["<t1>"])), [row(0), row(2), row(3), row(1)]);
  deepStrictEqual(await rowsOf(table.encode(["<flair>", "<t1>"])), [row(0), row(4), row(2), row(3)]);
  throws(() => table.encode(["<t1>", "<t1>"]), /need 4\+ rows; a context holds 3/);
  const err = (() => {
    try {
      table.encode(["<t2>", "<t1>"]);
    } catch (e) {
      return e;
    }
  })();
  ok(err instanceof UnknownTokenError);
  strictEqual(err.message, 'unknown token <t2>; the model knows <t1>, <flair> (and "" for the null prompt).');
  deepStrictEqual(err.known, ["<t1>", "<flair>"]);

  // An added concept splices its own tensor in (not a copy of the table's rows).
  const extra = tensor(Float32Array.from({ length: 8 }, (_, i) => 100 + i), [1, 8]);
  table.addConcept("<new>", extra);
  deepStrictEqual(table.concepts().map((c) => c.name), ["<t1>", "<flair>", "<new>"]);
  deepStrictEqual(await rowsOf(table.encode(["<new>"])), [
    row(0),
    [...(await extra.toArray())],
    row(1),
    row(1),
  ]);
  throws(() => table.addConcept("<t1>", extra), /already has a concept "<t1>"/);
  throws(() => table.addConcept("flair2", extra), /"flair2" is not a usable concept name/);
  const wide = tensor(new Float32Array(4), [1, 4]);
  throws(() => table.addConcept("<wide>", wide), /must be \[n, 8\]/);
  table.removeConcept("<new>");
  throws(() => table.encode(["<new>"]), /unknown token <new>/);
  disposeAll(extra, wide);
  table.dispose();
});

Deno.test("token vocabularies are checked", () => {
  throws(
    () => new TokenTable({ contextLength: 4, dim: 8, concepts: [{ name: "<a>", vectors: 4 }] }),
    /"<a>" has 4 vectors; 1\.\.3 fit a context/,
  );
  throws(
    () =>
      new TokenTable({
        contextLength: 4,
        dim: 8,
        concepts: [{ name: "<a>", vectors: 1 }, { name: "<a>", vectors: 1 }],
      }),
    /"<a>" is listed twice/,
  );
  throws(
    () => new TokenTable({ contextLength: 4, dim: 8, concepts: [{ name: "<pad>", vectors: 1 }] }),
    /<pad>/,
  );
});

gpuTest("a model file carries its token table; info lists the concepts; generate takes prompts", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-tokens-" });
  try {
    const path = `${dir}/cond.safetensors`;
    await makeTinyTokenModel(path);
    const loaded = await loadModelFile(path);
    deepStrictEqual(loaded.info.tokens, TINY_TOKENS);
    deepStrictEqual(loaded.tokens!.weight.shape, [5, 8]);
    ok(!loaded.tokens!.weight.requiresGrad, "loaded tables are frozen");
    loaded.unet.dispose();
    loaded.tokens!.dispose();

    const text = await describeFile(path);
    match(text, /tokens +context of 4 tokens × 8; <bos>, <pad> and 2 concepts/);
    match(text, /concepts +<t1> \(2 vectors\), <flair> \(1 vector\)/);
    match(text, /trained with +condition dropout 0\.1/);

    const model = await loadGenerator(path);
    try {
      const run = (prompt: string | undefined, guidanceScale = 1) =>
        generate(model, { sampler: "ddim", steps: 2, seed: 3, prompt, guidanceScale });
      const none = (await run(undefined)).volumes[0];
      deepStrictEqual((await run("")).volumes[0], none, "no prompt is the null prompt");
      const t1 = (await run("<t1>")).volumes[0];
      ok(t1.some((v, i) => v !== none[i]), "the prompt changes the sample");
      // Weight × scale = 1 is plain conditional sampling, whichever way it is written.
      deepStrictEqual((await run("<t1>:0.5", 2)).volumes[0], t1);
      const guided = (await run("<t1>", 3)).volumes[0];
      ok(guided.some((v, i) => v !== t1[i]), "guidance changes the sample");
      await rejects(run("<t1> AND <t2>"), /unknown token <t2>; the model knows <t1>, <flair>/);
      await rejects(
        generate(model, { sampler: "ddim", steps: 1, seed: 0, classLabel: 1 }),
        /a class label was given, but the model has no classes/,
      );
    } finally {
      model.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
