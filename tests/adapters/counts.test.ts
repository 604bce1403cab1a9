/**
 * Parameter counts and factorisations (CPU only): the cores each method creates have exactly the sizes of
 * the published formulas, written out again here independently of the library.
 */

import assert from "node:assert/strict";
import { ADAPTER_KINDS, type AdapterKind, adapterParameterCount } from "../../adapters/mod.ts";
import { createMethod } from "../../adapters/inject.ts";
import { balancedFactors3, factorize2, factorize3, TENVOO_FACTORS } from "../../adapters/factorize.ts";
import type { WeightShape } from "../../adapters/method.ts";
import { seededRandom } from "../../nn/init.ts";

/** TenVOO's factorisations. */
const TABLE: Record<number, number[]> = {
  32: [4, 4, 2],
  64: [8, 4, 2],
  128: [8, 8, 2],
  256: [8, 8, 4],
  512: [16, 8, 4],
};

/** Eq. 6 of the TenVOO paper (kD = 1 for a 2-D kernel). */
function eq6(variant: "L" | "Q", inF: number[], outF: number[], k: number[], r: number): number {
  const [i0, i1, i2] = inF;
  const [o0, o1, o2] = outF;
  const [kD, kH, kW] = k.length === 3 ? k : [1, ...k];
  return variant === "L"
    ? r ** 2 * (i0 * i1 + o0 * o1) + r ** 3 * (i2 + o2 + kD + kH + kW + 1) + 2 * r ** 4
    : r ** 2 * (i0 * i1 + o0 * o1 + kH) + r ** 3 * (i2 + o2 + kD + kW) + 3 * r ** 4;
}

function coreCount(kind: AdapterKind, shape: WeightShape, rank: number): number {
  const method = createMethod(kind, shape, { rank, scale: 1, random: seededRandom(1) });
  return method.cores.reduce((n, c) => n + c.values.length, 0);
}

const conv = (inC: number, outC: number, k = 3, dims = 3): WeightShape => ({
  in: inC,
  out: outC,
  kernel: new Array(dims).fill(k),
});
const linear = (inF: number, outF: number): WeightShape => ({ in: inF, out: outF, kernel: [] });

Deno.test("TenVOO: the example 256→256, k = 3, r = 4 has 3712 (L) and 3760 (Q) trainable parameters", () => {
  assert.equal(coreCount("tenvoo-l", conv(256, 256), 4), 3712);
  assert.equal(coreCount("tenvoo-q", conv(256, 256), 4), 3760);
  assert.equal(adapterParameterCount("tenvoo-l", conv(256, 256), 4), 3712);
  assert.equal(adapterParameterCount("tenvoo-q", conv(256, 256), 4), 3760);
  // The frozen copy is not trainable and is not counted: 3712 out of the conv's 1,769,472 weights.
  assert.equal(256 * 256 * 27, 1769472);
});

Deno.test("TenVOO-L/Q: core sizes equal Eq. 6 for table, balanced and 2-D shapes at ranks 1, 2, 4, 6", () => {
  const shapes: Array<[number, number, number[]]> = [
    [32, 32, [3, 3, 3]],
    [32, 64, [3, 3, 3]],
    [128, 64, [3, 3, 3]],
    [512, 256, [3, 3, 3]],
    [64, 128, [1, 1, 1]],
    [40, 24, [3, 3, 3]], // 40 is not in the table: balanced 5·4·2
    [96, 32, [3, 3]], // 2-D: kD = 1
  ];
  for (const [inC, outC, kernel] of shapes) {
    for (const r of [1, 2, 4, 6]) {
      const inF = TABLE[inC] ?? [...factorize3(inC)];
      const outF = TABLE[outC] ?? [...factorize3(outC)];
      const shape = { in: inC, out: outC, kernel };
      assert.equal(coreCount("tenvoo-l", shape, r), eq6("L", inF, outF, kernel, r), `L ${inC}→${outC} r${r}`);
      assert.equal(coreCount("tenvoo-q", shape, r), eq6("Q", inF, outF, kernel, r), `Q ${inC}→${outC} r${r}`);
    }
  }
});

Deno.test("TenVOO: the ten core shapes are the reference implementation's", () => {
  const r = 3;
  const names = (kind: AdapterKind) =>
    createMethod(kind, conv(64, 128, 3), { rank: r, scale: 1, random: seededRandom(0) }).cores.map((c) =>
      c.shape
    );
  // 64 → (i0, i1, i2) = (8, 4, 2); 128 → (o0, o1, o2) = (8, 8, 2).
  const common = [[4, 8, r, r], [2, r, r, r], [3, r, r, r]];
  const tail = [[3, r, r, r], [2, r, r, r], [8, r, r, 8], [r, r, r, r], [r, r, r, r]];
  assert.deepEqual(names("tenvoo-l"), [...common, [3, r, r, r], ...tail, [r, r, r]]);
  assert.deepEqual(names("tenvoo-q"), [...common, [3, 1, r, r], ...tail, [r, r, r, r]]);
});

Deno.test("LoCon, LoHa, LoKr: core sizes equal their formulas for convolutions and linear layers", () => {
  const shapes = [
    conv(32, 32),
    conv(64, 128),
    conv(24, 40, 3, 2),
    conv(128, 256, 1),
    linear(128, 32),
    linear(96, 96),
  ];
  for (const shape of shapes) {
    const k = shape.kernel.reduce((a, b) => a * b, 1);
    for (const r of [1, 4, 8]) {
      const label = `${shape.in}→${shape.out} k${shape.kernel.join("x")} r${r}`;
      assert.equal(coreCount("locon", shape, r), r * (shape.in * k + shape.out), `LoCon ${label}`);
      assert.equal(coreCount("loha", shape, r), 2 * r * (shape.in * k + shape.out), `LoHa ${label}`);
      const [l, m] = factorize2(shape.out);
      const [p, q] = factorize2(shape.in);
      assert.equal(coreCount("lokr", shape, r), r * (l + p) + r * (m + q * k), `LoKr ${label}`);
      for (const kind of ["locon", "loha", "lokr"] as const) {
        assert.equal(adapterParameterCount(kind, shape, r), coreCount(kind, shape, r), `${kind} ${label}`);
      }
    }
  }
});

Deno.test("QuanTA: full gates for equal factorisations, rank-r wires otherwise", () => {
  // 512 = 16·8·4 on both sides: (8·4)² + (16·4)² + (16·8)², independent of the rank.
  for (const r of [2, 4]) {
    assert.equal(coreCount("quanta", linear(512, 512), r), 32 ** 2 + 64 ** 2 + 128 ** 2);
  }
  // 128 → 256: (8, 8, 2) → (8, 8, 4): r²(i1i2 + i0o2 + o0o1).
  assert.equal(coreCount("quanta", linear(128, 256), 4), 16 * (8 * 2 + 8 * 4 + 8 * 8));
  // TenVOO kinds use QuanTA on linear layers.
  assert.equal(coreCount("tenvoo-l", linear(128, 256), 4), 16 * (8 * 2 + 8 * 4 + 8 * 8));
  assert.equal(coreCount("tenvoo-q", linear(64, 64), 4), (4 * 2) ** 2 + (8 * 2) ** 2 + (8 * 4) ** 2);
  // A convolution with the "quanta" kind is the matrix [O, I·k]: 32·27 = 864 = 12·9·8 (balanced).
  assert.deepEqual([...factorize3(864)], [12, 9, 8]);
  assert.equal(coreCount("quanta", conv(32, 32), 2), 4 * (9 * 8 + 12 * 2 + 4 * 4));
  for (const shape of [linear(512, 512), linear(128, 256), conv(32, 32)]) {
    assert.equal(adapterParameterCount("quanta", shape, 2), coreCount("quanta", shape, 2));
  }
});

Deno.test("every kind: the frozen copy exists exactly for TenVOO and QuanTA", () => {
  for (const kind of ADAPTER_KINDS) {
    const m = createMethod(kind, conv(32, 64), { rank: 2, scale: 1, random: seededRandom(0) });
    assert.equal(m.frozenPrefix !== null, kind.startsWith("tenvoo") || kind === "quanta", kind);
    // Methods without a frozen copy start from ΔW = 0 through a zero factor.
    if (m.frozenPrefix === null) assert.ok(m.cores.some((c) => c.values.every((v) => v === 0)), kind);
  }
});

Deno.test("factorize3: the TenVOO table, the balanced default, and checked overrides", () => {
  for (const [n, f] of Object.entries(TABLE)) assert.deepEqual([...factorize3(Number(n))], f);
  for (const [n, f] of Object.entries(TENVOO_FACTORS)) assert.equal(f[0] * f[1] * f[2], Number(n));
  assert.deepEqual([...balancedFactors3(40)], [5, 4, 2]);
  assert.deepEqual([...balancedFactors3(1000)], [10, 10, 10]);
  assert.deepEqual([...balancedFactors3(7)], [7, 1, 1]);
  assert.deepEqual([...balancedFactors3(60)], [5, 4, 3]);
  assert.deepEqual([...factorize3(64, { 64: [4, 4, 4] })], [4, 4, 4]);
  assert.throws(() => factorize3(64, { 64: [4, 4, 2] }), /product is 64/);
  assert.throws(() => factorize3(0), /positive integer/);
});

Deno.test("factorize2: LyCORIS's examples", () => {
  // From the docstring of LyCORIS's `factorization` (factor −1, then factor 4) — except 360, for which the
  // docstring says (8, 45) but its code (copied by the TenVOO repository) walks the divisors to (18, 20).
  assert.deepEqual(factorize2(127), [1, 127]);
  assert.deepEqual(factorize2(128), [8, 16]);
  assert.deepEqual(factorize2(250), [10, 25]);
  assert.deepEqual(factorize2(360), [18, 20]);
  assert.deepEqual(factorize2(512), [16, 32]);
  assert.deepEqual(factorize2(1024), [32, 32]);
  assert.deepEqual(factorize2(127, 4), [1, 127]);
  assert.deepEqual(factorize2(128, 4), [4, 32]);
  assert.deepEqual(factorize2(250, 4), [2, 125]);
  assert.deepEqual(factorize2(360, 4), [4, 90]);
});
