/**
 * Evaluation metrics with MONAI's definitions: SSIM, MS-SSIM (and set-level diversity / nearest-real
 * MS-SSIM), PSNR, MAE, MSE on the GPU; MMD (MONAI's linear kernel and TenVOO's Gaussian kernel) and FID in
 * float64; Dice, HD95 and ASSD on label volumes; and the Med3D / MedicalNet feature extractor.
 *
 * @example
 * ```ts
 * import { metrics, randn, ready } from "@voxgen/voxgen";
 * await ready();
 * const a = randn([2, 1, 64, 64, 64], { seed: 1 });
 * const b = randn([2, 1, 64, 64, 64], { seed: 2 });
 * const s = metrics.msSsim(a, b, { kernelSize: 3, dataRange: 8 }); // [2]: one value per batch item
 * console.log(await s.toArray());
 * console.log(metrics.fid([[0, 1], [1, 0], [1, 1]], [[0, 2], [2, 0], [2, 2]]));
 * ```
 *
 * @module
 */

export {
  checkMsSsimSize,
  type KernelType,
  MS_SSIM_WEIGHTS,
  msSsim,
  type MsSsimOptions,
  type NearestRealMsSsim,
  nearestRealMsSsim,
  type PairwiseMsSsim,
  pairwiseMsSsim,
  type PairwiseMsSsimOptions,
  ssim,
  type SsimOptions,
  windowTaps,
} from "./ssim.ts";
export { mae, mse, psnr } from "./regression.ts";
export { medianDistance, mmd, type MmdOptions } from "./mmd.ts";
export { fid } from "./fid.ts";
export { type FeatureMatrix, type Features, type SymmetricEigen, symmetricEigen } from "./linalg.ts";
export {
  assd,
  averageSurfaceDistance,
  dice,
  type DiceOptions,
  hausdorff95,
  hausdorffDistance,
  type HausdorffOptions,
  type LabelOptions,
  type LabelVolume,
  maskEdges,
  squaredDistanceTransform,
  type SurfaceDistances,
  surfaceDistances,
  type SurfaceOptions,
} from "./segmentation.ts";
export {
  type FeatureExtractor,
  type Med3dArchitecture,
  med3dArchitecture,
  type Med3dBlock,
  type Med3dDepth,
  type Med3dLoadOptions,
  med3dParameterNames,
  Med3dResNet,
} from "./features.ts";
