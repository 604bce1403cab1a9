/**
 * Feature extractors for FID and feature-space MMD, and the Med3D / MedicalNet 3-D ResNet (Chen et al.
 * 2019, github.com/Tencent/MedicalNet) that the seed papers use, with MedicalNet's parameter names so that
 * its released weights, converted to safetensors, load by name.
 *
 * The architecture (MedicalNet `models/resnet.py`): conv1 7³ stride 2 padding 3 without bias → bn1 → ReLU
 * → max-pool 3³ stride 2 padding 1 → layer1..layer4 of BasicBlocks (ResNet-10/18/34) or Bottlenecks
 * (expansion 4; ResNet-50/101/152/200) with planes w, 2w, 4w, 8w (w = 64), strides 1, 2, 1, 1 and
 * dilations 1, 1, 2, 4 (3³ convolutions padded by their dilation) → global average pool. Shortcuts where
 * the shape changes are type B (1³ conv + BN, `layerL.0.downsample.{0,1}`) or type A (stride subsampling
 * and zero channels, no parameters). The segmentation head `conv_seg` is not used: features are the
 * pooled layer4 output (512·expansion values), as in TenVOO's evaluation.
 *
 * BatchNorm runs in eval mode with its running statistics, so each BN is folded into the convolution
 * before it when the weights load (w·γ/√(var + 1e-5), bias β − mean·γ/√(var + 1e-5)).
 *
 * Converting MedicalNet's `.pth` (PyTorch) to safetensors, for example:
 *
 * ```python
 * import torch
 * from safetensors.torch import save_file
 * sd = torch.load("resnet_50_23dataset.pth", map_location="cpu")["state_dict"]
 * save_file({k: v.float().contiguous() for k, v in sd.items() if v.is_floating_point()}, "resnet_50.safetensors")
 * ```
 *
 * The `module.` prefix MedicalNet's DataParallel checkpoints carry is stripped; `conv_seg.*` and
 * `num_batches_tracked` entries are ignored. Depth, width, block type and shortcut type are read from the
 * names and shapes in the file.
 *
 * Volumes go in as given. MedicalNet was trained on volumes z-scored over their non-zero voxels; TenVOO's
 * evaluation feeds its [0, 1] images unnormalised. Normalise before `extract` to reproduce the former.
 *
 * @module
 */

import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { conv3d } from "../engine/ops/conv.ts";
import { tensor } from "../engine/ops/create.ts";
import { relu } from "../engine/ops/elementwise.ts";
import { map } from "../engine/ops/map.ts";
import { mean } from "../engine/ops/reduce.ts";
import { pad, slice } from "../engine/ops/view.ts";
import "../engine/ops/index.ts";
import { formatShape } from "../engine/shape.ts";
import { Tensor } from "../engine/tensor.ts";
import { parseSafetensors } from "../io/safetensors.ts";
import { seededRandom } from "../nn/init.ts";

/** Something that maps volumes to feature vectors (for FID and feature MMD). */
export interface FeatureExtractor {
  /** What it is, for reports (e.g. "MedicalNet ResNet-50 (resnet_50.safetensors)"). */
  readonly name: string;
  /** Length of one feature vector. */
  readonly featureCount: number;
  /** Features of a batch of volumes: `[N, C, D, H, W]` → `[N, featureCount]`. */
  extract(x: Tensor): Tensor;
}

/** Residual block type: two 3³ convs, or 1³ → 3³ → 1³ with 4× expansion. */
export type Med3dBlock = "basic" | "bottleneck";

/** A MedicalNet ResNet layout. */
export interface Med3dArchitecture {
  /** Block type. */
  block: Med3dBlock;
  /** Blocks in layer1..layer4. */
  layers: readonly [number, number, number, number];
  /** Channels of conv1 and layer1's planes (64 in MedicalNet). */
  width: number;
  /** Shortcut where shapes change: "B" (1³ conv + BN, MedicalNet's default) or "A" (subsample + zeros). */
  shortcut: "A" | "B";
}

/** MedicalNet's depths. */
export type Med3dDepth = 10 | 18 | 34 | 50 | 101 | 152 | 200;

const DEPTHS: Record<Med3dDepth, { block: Med3dBlock; layers: [number, number, number, number] }> = {
  10: { block: "basic", layers: [1, 1, 1, 1] },
  18: { block: "basic", layers: [2, 2, 2, 2] },
  34: { block: "basic", layers: [3, 4, 6, 3] },
  50: { block: "bottleneck", layers: [3, 4, 6, 3] },
  101: { block: "bottleneck", layers: [3, 4, 23, 3] },
  152: { block: "bottleneck", layers: [3, 8, 36, 3] },
  200: { block: "bottleneck", layers: [3, 24, 36, 3] },
};

/** The MedicalNet ResNet of a depth (10, 18, 34, 50, 101, 152, 200), width 64 and shortcut B unless given. */
export function med3dArchitecture(
  depth: Med3dDepth,
  opts: { width?: number; shortcut?: "A" | "B" } = {},
): Med3dArchitecture {
  const d = DEPTHS[depth];
  if (!d) {
    throw new Error(`med3dArchitecture: depth ${depth} is not one of ${Object.keys(DEPTHS).join(", ")}.`);
  }
  return { block: d.block, layers: [...d.layers], width: opts.width ?? 64, shortcut: opts.shortcut ?? "B" };
}

/** "ResNet-50" etc. when the layout is a MedicalNet depth, else a description. */
function describe(arch: Med3dArchitecture): string {
  for (const [depth, d] of Object.entries(DEPTHS)) {
    if (d.block === arch.block && d.layers.every((n, i) => n === arch.layers[i])) {
      return `ResNet-${depth}${arch.width === 64 ? "" : ` (width ${arch.width})`}`;
    }
  }
  return `ResNet (${arch.block} blocks ${arch.layers.join("/")}, width ${arch.width})`;
}

const EXPANSION: Record<Med3dBlock, number> = { basic: 1, bottleneck: 4 };
const BN_EPS = 1e-5;

/** One convolution with its BatchNorm folded in. */
interface ConvBn {
  weight: Tensor;
  bias: Tensor;
  stride: number;
  padding: number;
  dilation: number;
}

type Shortcut = { kind: "conv"; conv: ConvBn } | { kind: "zeros"; planes: number; stride: number } | null;

interface Block {
  convs: ConvBn[];
  shortcut: Shortcut;
}

/** A state-dict entry on the CPU (what `parseSafetensors` returns per name). */
export interface HostTensor {
  /** Dimensions. */
  shape: readonly number[];
  /** Row-major values. */
  data: ArrayLike<number>;
}

/** One conv of the layout: its name, weight shape and geometry. */
interface ConvSpec {
  name: string;
  bn: string;
  shape: number[];
  stride: number;
  padding: number;
  dilation: number;
}

interface BlockSpec {
  convs: ConvSpec[];
  shortcut: { kind: "conv"; conv: ConvSpec } | { kind: "zeros"; planes: number; stride: number } | null;
}

/** Every convolution of the layout with MedicalNet's names, in forward order. */
function layout(arch: Med3dArchitecture): { stem: ConvSpec; blocks: BlockSpec[]; features: number } {
  const w = arch.width;
  const expansion = EXPANSION[arch.block];
  const stem = { name: "conv1", bn: "bn1", shape: [w, 1, 7, 7, 7], stride: 2, padding: 3, dilation: 1 };
  const blocks: BlockSpec[] = [];
  let inplanes = w;
  const strides = [1, 2, 1, 1];
  const dilations = [1, 1, 2, 4];
  arch.layers.forEach((count, l) => {
    const planes = w * 2 ** l;
    for (let b = 0; b < count; b++) {
      const p = `layer${l + 1}.${b}`;
      const stride = b === 0 ? strides[l] : 1;
      const dil = dilations[l];
      const conv = (i: number, shape: number[], s: number, pad: number, d: number): ConvSpec => ({
        name: `${p}.conv${i}`,
        bn: `${p}.bn${i}`,
        shape,
        stride: s,
        padding: pad,
        dilation: d,
      });
      const convs = arch.block === "basic"
        ? [
          conv(1, [planes, inplanes, 3, 3, 3], stride, dil, dil),
          conv(2, [planes, planes, 3, 3, 3], 1, dil, dil),
        ]
        : [
          conv(1, [planes, inplanes, 1, 1, 1], 1, 0, 1),
          conv(2, [planes, planes, 3, 3, 3], stride, dil, dil),
          conv(3, [planes * 4, planes, 1, 1, 1], 1, 0, 1),
        ];
      let shortcut: BlockSpec["shortcut"] = null;
      if (b === 0 && (stride !== 1 || inplanes !== planes * expansion)) {
        shortcut = arch.shortcut === "A" ? { kind: "zeros", planes: planes * expansion, stride } : {
          kind: "conv",
          conv: {
            name: `${p}.downsample.0`,
            bn: `${p}.downsample.1`,
            shape: [planes * expansion, inplanes, 1, 1, 1],
            stride,
            padding: 0,
            dilation: 1,
          },
        };
      }
      blocks.push({ convs, shortcut });
      inplanes = planes * expansion;
    }
  });
  return { stem, blocks, features: inplanes };
}

/** The state-dict names a layout expects (conv weights and BN weight/bias/running_mean/running_var). */
export function med3dParameterNames(arch: Med3dArchitecture): string[] {
  const { stem, blocks } = layout(arch);
  const convs = [
    stem,
    ...blocks.flatMap((b) => [...b.convs, ...(b.shortcut?.kind === "conv" ? [b.shortcut.conv] : [])]),
  ];
  return convs.flatMap((c) => [
    `${c.name}.weight`,
    ...["weight", "bias", "running_mean", "running_var"].map((f) => `${c.bn}.${f}`),
  ]);
}

/** Reads depth, width, block and shortcut type from the names and shapes of a state dict. */
function inferArchitecture(op: string, sd: Map<string, HostTensor>): Med3dArchitecture {
  const conv1 = sd.get("conv1.weight");
  if (!conv1) {
    throw new Error(
      `${op}: no "conv1.weight" (found ${[...sd.keys()].slice(0, 5).join(", ")}…); ` +
        "expected a MedicalNet ResNet state dict.",
    );
  }
  if (conv1.shape.length !== 5 || conv1.shape[1] !== 1) {
    throw new Error(
      `${op}: conv1.weight has shape ${formatShape(conv1.shape)}; MedicalNet's is [width, 1, 7, 7, 7] ` +
        "(single-channel volumes).",
    );
  }
  const block: Med3dBlock = sd.has("layer1.0.conv3.weight") ? "bottleneck" : "basic";
  const layers = [1, 2, 3, 4].map((l) => {
    let n = 0;
    while (sd.has(`layer${l}.${n}.conv1.weight`)) n++;
    return n;
  }) as [number, number, number, number];
  if (layers.some((n) => n === 0)) {
    throw new Error(
      `${op}: layers with ${layers.join("/")} blocks; every layer1..layer4 needs at least one.`,
    );
  }
  const shortcut = sd.has("layer2.0.downsample.0.weight") ? "B" : "A";
  return { block, layers, width: conv1.shape[0], shortcut };
}

/** Folds BN into the conv (float64 arithmetic) and uploads both. */
function foldConvBn(op: string, spec: ConvSpec, sd: Map<string, HostTensor>): ConvBn {
  const get = (name: string, shape: number[]): ArrayLike<number> => {
    const t = sd.get(name);
    if (!t) throw new Error(`${op}: missing "${name}".`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`${op}: "${name}" has shape ${formatShape(t.shape)}, expected ${formatShape(shape)}.`);
    }
    return t.data;
  };
  const cout = spec.shape[0];
  const w = get(`${spec.name}.weight`, spec.shape);
  const gamma = get(`${spec.bn}.weight`, [cout]);
  const beta = get(`${spec.bn}.bias`, [cout]);
  const runMean = get(`${spec.bn}.running_mean`, [cout]);
  const runVar = get(`${spec.bn}.running_var`, [cout]);
  const per = w.length / cout;
  const weight = new Float32Array(w.length);
  const bias = new Float32Array(cout);
  for (let o = 0; o < cout; o++) {
    const scale = gamma[o] / Math.sqrt(runVar[o] + BN_EPS);
    for (let i = 0; i < per; i++) weight[o * per + i] = w[o * per + i] * scale;
    bias[o] = beta[o] - runMean[o] * scale;
  }
  return {
    weight: tensor(weight, spec.shape),
    bias: tensor(bias, [cout]),
    stride: spec.stride,
    padding: spec.padding,
    dilation: spec.dilation,
  };
}

/** Whether a state-dict entry is one the feature extractor has no use for. */
function ignorable(name: string): boolean {
  return name.startsWith("conv_seg.") || name.endsWith(".num_batches_tracked") || name.startsWith("fc.");
}

/** Options of {@linkcode Med3dResNet.fromStateDict} and {@linkcode Med3dResNet.load}. */
export interface Med3dLoadOptions {
  /** Name for reports (default: "MedicalNet" and the architecture, plus `source`). */
  name?: string;
  /** Where the weights came from (e.g. the file name), appended to the default name. */
  source?: string;
}

/**
 * The MedicalNet (Med3D) 3-D ResNet as a frozen feature extractor: `[N, 1, D, H, W]` → `[N, 512·expansion]`
 * (512 for ResNet-10/18/34, 2048 for ResNet-50 and deeper). Load weights with {@linkcode Med3dResNet.load};
 * {@linkcode Med3dResNet.random} builds random weights (for tests and benchmarks: its features mean
 * nothing). Call {@linkcode Med3dResNet.dispose} when done.
 */
export class Med3dResNet implements FeatureExtractor {
  /** The layout, as read from the weights. */
  readonly architecture: Med3dArchitecture;
  /** Description for reports. */
  readonly name: string;
  /** Length of a feature vector: 8 · width · expansion. */
  readonly featureCount: number;
  #stem: ConvBn;
  #blocks: Block[];

  private constructor(
    arch: Med3dArchitecture,
    name: string,
    stem: ConvBn,
    blocks: Block[],
    features: number,
  ) {
    this.architecture = arch;
    this.name = name;
    this.#stem = stem;
    this.#blocks = blocks;
    this.featureCount = features;
  }

  /**
   * Builds the network from a MedicalNet state dict (name → CPU tensor, e.g. `parseSafetensors(bytes).
   * tensors`). Missing, unexpected and mis-shaped entries are all reported in one error.
   */
  static fromStateDict(stateDict: Map<string, HostTensor>, opts: Med3dLoadOptions = {}): Med3dResNet {
    const op = "Med3dResNet";
    const sd = new Map<string, HostTensor>();
    for (const [k, v] of stateDict) sd.set(k.startsWith("module.") ? k.slice(7) : k, v);
    const arch = inferArchitecture(op, sd);
    const spec = layout(arch);
    const expected = new Set(med3dParameterNames(arch));
    const missing = [...expected].filter((n) => !sd.has(n));
    const unexpected = [...sd.keys()].filter((n) => !expected.has(n) && !ignorable(n));
    if (missing.length > 0 || unexpected.length > 0) {
      const list = (xs: string[]): string =>
        xs.slice(0, 8).join(", ") + (xs.length > 8 ? `, … (${xs.length})` : "");
      throw new Error(
        `${op}: the weights do not match a MedicalNet ${describe(arch)} with shortcut ${arch.shortcut}` +
          (missing.length ? `; missing: ${list(missing)}` : "") +
          (unexpected.length ? `; unexpected: ${list(unexpected)}` : "") + ".",
      );
    }
    const made: ConvBn[] = [];
    try {
      const fold = (c: ConvSpec): ConvBn => {
        const f = foldConvBn(op, c, sd);
        made.push(f);
        return f;
      };
      const stem = fold(spec.stem);
      const blocks = spec.blocks.map((b): Block => ({
        convs: b.convs.map(fold),
        shortcut: b.shortcut === null
          ? null
          : b.shortcut.kind === "conv"
          ? { kind: "conv", conv: fold(b.shortcut.conv) }
          : b.shortcut,
      }));
      const name = opts.name ?? `MedicalNet ${describe(arch)}${opts.source ? ` (${opts.source})` : ""}`;
      return new Med3dResNet(arch, name, stem, blocks, spec.features);
    } catch (error) {
      for (const c of made) {
        c.weight.dispose();
        c.bias.dispose();
      }
      throw error;
    }
  }

  /** Loads MedicalNet weights from a safetensors file (path or bytes). Call `await ready()` first. */
  static async load(pathOrBytes: string | Uint8Array, opts: Med3dLoadOptions = {}): Promise<Med3dResNet> {
    const source = typeof pathOrBytes === "string" ? pathOrBytes : "<bytes>";
    const bytes = typeof pathOrBytes === "string" ? await Deno.readFile(pathOrBytes) : pathOrBytes;
    const file = parseSafetensors(bytes, source);
    const base = typeof pathOrBytes === "string" ? pathOrBytes.split(/[\\/]/).pop() : undefined;
    return Med3dResNet.fromStateDict(file.tensors, { source: base, ...opts });
  }

  /**
   * A network of the given layout with random weights (uniform ±√(6/fan_in), BN identity), deterministic
   * from `seed`. Its features are meaningless; use it to test shapes and speed.
   */
  static random(arch: Med3dArchitecture, seed = 0): Med3dResNet {
    const random = seededRandom(seed);
    const sd = new Map<string, HostTensor>();
    const { stem, blocks } = layout(arch);
    const convs = [
      stem,
      ...blocks.flatMap((b) => [...b.convs, ...(b.shortcut?.kind === "conv" ? [b.shortcut.conv] : [])]),
    ];
    for (const c of convs) {
      const fanIn = c.shape.slice(1).reduce((a, b) => a * b, 1);
      const bound = Math.sqrt(6 / fanIn);
      const n = c.shape.reduce((a, b) => a * b, 1);
      sd.set(`${c.name}.weight`, {
        shape: c.shape,
        data: Float32Array.from({ length: n }, () => (2 * random() - 1) * bound),
      });
      const cout = c.shape[0];
      sd.set(`${c.bn}.weight`, { shape: [cout], data: new Float32Array(cout).fill(1) });
      sd.set(`${c.bn}.bias`, { shape: [cout], data: new Float32Array(cout) });
      sd.set(`${c.bn}.running_mean`, { shape: [cout], data: new Float32Array(cout) });
      sd.set(`${c.bn}.running_var`, { shape: [cout], data: new Float32Array(cout).fill(1) });
    }
    return Med3dResNet.fromStateDict(sd, {
      name: `random-weight ${describe(arch)} (seed ${seed}; not for reporting)`,
    });
  }

  /** Features `[N, featureCount]` of volumes `[N, 1, D, H, W]` (no autograd). */
  extract(x: Tensor): Tensor {
    const op = "Med3dResNet.extract";
    if (!(x instanceof Tensor)) throw new Error(`${op}: x must be a Tensor.`);
    if (x.rank !== 5 || x.shape[1] !== 1) {
      throw new Error(
        `${op}: x must be [N, 1, D, H, W] (single-channel volumes), got ${formatShape(x.shape)}.`,
      );
    }
    if (this.#stem.weight.isDisposed) throw new Error(`${op}: the network was disposed.`);
    return noGrad(() =>
      scope(() => {
        let h = relu(convBn(x, this.#stem));
        h = maxPool3x3s2(h);
        for (const block of this.#blocks) h = residual(h, block);
        return mean(h, [2, 3, 4]);
      })
    );
  }

  /** Frees the weights. */
  dispose(): void {
    const all = [
      this.#stem,
      ...this.#blocks.flatMap((b) => [...b.convs, ...(b.shortcut?.kind === "conv" ? [b.shortcut.conv] : [])]),
    ];
    for (const c of all) {
      c.weight.dispose();
      c.bias.dispose();
    }
  }
}

function convBn(x: Tensor, c: ConvBn): Tensor {
  return conv3d(x, c.weight, { bias: c.bias, stride: c.stride, padding: c.padding, dilation: c.dilation });
}

/** PyTorch `max_pool3d(kernel 3, stride 2, padding 1)`, separable: a 3-wide strided max along each axis. */
function maxPool3x3s2(x: Tensor): Tensor {
  let h = pad(x, [[0, 0], [0, 0], [1, 1], [1, 1], [1, 1]], -Infinity);
  for (let axis = 2; axis < 5; axis++) {
    const len = h.shape[axis];
    const out = Math.floor((len - 3) / 2) + 1;
    const tap = (t: number): Tensor => {
      const starts = h.shape.slice(0, axis + 1).map((_, i) => (i === axis ? t : 0));
      const ends = h.shape.slice(0, axis + 1).map((d, i) => (i === axis ? t + 2 * (out - 1) + 1 : d));
      const steps = h.shape.slice(0, axis + 1).map((_, i) => (i === axis ? 2 : 1));
      return slice(h, starts, ends, steps);
    };
    const next = map("med3d_max3", "max(max(a, b), c)", [tap(0), tap(1), tap(2)]);
    h.dispose();
    h = next;
  }
  return h;
}

function residual(x: Tensor, block: Block): Tensor {
  let h = x;
  block.convs.forEach((c, i) => {
    const y = convBn(h, c);
    if (h !== x) h.dispose();
    if (i < block.convs.length - 1) {
      h = relu(y);
      y.dispose();
    } else {
      h = y;
    }
  });
  let skip: Tensor;
  const sc = block.shortcut;
  if (sc === null) skip = x;
  else if (sc.kind === "conv") skip = convBn(x, sc.conv);
  else {
    const s = sc.stride;
    const sub = s === 1 ? x : slice(x, [0, 0, 0, 0, 0], [...x.shape], [1, 1, s, s, s]);
    skip = pad(sub, [[0, 0], [0, sc.planes - x.shape[1]]]);
  }
  const out = map("med3d_add_relu", "max(a + b, 0.0)", [h, skip]);
  h.dispose();
  if (skip !== x) skip.dispose();
  return out;
}
