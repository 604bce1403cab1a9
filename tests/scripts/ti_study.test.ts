/**
 * scripts/ti_study.ts: the sweep plan, the decisions about stored inversions, the monotonicity check, the
 * position between two mean volumes, the inpainting measure inside and around a mask and the lesion
 * placement, each on values with a known answer; and the whole study once, on a conditional model trained
 * for one step at 24³ (the smallest grid the studies' MS-SSIM accepts), then rerun: everything is reused and
 * a missing embedding is rewritten from its run's checkpoint.
 */

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert";
import { main as train } from "../../cli/train.ts";
import { parsePrompt } from "../../models/prompt.ts";
import { sphereMask } from "../../pipelines/inpaint.ts";
import { composePrompt, main as study } from "../../scripts/ti_study.ts";
import {
  checkMonotone,
  checkpointAction,
  lesionCenters,
  maskMeasure,
  meanVolume,
  mixCoefficient,
  parseCases,
  peakCentroid,
  planStudy,
  shellMask,
} from "../../scripts/ti_study_plan.ts";
import { capture, writeTinyVolumes } from "../cli/helpers.ts";
import { gpuTest } from "../helpers/gpu.ts";

Deno.test("planStudy: one factor at a time around the centre; too many vectors are kept as skipped", () => {
  const plan = planStudy({
    vectors: [1, 4, 8, 16],
    cases: [1, 4, "aug"],
    guidance: [1, 2, 3, 5],
    steps: [250, 100, 500],
    center: { vectors: 8, cases: "aug", guidance: 2 },
    contextLength: 16,
  });
  strictEqual(plan.center, "v8-caug");
  strictEqual(plan.finalSteps, 500);
  deepStrictEqual(
    plan.inversions.map((p) => [p.id, p.checkpoints, p.skip !== undefined]),
    [
      ["v8-caug", [100, 250, 500], false],
      ["v1-caug", [500], false],
      ["v4-caug", [500], false],
      ["v16-caug", [500], true],
      ["v8-c1", [500], false],
      ["v8-c4", [500], false],
    ],
  );
  ok(/16 vectors do not fit a context of 16/.test(plan.inversions[3].skip!));
  deepStrictEqual(
    plan.evaluations.map((e) => [e.id, e.sweeps]),
    [
      ["v1-caug-s500-cfg2", ["vectors"]],
      ["v4-caug-s500-cfg2", ["vectors"]],
      ["v8-caug-s500-cfg2", ["vectors", "cases", "steps", "guidance"]],
      ["v8-c1-s500-cfg2", ["cases"]],
      ["v8-c4-s500-cfg2", ["cases"]],
      ["v8-caug-s100-cfg2", ["steps"]],
      ["v8-caug-s250-cfg2", ["steps"]],
      ["v8-caug-s500-cfg1", ["guidance"]],
      ["v8-caug-s500-cfg3", ["guidance"]],
      ["v8-caug-s500-cfg5", ["guidance"]],
    ],
  );
  const base = {
    vectors: [1],
    cases: ["aug"] as const,
    guidance: [2],
    steps: [10],
    center: { vectors: 1, cases: "aug" as const, guidance: 2 },
    contextLength: 4,
  };
  throws(() => planStudy({ ...base, vectors: [] }), /the vectors list is empty/);
  throws(() => planStudy({ ...base, steps: [0] }), /steps 0 is not a positive integer/);
  throws(() => planStudy({ ...base, guidance: [1.5, -1] }), /guidance -1 is not a positive number/);
  throws(() => parseCases("x"), /cases "x": give a positive integer/);
  deepStrictEqual([parseCases("aug"), parseCases("4")], ["aug", 4]);
});

Deno.test("checkpointAction: reuse, run (resume), refuse another configuration or a run past the step", () => {
  const key = { vectors: 8 };
  const record = { key, checkpoints: { "100": { command: "c", seconds: 1 } } };
  deepStrictEqual(checkpointAction(null, key, 100, false, 0), { action: "run" });
  deepStrictEqual(checkpointAction(record, key, 100, true, 100), { action: "reuse" });
  // Listed but its file is gone, the run is still at that step: invert rewrites it from the checkpoint.
  deepStrictEqual(checkpointAction(record, key, 100, false, 100), { action: "run" });
  // An interrupted run towards 250 resumes.
  deepStrictEqual(checkpointAction(record, key, 250, false, 150), { action: "run" });
  deepStrictEqual(checkpointAction(record, key, 100, false, 250), {
    action: "refuse",
    reason: "its run is at step 250, past the missing checkpoint at 100",
  });
  deepStrictEqual(checkpointAction(record, { vectors: 4 }, 100, true, 100), {
    action: "refuse",
    reason: "it holds an inversion with other settings",
  });
});

Deno.test("checkMonotone: ties allowed, violations located, non-finite refused", () => {
  // Values exact in binary, so the overall change is exact too.
  deepStrictEqual(checkMonotone([0, 0.25, 0.25, 1], "increasing"), {
    monotone: true,
    violations: [],
    change: 1,
  });
  deepStrictEqual(checkMonotone([0, 0.5, 0.25, 1, 0.75], "increasing"), {
    monotone: false,
    violations: [1, 3],
    change: 0.75,
  });
  deepStrictEqual(checkMonotone([3, 2, 2, -1], "decreasing"), { monotone: true, violations: [], change: -4 });
  deepStrictEqual(checkMonotone([3, 4], "decreasing"), { monotone: false, violations: [0], change: 1 });
  throws(() => checkMonotone([0, NaN], "increasing"), /must be finite/);
});

Deno.test("mixCoefficient: α of α·a + (1 − α)·b, unchanged by a part orthogonal to a − b", () => {
  const a = [1, 2, 0, 4];
  const b = [0, 1, 1, 2];
  // d = a − b = [1, 1, −1, 2]; o = [1, −1, 0, 0] is orthogonal to it.
  for (const alpha of [0, 0.3, 1, 1.5]) {
    const x = a.map((v, i) => alpha * v + (1 - alpha) * b[i] + 0.7 * [1, -1, 0, 0][i]);
    ok(Math.abs(mixCoefficient(x, a, b) - alpha) < 1e-12, `α ${alpha}`);
  }
  deepStrictEqual([...meanVolume([[1, 2], [3, 6]])], [2, 4]);
  throws(() => mixCoefficient([1], [1], [1]), /identical/);
  throws(() => mixCoefficient([1, 2], [1], [1]), /must match/);
});

Deno.test("maskMeasure and shellMask: intensity inside a sphere against its shell, and outside changes", () => {
  const shape: [number, number, number] = [9, 9, 9];
  const center = [4, 4, 4];
  const mask = sphereMask(shape, center, 2);
  const shell = shellMask(shape, center, 2, 4);
  ok(mask.every((m, i) => !(m && shell[i])), "the shell is outside the mask");
  strictEqual(shell[4 + 9 * (4 + 9 * 7)], 1, "3 voxels from the centre");
  const before = new Float32Array(9 ** 3).fill(-0.5);
  const after = before.map((v, i) => (mask[i] ? 0.5 : v));
  const m = maskMeasure(after, before, mask, shell);
  deepStrictEqual(m, {
    inside: 0.5,
    shell: -0.5,
    contrast: 1,
    insideChange: 1,
    outsideChange: 0,
    outsideMaxChange: 0,
  });
  // One voxel of the shell changed by +0.25: seen outside, and in the shell mean.
  const corner = 4 + 9 * (4 + 9 * 7);
  after[corner] += 0.25;
  const nShell = shell.reduce((s, v) => s + v, 0);
  const nOut = 9 ** 3 - mask.reduce((s, v) => s + v, 0);
  const changed = maskMeasure(after, before, mask, shell);
  ok(Math.abs(changed.shell - (-0.5 + 0.25 / nShell)) < 1e-9);
  ok(Math.abs(changed.outsideChange - 0.25 / nOut) < 1e-9);
  strictEqual(changed.outsideMaxChange, 0.25);
  throws(() => maskMeasure(after, before, new Float32Array(9 ** 3), shell), /0 voxels in the mask/);
});

Deno.test("peakCentroid and lesionCenters: where a blob is, and bright central voxels", () => {
  const shape: [number, number, number] = [10, 10, 10];
  const at = (x: number, y: number, z: number) => x + 10 * (y + 10 * z);
  const diff = Float32Array.from({ length: 1000 }, (_, i) => 0.01 * (i % 7)); // small differences everywhere
  for (const [x, y, z] of [[6, 3, 2], [7, 3, 2], [6, 4, 2], [7, 4, 2]]) diff[at(x, y, z)] = 1;
  deepStrictEqual(peakCentroid(diff, shape), [6.5, 3.5, 2]);
  // A dim cube (foreground) 1..8 with a bright core 3..6 (64 of its 512 voxels: above its 90th percentile)
  // inside the central half of the box, and bright voxels at its corner (outside the central half: never
  // chosen).
  const volume = new Float32Array(1000);
  for (let z = 1; z <= 8; z++) {
    for (let y = 1; y <= 8; y++) for (let x = 1; x <= 8; x++) volume[at(x, y, z)] = 1;
  }
  for (let z = 3; z <= 6; z++) {
    for (let y = 3; y <= 6; y++) for (let x = 3; x <= 6; x++) volume[at(x, y, z)] = 3;
  }
  for (const [x, y, z] of [[1, 1, 1], [8, 8, 8], [1, 8, 1]]) volume[at(x, y, z)] = 3;
  const centers = lesionCenters(volume, shape, 20, 7);
  strictEqual(centers.length, 20);
  ok(centers.every((c) => c.every((v) => v >= 3 && v <= 6)), JSON.stringify(centers));
  ok(new Set(centers.map((c) => c.join())).size > 5, "spread over the core");
  deepStrictEqual(lesionCenters(volume, shape, 20, 7), centers, "seeded");
});

Deno.test("composePrompt: A1111 weights that parse back to w and 1 − w", () => {
  strictEqual(composePrompt(0.75), "<t1>:0.75 AND <flair>:0.25");
  deepStrictEqual(parsePrompt(composePrompt(0.7)).map((p) => p.weight), [0.7, 0.3]);
  deepStrictEqual(parsePrompt(composePrompt(0)).map((p) => [p.tokens, p.weight]), [[["<t1>"], 0], [[
    "<flair>",
  ], 1]]);
});

gpuTest("the study end to end on a 1-step conditional model at 24³, then reused on a rerun", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-ti-study-" });
  try {
    const [t1, flair] = await writeTinyVolumes(dir, 2);
    await Deno.writeTextFile(
      `${dir}/manifest.json`,
      JSON.stringify([{ file: t1, concept: "<t1>" }, { file: flair, concept: "<other>" }]),
    );
    await capture(() =>
      train([
        ...["--data", `${dir}/manifest.json`, "--out", `${dir}/base`, "--size", "24"],
        ...["--channels", "8,8", "--attention", "0,1", "--groups", "4", "--head-channels", "8"],
        ...["--steps", "1", "--batch", "1", "--previews", "0", "--token-dim", "8", "--context-length", "4"],
        ...["--vectors", "1", "--uncond-prob", "0.5"],
      ])
    );
    const out = `${dir}/study`;
    const args = [
      ...["--base", `${dir}/base/model.safetensors`, "--flair", flair, "--t1", t1],
      ...["--vectors", "1,4", "--cases", "1,aug", "--cfg", "1,2", "--steps", "1,2"],
      ...["--center-vectors", "1", "--center-cases", "aug", "--center-cfg", "2"],
      ...["--count", "2", "--sample-steps", "2", "--weights", "0,0.5,1"],
      ...["--lesions", "1", "--lesion-radius", "3", "--inpaint-count", "1", "--lr", "0.05"],
      ...["--adapters", `${dir}/none.json`, "--out", out],
    ];
    let code = -1;
    await capture(async () => void (code = await study(args)));
    const first = JSON.parse(await Deno.readTextFile(`${out}/study.json`));
    deepStrictEqual(first.failures, []);
    strictEqual(code, 0);
    deepStrictEqual(first.skipped.map((s: { id: string }) => s.id), ["v4-caug"]);
    deepStrictEqual(
      first.sweeps.map((r: { id: string; status: string }) => [r.id, r.status]),
      [
        ["v1-caug-s2-cfg2", "ok"],
        ["v1-caug-s1-cfg2", "ok"],
        ["v1-caug-s2-cfg1", "ok"],
        ["v1-c1-s2-cfg2", "ok"],
      ],
    );
    for (const r of first.sweeps) ok(Number.isFinite(r.metrics.mmdGaussian) && r.metrics.msSsimMean <= 1);
    // One vector of width 8 in float32, plus the safetensors header with its metadata.
    const bytes = first.fileSizes.embeddings["v1-caug"].bytes;
    ok(bytes > 32 && bytes < 2048, `${bytes} bytes`);
    strictEqual(first.composability.rows.length, 3);
    deepStrictEqual(Object.keys(first.composability.checks).length, 3);
    // Inpainting keeps the known region: nothing outside the mask changes.
    for (const row of first.inpainting.rows) ok(row.measure.outsideMaxChange < 1e-6, JSON.stringify(row));
    const md = await Deno.readTextFile(`${out}/report.md`);
    ok(md.includes("Not run: v4-caug: 4 vectors do not fit a context of 4"), md);
    await Deno.stat(`${out}/previews/inpaint-lesion.png`);
    await Deno.stat(`${out}/previews/compose-w0.5.png`);

    // A rerun reuses everything; an embedding file that went missing is rewritten from its run's checkpoint
    // (byte-identical, so its scores are reused too).
    await Deno.remove(`${out}/inversions/v1-c1/s2.ti.safetensors`);
    const { stderr } = await capture(async () => void (code = await study(args)));
    strictEqual(code, 0);
    const inverted = stderr.split("\n").filter((l) => l.includes("inverting to step"));
    strictEqual(inverted.length, 1, stderr);
    ok(inverted[0].includes("v1-c1: inverting to step 2"));
    ok(!stderr.includes("sample 1/"), "nothing sampled again");
    const second = JSON.parse(await Deno.readTextFile(`${out}/study.json`));
    // The rewritten checkpoint's invocation took its own time; everything else is the stored result.
    const rows = (doc: { sweeps: Record<string, unknown>[] }) =>
      doc.sweeps.map(({ inversionSeconds: _, ...rest }) => rest);
    deepStrictEqual(rows(second), rows(first));
    deepStrictEqual([second.composability, second.inpainting], [first.composability, first.inpainting]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
