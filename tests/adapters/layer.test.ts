/**
 * One adapted layer against a float64 reference: forward values, gradients of every core by central finite
 * differences of the reference (ΔW by plain einsum / matmul / Kronecker loops, then the reference conv or
 * linear), merge = unmerged forward, and unmerge restoring the weight.
 */

import assert from "node:assert/strict";
import { grad, mul, sum } from "../../mod.ts";
import type { AdapterKind } from "../../adapters/mod.ts";
import { createMethod } from "../../adapters/inject.ts";
import { AdaptedLayer } from "../../adapters/layer.ts";
import type { LayerMethod } from "../../adapters/method.ts";
import { TENVOO_SPECS } from "../../adapters/tenvoo.ts";
import { QUANTA_SPEC } from "../../adapters/quanta.ts";
import { noGrad } from "../../engine/autograd.ts";
import { copyInto } from "../../engine/ops/map.ts";
import * as R from "../../engine/reference/mod.ts";
import { ConvNd } from "../../nn/conv.ts";
import { seededRandom } from "../../nn/init.ts";
import { Linear } from "../../nn/linear.ts";
import { assertClose, maxAbsDiff } from "../helpers/check.ts";
import { numericGrad } from "../helpers/gradcheck.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";

// --- Float64 reference of ΔW -----------------------------------------------------------------------------

/** TenVOO's contractions with the paper's output order (i0 i1 i2 kD kH kW o0 o1 o2). */
const PAPER_SPECS = {
  "tenvoo-l": TENVOO_SPECS["tenvoo-l"].replace("->ABCabcxyz", "->abcxyzABC"),
  "tenvoo-q": TENVOO_SPECS["tenvoo-q"].replace("->ABCabcxyz", "->abcxyzABC"),
};
/** Cheap orders around the ring of rank bonds. */
const ORDERS = { "tenvoo-l": [0, 7, 1, 2, 3, 9, 4, 8, 5, 6], "tenvoo-q": [0, 8, 1, 2, 9, 7, 3, 4, 5, 6] };

/** ΔW (unscaled) of `m` from reference cores, in the layout [O, I, …kernel], computed independently. */
function refDelta(m: LayerMethod, weightShape: number[], cores: R.RefTensor[]): R.RefTensor {
  const [O, I, ...kernel] = weightShape;
  const k = kernel.reduce((a, b) => a * b, 1);
  switch (m.kind) {
    case "tenvoo-l":
    case "tenvoo-q": {
      // The paper's code: (i0, i1, i2, kD, kH, kW, o0, o1, o2) → reshape (Cin, kD, kH, kW, Cout) → permute.
      const full = R.einsumInOrder(PAPER_SPECS[m.kind], cores, ORDERS[m.kind]);
      const k3 = kernel.length === 3 ? kernel : [1, ...kernel];
      const w = R.permute(R.reshape(full, [I, ...k3, O]), [4, 0, 1, 2, 3]);
      return R.reshape(w, weightShape);
    }
    case "quanta":
      return R.reshape(R.einsum(QUANTA_SPEC, ...cores), weightShape);
    case "locon":
      return R.reshape(
        R.matmul(R.reshape(cores[1], [O, -1]), R.reshape(cores[0], [cores[0].shape[0], -1])),
        weightShape,
      );
    case "loha": {
      const [w1a, w1b, w2a, w2b] = cores;
      const a = R.matmul(w1a, w1b);
      const b = R.matmul(w2a, w2b);
      return R.reshape({ shape: a.shape, data: a.data.map((v, i) => v * b.data[i]) }, weightShape);
    }
    case "lokr": {
      const w1 = R.matmul(cores[0], cores[1]);
      const w2 = R.matmul(cores[2], cores[3]);
      const [l, p] = w1.shape;
      const [mm, qk] = w2.shape;
      const out = new Float64Array(O * I * k);
      for (let a = 0; a < l; a++) {
        for (let b = 0; b < mm; b++) {
          for (let c = 0; c < p; c++) {
            for (let d = 0; d < qk; d++) {
              out[(a * mm + b) * (p * qk) + c * qk + d] = w1.data[a * p + c] * w2.data[b * qk + d];
            }
          }
        }
      }
      return { shape: [...weightShape], data: out };
    }
  }
}

// --- Harness -----------------------------------------------------------------------------------------------

interface Case {
  name: string;
  kind: AdapterKind;
  /** The layer to adapt. */
  base: () => ConvNd | Linear;
  /** Input shape. */
  input: number[];
  rank: number;
}

const CASES: Case[] = [
  ...(["locon", "loha", "lokr", "tenvoo-l", "tenvoo-q", "quanta"] as const).map((kind) => ({
    name: `${kind} on Conv3d(4 → 6, k3, pad 1)`,
    kind,
    base: () => new ConvNd(3, 4, 6, { padding: 1, seed: 3 }),
    input: [2, 4, 5, 4, 3],
    rank: 2,
  })),
  {
    name: "tenvoo-q on Conv3d(6 → 4, k3, stride 2, pad 1)",
    kind: "tenvoo-q",
    base: () => new ConvNd(3, 6, 4, { padding: 1, stride: 2, seed: 4 }),
    input: [2, 6, 5, 5, 4],
    rank: 2,
  },
  {
    name: "tenvoo-l on Conv2d(4 → 6, k3, pad 1) (kD = 1)",
    kind: "tenvoo-l",
    base: () => new ConvNd(2, 4, 6, { padding: 1, seed: 5 }),
    input: [3, 4, 5, 6],
    rank: 2,
  },
  {
    name: "QuanTA (equal factors, full gates) on Linear(8 → 8)",
    kind: "quanta",
    base: () => new Linear(8, 8, { seed: 6 }),
    input: [3, 5, 8],
    rank: 2,
  },
  {
    name: "TenVOO's QuanTA (unequal factors, rank 3) on Linear(12 → 8)",
    kind: "tenvoo-l",
    base: () => new Linear(12, 8, { seed: 7 }),
    input: [4, 12],
    rank: 3,
  },
  {
    name: "loha on Linear(12 → 8)",
    kind: "loha",
    base: () => new Linear(12, 8, { seed: 8 }),
    input: [4, 12],
    rank: 2,
  },
];

/** The adapted layer with every core set to random values (so ΔW ≠ 0 and no factor is zero). */
function adaptedLayer(c: Case, seed: number): { layer: AdaptedLayer; cores: R.RefTensor[] } {
  const base = c.base();
  const [out, inn, ...kernel] = base.weight.shape;
  const method = createMethod(c.kind, { out, in: inn, kernel }, {
    rank: c.rank,
    scale: 0.7,
    random: seededRandom(seed),
  });
  const layer = new AdaptedLayer(base, method);
  const cores = layer.cores.map((t, i) => R.roundToF32(R.randomRef(t.shape, seed * 100 + i)));
  noGrad(() =>
    layer.cores.forEach((t, i) => {
      const v = fromRef(cores[i]);
      copyInto(t, v);
      v.dispose();
    })
  );
  return { layer, cores };
}

/** Reference forward of the adapted layer for the given trainable cores. */
async function referenceOf(
  layer: AdaptedLayer,
): Promise<(x: R.RefTensor, cores: R.RefTensor[]) => R.RefTensor> {
  const w = await toRef(layer.weight);
  const b = layer.bias ? await toRef(layer.bias) : null;
  const frozen = await Promise.all(layer.frozenCores.map(toRef));
  const m = layer.method;
  const deltaStar = frozen.length > 0 ? refDelta(m, w.shape, frozen) : null;
  const base = layer.base;
  return (x, cores) => {
    const d = refDelta(m, w.shape, cores);
    const weff = {
      shape: w.shape,
      data: w.data.map((v, i) => v + m.scale * (d.data[i] - (deltaStar?.data[i] ?? 0))),
    };
    if (base instanceof Linear) {
      const y = R.matmul(x, R.transpose(weff));
      return b ? { shape: y.shape, data: y.data.map((v, i) => v + b.data[i % b.data.length]) } : y;
    }
    const opts = { stride: base.stride, padding: base.padding };
    return base.spatialDims === 3 ? R.conv3d(x, weff, b, opts) : R.conv2d(x, weff, b, opts);
  };
}

function rms(t: R.RefTensor): number {
  return Math.sqrt(t.data.reduce((s, v) => s + v * v, 0) / t.data.length);
}

for (const [n, c] of CASES.entries()) {
  gpuTest(`${c.name}: forward and the gradient of every core vs float64 finite differences`, async () => {
    const { layer, cores } = adaptedLayer(c, 11 + n);
    const reference = await referenceOf(layer);
    const xRef = R.roundToF32(R.randomRef(c.input, 900 + n));
    const x = fromRef(xRef);
    const y = layer.forward(x);
    const expected = reference(xRef, cores);
    const scale = rms(expected);
    // Each output sums ≤ I·27 products with a weight that is itself a contraction of up to 10 cores (f32
    // through a few matmuls): relative errors ~1e-6 of the typical magnitude.
    assertClose(await toRef(y), expected, { rtol: 1e-4, atol: 1e-5 * scale, name: `${c.name} forward` });

    const gOut = R.roundToF32(R.randomRef(expected.shape, 77));
    const g = fromRef(gOut);
    const weighted = mul(y, g);
    const loss = sum(weighted);
    const grads = grad(loss, layer.cores);
    // The base weight and the frozen copy are frozen: no gradient reaches them.
    assert.throws(() => grad(loss, [layer.weight]), /does not depend/);
    for (const f of layer.frozenCores) assert.throws(() => grad(loss, [f]), /does not depend/);
    try {
      for (let i = 0; i < cores.length; i++) {
        // L is linear in each core, so a large step is exact up to rounding.
        const numeric = numericGrad((cs) => reference(xRef, cs), cores, i, gOut, 1e-2);
        const gScale = rms(numeric);
        assert.ok(gScale > 0, `${c.name}: core ${i} has a zero reference gradient`);
        assertClose(await toRef(grads[i]), numeric, {
          rtol: 2e-3,
          atol: 2e-4 * gScale,
          name: `${c.name} d/d core ${i} ${JSON.stringify(cores[i].shape)}`,
        });
      }
    } finally {
      disposeAll(x, y, g, weighted, loss, grads);
      layer.disposeAdapter();
      layer.base.dispose();
    }
  });
}

gpuTest(
  "every kind: merged forward = unmerged forward; unmerge restores the weight; merge(amount) scales",
  async () => {
    for (const [n, c] of CASES.entries()) {
      const { layer } = adaptedLayer(c, 40 + n);
      const x = fromRef(R.roundToF32(R.randomRef(c.input, 500 + n)));
      const w0 = await toRef(layer.weight);
      const unmerged = layer.forward(x);
      const deltaT = layer.delta();
      const delta = await toRef(deltaT);
      deltaT.dispose();
      const expectUnmerged = await toRef(unmerged);
      layer.merge();
      assert.ok(layer.merged);
      const merged = noGrad(() => layer.forward(x));
      // Same weights summed in another order: W + (s·(Δ − Δ*)) rounded once more than in the fused kernel.
      assertClose(await toRef(merged), expectUnmerged, {
        rtol: 1e-4,
        atol: 1e-5 * rms(expectUnmerged),
        name: `${c.name}: merged vs unmerged`,
      });
      layer.unmerge();
      // W + Δ − Δ in f32: within an ulp or two of |W| + |Δ|.
      const bound = 4 * 2 ** -23 * Math.max(...w0.data.map((v, i) => Math.abs(v) + Math.abs(delta.data[i])));
      assert.ok(maxAbsDiff(await toRef(layer.weight), w0) <= bound, `${c.name}: unmerge restores W`);
      layer.merge(0.5);
      const half = await toRef(layer.weight);
      assertClose(half, { shape: w0.shape, data: w0.data.map((v, i) => v + 0.5 * delta.data[i]) }, {
        rtol: 1e-6,
        atol: bound,
        name: `${c.name}: merge(0.5)`,
      });
      assert.throws(() => layer.merge(), /already merged/);
      layer.unmerge();
      assert.throws(() => layer.unmerge(), /not merged/);
      disposeAll(x, unmerged, merged);
      layer.disposeAdapter();
      layer.base.dispose();
    }
  },
);

gpuTest("adapted layers check their input with the layer's shape in the message", () => {
  const { layer } = adaptedLayer(CASES[3], 5);
  const x = fromRef(R.randomRef([1, 5, 4, 4, 4], 1));
  assert.throws(
    () => layer.forward(x),
    /Conv3d\(4 → 6\) \+ tenvoo-l: input \[1, 5, 4, 4, 4\] must be \[N, 4/,
  );
  x.dispose();
  layer.disposeAdapter();
  layer.base.dispose();
});
