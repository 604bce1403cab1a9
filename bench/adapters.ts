/**
 * What each adapter kind costs at run time, measured side by side on one model: the seconds of one
 * fine-tuning step (forward, MSE on the model's target, backward to the trainable tensors, AdamW) and of one
 * denoising forward with the adapters unmerged and merged, as ratios to full fine-tuning and to the plain
 * base model.
 *
 * Kinds are timed in interleaved rounds (one step of every kind per round, median over rounds) so that they
 * share whatever load the machine has. Wall and process-CPU seconds are both reported; on lavapipe the CPU
 * seconds measure the work itself (see bench/README.md).
 *
 * Run: `XDG_RUNTIME_DIR=/tmp deno run -A bench/adapters.ts [--model models/default/brain32.safetensors]
 *   [--kinds locon,loha,lokr,tenvoo-l,tenvoo-q,quanta] [--rank 4] [--batch 2] [--rounds 3]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as V from "../mod.ts";
import { ADAPTER_KINDS, type AdapterKind, type AdapterSet, injectAdapters } from "../adapters/mod.ts";
import { loadModelFile } from "../pipelines/modelfile.ts";
import type { DiffusionModelUNet } from "../models/unet.ts";
import { type Batch, median, timeBatch } from "./timing.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: {
      type: "string",
      default: new URL("../models/default/brain32.safetensors", import.meta.url).pathname,
    },
    kinds: { type: "string", default: ADAPTER_KINDS.join(",") },
    rank: { type: "string", default: "4" },
    batch: { type: "string", default: "2" },
    rounds: { type: "string", default: "3" },
  },
});
const kinds = values.kinds.split(",").filter(Boolean);
for (const k of kinds) {
  if (!(ADAPTER_KINDS as readonly string[]).includes(k)) {
    throw new Error(`--kinds: unknown kind ${JSON.stringify(k)}; accepted: ${ADAPTER_KINDS.join(", ")}.`);
  }
}
const rank = Number(values.rank);
const batch = Number(values.batch);
const rounds = Number(values.rounds);

await V.ready();
console.log(`adapter: ${V.deviceInfo().adapter}; load average ${Deno.loadavg().join(" ")}`);

/** One configuration under test: a model (with or without adapters) and its trainable tensors. */
interface Contender {
  name: string;
  unet: DiffusionModelUNet;
  set: AdapterSet | null;
  params: V.Tensor[];
  optimizer: V.AdamW;
  trainTimes: Batch[];
  forwardTimes: Batch[];
  mergedTimes: Batch[];
}

const { info } = await loadModelFile(values.model);
const [nx, ny, nz] = info.volume.shape;
const x0 = V.keep(V.randn([batch, 1, nx, ny, nz], { seed: 1 }));
const noise = V.keep(V.randn([batch, 1, nx, ny, nz], { seed: 2 }));
const t = Array.from({ length: batch }, (_, i) => 100 + 400 * i);
const scheduler = new V.DDPMScheduler(info.scheduler);
const xt = V.keep(scheduler.addNoise(x0, noise, t));
const target = V.keep(
  info.scheduler.predictionType === "v_prediction" ? scheduler.getVelocity(x0, noise, t) : noise,
);

async function contender(name: string, kind: AdapterKind | "full"): Promise<Contender> {
  const { unet } = await loadModelFile(values.model);
  let set: AdapterSet | null = null;
  if (kind === "full") unet.unfreeze();
  else set = await injectAdapters(unet, { kind, rank, seed: 0 });
  const params = unet.parameters().filter((p) => p.requiresGrad);
  return {
    name,
    unet,
    set,
    params,
    optimizer: new V.AdamW(params, { lr: 1e-5 }),
    trainTimes: [],
    forwardTimes: [],
    mergedTimes: [],
  };
}

/** One timed call of `run`. */
const timed = (run: () => void) => timeBatch(run, 1);

function trainStep(c: Contender): void {
  c.unet.train();
  V.scope(() => {
    const loss = V.mseLoss(c.unet.forward(xt, t), target);
    c.optimizer.step(V.grad(loss, c.params));
  });
}

function forward(c: Contender): void {
  c.unet.eval();
  V.scope(() => V.noGrad(() => c.unet.forward(xt, t)));
}

const contenders: Contender[] = [await contender("full fine-tuning", "full")];
for (const k of kinds) contenders.push(await contender(k, k as AdapterKind));

// Warm-up: compile every pipeline each configuration uses.
for (const c of contenders) {
  await timed(() => trainStep(c));
  await timed(() => forward(c));
}
for (let round = 0; round < rounds; round++) {
  for (const c of contenders) {
    c.trainTimes.push(await timed(() => trainStep(c)));
    c.forwardTimes.push(await timed(() => forward(c)));
  }
  console.error(`round ${round + 1}/${rounds} done`);
}
// Merged: the update folded into the weights, so the forward is the base model's.
for (const c of contenders) c.set?.merge();
for (const c of contenders) await timed(() => forward(c));
for (let round = 0; round < rounds; round++) {
  for (const c of contenders) c.mergedTimes.push(await timed(() => forward(c)));
}

const med = (xs: Batch[]) => ({
  wall: median(xs.map((x) => x.wall)),
  cpu: median(xs.map((x) => x.cpu)),
});

const full = contenders[0];
const fullTrain = med(full.trainTimes);
// The full contender is never merged (it has no adapters): its merged forward is the plain base model's.
const baseForward = med(full.mergedTimes);
console.log(
  `\nbatch ${batch} at ${nx}×${ny}×${nz}, rank ${rank}, ${rounds} interleaved rounds (medians); ` +
    `load average ${Deno.loadavg().join(" ")} at the end\n`,
);
console.log(
  "| kind | trainable | train step s (wall / CPU) | vs full (CPU) | forward s, unmerged (CPU) | vs base | " +
    "forward s, merged (CPU) | vs base |",
);
console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const c of contenders) {
  const tr = med(c.trainTimes);
  const fw = med(c.forwardTimes);
  const mg = med(c.mergedTimes);
  const trainable = c.params.reduce((n, p) => n + p.size, 0);
  console.log(
    `| ${c.name} | ${trainable.toLocaleString("en-US")} | ${tr.wall.toFixed(2)} / ${tr.cpu.toFixed(2)} | ` +
      `${(tr.cpu / fullTrain.cpu).toFixed(2)}× | ${fw.cpu.toFixed(3)} | ${
        (fw.cpu / baseForward.cpu).toFixed(2)
      }× | ` +
      `${mg.cpu.toFixed(3)} | ${(mg.cpu / baseForward.cpu).toFixed(2)}× |`,
  );
}
for (const c of contenders) c.unet.dispose();
for (const tensor of [x0, noise, xt, target]) tensor.dispose();
