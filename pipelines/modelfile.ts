/**
 * voxgen model files: one safetensors file holding a diffusion U-Net's weights, with everything needed to
 * sample from it in the metadata — the U-Net options, the noise schedule, and the volume geometry
 * (shape, voxel spacing, affine, intensity range) so samples are written as proper NIfTI volumes.
 *
 * @module
 */

import type { Tensor } from "../engine/tensor.ts";
import type { Affine } from "../io/nifti.ts";
import { loadSafetensorsFile, saveSafetensors } from "../io/safetensors.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "../models/unet.ts";
import type { SchedulerOptions } from "../samplers/scheduler.ts";

/** Geometry and intensity convention of the volumes a model generates. */
export interface VolumeInfo {
  /** Spatial size [nx, ny, nz] (the tensor is [1, C, nz, ny, nx]). */
  shape: [number, number, number];
  /** Voxel → world affine of generated volumes. */
  affine: Affine;
  /** Intensity range the model was trained in (e.g. [-1, 1]). */
  range: [number, number];
}

/** What a model file describes besides its weights. */
export interface ModelInfo {
  /** U-Net constructor options. */
  unet: DiffusionModelUNetOptions;
  /** Noise schedule and prediction type the model was trained with. */
  scheduler: SchedulerOptions;
  /** Output geometry. */
  volume: VolumeInfo;
  /** Free-form description (training data, steps, …). */
  description?: string;
}

const KIND = "voxgen-diffusion-unet";

/** Saves a U-Net (or given weights) with its info as a model file, atomically. */
export async function saveModelFile(
  path: string,
  weights: Map<string, Tensor>,
  info: ModelInfo,
): Promise<void> {
  await saveSafetensors(path, weights, {
    format: KIND,
    unet: JSON.stringify(info.unet),
    scheduler: JSON.stringify(info.scheduler),
    volume: JSON.stringify(info.volume),
    description: info.description ?? "",
  });
}

/** A loaded model file: the U-Net in eval mode with its weights, and its info. */
export interface LoadedModel {
  /** The network (eval mode, weights loaded, frozen). */
  unet: DiffusionModelUNet;
  /** Its info. */
  info: ModelInfo;
}

/** Loads a model file written by {@linkcode saveModelFile}. */
export async function loadModelFile(path: string): Promise<LoadedModel> {
  const { tensors: weights, metadata: meta } = await loadSafetensorsFile(path);
  try {
    if (meta.format === "voxgen-slice-unet") {
      throw new Error(
        `${path} is a slice model (cDPM); load it with loadSliceModelFile (pipelines/slice_model.ts).`,
      );
    }
    if (meta.format !== KIND) {
      throw new Error(
        `${path} is not a voxgen model file (metadata format ${JSON.stringify(meta.format)}); ` +
          "a MONAI state dict loads with DiffusionModelUNet.loadStateDict instead.",
      );
    }
    const info: ModelInfo = {
      unet: JSON.parse(meta.unet),
      scheduler: JSON.parse(meta.scheduler),
      volume: JSON.parse(meta.volume),
      description: meta.description,
    };
    const unet = new DiffusionModelUNet(info.unet);
    unet.loadStateDict(weights);
    unet.eval().freeze();
    return { unet, info };
  } finally {
    for (const t of weights.values()) t.dispose();
  }
}
