/**
 * Spatial control of a frozen diffusion model: building a control module (VCM or ControlNet) for a base
 * model, training it with the base frozen (only the module learns), control files (the module's weights and
 * what it needs: kind, options, conditions, the base's hash), and the controlled denoiser the sampler runs.
 *
 * - VCM: the base predicts under `noGrad`; its output is converted to ε, modulated (ε' = ε ⊙ (1 + γ) + β)
 *   and, for sampling, converted back to what the base predicts. Loss MSE(ε', ε) + λ(mean|γ| + mean|β|).
 * - ControlNet: its residuals enter the frozen U-Net's skips and middle block; the usual diffusion loss on
 *   the U-Net's output (ε, v or x0), with gradients flowing through the frozen U-Net to the ControlNet.
 *
 * @module
 */

import { modelHash } from "../adapters/hash.ts";
import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { abs, add, mseLoss, mul } from "../engine/ops/elementwise.ts";
import { mean } from "../engine/ops/reduce.ts";
import { full, tensor } from "../engine/ops/create.ts";
import { concat } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { loadSafetensorsFile, saveSafetensors } from "../io/safetensors.ts";
import { ControlNet, type ControlNetOptions } from "../models/controlnet.ts";
import type { DiffusionModelUNet } from "../models/unet.ts";
import {
  encoderDownsamplings,
  epsFromPrediction,
  modulate,
  type Modulation,
  predictionFromEps,
  VCM,
  type VCMOptions,
} from "../models/vcm.ts";
import type { Conditioning, Denoiser } from "../samplers/sample.ts";
import { DDPMScheduler, type Scheduler } from "../samplers/scheduler.ts";
import type { Generator } from "./generate.ts";
import { latentBatches } from "./latent.ts";
import { disposeModel, type LoadedModel, unetGenerator } from "./model.ts";
import type { Batch, ControlInput, DiffusionNetwork } from "./train.ts";

/** The kinds of control module. */
export const CONTROL_KINDS = ["vcm", "controlnet"] as const;

/** A kind of control module. */
export type ControlKind = typeof CONTROL_KINDS[number];

/** What a control file describes besides its weights. */
export interface ControlInfo {
  /** The module's kind. */
  kind: ControlKind;
  /** Its constructor options. */
  options: VCMOptions | ControlNetOptions;
  /** The conditions it takes, in order (names, e.g. "ventricles"), and their channels. */
  conditions: string[];
  /** Channels of each condition. */
  conditionChannels: number[];
  /** Hash of the base model's weights (adapters/hash.ts): the module only steers that model. */
  baseHash: string;
  /** Free-form description (training data, steps, …). */
  description?: string;
}

/** A control module of either kind with its info. */
export interface Control {
  /** The module. */
  module: VCM | ControlNet;
  /** Its info. */
  info: ControlInfo;
}

/** Sizes of the VCM built by {@linkcode createControl}: the release's ("paper") or a small one for 32³. */
export type VCMPreset = "small" | "paper";

/** Options of {@linkcode createControl}. */
export interface CreateControlOptions {
  /** The conditions (names) and their channels. */
  conditions: readonly string[];
  /** Channels of each condition. */
  conditionChannels: readonly number[];
  /** Halvings from the condition grid to the model grid (default 0: the same grid). */
  downsamplings?: number;
  /** VCM sizes (default "small"). */
  preset?: VCMPreset;
  /** The release's head (InstanceNorm after γ and β, PyTorch initialisation) instead of a zero head. */
  releaseHead?: boolean;
  /** VCM's condition path: the encoders (default) or the resize ablation (no encoder). */
  encoder?: "asymmetric" | "resize";
  /** Seed of the new weights (default 0). */
  seed?: number;
  /** VCM options that replace the preset's (e.g. smaller sizes in tests). */
  vcm?: Partial<VCMOptions>;
}

/**
 * A fresh control module for `base`. VCM: one encoder per condition. ControlNet: a copy of the base's encoder
 * (MONAI's `load_state_dict(unet.state_dict(), strict=False)`), the conditions concatenated on channels, and a
 * condition embedding with one stage per halving (16, 32, 96, 256 channels, as MONAI's default stages).
 */
export async function createControl(
  kind: ControlKind,
  base: DiffusionModelUNet,
  opts: CreateControlOptions,
): Promise<Control> {
  const down = opts.downsamplings ?? 0;
  const seed = opts.seed ?? 0;
  const conditions = [...opts.conditions];
  const conditionChannels = [...opts.conditionChannels];
  if (conditions.length !== conditionChannels.length || conditions.length === 0) {
    throw new Error("createControl: give one channel count per condition (at least one condition).");
  }
  const baseHash = await modelHash(base);
  const spatialDims = base.config.spatialDims;
  if (kind === "vcm") {
    const small = (opts.preset ?? "small") === "small";
    const options: VCMOptions = {
      spatialDims,
      modelChannels: base.config.outChannels,
      conditionChannels,
      downsamplings: down,
      ...(small
        ? {
          encoderChannels: [8, 16, 16].slice(0, Math.max(2, down)),
          encoderResBlocks: 1,
          encoderGroups: 8,
          unet: {
            channels: [16, 32, 64],
            numResBlocks: 1,
            attentionLevels: [false, false, true],
            normNumGroups: 8,
          },
          hiddenChannels: 16,
          headChannels: 32,
        }
        : {}),
      ...(opts.releaseHead ? { headNorm: "instance" as const, zeroHead: false } : {}),
      ...(opts.encoder ? { encoder: opts.encoder } : {}),
      seed,
      ...opts.vcm,
    };
    return { module: new VCM(options), info: { kind, options, conditions, conditionChannels, baseHash } };
  }
  if (kind !== "controlnet") {
    throw new Error(`createControl: unknown kind "${kind}"; accepted: ${CONTROL_KINDS.join(", ")}.`);
  }
  const stages = [16, 32, 96, 256].slice(0, down + 1);
  if (stages.length !== down + 1) {
    throw new Error(
      `createControl: ControlNet's condition embedding halves the grid at most 3 times (MONAI's stages ` +
        `16, 32, 96, 256); ${down} halvings were asked for.`,
    );
  }
  const module = ControlNet.fromUNet(base, {
    conditioningEmbeddingInChannels: conditionChannels.reduce((a, b) => a + b, 0),
    conditioningEmbeddingNumChannels: stages,
    seed,
  });
  const { seed: _seed, ...options } = {
    ...module.config,
    crossAttentionDim: module.config.crossAttentionDim ?? undefined,
    numClassEmbeds: module.config.numClassEmbeds ?? undefined,
  };
  return { module, info: { kind, options, conditions, conditionChannels, baseHash } };
}

/** Where a model's control module works: the grid its U-Net sees and the grid of the conditions. */
export interface ControlGeometry {
  /** [nx, ny, nz] of the U-Net's input: the image grid, or a latent model's latent grid. */
  modelGrid: [number, number, number];
  /** [nx, ny, nz] of the conditions: the image grid of the volumes the model generates. */
  conditionGrid: [number, number, number];
  /** Halvings from the condition grid to the model grid (0 in image space; log2 of the autoencoder's factor). */
  downsamplings: number;
}

/**
 * The grids of a control module for `model`. In image space the conditions sit on the model's own grid; on a
 * latent model they stay on the image grid (as in the paper) and the module's condition path halves them
 * down to the latent grid, which needs the image grid to be the latent grid × 2^levels along every axis.
 */
export function controlGeometry(model: Pick<LoadedModel, "info" | "latent">): ControlGeometry {
  const image = [...model.info.volume.shape] as [number, number, number];
  if (!model.latent) return { modelGrid: image, conditionGrid: image, downsamplings: 0 };
  const [, d, h, w] = model.latent.latentShape;
  const latent: [number, number, number] = [w, h, d];
  let downsamplings: number;
  try {
    downsamplings = encoderDownsamplings(image, latent);
  } catch {
    throw new Error(
      `this latent model's images (${image.join("×")}) are not its latent grid ${
        latent.join("×")
      } times one power of two along every axis; control modules take conditions on the image grid and ` +
        "halve them down to the latent grid, so they need that (an image size divisible by the autoencoder's factor).",
    );
  }
  return { modelGrid: latent, conditionGrid: image, downsamplings };
}

/**
 * The training batches of a control module on `model`: image-space batches (images and their conditions)
 * as they are, or for a latent model with each image encoded to s·z by the frozen autoencoder under `noGrad`
 * (pipelines/latent.ts, with the scale factor the model was trained with), the conditions left on the image
 * grid.
 */
export function controlBatches(
  model: Pick<LoadedModel, "latent">,
  images: (step: number, micro: number) => Batch | Promise<Batch>,
  seed: number,
): (step: number, micro: number) => Batch | Promise<Batch> {
  const latent = model.latent;
  if (!latent) return images;
  return latentBatches(latent.autoencoder, images, { seed, scaleFactor: latent.scaleFactor });
}

const FORMAT = "voxgen-control";

/** Saves a control module's weights and info, atomically. */
export async function saveControlFile(
  path: string,
  control: Control,
  weights?: Map<string, Tensor>,
): Promise<void> {
  const { info } = control;
  await saveSafetensors(path, weights ?? control.module.stateDict(), {
    format: FORMAT,
    kind: info.kind,
    options: JSON.stringify(info.options),
    conditions: JSON.stringify(info.conditions),
    conditionChannels: JSON.stringify(info.conditionChannels),
    baseHash: info.baseHash,
    description: info.description ?? "",
  });
}

/**
 * Loads a control file written by {@linkcode saveControlFile} (eval mode, frozen). With `base`, refuses a
 * module trained on other base weights.
 */
export async function loadControlFile(path: string, base?: DiffusionModelUNet): Promise<Control> {
  const { tensors, metadata: meta } = await loadSafetensorsFile(path);
  try {
    if (meta.format !== FORMAT) {
      throw new Error(
        `${path} is not a voxgen control file (metadata format ${JSON.stringify(meta.format)}); ` +
          "control files are written by `deno task train-control`.",
      );
    }
    const info: ControlInfo = {
      kind: meta.kind as ControlKind,
      options: JSON.parse(meta.options),
      conditions: JSON.parse(meta.conditions),
      conditionChannels: JSON.parse(meta.conditionChannels),
      baseHash: meta.baseHash,
      description: meta.description,
    };
    if (base) {
      const hash = await modelHash(base);
      if (hash !== info.baseHash) {
        throw new Error(
          `${path} was trained on another base model (weights hash ${
            info.baseHash.slice(0, 12)
          }…, this one ` +
            `${hash.slice(0, 12)}…); use it with the model it was trained on.`,
        );
      }
    }
    const module = info.kind === "vcm"
      ? new VCM(info.options as VCMOptions)
      : new ControlNet(info.options as ControlNetOptions);
    module.loadStateDict(tensors);
    module.eval().freeze();
    return { module, info };
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** Checks that the conditions match the control module (count, channels, grid); throws a clear error. */
export function checkConditions(control: Control, x: Tensor, conditions: ReadonlyArray<Tensor | null>): void {
  const { info } = control;
  if (conditions.length !== info.conditions.length) {
    throw new Error(
      `the control module takes ${info.conditions.length} condition(s) (${
        info.conditions.join(", ")
      }), got ` +
        `${conditions.length}.`,
    );
  }
  const factor = control.module instanceof VCM
    ? 2 ** control.module.config.downsamplings
    : control.module.conditionFactor;
  const grid = x.shape.slice(2).map((n) => n * factor);
  conditions.forEach((c, i) => {
    if (!c) {
      if (control.module instanceof ControlNet) {
        throw new Error(`ControlNet needs every condition; "${info.conditions[i]}" is missing.`);
      }
      return;
    }
    const want = [x.shape[0], info.conditionChannels[i], ...grid];
    const got = c.shape;
    if (
      got.length !== want.length || got.slice(1).join() !== want.slice(1).join() ||
      (got[0] !== 1 && got[0] !== want[0])
    ) {
      throw new Error(
        `condition "${info.conditions[i]}" ${formatShape(got)} does not fit: it must be ` +
          `[${x.shape[0]} or 1, ${info.conditionChannels[i]}, ${grid.join(", ")}] (${
            info.conditionChannels[i]
          } ` +
          `channel(s) on the model grid ${formatShape(x.shape.slice(2))}${
            factor > 1 ? ` × ${factor}` : ""
          }).`,
      );
    }
  });
}

/** The conditions repeated to the batch size (a single condition volume serves every sample). */
function batched(conditions: ReadonlyArray<Tensor | null>, batch: number): Array<Tensor | null> {
  return conditions.map((c) => !c || c.shape[0] === batch ? c : concat(new Array(batch).fill(c), 0));
}

/**
 * The base's prediction (ε, v or x0, as it was trained) steered by `control`, at noisy `x` and timesteps `t`.
 * `scale` multiplies the control: ControlNet's conditioningScale; for VCM, γ and β (ε' = ε ⊙ (1 + sγ) + sβ).
 */
export function controlledPrediction(
  base: DiffusionModelUNet,
  scheduler: Scheduler,
  control: Control,
  x: Tensor,
  t: readonly number[],
  input: ControlInput,
  scale = 1,
  cond: Conditioning = {},
): Tensor {
  checkConditions(control, x, input.conditions);
  return scope(() => {
    const conditions = batched(input.conditions, x.shape[0]);
    if (control.module instanceof ControlNet) {
      const condition = conditions.length === 1 ? conditions[0]! : concat(conditions as Tensor[], 1);
      const residuals = control.module.forward(x, t, condition, { conditioningScale: scale, ...cond });
      return base.forward(x, t, { ...cond, ...residuals });
    }
    const alphaBar = t.map((s) => scheduler.alphaBar(s));
    const prediction = scheduler.predictionType;
    const eps = noGrad(() => epsFromPrediction(prediction, base.forward(x, t, cond), x, alphaBar));
    const m = control.module.forward(x, eps, conditions, t, { keep: input.keep });
    const scaled: Modulation = scale === 1 ? m : { gamma: mul(m.gamma, scale), beta: mul(m.beta, scale) };
    return predictionFromEps(prediction, modulate(eps, scaled), x, alphaBar);
  });
}

/** A sampler denoiser: the frozen base steered by `control` with fixed conditions (see controlledPrediction). */
export function controlledDenoiser(
  base: DiffusionModelUNet,
  scheduler: Scheduler,
  control: Control,
  conditions: ReadonlyArray<Tensor | null>,
  scale = 1,
): Denoiser {
  return (x, t, cond) =>
    controlledPrediction(
      base,
      scheduler,
      control,
      x,
      new Array(x.shape[0]).fill(t),
      { conditions: [...conditions] },
      scale,
      cond,
    );
}

/** Options of {@linkcode controlTrainingNetwork}. */
export interface ControlTrainingOptions {
  /** Weight of mean|γ| + mean|β| in VCM's loss (default 1: the paper's λ = 1/(b·c·h·w·d)). */
  lambda?: number;
  /**
   * What the frozen base is conditioned on while the module trains, for a batch of `batch` (tensors made here
   * are freed with the step): for a conditional base its null condition (see {@linkcode nullConditioning}).
   */
  baseConditioning?: (batch: number) => Conditioning;
}

/**
 * The network `train` sees: only the control module's parameters, the frozen base inside. VCM trains with its
 * own loss (`trainingLoss`, ε space); ControlNet with train's usual loss on the controlled prediction.
 */
export function controlTrainingNetwork(
  base: DiffusionModelUNet,
  scheduler: Scheduler,
  control: Control,
  opts: ControlTrainingOptions = {},
): DiffusionNetwork {
  const lambda = opts.lambda ?? 1;
  const baseConditioning = opts.baseConditioning ?? (() => ({}));
  const needControl = (batch: { control?: ControlInput }) => {
    if (!batch.control) throw new Error("control training: the batch carries no conditions.");
    return batch.control;
  };
  const network: DiffusionNetwork = {
    namedParameters: () => control.module.namedParameters(),
    forward: (x, t, cond = {}) =>
      scope(() =>
        controlledPrediction(
          base,
          scheduler,
          control,
          x,
          t,
          needControl(cond),
          1,
          baseConditioning(x.shape[0]),
        )
      ),
  };
  const vcm = control.module;
  if (vcm instanceof VCM) {
    network.trainingLoss = (xt: Tensor, t: readonly number[], noise: Tensor, batch: Batch) => {
      const input = needControl(batch);
      checkConditions(control, xt, input.conditions);
      return scope(() => {
        const alphaBar = t.map((s) => scheduler.alphaBar(s));
        const cond = baseConditioning(xt.shape[0]);
        const eps = noGrad(() =>
          epsFromPrediction(scheduler.predictionType, base.forward(xt, t, cond), xt, alphaBar)
        );
        const m = vcm.forward(xt, eps, batched(input.conditions, xt.shape[0]), t, { keep: input.keep });
        const fit = mseLoss(modulate(eps, m), noise);
        if (lambda === 0) return fit;
        return add(fit, mul(add(mean(abs(m.gamma)), mean(abs(m.beta))), lambda));
      });
    };
  }
  return network;
}

/**
 * The null condition a control module trains a conditional base under (the paired data has no prompts or
 * classes): the empty prompt of a token model, the null class of a class-conditional model trained with
 * condition dropout. Undefined for an unconditional base. Refused: a class model without a null class, and
 * models whose input carries condition channels (see {@linkcode controlledGenerator}).
 */
export function nullConditioning(
  model: Pick<LoadedModel, "unet" | "info" | "tokens">,
): ((batch: number) => Conditioning) | undefined {
  const channels = model.info.conditioning?.conditionChannels ?? 0;
  if (channels > 0) {
    throw new Error(
      `control modules do not apply to models that take condition channels (this one takes ${channels}).`,
    );
  }
  const classes = model.unet.config.numClassEmbeds;
  const nullClass = model.info.conditioning?.nullClass;
  if (classes !== null && nullClass === undefined) {
    throw new Error(
      `the base is class-conditional (${classes} classes) but learned no null class (it was trained without ` +
        "condition dropout); control modules train under the null condition, so they cannot be trained on it.",
    );
  }
  const tokens = model.tokens;
  if (!tokens && classes === null) return undefined;
  return (batch) => ({
    ...(tokens ? { context: tokens.encode([]) } : {}),
    ...(classes !== null ? { classLabels: full([batch], nullClass!) } : {}),
  });
}

/** A condition volume on the CPU, as read from a NIfTI file. */
export interface ConditionVolume {
  /** Values, x fastest, channels slowest. */
  data: Float32Array;
  /** [nx, ny, nz] (one channel, or a tissue label map) or [nx, ny, nz, channels]. */
  shape: readonly number[];
  /** Where it came from (for errors). */
  source: string;
}

/**
 * The tensor [1, C, nz, ny, nx] of condition `index` of `control` from a volume on the grid of the model's
 * U-Net (`modelShape` [nx, ny, nz]: the image grid, or a latent model's latent grid) times the module's
 * condition factor. A 3-D volume is one channel, or, for a "tissue" condition, a label map (1 CSF, 2 grey,
 * 3 white) made one-hot. Anything else is refused with what is accepted.
 */
export function conditionTensor(
  control: Control,
  index: number,
  volume: ConditionVolume,
  modelShape: readonly number[],
  latent = false,
): Tensor {
  const name = control.info.conditions[index];
  const channels = control.info.conditionChannels[index];
  const factor = control.module instanceof VCM
    ? 2 ** control.module.config.downsamplings
    : control.module.conditionFactor;
  const grid = modelShape.map((n) => n * factor);
  const [nx, ny, nz] = grid;
  const spatial = volume.shape.slice(0, 3);
  if (spatial.join() !== grid.join() || volume.shape.length > 4) {
    throw new Error(
      `condition "${name}" (${volume.source}) is ${
        volume.shape.join("×")
      }; this control module takes it on ` +
        `the grid ${grid.join("×")} (the model's ${modelShape.join("×")} ${
          latent ? "latent grid" : "volumes"
        }${factor > 1 ? ` × ${factor}` : ""}): resample it to that grid first.`,
    );
  }
  const given = volume.shape[3] ?? 1;
  if (given === channels) return tensor(volume.data, [1, channels, nz, ny, nx]);
  if (given === 1 && name === "tissue" && channels === 3) {
    const voxels = nx * ny * nz;
    const onehot = new Float32Array(3 * voxels);
    volume.data.forEach((v, i) => {
      const k = Math.round(v);
      if (k >= 1 && k <= 3) onehot[(k - 1) * voxels + i] = 1;
    });
    return tensor(onehot, [1, 3, nz, ny, nx]);
  }
  throw new Error(
    `condition "${name}" (${volume.source}) has ${given} channel(s); the control module takes ${channels}` +
      (name === "tissue" ? " (or a 3-D label map: 1 CSF, 2 grey, 3 white)" : "") + ".",
  );
}

/** What `sample --control-model` adds to a model. */
export interface ControlRequest {
  /** The control file. */
  file: string;
  /** One volume per condition of the module, in its order (null: absent, VCM only). */
  conditions: ReadonlyArray<ConditionVolume | null>;
  /** Control scale (default 1): ControlNet's conditioningScale, or VCM's γ and β. */
  scale?: number;
}

/**
 * A model steered by a control module, ready for `generate`: the model's own generator with its denoiser
 * wrapped (see {@linkcode controlledDenoiser}); it frees the module, the conditions and `owned` (e.g. the
 * vectors of textual-inversion embeddings attached to the model's tokens) with the model. Prompts, guidance
 * and class labels reach the frozen U-Net (and a ControlNet) as in uncontrolled sampling.
 */
export async function controlledGenerator(
  model: LoadedModel,
  request: ControlRequest,
  owned: Tensor[] = [],
): Promise<Generator> {
  // The controlled denoiser feeds the U-Net x_t alone: a model whose input also carries condition channels
  // would need them concatenated (and a module trained with them); refuse it.
  const channels = model.info.conditioning?.conditionChannels ?? 0;
  let geometry: ControlGeometry;
  try {
    if (channels > 0) {
      throw new Error(
        `control modules do not apply to models that take condition channels (this one takes ${channels}); ` +
          "they steer U-Nets whose input is x_t alone (unconditional, class or prompt conditioned, image or " +
          "latent space).",
      );
    }
    geometry = controlGeometry(model);
  } catch (error) {
    disposeModel(model);
    for (const t of owned) t.dispose();
    throw error;
  }
  // A latent model's generator samples latents and decodes them at the end; the control wraps the denoiser.
  const plain = unetGenerator(model, owned);
  const conditionTensors: Tensor[] = [];
  let control: Control | null = null;
  try {
    control = await loadControlFile(request.file, model.unet);
    if (request.conditions.length !== control.info.conditions.length) {
      throw new Error(
        `${request.file} takes ${control.info.conditions.length} condition(s) (${
          control.info.conditions.join(", ")
        }); ${request.conditions.length} given.`,
      );
    }
    const tensors = request.conditions.map((v, i) => {
      if (!v) return null;
      const t = conditionTensor(control!, i, v, geometry.modelGrid, model.latent !== undefined);
      conditionTensors.push(t);
      return t;
    });
    const scheduler = new DDPMScheduler(model.info.scheduler);
    const module = control.module;
    return {
      ...plain,
      denoiser: controlledDenoiser(model.unet, scheduler, control, tensors, request.scale ?? 1),
      parameterCount: plain.parameterCount + module.numParameters(),
      dispose: () => {
        plain.dispose();
        module.dispose();
        for (const t of conditionTensors) t.dispose();
      },
    };
  } catch (error) {
    plain.dispose();
    control?.module.dispose();
    for (const t of conditionTensors) t.dispose();
    throw error;
  }
}
