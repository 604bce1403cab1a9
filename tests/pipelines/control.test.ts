/**
 * Control training with the backbone frozen: a VCM and a ControlNet each learn a tiny case (the condition
 * determines the clean volume) and their loss falls, while the base model's weights stay bit-identical.
 * Also the control file round trip and the condition checks.
 */

import { deepStrictEqual, ok, rejects, throws } from "node:assert";
import { noGrad, randn, type Tensor } from "../../mod.ts";
import { map } from "../../engine/ops/map.ts";
import { modelHash } from "../../adapters/hash.ts";
import { DiffusionModelUNet } from "../../models/unet.ts";
import {
  checkConditions,
  type ControlKind,
  controlTrainingNetwork,
  createControl,
  loadControlFile,
  saveControlFile,
} from "../../pipelines/control.ts";
import { train } from "../../pipelines/train.ts";
import { DDPMScheduler } from "../../samplers/scheduler.ts";
import { disposeAll, gpuTest } from "../helpers/gpu.ts";

/** A small random base; its output convolution is redrawn (MONAI starts it at zero: no gradient would pass). */
function tinyBase(): DiffusionModelUNet {
  const base = new DiffusionModelUNet({
    spatialDims: 3,
    inChannels: 1,
    outChannels: 1,
    channels: [8, 8],
    attentionLevels: [false, false],
    numResBlocks: 1,
    normNumGroups: 4,
    seed: 1,
  }).eval().freeze();
  const name = "out.2.conv.weight";
  const w = randn(base.stateDict().get(name)!.shape, { seed: 7 });
  base.loadStateDict(new Map([[name, w]]), { strict: false });
  w.dispose();
  return base;
}

/** Two pairs: a random 0/1 mask and the volume it determines (x0 = 1.6·mask − 0.8). */
function tinyData(): (step: number) => { x0: Tensor; control: { conditions: Tensor[] } } {
  return (step) =>
    noGrad(() => {
      const noise = randn([1, 1, 8, 8, 8], { seed: 100 + (step % 2) });
      const mask = map("step", "select(0.0, 1.0, a > 0.0)", [noise]);
      noise.dispose();
      return { x0: map("scale", "1.6 * a - 0.8", [mask]), control: { conditions: [mask] } };
    });
}

for (const kind of ["vcm", "controlnet"] as ControlKind[]) {
  gpuTest(`train-control (${kind}): the loss falls and the frozen base stays bit-identical`, async () => {
    const base = tinyBase();
    const before = await modelHash(base);
    const control = await createControl(kind, base, {
      conditions: ["mask"],
      conditionChannels: [1],
      seed: 2,
    });
    const scheduler = new DDPMScheduler({ predictionType: "v_prediction" });
    const network = controlTrainingNetwork(base, scheduler, control);
    ok(network.namedParameters().every(([, t]) => t.requiresGrad), "only the control module's parameters");
    const dir = await Deno.makeTempDir();
    const losses: number[] = [];
    control.module.train();
    await train(network, scheduler, tinyData(), {
      steps: 40,
      lr: 1e-2,
      warmupSteps: 2,
      emaDecay: 0,
      outDir: dir,
      progress: false,
      checkpointEvery: 1000,
      onStep: (s) => losses.push(s.loss),
    });
    const head = losses.slice(0, 8).reduce((a, b) => a + b, 0) / 8;
    const tail = losses.slice(-8).reduce((a, b) => a + b, 0) / 8;
    ok(tail < 0.7 * head, `${kind}: loss ${head.toFixed(4)} → ${tail.toFixed(4)} did not fall by 30%`);
    deepStrictEqual(await modelHash(base), before, "the base model's weights changed");

    // The control file round trip: same weights, and refused for another base.
    const file = `${dir}/control.safetensors`;
    await saveControlFile(file, control);
    const loaded = await loadControlFile(file, base);
    deepStrictEqual(loaded.info.kind, kind);
    deepStrictEqual(await modelHash(loaded.module), await modelHash(control.module));
    const other = new DiffusionModelUNet({
      ...base.config,
      seed: 9,
      crossAttentionDim: undefined,
      numClassEmbeds: undefined,
    });
    await rejects(() => loadControlFile(file, other), /trained on another base model/);
    other.dispose();

    // A condition on the wrong grid is refused with the shape it needs.
    const x = randn([1, 1, 8, 8, 8], { seed: 1 });
    const wrong = randn([1, 1, 16, 16, 16], { seed: 1 });
    throws(
      () => checkConditions(loaded, x, [wrong]),
      /condition "mask" \[1, 1, 16, 16, 16\] does not fit: it must be \[1 or 1, 1, 8, 8, 8\]/,
    );
    disposeAll(x, wrong);
    loaded.module.dispose();
    control.module.dispose();
    base.dispose();
    await Deno.remove(dir, { recursive: true });
  });
}
