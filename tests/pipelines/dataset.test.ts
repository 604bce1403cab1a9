import { invertAffine, listNiftiFiles, loadLabels, loadVolume, targetGrid } from "../../pipelines/dataset.ts";
import { assertClose } from "../helpers/check.ts";
import { gpuTest } from "../helpers/gpu.ts";
import { deepStrictEqual, rejects } from "node:assert";

const data = new URL("../../../shared/data/", import.meta.url).pathname;

Deno.test("listNiftiFiles expands folders and globs, and refuses what is not there", async () => {
  const all = await listNiftiFiles(data);
  deepStrictEqual(all.length, 5);
  deepStrictEqual(await listNiftiFiles(`${data}mni*`), [`${data}mni152_pveseg.nii.gz`]);
  await rejects(() => listNiftiFiles(`${data}nothing-here`), /No such file or folder/);
  await rejects(() => listNiftiFiles(`${data}README.md`), /is not a NIfTI file/);
  await rejects(() => listNiftiFiles(`${data}zzz*`), /No NIfTI files found/);
});

Deno.test("affine inverse and target grids centred on the field of view", () => {
  const a = [[0, -2, 0, 10], [1.5, 0, 0, -20], [0, 0.3, 2.5, 30.5], [0, 0, 0, 1]];
  const product = a.map((row) =>
    [0, 1, 2, 3].map((j) => row.reduce((s, v, k) => s + v * invertAffine(a)[k][j], 0))
  );
  assertClose(product.flat(), [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1], {
    atol: 1e-12,
    name: "A·A⁻¹",
  });
  const g = targetGrid([91, 109, 91], [[2, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], {
    shape: [10, 10, 10],
  });
  // Extent 216 mm over 9 steps → 24 mm voxels; centre (0, −18, 18) mm.
  assertClose([g.affine[0][0], g.affine[1][1]], [24, 24], { name: "spacing" });
  assertClose(
    [g.affine[0][3] + 4.5 * 24, g.affine[1][3] + 4.5 * 24, g.affine[2][3] + 4.5 * 24],
    [0, -18, 18],
    {
      atol: 1e-9,
      name: "grid centre",
    },
  );
});

gpuTest(
  "loadVolume resamples a real template to a small RAS grid in [-1, 1]; labels follow through the affines",
  async () => {
    const img = await loadVolume(`${data}MNI152_2009_template.nii.gz`, {
      shape: [24, 28, 24],
      fov: "foreground",
    });
    deepStrictEqual(img.shape, [24, 28, 24]);
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of img.data) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    deepStrictEqual([lo, hi], [-1, 1]);
    const lab = await loadLabels(`${data}mni152_pveseg.nii.gz`, img);
    deepStrictEqual(new Set(lab.data), new Set([0, 1, 2, 3]));
    // Tissue labels sit where the image is bright: white matter (3) is brighter on average than CSF (1).
    const meanOf = (label: number) => {
      let s = 0;
      let n = 0;
      lab.data.forEach((l, i) => {
        if (l === label) {
          s += img.data[i];
          n++;
        }
      });
      return s / n;
    };
    if (!(meanOf(3) > meanOf(2) && meanOf(2) > meanOf(1))) {
      throw new Error(`T1 intensities by tissue should rise CSF < grey < white: ${[1, 2, 3].map(meanOf)}`);
    }
  },
);
