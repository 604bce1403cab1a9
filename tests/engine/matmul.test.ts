/**
 * matmul against the float64 reference: odd sizes, batches with broadcasting, 1-D operands, transposed and
 * offset views, grids past 65 tiles, and gradients against the closed forms g·Bᵀ and Aᵀ·g. Every case runs
 * through both kernel families (the general tiled kernel and the K-chunk kernel used on software adapters).
 */

import * as V from "../../mod.ts";
import * as R from "../../engine/reference/mod.ts";
import { randomRef, type RefTensor, roundToF32 } from "../../engine/reference/mod.ts";
import { matmulSettings } from "../../kernels/matmul.ts";
import { assertClose } from "../helpers/check.ts";
import { disposeAll, fromRef, gpuTest, toRef } from "../helpers/gpu.ts";

const F32_EPS = 2 ** -23;
const PATHS = ["tiled", "chunk"] as const;

/** Runs `fn` with the engine forced onto one matmul kernel family. */
async function withPath(path: typeof matmulSettings.path, fn: () => Promise<void>): Promise<void> {
  const saved = matmulSettings.path;
  matmulSettings.path = path;
  try {
    await fn();
  } finally {
    matmulSettings.path = saved;
  }
}

function abs(x: RefTensor): RefTensor {
  return { shape: [...x.shape], data: x.data.map(Math.abs) };
}

/**
 * Tolerance for an f32 matmul with inner size K. Each output is a sum of K products accumulated in f32; the
 * rounding errors behave like a random walk, so the error is about √K·ε·Σₖ|aᵢₖ·bₖⱼ| (ε = 2⁻²³), not K·ε
 * (the worst case). Cancellation can make the result itself tiny, so the bound is absolute, scaled by the
 * largest Σₖ|aᵢₖ|·|bₖⱼ| of the case (computed with the reference on |A| and |B|), with a factor 8 of margin.
 */
function tolerance(a: RefTensor, b: RefTensor, K: number): { rtol: number; atol: number } {
  const mag = R.matmul(abs(a), abs(b)).data.reduce((m, v) => Math.max(m, v), 0);
  const scale = 8 * Math.sqrt(Math.max(K, 1)) * F32_EPS;
  return { rtol: scale, atol: scale * Math.max(mag, 1e-30) };
}

/** Uploads `r`, optionally as a transposed view of a transposed copy (same values, strided layout). */
function upload(
  r: RefTensor,
  transposed: boolean,
  requiresGrad = false,
): { leaf: V.Tensor; input: V.Tensor } {
  if (transposed && r.shape.length >= 2) {
    const leaf = fromRef(R.transpose(r), { requiresGrad });
    return { leaf, input: V.transpose(leaf) };
  }
  const leaf = fromRef(r, { requiresGrad });
  return { leaf, input: leaf };
}

async function checkForward(
  name: string,
  aShape: number[],
  bShape: number[],
  opts: { ta?: boolean; tb?: boolean; seed?: number } = {},
): Promise<void> {
  const seed = opts.seed ?? aShape.length * 31 + bShape[0];
  const a = roundToF32(randomRef(aShape, seed));
  const b = roundToF32(randomRef(bShape, seed + 1));
  const A = upload(a, opts.ta ?? false);
  const B = upload(b, opts.tb ?? false);
  const y = V.matmul(A.input, B.input);
  try {
    const K = aShape[aShape.length - 1];
    assertClose(await toRef(y), R.matmul(a, b), { ...tolerance(a, b, K), name });
  } finally {
    disposeAll(y, A.leaf, B.leaf, A.input === A.leaf ? null : A.input, B.input === B.leaf ? null : B.input);
  }
}

const ODD = [1, 3, 37, 257];

for (const path of PATHS) {
  gpuTest(`matmul (${path}): odd sizes 1, 3, 37, 257 in every M/K/N combination`, async () => {
    await withPath(path, async () => {
      for (const M of ODD) {
        for (const K of ODD) {
          for (const N of ODD) {
            if (M * K * N > 257 * 257 * 37) continue; // the 257³ corner adds time, not coverage
            await checkForward(`${path} [${M}, ${K}] × [${K}, ${N}]`, [M, K], [K, N], {
              seed: M + 7 * K + 13 * N,
            });
          }
        }
      }
    });
  });

  gpuTest(`matmul (${path}): transposed operands and offset views`, async () => {
    await withPath(path, async () => {
      for (const [M, K, N] of [[37, 41, 29], [64, 96, 130], [5, 257, 3]]) {
        for (const [ta, tb] of [[true, false], [false, true], [true, true]]) {
          await checkForward(`${path} ta=${ta} tb=${tb} [${M}, ${K}] × [${K}, ${N}]`, [M, K], [K, N], {
            ta,
            tb,
          });
        }
      }
      // Slices: an odd element offset, row strides not multiples of 4, and a column stride of 2.
      const a = roundToF32(randomRef([40, 70], 5));
      const b = roundToF32(randomRef([70, 90], 6));
      const A = fromRef(a);
      const B = fromRef(b);
      const As = V.slice(A, [3, 1], [40, 66]);
      const Bs = V.slice(B, [1, 5], [66, 83], [1, 2]);
      const y = V.matmul(As, Bs);
      try {
        const aRef = R.slice(a, [3, 1], [40, 66]);
        const bRef = R.slice(b, [1, 5], [66, 83], [1, 2]);
        assertClose(await toRef(y), R.matmul(aRef, bRef), {
          ...tolerance(aRef, bRef, 65),
          name: `${path} slices`,
        });
      } finally {
        disposeAll(y, As, Bs, A, B);
      }
    });
  });

  gpuTest(`matmul (${path}): batches with broadcasting, and 1-D operands`, async () => {
    await withPath(path, async () => {
      await checkForward(`${path} [2, 1, 37, 19] × [3, 19, 41]`, [2, 1, 37, 19], [3, 19, 41]);
      await checkForward(`${path} [2, 3, 17, 64] × [64, 33]`, [2, 3, 17, 64], [64, 33]);
      await checkForward(`${path} [40, 33] × [4, 33, 70]`, [40, 33], [4, 33, 70]);
      await checkForward(`${path} [3, 1, 2, 5] × [1, 4, 5, 7] (transposed)`, [3, 1, 2, 5], [1, 4, 5, 7], {
        ta: true,
        tb: true,
      });
      await checkForward(`${path} [37] × [37, 20]`, [37], [37, 20]);
      await checkForward(`${path} [20, 37] × [37]`, [20, 37], [37]);
      await checkForward(`${path} [37] × [37]`, [37], [37]);
      await checkForward(`${path} [2, 5, 37] × [37]`, [2, 5, 37], [37]);
      await checkForward(`${path} [37] × [3, 37, 6]`, [37], [3, 37, 6]);
    });
  });

  gpuTest(`matmul (${path}): grids past 65 tiles in rows and columns`, async () => {
    await withPath(path, async () => {
      // 65 tiles of the tiled kernel (64) and of the chunk kernel's columns (256) / rows (32), plus a remainder.
      await checkForward(`${path} wide`, [2, 19], [19, 65 * 256 + 3]);
      await checkForward(`${path} tall`, [65 * 64 + 5, 21], [21, 3]);
    });
  });

  gpuTest(`matmul (${path}): gradients of sum(matmul(a, b) * r) match g·Bᵀ and Aᵀ·g`, async () => {
    await withPath(path, async () => {
      const cases: Array<{ a: number[]; b: number[]; ta?: boolean; tb?: boolean }> = [
        { a: [37, 45], b: [45, 29] },
        { a: [64, 70], b: [70, 96], ta: true, tb: true },
        { a: [2, 1, 13, 35], b: [3, 35, 40] },
        { a: [35], b: [35, 9] },
        { a: [9, 35], b: [35] },
      ];
      for (const [i, c] of cases.entries()) {
        const name = `${path} grad ${JSON.stringify(c.a)} × ${JSON.stringify(c.b)}${c.ta ? " (views)" : ""}`;
        const a = roundToF32(randomRef(c.a, 100 + i));
        const b = roundToF32(randomRef(c.b, 200 + i));
        const A = upload(a, c.ta ?? false, true);
        const B = upload(b, c.tb ?? false, true);
        const y = V.matmul(A.input, B.input);
        const r = roundToF32(randomRef([...y.shape], 300 + i));
        const rt = fromRef(r);
        const prod = V.mul(y, rt);
        const loss = V.sum(prod);
        const [ga, gb] = V.grad(loss, [A.input, B.input]);
        try {
          const [expA, expB] = referenceGrads(a, b, r);
          // Each gradient entry is itself a sum over N (for A) or M (for B) f32 products.
          const Kb = c.b.length === 1 ? 1 : c.b[c.b.length - 1];
          const Ka = c.a.length === 1 ? 1 : c.a[c.a.length - 2];
          assertClose(await toRef(ga), expA, {
            ...tolerance(a, b, Kb * 4),
            atol: 1e-5 * Kb,
            name: `${name} dA`,
          });
          assertClose(await toRef(gb), expB, {
            ...tolerance(a, b, Ka * 4),
            atol: 1e-5 * Ka,
            name: `${name} dB`,
          });
        } finally {
          disposeAll(ga, gb, loss, prod, rt, y, A.leaf, B.leaf);
          if (A.input !== A.leaf) A.input.dispose();
          if (B.input !== B.leaf) B.input.dispose();
        }
      }
    });
  });
}

/** Opt-in (its pipeline takes tens of seconds to compile the first time): VOXGEN_TEST_LARGE_MATMUL=1. */
function largeEnabled(): boolean {
  try {
    return Deno.env.get("VOXGEN_TEST_LARGE_MATMUL") === "1";
  } catch {
    return false;
  }
}

if (largeEnabled()) {
  gpuTest("matmul (chunk-large): odd sizes, batches and transposed operands", async () => {
    await withPath("chunk-large", async () => {
      await checkForward("large [70, 200] × [200, 1030]", [70, 200], [200, 1030]);
      await checkForward("large [2, 1, 65, 130] × [3, 130, 777]", [2, 1, 65, 130], [3, 130, 777]);
      await checkForward("large transposed [67, 300] × [300, 1025]", [67, 300], [300, 1025], {
        ta: true,
        tb: true,
      });
      await checkForward("large [1, 3] × [3, 1]", [1, 3], [3, 1]);
    });
  });
}

/**
 * dL/dA and dL/dB of L = Σ matmul(a, b) ⊙ r by the closed forms g·Bᵀ and Aᵀ·g (g = r), with 1-D operands
 * promoted like NumPy and broadcast batch dimensions summed out.
 */
function referenceGrads(a: RefTensor, b: RefTensor, r: RefTensor): [RefTensor, RefTensor] {
  const a2 = a.shape.length === 1 ? R.reshape(a, [1, a.shape[0]]) : a;
  const b2 = b.shape.length === 1 ? R.reshape(b, [b.shape[0], 1]) : b;
  const outShape = R.matmul(a2, b2).shape;
  const g = R.reshape(r, outShape);
  const gaFull = R.matmul(g, R.transpose(b2)); // [...batch, M, K]
  const gbFull = R.matmul(R.transpose(a2), g); // [...batch, K, N]
  return [reduceTo(gaFull, a2.shape, a.shape), reduceTo(gbFull, b2.shape, b.shape)];
}

/** Sums `x` over the leading/broadcast dimensions down to `promoted`, then reshapes to `original`. */
function reduceTo(x: RefTensor, promoted: number[], original: number[]): RefTensor {
  const lead = x.shape.length - promoted.length;
  const axes: number[] = [];
  for (let i = 0; i < x.shape.length; i++) {
    if (i < lead || (promoted[i - lead] === 1 && x.shape[i] !== 1)) axes.push(i);
  }
  const s = axes.length ? R.sum(x, axes, true) : x;
  return R.reshape(s, original);
}

gpuTest("matmul: empty and K = 0 products", async () => {
  const a = V.zeros([3, 0]);
  const b = V.zeros([0, 4]);
  const c = V.matmul(a, b);
  const a0 = V.zeros([0, 5]);
  const b0 = V.zeros([5, 2]);
  const e = V.matmul(a0, b0);
  try {
    assertClose(await c.toArray(), new Float32Array(12), { name: "K = 0 gives zeros" });
    if (e.shape.join() !== "0,2") throw new Error(`empty product has shape ${e.shape}`);
  } finally {
    disposeAll(a, b, c, a0, b0, e);
  }
});
