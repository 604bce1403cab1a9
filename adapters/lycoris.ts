/**
 * LyCORIS's low-rank methods, as the TenVOO repository implements them (`peft/locon.py`, `loha.py`,
 * `lokr.py`), for Linear layers and convolutions (whose kernel is flattened into the input dimension):
 *
 * - **LoCon** (LoRA for convolutions): ΔW = up[O, r] · down[r, I·k] — down kaiming-uniform, up zero.
 * - **LoHa** (FedPara's Hadamard product): ΔW = (w1a[O, r] · w1b[r, I·k]) ⊙ (w2a[O, r] · w2b[r, I·k]) — w1a
 *   N(0, 0.1²), w1b and w2b N(0, 1), w2a zero.
 * - **LoKr** (Kronecker product): O = l·m, I = p·q (LyCORIS's balanced factorisation), ΔW = kron(w1a[l, r] ·
 *   w1b[r, p], w2a[m, r] · w2b[r, q·k]) — w2b zero, the others kaiming-uniform.
 *
 * Each starts from ΔW = 0 through its zero factor, so no frozen copy is needed. k is the kernel volume
 * (1 for a Linear).
 *
 * @module
 */

import { mul } from "../engine/ops/elementwise.ts";
import { matmul } from "../engine/ops/matmul.ts";
import { reshape } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import { factorize2 } from "./factorize.ts";
import {
  GAIN,
  kaimingUniform,
  kernelVolume,
  type LayerMethod,
  type MethodOptions,
  normal,
  type WeightShape,
  zerosOf,
} from "./method.ts";

/** `a[M, K] · b[K, N]` for cores stored with extra unit or kernel axes, then reshaped to `shape`. */
function product(a: Tensor, aShape: number[], b: Tensor, bShape: number[]): Tensor {
  const a2 = reshape(a, aShape);
  const b2 = reshape(b, bShape);
  const out = matmul(a2, b2);
  a2.dispose();
  b2.dispose();
  return out;
}

function weightShapeOf(shape: WeightShape): number[] {
  return [shape.out, shape.in, ...shape.kernel];
}

/** Parameter count of LoCon: r·(I·k + O). */
export function loconParameterCount(shape: WeightShape, rank: number): number {
  return rank * (shape.in * kernelVolume(shape) + shape.out);
}

/**
 * LoCon: `lora_down.weight` [r, I, …kernel] (a convolution with the layer's kernel) and `lora_up.weight`
 * [O, r, 1, …] (a 1×…×1 convolution), as in LyCORIS; [r, I] and [O, r] for a Linear.
 */
export function locon(shape: WeightShape, opts: MethodOptions): LayerMethod {
  const { rank: r } = opts;
  const k = kernelVolume(shape);
  const downShape = [r, shape.in, ...shape.kernel];
  const upShape = [shape.out, r, ...shape.kernel.map(() => 1)];
  return {
    kind: "locon",
    cores: [
      {
        name: "lora_down.weight",
        shape: downShape,
        values: kaimingUniform(downShape, shape.in * k, GAIN.leakyReluSqrt5, opts.random),
      },
      { name: "lora_up.weight", shape: upShape, values: zerosOf(upShape) },
    ],
    frozenPrefix: null,
    scale: opts.scale,
    inFactors: null,
    outFactors: null,
    formulaCount: loconParameterCount(shape, r),
    formula: "r(I·k + O)",
    delta([down, up]) {
      const flat = product(up, [shape.out, r], down, [r, shape.in * k]);
      const out = reshape(flat, weightShapeOf(shape));
      flat.dispose();
      return out;
    },
  };
}

/** Parameter count of LoHa: 2r·(I·k + O). */
export function lohaParameterCount(shape: WeightShape, rank: number): number {
  return 2 * rank * (shape.in * kernelVolume(shape) + shape.out);
}

/** LoHa: `loha_w1_a`, `loha_w2_a` [O, r] and `loha_w1_b`, `loha_w2_b` [r, I·k]. */
export function loha(shape: WeightShape, opts: MethodOptions): LayerMethod {
  const { rank: r, random } = opts;
  const k = kernelVolume(shape);
  const aShape = [shape.out, r];
  const bShape = [r, shape.in * k];
  return {
    kind: "loha",
    cores: [
      { name: "loha_w1_a", shape: aShape, values: normal(aShape, 0.1, random) },
      { name: "loha_w1_b", shape: bShape, values: normal(bShape, 1, random) },
      { name: "loha_w2_a", shape: aShape, values: zerosOf(aShape) },
      { name: "loha_w2_b", shape: bShape, values: normal(bShape, 1, random) },
    ],
    frozenPrefix: null,
    scale: opts.scale,
    inFactors: null,
    outFactors: null,
    formulaCount: lohaParameterCount(shape, r),
    formula: "2r(I·k + O)",
    delta([w1a, w1b, w2a, w2b]) {
      const first = matmul(w1a, w1b);
      const second = matmul(w2a, w2b);
      const flat = mul(first, second);
      first.dispose();
      second.dispose();
      const out = reshape(flat, weightShapeOf(shape));
      flat.dispose();
      return out;
    },
  };
}

/** LoKr's factorisations of a weight shape: O = l·m and I = p·q (LyCORIS `factorization(n, -1)`). */
export function lokrFactors(shape: WeightShape): { out: [number, number]; in: [number, number] } {
  return { out: factorize2(shape.out), in: factorize2(shape.in) };
}

/** Parameter count of LoKr: r·(l + p) + r·(m + q·k). */
export function lokrParameterCount(shape: WeightShape, rank: number): number {
  const { out: [l, m], in: [p, q] } = lokrFactors(shape);
  return rank * (l + p) + rank * (m + q * kernelVolume(shape));
}

/** LoKr: `lokr_w1_a` [l, r], `lokr_w1_b` [r, p], `lokr_w2_a` [m, r], `lokr_w2_b` [r, q·k]. */
export function lokr(shape: WeightShape, opts: MethodOptions): LayerMethod {
  const { rank: r, random } = opts;
  const k = kernelVolume(shape);
  const { out: [l, m], in: [p, q] } = lokrFactors(shape);
  const kaiming = (s: number[]) => kaimingUniform(s, s[1], GAIN.leakyReluSqrt5, random);
  return {
    kind: "lokr",
    cores: [
      { name: "lokr_w1_a", shape: [l, r], values: kaiming([l, r]) },
      { name: "lokr_w1_b", shape: [r, p], values: kaiming([r, p]) },
      { name: "lokr_w2_a", shape: [m, r], values: kaiming([m, r]) },
      { name: "lokr_w2_b", shape: [r, q * k], values: zerosOf([r, q * k]) },
    ],
    frozenPrefix: null,
    scale: opts.scale,
    inFactors: [p, q],
    outFactors: [l, m],
    formulaCount: lokrParameterCount(shape, r),
    formula: "r(l + p) + r(m + q·k)",
    delta([w1a, w1b, w2a, w2b]) {
      // kron(w1, w2)[i·m + j, u·(q·k) + v] = w1[i, u]·w2[j, v]: a broadcast product laid out [l, m, p, q·k],
      // which is ΔW [O, I, …kernel] in row-major order.
      const w1 = product(w1a, [l, r], w1b, [r, p]);
      const w2 = product(w2a, [m, r], w2b, [r, q * k]);
      const w1v = reshape(w1, [l, 1, p, 1]);
      const w2v = reshape(w2, [1, m, 1, q * k]);
      const kron = mul(w1v, w2v);
      [w1, w2, w1v, w2v].forEach((t) => t.dispose());
      const out = reshape(kron, weightShapeOf(shape));
      kron.dispose();
      return out;
    },
  };
}
