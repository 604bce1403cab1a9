/**
 * The control study's measurements (docs/control.md): for held-out deformed template pairs, the condition
 * (the ventricle analogue) is taken from the pair, and the frozen model samples from the same seed without
 * control and under each given control module. Each volume is segmented (pipelines/segment.ts) and its
 * ventricle analogue scored against the condition (Dice, HD95, ASSD in voxels); MAE to the paired real volume
 * shows how close the whole image comes. The segmenter's own score on the real volumes is the ceiling.
 *
 *   deno run -A scripts/control_study.ts --control NAME=FILE [--control …] [--pairs 4] [--steps 20] \
 *     [--model FILE] [--json OUT] [--skip-uncontrolled]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ready } from "../engine/device.ts";
import { augment } from "../pipelines/augment.ts";
import { loadTemplatePair, pairSeed } from "../pipelines/control_data.ts";
import { controlledGenerator } from "../pipelines/control.ts";
import { generate, type Generator } from "../pipelines/generate.ts";
import { loadModelFile, unetGenerator } from "../pipelines/modelfile.ts";
import { type MaskScores, maskScores, segmentVolume, tissueCentroids } from "../pipelines/segment.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "models/default/brain32.safetensors" },
    control: { type: "string", multiple: true },
    pairs: { type: "string", default: "4" },
    steps: { type: "string", default: "20" },
    json: { type: "string" },
    "skip-uncontrolled": { type: "boolean" },
  },
});
await ready();
const modelPath = values.model!;
const controls = (values.control ?? []).map((spec) => {
  const [name, file] = spec.split("=");
  if (!name || !file) throw new Error(`--control ${spec}: write NAME=FILE.`);
  return { name, file };
});
const pairs = Number(values.pairs);
const steps = Number(values.steps);

const probe = await loadModelFile(modelPath);
const { shape, range } = probe.info.volume;
probe.unet.dispose();
const pair = await loadTemplatePair(
  "../shared/data/MNI152_2009_template.nii.gz",
  "../shared/data/mni152_pveseg.nii.gz",
  shape,
  range,
);
const [templateImage, templateLabels] = await Promise.all([pair.image.toArray(), pair.labels.toArray()]);
const voxels = templateImage.length;
const init = tissueCentroids(templateImage, templateLabels.subarray(0, voxels));

type Row = { ventricles: MaskScores; mae: number; seconds: number };
const rows = new Map<string, Row[]>();
const add = (name: string, row: Row) => rows.set(name, [...(rows.get(name) ?? []), row]);

for (let p = 0; p < pairs; p++) {
  const moved = augment(pair.image, pairSeed(1000, p), { range }, pair.labels);
  const [real, labels] = await Promise.all([moved.image.toArray(), moved.labels!.toArray()]);
  moved.image.dispose();
  moved.labels!.dispose();
  const mask = labels.slice(voxels);
  const score = async (name: string, make: () => Promise<Generator>) => {
    const start = performance.now();
    const model = await make();
    const out = await generate(model, { sampler: "ddim", steps, seed: 100 + p });
    model.dispose();
    const volume = out.volumes[0];
    const seg = segmentVolume(volume, shape, init);
    let mae = 0;
    for (let i = 0; i < voxels; i++) mae += Math.abs(volume[i] - real[i]);
    add(name, {
      ventricles: maskScores(seg.ventricles, mask, shape),
      mae: mae / voxels,
      seconds: (performance.now() - start) / 1000,
    });
  };
  const realSeg = segmentVolume(real, shape, init);
  add("ceiling (real volume)", {
    ventricles: maskScores(realSeg.ventricles, mask, shape),
    mae: 0,
    seconds: 0,
  });
  if (!values["skip-uncontrolled"]) {
    await score("uncontrolled", async () => unetGenerator(await loadModelFile(modelPath)));
  }
  for (const c of controls) {
    await score(c.name, async () =>
      controlledGenerator(await loadModelFile(modelPath), {
        file: c.file,
        conditions: [{ data: mask, shape, source: `pair ${p}` }],
      }));
  }
  console.error(`pair ${p + 1}/${pairs} done`);
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const summary = [...rows].map(([name, r]) => ({
  name,
  n: r.length,
  dice: mean(r.map((x) => x.ventricles.dice)),
  hd95: mean(r.map((x) => x.ventricles.hd95)),
  assd: mean(r.map((x) => x.ventricles.assd)),
  mae: mean(r.map((x) => x.mae)),
  secondsPerSample: mean(r.map((x) => x.seconds)),
}));
const table = [
  "| rows | n | Dice ↑ | HD95 ↓ | ASSD ↓ | MAE to the paired real volume | s / sample |",
  "| --- | --- | --- | --- | --- | --- | --- |",
  ...summary.map((s) =>
    `| ${s.name} | ${s.n} | ${s.dice.toFixed(3)} | ${s.hd95.toFixed(2)} | ${s.assd.toFixed(2)} | ${
      s.mae.toFixed(3)
    } | ${s.secondsPerSample.toFixed(1)} |`
  ),
].join("\n");
console.log(table);
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify(
      { model: modelPath, steps, pairs, controls, summary, rows: Object.fromEntries(rows) },
      null,
      2,
    ) +
      "\n",
  );
}
pair.image.dispose();
pair.labels.dispose();
