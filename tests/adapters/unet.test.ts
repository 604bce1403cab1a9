/**
 * Adapters on a small 3-D U-Net (channels [8, 16], 8³ volumes): exact equality with the base model at the
 * start, merge/unmerge/remove, gradients reaching only the adapter, joint fine-tuning, training with the
 * training loop, save → load, and refusing a different base model.
 */

import assert from "node:assert/strict";
import { concat, grad, mseLoss, noGrad, randn, reshape, scope, type Tensor, tensor } from "../../mod.ts";
import { AdaptedLayer } from "../../adapters/layer.ts";
import {
  ADAPTER_KINDS,
  adapterParameterCount,
  type AdapterSet,
  adapterSummary,
  injectAdapters,
  loadAdapters,
  modelHash,
  readAdapterInfo,
} from "../../adapters/mod.ts";
import { copyInto } from "../../engine/ops/map.ts";
import { parseSafetensors, saveSafetensors } from "../../io/safetensors.ts";
import { DiffusionModelUNet } from "../../models/unet.ts";
import { seededRandom } from "../../nn/init.ts";
import { train } from "../../pipelines/train.ts";
import { DDPMScheduler } from "../../samplers/scheduler.ts";
import { assertClose, maxAbsDiff } from "../helpers/check.ts";
import { gpuTest } from "../helpers/gpu.ts";

const CONFIG = {
  spatialDims: 3 as const,
  inChannels: 1,
  outChannels: 1,
  channels: [8, 16],
  attentionLevels: [false, true],
  numResBlocks: 1,
  numHeadChannels: 8,
  normNumGroups: 8,
};

/**
 * A U-Net with every parameter redrawn (MONAI zero-initialises conv2 and the output conv, which would make
 * the output identically zero): weights N(0, 1/fan_in), biases and norm shifts N(0, 0.2²), norm scales
 * 1 + N(0, 0.2²).
 */
function unet(seed = 0): DiffusionModelUNet {
  const model = new DiffusionModelUNet({ ...CONFIG, seed });
  const random = seededRandom(1000 + seed);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  noGrad(() => {
    for (const [name, p] of model.namedParameters()) {
      const fanIn = p.shape.slice(1).reduce((a, b) => a * b, 1);
      const norm = p.rank === 1 && name.endsWith("weight");
      const values = Float32Array.from(
        { length: p.size },
        () => (p.rank >= 2 ? gauss() / Math.sqrt(fanIn) : (norm ? 1 : 0) + 0.2 * gauss()),
      );
      const t = tensor(values, p.shape);
      copyInto(p, t);
      t.dispose();
    }
  });
  return model;
}

const TIMESTEPS = [10, 700];

function input(): Tensor {
  return randn([2, 1, 8, 8, 8], { seed: 5 });
}

async function run(model: DiffusionModelUNet, x: Tensor): Promise<Float32Array> {
  const y = noGrad(() => model.forward(x, TIMESTEPS));
  try {
    return await y.toArray();
  } finally {
    y.dispose();
  }
}

/**
 * Moves every trainable tensor of the adapter by 0.3·N(0, 1)·(its rms), so that ΔW ≠ 0 for every method.
 * Cores start from the values their method drew (kept on the CPU; 0.1 stands in for a zero core's rms);
 * base parameters trained along are read back.
 */
async function perturb(set: AdapterSet, seed: number): Promise<void> {
  const random = seededRandom(seed);
  const move = async (t: Tensor, start: Float32Array | null) => {
    const v = start ? Float32Array.from(start) : await t.toArray();
    const rms = Math.sqrt(v.reduce((s, a) => s + a * a, 0) / v.length) || 0.1;
    for (let i = 0; i < v.length; i++) {
      v[i] += 0.3 * rms * Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
    }
    const u = tensor(v, t.shape);
    noGrad(() => copyInto(t, u));
    u.dispose();
  };
  const cores = new Set<Tensor>();
  for (const layer of set.layers.values()) {
    for (const [i, core] of layer.cores.entries()) {
      await move(core, layer.method.cores[i].values);
      cores.add(core);
    }
  }
  for (const t of set.parameters()) if (!cores.has(t)) await move(t, null);
}

/** Every parameter's values, read back in one transfer. */
async function snapshot(model: DiffusionModelUNet): Promise<Map<string, Float32Array>> {
  const named = model.namedParameters();
  const flat = noGrad(() => scope(() => concat(named.map(([, p]) => reshape(p, [p.size])))));
  const values = await flat.toArray();
  flat.dispose();
  const out = new Map<string, Float32Array>();
  let at = 0;
  for (const [name, p] of named) {
    out.set(name, values.subarray(at, at + p.size));
    at += p.size;
  }
  return out;
}

gpuTest(
  "every kind: exact at the start, merged = unmerged after perturbing, unmerge and remove restore",
  async () => {
    const model = unet();
    const x = input();
    for (const kind of ADAPTER_KINDS) {
      // Each kind starts from the weights the previous one left (the originals up to unmerge's rounding).
      const base = await run(model, x);
      const baseWeights = await snapshot(model);
      const rms = Math.sqrt(base.reduce((s, v) => s + v * v, 0) / base.length);
      assert.ok(rms > 0.1, `the base output must not be trivial (rms ${rms})`);
      const set = await injectAdapters(model, { kind, rank: 2 });
      // f(T) − f(T*) is exactly zero (or ΔW has an exactly zero factor): bit-identical outputs.
      assert.deepEqual(
        await run(model, x),
        base,
        `${kind}: the adapted model at the start equals the base model`,
      );
      await perturb(set, 3);
      const unmerged = await run(model, x);
      assert.ok(maxAbsDiff(unmerged, base) > 1e-3 * rms, `${kind}: perturbed cores change the output`);
      set.merge();
      // W + s·(Δ − Δ*) once merged vs fused per step: f32 rounding through ~20 layers.
      assertClose(await run(model, x), unmerged, { rtol: 1e-4, atol: 1e-4 * rms, name: `${kind}: merged` });
      const mergedWeights = await snapshot(model);
      set.unmerge();
      const after = await snapshot(model);
      for (const [name, w] of baseWeights) {
        const now = after.get(name)!;
        const merged = mergedWeights.get(name)!;
        // (W + D) − D in f32 is within one rounding of |W + D| of W: 4 ulp of max |W| + |W + D| is safe.
        const bound = 4 * 2 ** -23 * Math.max(...w.map((v, i) => Math.abs(v) + Math.abs(merged[i])));
        assert.ok(maxAbsDiff(now, w) <= bound, `${kind}: unmerge restores ${name} (${maxAbsDiff(now, w)})`);
      }
      set.remove();
      assert.equal(model.namedParameters().length, baseWeights.size, `${kind}: remove() takes the cores out`);
      assert.ok(
        model.namedParameters().every(([, p]) => p.requiresGrad),
        `${kind}: remove() restores the flags`,
      );
      assertClose(await run(model, x), base, { rtol: 1e-5, atol: 1e-5 * rms, name: `${kind}: after remove` });
      assert.throws(() => set.merge(), /removed/);
    }
    x.dispose();
    model.dispose();
  },
);

gpuTest("TenVOO-L: defaults, counts per layer, and gradients reaching the cores only", async () => {
  const model = unet();
  const set = await injectAdapters(model, { kind: "tenvoo-l", rank: 2 });
  const names = [...set.layers.keys()];
  // The paper's targets: ResnetBlock conv1/conv2 and time projections, attention q and v, time_embed.2.
  assert.ok(names.includes("time_embed.2"));
  assert.ok(names.includes("down_blocks.1.attentions.0.attn.to_q"));
  assert.ok(names.includes("up_blocks.1.resnets.1.conv2.conv"));
  assert.ok(!names.some((n) => /to_k|skip_connection|downsampler|conv_in|out\.2|middle_block/.test(n)));
  assert.equal(names.filter((n) => n.endsWith(".conv")).length, 12);
  assert.equal(names.length, 25);
  for (const [name, layer] of set.layers) {
    // The trainable count of each layer is the formula's (Eq. 6 for convolutions, QuanTA for linear layers).
    assert.equal(layer.numAdapterParameters, adapterParameterCount("tenvoo-l", layer.weightShape, 2), name);
    assert.equal(layer.method.kind, name.endsWith(".conv") ? "tenvoo-l" : "quanta", name);
  }
  const trainable = model.namedParameters().filter(([, p]) => p.requiresGrad);
  assert.deepEqual(trainable.map(([n]) => n), set.namedParameters().map(([n]) => n));
  assert.ok(trainable.every(([n]) => /\.(tenvoo|quanta)_weights\.\d$/.test(n)));
  assert.equal(set.numParameters, trainable.reduce((s, [, p]) => s + p.size, 0));
  assert.equal(set.numFrozenParameters, set.numAdapterParameters);

  const x = input();
  const target = randn(x.shape, { seed: 9 });
  const loss = scope(() => mseLoss(model.forward(x, TIMESTEPS), target));
  const grads = grad(loss, set.parameters());
  for (const [i, g] of grads.entries()) {
    const values = await g.toArray();
    const name = set.namedParameters()[i][0];
    assert.ok(values.some((v) => v !== 0) && values.every(Number.isFinite), `${name}: no gradient`);
  }
  // Base parameters do not require gradients, so backpropagation never reaches them.
  for (
    const name of ["conv_in.conv.weight", "down_blocks.0.resnets.0.conv1.conv.weight", "time_embed.2.bias"]
  ) {
    const p = model.namedParameters().find(([n]) => n === name)![1];
    assert.equal(p.requiresGrad, false, name);
    assert.throws(() => grad(loss, [p]), /does not depend/, name);
  }
  for (const g of grads) g.dispose();
  for (const t of [x, target, loss]) t.dispose();

  const text = adapterSummary(set);
  assert.match(text, /TenVOO-L adapter: rank 2/);
  assert.match(
    text,
    /down_blocks\.0\.resnets\.0\.conv1\.conv\s+conv3d 8→8 3³\s+tenvoo-l\s+2·2·2 \| 2·2·2\s+176/,
  );
  assert.match(text, new RegExp(`trainable total: ${set.numParameters.toLocaleString("en-US")} = `));
  set.remove();
  model.dispose();
});

gpuTest(
  "options: targets, skipped single-channel convs, norms, biases, joint modules, and errors",
  async () => {
    const model = unet();
    const hash = await modelHash(model);
    const trainableNames = () => model.namedParameters().filter(([, p]) => p.requiresGrad).map(([n]) => n);

    let set = await injectAdapters(model, {
      kind: "locon",
      rank: 2,
      targets: [/conv_in\.conv$/, "out\\.2\\.conv$", /downsampler/],
      baseHash: hash,
    });
    assert.deepEqual([...set.layers.keys()], ["down_blocks.0.downsampler.op.conv"]);
    assert.deepEqual(set.info.skipped, [
      { name: "conv_in.conv", reason: "one input channel" },
      { name: "out.2.conv", reason: "one output channel" },
    ]);
    set.remove();

    set = await injectAdapters(model, {
      kind: "loha",
      rank: 2,
      trainNorms: true,
      trainBiases: true,
      baseHash: hash,
    });
    const names = trainableNames();
    assert.ok(names.includes("down_blocks.0.resnets.0.norm1.weight") && names.includes("out.0.bias"));
    assert.ok(names.includes("down_blocks.0.resnets.0.conv1.conv.bias"));
    assert.ok(!names.includes("down_blocks.0.resnets.0.conv1.conv.weight"));
    assert.ok(!names.includes("conv_in.conv.bias"));
    set.remove();

    set = await injectAdapters(model, {
      kind: "lokr",
      rank: 2,
      jointModules: ["downsampler", "^conv_in"],
      baseHash: hash,
    });
    assert.deepEqual(
      trainableNames().filter((n) => !/lokr_/.test(n)),
      [
        "conv_in.conv.weight",
        "conv_in.conv.bias",
        "down_blocks.0.downsampler.op.conv.weight",
        "down_blocks.0.downsampler.op.conv.bias",
      ],
    );
    set.remove();

    const fails: Array<[Record<string, unknown>, RegExp]> = [
      [
        { kind: "lora", rank: 2 },
        /kind must be one of locon, loha, lokr, tenvoo-l, tenvoo-q, quanta; got "lora"/,
      ],
      [{ kind: "locon", rank: 0 }, /rank must be a positive integer, got 0/],
      [
        { kind: "locon", rank: 2, targets: ["to_q", "no_such_layer"] },
        /pattern\(s\) no_such_layer match no layer/,
      ],
      [{ kind: "locon", rank: 2, targets: ["("] }, /not a regular expression/],
    ];
    for (const [opts, message] of fails) {
      await assert.rejects(() => injectAdapters(model, { baseHash: hash, ...opts } as never), message);
    }
    set = await injectAdapters(model, { kind: "locon", rank: 2, baseHash: hash });
    await assert.rejects(() => injectAdapters(model, { kind: "locon", rank: 2 }), /already has adapters/);
    set.remove();
    model.dispose();
  },
);

gpuTest(
  "joint fine-tuning with the training loop: cores and other layers train, adapted weights stay",
  async () => {
    const model = unet();
    const set = await injectAdapters(model, { kind: "tenvoo-q", rank: 2, jointModules: true });
    const adaptedWeights = [...set.layers.values()].map((l) => l.weight);
    for (const [name, p] of model.namedParameters()) {
      const inAdapted = [...set.layers.keys()].some((l) => name.startsWith(`${l}.`));
      const isCore = /tenvoo_weights\.|quanta_weights\./.test(name);
      // Adapted layers: only the cores train. Everything else (conv_in, downsampler, skips, norms, …) trains.
      assert.equal(p.requiresGrad, inAdapted ? isCore : true, name);
    }
    const before = await snapshot(model);
    const dir = await Deno.makeTempDir();
    try {
      const x = input();
      const x0 = await x.toArray();
      x.dispose();
      await train(model, new DDPMScheduler(), () => ({ x0: tensor(x0, [2, 1, 8, 8, 8]) }), {
        steps: 1,
        lr: 1e-3,
        warmupSteps: 1,
        emaDecay: 0,
        outDir: dir,
        progress: false,
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    const after = await snapshot(model);
    const changed = (name: string) => maxAbsDiff(after.get(name)!, before.get(name)!) > 0;
    assert.ok(changed("conv_in.conv.weight") && changed("down_blocks.0.downsampler.op.conv.weight"));
    assert.ok(changed("down_blocks.0.resnets.0.conv1.conv.tenvoo_weights.3"));
    assert.ok(changed("time_embed.2.quanta_weights.1"));
    for (const [name, p] of model.namedParameters()) {
      if (adaptedWeights.includes(p) || /weights2\./.test(name)) {
        assert.ok(
          !changed(name),
          `${name} must stay frozen`,
        );
      }
    }
    set.remove();
    model.dispose();
  },
);

gpuTest(
  "save → load onto the same base reproduces the adapted model; another base model is refused",
  async () => {
    const path = await Deno.makeTempFile({ suffix: ".safetensors" });
    const other = await Deno.makeTempFile({ suffix: ".safetensors" });
    try {
      const model = unet();
      const x = input();
      const set = await injectAdapters(model, {
        kind: "tenvoo-l",
        rank: 2,
        trainNorms: true,
        jointModules: [/downsampler/],
        seed: 3,
      });
      await perturb(set, 8); // cores and the norm parameters trained along
      const adapted = await run(model, x);
      await set.save(path);
      const info = await readAdapterInfo(path);
      assert.equal(info.kind, "tenvoo-l");
      assert.equal(info.baseHash, set.baseHash);
      assert.deepEqual(info.layers.map((l) => l.name), [...set.layers.keys()]);
      assert.equal(adapterSummary(info), adapterSummary(set));
      set.remove();
      model.dispose();

      // The file holds the cores, their frozen copies, the norms and the downsampler (joint) — nothing else.
      const stored = [...parseSafetensors(await Deno.readFile(path)).tensors.keys()];
      const allowed =
        /\.(tenvoo|quanta)_weights2?\.\d$|norm\d?\.(weight|bias)$|^out\.0\.|downsampler\.op\.conv\./;
      assert.deepEqual(stored.filter((n) => !allowed.test(n)), []);
      assert.ok(stored.includes("down_blocks.0.downsampler.op.conv.weight"));
      assert.equal(info.jointModules.toString(), "/downsampler/");
      assert.equal(
        stored.filter((n) => /weights2\./.test(n)).length,
        stored.filter((n) => /_weights\./.test(n)).length,
      );

      const fresh = unet();
      const loaded = await loadAdapters(fresh, path);
      assert.deepEqual(await run(fresh, x), adapted, "the loaded adapter computes exactly what was saved");
      assert.equal(
        loaded.numParameters,
        info.layers.reduce((n, l) => n + l.numParameters, 0) +
          info.trainedBase.reduce((n, p) => n + p.size, 0),
      );
      assert.ok(loaded.parameters().every((p) => p.requiresGrad), "a loaded adapter can keep training");
      loaded.merge();
      assertClose(await run(fresh, x), adapted, { rtol: 1e-4, atol: 1e-4, name: "loaded and merged" });
      await assert.rejects(() => loadAdapters(fresh, path), /already has adapters/);
      loaded.remove();
      fresh.dispose();

      const different = unet(1);
      await assert.rejects(
        () => loadAdapters(different, path),
        /was trained on another base model \(base hash/,
      );
      // Refused before anything changed: no adapter layer, no parameter frozen.
      assert.ok(!different.namedModules().some(([, m]) => m instanceof AdaptedLayer));
      assert.ok(different.namedParameters().every(([, p]) => p.requiresGrad));
      await saveSafetensors(other, new Map(different.namedParameters().slice(0, 2)));
      await assert.rejects(() => loadAdapters(different, other), /not a voxgen adapter/);
      different.dispose();
      x.dispose();
    } finally {
      await Deno.remove(path);
      await Deno.remove(other);
    }
  },
);
