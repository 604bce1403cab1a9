/**
 * SliceDiffusionUNet on tiny cases. Reference: with its slice attention at the identity, every slot must
 * get what MONAI's 2-D DiffusionModelUNet (itself checked against MONAI fixtures) computes with the same
 * weights on [slice, indicator], where condition slots hold their clean slice. With random weights
 * everywhere: condition slots are read from the clean slices only, padding slots cannot reach real ones,
 * slots are permutation-equivariant, relative positions are shift-invariant, and the absolute index
 * embedding does see the index.
 */

import { deepStrictEqual, ok, throws } from "node:assert";
import * as R from "../../engine/reference/mod.ts";
import type { RefTensor } from "../../engine/reference/mod.ts";
import { grad, mean, noGrad, scope, square, type Tensor, tensor } from "../../mod.ts";
import {
  SliceDiffusionUNet,
  type SliceInputs,
  type SliceUNetOptions,
  type SlotRole,
} from "../../models/slice_unet.ts";
import { DiffusionModelUNet } from "../../models/unet.ts";
import { assertClose, maxAbsDiff } from "../helpers/check.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";
import { loadRandom } from "./slice_helpers.ts";

const OPTIONS: SliceUNetOptions = {
  channels: [8, 16],
  attentionLevels: [false, true],
  numHeadChannels: 8,
  normNumGroups: 4,
  numResBlocks: 1,
};
const [B, T, C, H, W] = [2, 3, 1, 4, 4];
const ROLES: SlotRole[][] = [["condition", "target", "padding"], ["target", "target", "condition"]];
const INDICES = [[4, 6, 1], [0, 9, 3]];
const DEPTH = 12;

function inputs(seed: number): { x: RefTensor; clean: RefTensor } {
  return {
    x: R.roundToF32(R.randnRef([B, T, C, H, W], seed)),
    clean: R.roundToF32(R.randomRef([B, T, C, H, W], seed + 1)),
  };
}

/** Runs the model on reference inputs and returns the output as a reference tensor. */
async function run(
  net: SliceDiffusionUNet,
  x: RefTensor,
  clean: RefTensor,
  layout: Partial<SliceInputs> = {},
  t: number[] = [100, 700],
): Promise<RefTensor> {
  const [tx, tc] = [fromRef(x), fromRef(clean)];
  const y = noGrad(() =>
    net.forward(tx, t, { slices: { roles: ROLES, indices: INDICES, depth: DEPTH, clean: tc, ...layout } })
  );
  const out = await toRef(y);
  disposeAll(tx, tc, y);
  return out;
}

/** The values of slot (b, t) of a [B, T, …] tensor. */
function slot(x: RefTensor, b: number, t: number): Float64Array {
  const per = x.data.length / (x.shape[0] * x.shape[1]);
  const i = b * x.shape[1] + t;
  return x.data.slice(i * per, (i + 1) * per);
}

gpuTest(
  "with identity slice attention, each slot is the 2-D DiffusionModelUNet on [slice or clean slice, indicator]",
  async () => {
    const net = new SliceDiffusionUNet({ ...OPTIONS, seed: 3 });
    const params = loadRandom(net, 5, 0.4);
    // Back to the identity: the slice attentions' output projections and the index embedding's last layer.
    const zeros = new Map<string, Tensor>();
    for (const [name, p] of net.namedParameters()) {
      if (/slice_attentions?\.(\d+\.)?proj_out\.|^index_embed\.2\./.test(name)) {
        zeros.set(name, tensor(new Float32Array(p.size), p.shape));
      }
    }
    ok(zeros.size >= 6, `expected the zeroed layers, got ${[...zeros.keys()]}`);
    net.loadStateDict(zeros, { strict: false });
    disposeAll([...zeros.values()]);
    const unet = new DiffusionModelUNet({
      spatialDims: 2,
      inChannels: C + 1,
      outChannels: C,
      channels: OPTIONS.channels,
      attentionLevels: OPTIONS.attentionLevels,
      numResBlocks: 1,
      numHeadChannels: 8,
      normNumGroups: 4,
    });
    const spatial = new Map(
      [...net.stateDict()].filter(([k]) => !k.includes("slice_attention") && !k.startsWith("index_embed")),
    );
    const report = unet.loadStateDict(spatial);
    deepStrictEqual(report.missing, []);
    ok(params.size > spatial.size);

    const { x, clean } = inputs(7);
    const got = await run(net, x, clean);
    // The 2-D U-Net's input: per slot the noisy slice (the clean one for condition slots) and the indicator.
    const folded = new Float64Array(B * T * (C + 1) * H * W);
    const per = C * H * W;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const i = b * T + t;
        const cond = ROLES[b][t] === "condition";
        folded.set((cond ? clean : x).data.slice(i * per, (i + 1) * per), i * (per + H * W));
        folded.fill(cond ? 1 : 0, i * (per + H * W) + per, (i + 1) * (per + H * W));
      }
    }
    const input = fromRef({ shape: [B * T, C + 1, H, W], data: folded });
    const y = noGrad(() => unet.forward(input, [100, 100, 100, 700, 700, 700]));
    const expected = await toRef(y);
    disposeAll(input, y);
    ok(Math.max(...expected.data.map(Math.abs)) > 0.05, "the reference output is not trivially zero");
    // Same ops on the same shapes, in the same order: equal up to f32 rounding.
    assertClose(got.data, expected.data, { rtol: 1e-5, atol: 1e-5 });
    net.dispose();
    unet.dispose();
  },
);

/** A model with random weights everywhere (slice attention and index embedding active). */
function randomNet(opts: SliceUNetOptions = {}): SliceDiffusionUNet {
  const net = new SliceDiffusionUNet({ ...OPTIONS, ...opts });
  loadRandom(net, 9, 0.4);
  return net;
}

gpuTest(
  "condition slots are read from the clean slices: their noisy input does not matter, their clean slice does",
  async () => {
    const net = randomNet();
    const { x, clean } = inputs(11);
    const base = await run(net, x, clean);
    const noisyChanged = R.cloneRef(x);
    const cleanChanged = R.cloneRef(clean);
    const per = C * H * W;
    for (const i of [0, 5]) { // the condition slots (0, 0) and (1, 2)
      for (let j = 0; j < per; j++) {
        noisyChanged.data[i * per + j] = Math.fround(j % 3);
        cleanChanged.data[i * per + j] = Math.fround(-0.5 + (j % 2));
      }
    }
    const a = await run(net, noisyChanged, clean);
    assertClose(a.data, base.data, { rtol: 0, atol: 1e-6, name: "noisy condition input changed" });
    const b = await run(net, x, cleanChanged);
    // A target slot of each volume sees its condition slot through the slice attention.
    ok(maxAbsDiff(slot(b, 0, 1), slot(base, 0, 1)) > 1e-3, "target (0, 1) ignores its condition slot");
    ok(maxAbsDiff(slot(b, 1, 0), slot(base, 1, 0)) > 1e-3, "target (1, 0) ignores its condition slot");
    net.dispose();
  },
);

gpuTest("padding slots (contents and indices) cannot change the real slots' outputs", async () => {
  const net = randomNet();
  const { x, clean } = inputs(13);
  const base = await run(net, x, clean);
  const changed = R.cloneRef(x);
  const per = C * H * W;
  for (let j = 0; j < per; j++) changed.data[2 * per + j] = Math.fround(Math.cos(j) * 2); // slot (0, 2)
  const out = await run(net, changed, clean, { indices: [[4, 6, 11], [0, 9, 3]] });
  for (const [b, t] of [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]]) {
    assertClose(slot(out, b, t), slot(base, b, t), { rtol: 0, atol: 2e-6, name: `slot (${b}, ${t})` });
  }
  ok(maxAbsDiff(slot(out, 0, 2), slot(base, 0, 2)) > 1e-3, "the padding slot itself changed");
  net.dispose();
});

gpuTest("permuting the slots of a volume permutes its outputs", async () => {
  const net = randomNet();
  const { x, clean } = inputs(17);
  const base = await run(net, x, clean);
  const perm = [2, 0, 1]; // new slot i holds old slot perm[i]
  const permute = (r: RefTensor): RefTensor => {
    const out = R.cloneRef(r);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < T; i++) out.data.set(slot(r, b, perm[i]), (b * T + i) * C * H * W);
    }
    return out;
  };
  const roles = ROLES.map((row) => perm.map((p) => row[p]));
  const indices = INDICES.map((row) => perm.map((p) => row[p]));
  const out = await run(net, permute(x), permute(clean), { roles, indices });
  assertClose(out.data, permute(base).data, { rtol: 1e-4, atol: 1e-5 });
  net.dispose();
});

gpuTest(
  "relative positions only: shifting every index leaves the output unchanged; the absolute embedding sees it",
  async () => {
    const relative = randomNet({ absoluteIndexEmbedding: false });
    const absolute = randomNet();
    const { x, clean } = inputs(19);
    const shifted = { indices: INDICES.map((row) => row.map((i) => i + 2)), depth: DEPTH + 2 };
    const [r0, r1] = [await run(relative, x, clean), await run(relative, x, clean, shifted)];
    assertClose(r1.data, r0.data, { rtol: 1e-5, atol: 1e-6 });
    const [a0, a1] = [await run(absolute, x, clean), await run(absolute, x, clean, shifted)];
    ok(maxAbsDiff(a0.data, a1.data) > 1e-4, "the absolute index embedding had no effect");
    relative.dispose();
    absolute.dispose();
  },
);

gpuTest(
  "without slice attention every slot is denoised alone: a slot's output is what it gets as the only slot",
  async () => {
    const net = randomNet({ sliceAttention: false });
    ok(!net.namedParameters().some(([n]) => n.includes("slice_attention")), "slice attention weights exist");
    const { x, clean } = inputs(29);
    const roles: SlotRole[][] = [["target", "target", "target"], ["target", "target", "target"]];
    const t = [300, 800];
    const all = await run(net, x, clean, { roles }, t);
    for (let b = 0; b < B; b++) {
      for (let s = 0; s < T; s++) {
        const alone = R.ref(slot(x, b, s), [1, 1, C, H, W]);
        const tx = fromRef(alone);
        const y = noGrad(() =>
          net.forward(tx, [t[b]], {
            slices: { roles: [["target"]], indices: [[INDICES[b][s]]], depth: DEPTH },
          })
        );
        assertClose(slot(all, b, s), (await toRef(y)).data, {
          rtol: 1e-5,
          atol: 1e-5,
          name: `slot (${b}, ${s})`,
        });
        disposeAll(tx, y);
      }
    }
    // The index still matters (it is all the network knows of where the slice is).
    const moved = await run(net, x, clean, { roles, indices: [[5, 6, 1], [0, 9, 3]] }, t);
    ok(maxAbsDiff(slot(moved, 0, 0), slot(all, 0, 0)) > 1e-4, "the slice index had no effect");
    const [tx, tc] = [fromRef(x), fromRef(clean)];
    throws(
      () => net.forward(tx, t, { slices: { roles: ROLES, indices: INDICES, depth: DEPTH, clean: tc } }),
      /condition slots need slice attention/,
    );
    disposeAll(tx, tc);
    net.dispose();
  },
);

gpuTest("gradients of a target-slot loss reach the slice attention", async () => {
  const net = randomNet();
  const { x, clean } = inputs(23);
  const [tx, tc] = [fromRef(x), fromRef(clean)];
  const named = net.namedParameters().filter(([n]) =>
    n.includes("slice_attention") || n.startsWith("index_embed")
  );
  const grads = scope(() => {
    const y = net.forward(tx, [10, 900], {
      slices: { roles: ROLES, indices: INDICES, depth: DEPTH, clean: tc },
    });
    return grad(mean(square(y)), named.map(([, p]) => p));
  });
  for (const [i, g] of grads.entries()) {
    const values = await g.toArray();
    ok(values.every(Number.isFinite), `${named[i][0]}: non-finite gradient`);
    ok(values.some((v) => v !== 0), `${named[i][0]}: zero gradient`);
  }
  disposeAll(tx, tc, grads);
  net.dispose();
});

gpuTest("SliceDiffusionUNet explains bad options and inputs", () => {
  throws(
    () => new SliceDiffusionUNet({ channels: [8, 12], normNumGroups: 4, numHeadChannels: 8 }),
    /channels\[1\] = 12/,
  );
  throws(
    () => new SliceDiffusionUNet({ channels: [8], attentionLevels: [true, false] }),
    /one entry per level/,
  );
  const net = new SliceDiffusionUNet(OPTIONS);
  const x = tensor(new Float32Array(B * T * C * H * W), [B, T, C, H, W]);
  throws(() => net.forward(x, [1, 2]), /slot layout .* is required/);
  throws(
    () => net.forward(x, [1, 2], { slices: { roles: ROLES, indices: INDICES, depth: DEPTH } }),
    /condition slots need the clean slices/,
  );
  throws(
    () =>
      net.forward(x, [1, 2], {
        slices: { roles: [ROLES[0]], indices: [INDICES[0]], depth: DEPTH, clean: x },
      }),
    /slot layout is 1×3 .* but x is \[2, 3, 1, 4, 4\]/,
  );
  throws(
    () => net.forward(x, [1, 2], { slices: { roles: ROLES, indices: INDICES, depth: 5, clean: x } }),
    /slice indices must be in 0\.\.4/,
  );
  throws(
    () => net.forward(x, [1, 2, 3], { slices: { roles: ROLES, indices: INDICES, depth: DEPTH, clean: x } }),
    /one per volume \(2\)/,
  );
  x.dispose();
  net.dispose();
});
