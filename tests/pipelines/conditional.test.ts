/**
 * Condition dropout in conditionalBatches: with probability 0 every item keeps its prompt, class and
 * condition volume; with 1 every item gets the null ones (empty prompt, null class, zeros); in between,
 * the share dropped follows the probability and the draws are deterministic per step.
 */

import { deepStrictEqual, ok } from "node:assert";
import { tensor } from "../../engine/ops/create.ts";
import { TokenTable } from "../../models/tokens.ts";
import { conditionalBatches } from "../../pipelines/conditional.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";
import { TINY_TOKENS } from "../server/helpers.ts";

gpuTest(
  "conditionalBatches: condition dropout to the null prompt, the null class and zero volumes",
  async () => {
    const tokens = new TokenTable(TINY_TOKENS, { seed: 2 });
    const conditions = [{ tokens: ["<t1>"], classLabel: 0 }, { tokens: ["<flair>"], classLabel: 1 }];
    // Four items per batch, alternating sources; volumes and condition volumes of ones.
    const base = () => ({
      x0: tensor(new Float32Array(4 * 8).fill(1), [4, 1, 2, 2, 2]),
      sources: [0, 1, 0, 1],
      paired: tensor(new Float32Array(4 * 8).fill(1), [4, 1, 2, 2, 2]),
    });
    const empty = tokens.encode([]);
    const nullContext = await empty.toArray();
    empty.dispose();
    const read = async (p: number, step: number) => {
      const batch = conditionalBatches(base, conditions, { tokens, nullClass: 2, uncondProb: p, seed: 3 })(
        step,
        0,
      );
      const labels = [...(await batch.classLabels!.toArray())];
      const volumes = await batch.control!.conditions[0]!.toArray();
      const context = await batch.context!.toArray();
      const dropped = labels.map((l) => l === 2);
      for (const [b, d] of dropped.entries()) {
        deepStrictEqual([...volumes.subarray(b * 8, b * 8 + 8)], new Array(8).fill(d ? 0 : 1), `volume ${b}`);
        const rows = [...context.subarray(b * 32, b * 32 + 32)];
        deepStrictEqual(rows.every((v, i) => v === nullContext[i]), d, `context ${b} is null iff dropped`);
      }
      disposeAll(batch.x0, batch.context, batch.classLabels, batch.control!.conditions[0]);
      return dropped;
    };
    deepStrictEqual(await read(0, 0), [false, false, false, false]);
    deepStrictEqual(await read(1, 0), [true, true, true, true]);
    let count = 0;
    for (let step = 0; step < 50; step++) count += (await read(0.3, step)).filter(Boolean).length;
    // 200 draws at p = 0.3: 60 expected, s.d. 6.5; the bounds are 4 s.d. away.
    ok(count > 34 && count < 86, `${count} of 200 dropped at p = 0.3`);
    deepStrictEqual(await read(0.3, 7), await read(0.3, 7), "deterministic per step");
    tokens.dispose();
  },
);
