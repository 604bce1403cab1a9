/**
 * Slice attention (nn/slice_attention.ts) against float64 references written from its formula, masks
 * included: the attention core with its gradients (finite differences on the reference), the whole block
 * with random weights, and the separation of real and padding slots.
 */

import { deepStrictEqual, throws } from "node:assert";
import * as R from "../../engine/reference/mod.ts";
import { noGrad, tensor } from "../../mod.ts";
import {
  relativeSliceAttention,
  SliceAttention,
  type SlotLayout,
  slotMask,
} from "../../nn/slice_attention.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";
import { checkOp } from "../helpers/opcheck.ts";
import { loadRandom, refSliceAttention, refSliceAttentionCore } from "./slice_helpers.ts";

// Two volumes of four slots: the first has a padding slot in the middle, the second two at the end.
const LAYOUT: SlotLayout = {
  roles: [["condition", "padding", "target", "target"], ["target", "condition", "padding", "padding"]],
  indices: [[3, 17, 5, 9], [0, 2, 30, 31]],
};

gpuTest("slotMask lets real slots see real slots and padding see padding, nothing across", async () => {
  const m = slotMask(LAYOUT);
  const values = await m.toArray();
  m.dispose();
  deepStrictEqual(m.shape, [2, 1, 1, 4, 4]);
  // Volume 0: slot 1 is padding.
  const row = (b: number, t: number) =>
    [...values.slice((b * 4 + t) * 4, (b * 4 + t + 1) * 4)].map((v) => v === 0);
  deepStrictEqual(row(0, 0), [true, false, true, true]);
  deepStrictEqual(row(0, 1), [false, true, false, false]);
  deepStrictEqual(row(1, 2), [false, false, true, true]);
  deepStrictEqual(row(1, 1), [true, true, false, false]);
});

gpuTest(
  "relativeSliceAttention matches its float64 formula, with gradients of q, k, v and all relative terms",
  async () => {
    const [B, P, H, T, d] = [2, 3, 2, 4, 3];
    const qkvShape = [B, P, H, T, d];
    const relShape = [B, T, T, H, d];
    const mask = R.ref(
      await (async () => {
        const m = slotMask(LAYOUT);
        const v = await m.toArray();
        m.dispose();
        return v;
      })(),
      [B, 1, 1, T, T],
    );
    await checkOp({
      name: "relativeSliceAttention",
      gpu: ([q, k, v, rq, rk, rv, m]) => relativeSliceAttention(q, k, v, { q: rq, k: rk, v: rv }, m),
      ref: ([q, k, v, rq, rk, rv]) => refSliceAttentionCore(q, k, v, rq, rk, rv, LAYOUT),
      inputs: [
        R.randomRef(qkvShape, 1, -1.5, 1.5),
        R.randomRef(qkvShape, 2, -1.5, 1.5),
        R.randomRef(qkvShape, 3),
        R.randomRef(relShape, 4),
        R.randomRef(relShape, 5),
        R.randomRef(relShape, 6),
        mask,
      ],
      // The mask is data, not differentiated. f32 scores and softmax: forward to ~1e-6 relative.
      gradWrt: [0, 1, 2, 3, 4, 5],
      rtol: 1e-5,
      atol: 1e-5,
    });
  },
);

gpuTest("relativeSliceAttention without relative terms is plain masked attention", async () => {
  const shape = [1, 2, 1, 4, 2];
  const q = R.randomRef(shape, 11), k = R.randomRef(shape, 12), v = R.randomRef(shape, 13);
  const layout: SlotLayout = { roles: [LAYOUT.roles[0]], indices: [LAYOUT.indices[0]] };
  const [tq, tk, tv] = [q, k, v].map((r) => fromRef(R.roundToF32(r)));
  const m = slotMask(layout);
  const y = relativeSliceAttention(tq, tk, tv, {}, m);
  const expected = refSliceAttentionCore(
    ...([q, k, v].map(R.roundToF32) as [R.RefTensor, R.RefTensor, R.RefTensor]),
    null,
    null,
    null,
    layout,
  );
  assertClose(await toRef(y), expected, { rtol: 1e-5, atol: 1e-6 });
  disposeAll(tq, tk, tv, m, y);
});

gpuTest("relativeSliceAttention rejects mismatched shapes with a clear error", () => {
  const q = tensor(new Float32Array(2 * 4 * 3), [1, 2, 1, 4, 3]);
  const bad = tensor(new Float32Array(4 * 4 * 2), [1, 4, 4, 1, 2]);
  throws(
    () => relativeSliceAttention(q, q, q, { k: bad }),
    /rel\.k \[1, 4, 4, 1, 2\] must be \[1, 4, 4, 1, 3\]/,
  );
  const mask = tensor(new Float32Array(16), [1, 4, 4]);
  throws(() => relativeSliceAttention(q, q, q, {}, mask), /mask \[1, 4, 4\] must be \[1, 1, 1, 4, 4\]/);
  disposeAll(q, bad, mask);
});

/** A SliceAttention with random weights (relative nets and proj_out included), its input and reference output. */
function blockCase(seed: number) {
  const [C, E, Hh, Ww, heads, groups] = [8, 6, 2, 3, 2, 4];
  const block = new SliceAttention(C, E, { numHeadChannels: C / heads, normNumGroups: groups });
  const params = loadRandom(block, seed);
  const x = R.roundToF32(R.randomRef([8, C, Hh, Ww], seed + 1, -2, 2));
  const temb = R.roundToF32(R.randomRef([8, E], seed + 2));
  const expected = refSliceAttention(params, "", x, temb, LAYOUT, heads, groups, 1e-6);
  return { block, x, temb, expected, heads, groups };
}

gpuTest(
  "SliceAttention (norm, qkv, relative nets, masked attention, proj_out, residual) matches its float64 reference",
  async () => {
    const { block, x, temb, expected } = blockCase(21);
    const [tx, te] = [fromRef(x), fromRef(temb)];
    const y = noGrad(() => block.forward(tx, te, LAYOUT));
    // f32 through GroupNorm, three small MLPs and a softmax: ~1e-6 relative, 1e-5 covers the sums.
    assertClose(await toRef(y), expected, { rtol: 1e-4, atol: 2e-5 });
    disposeAll(tx, te, y);
    block.dispose();
  },
);

gpuTest(
  "SliceAttention keeps real and padding slots apart: changing padding slots leaves real slots unchanged",
  async () => {
    const { block, x, temb } = blockCase(31);
    const changed = R.cloneRef(x);
    const per = x.data.length / 8;
    // Padding slots: volume 0 slot 1, volume 1 slots 2 and 3 (rows 1, 6, 7 of the folded batch).
    for (const row of [1, 6, 7]) {
      for (let i = 0; i < per; i++) changed.data[row * per + i] = Math.fround(Math.sin(i + row) * 3);
    }
    const padIndices: SlotLayout = { roles: LAYOUT.roles, indices: [[3, 2, 5, 9], [0, 2, 7, 1]] };
    const te = fromRef(temb);
    const [ta, tb] = [fromRef(x), fromRef(changed)];
    const [oa, ob] = noGrad(() => [block.forward(ta, te, LAYOUT), block.forward(tb, te, padIndices)]);
    const [ya, yb] = [await toRef(oa), await toRef(ob)];
    for (const row of [0, 2, 3, 4, 5]) {
      assertClose(yb.data.slice(row * per, (row + 1) * per), ya.data.slice(row * per, (row + 1) * per), {
        rtol: 0,
        atol: 1e-6,
        name: `real slot ${row}`,
      });
    }
    // …and the padding slots did change (the test would pass trivially otherwise).
    const d = Math.max(
      ...[1, 6, 7].flatMap((row) =>
        [...yb.data.slice(row * per, (row + 1) * per)].map((v, i) => Math.abs(v - ya.data[row * per + i]))
      ),
    );
    if (!(d > 0.1)) throw new Error(`padding slots barely changed (${d})`);
    disposeAll(ta, tb, te, oa, ob);
    block.dispose();
  },
);

gpuTest("a new SliceAttention is the identity (zero-initialised proj_out and relative nets)", async () => {
  const block = new SliceAttention(8, 4, { numHeadChannels: 4, normNumGroups: 4 });
  const x = fromRef(R.roundToF32(R.randomRef([8, 8, 2, 2], 41)));
  const temb = fromRef(R.roundToF32(R.randomRef([8, 4], 42)));
  const y = noGrad(() => block.forward(x, temb, LAYOUT));
  deepStrictEqual(await y.toArray(), await x.toArray());
  disposeAll(x, temb, y);
  block.dispose();
});

gpuTest("SliceAttention explains a wrong input layout", () => {
  const block = new SliceAttention(8, 4, { numHeadChannels: 4, normNumGroups: 4 });
  const x = tensor(new Float32Array(6 * 8 * 4), [6, 8, 2, 2]);
  const temb = tensor(new Float32Array(6 * 4), [6, 4]);
  throws(() => block.forward(x, temb, LAYOUT), /must be \[2·4, 8, H, W\] \(2 volumes of 4 slots\)/);
  throws(
    () => block.forward(x, temb, { roles: [["target", "oops" as "target"]], indices: [[0, 1]] }),
    /slot role "oops"/,
  );
  throws(() => new SliceAttention(8, 4, { numHeadChannels: 3 }), /divisible by numHeadChannels 3/);
  disposeAll(x, temb);
  block.dispose();
});
