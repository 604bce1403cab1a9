/**
 * Probe for a WebGPU adapter, as used by `scripts/voxgen` before running a task.
 *
 * On success prints one JSON line and exits 0, e.g.
 * `{"adapter":"llvmpipe (LLVM 15.0.6, 256 bits)","fallback":true}`.
 * Exits 1 (with the reason on stderr) when `navigator.gpu` is missing or no adapter is available.
 *
 * Usage: `deno run --quiet scripts/probe_gpu.ts`
 *
 * @module
 */

// `navigator.gpu` is typed as always present, but a Deno build without WebGPU lacks it.
const gpu: GPU | undefined = "gpu" in navigator ? navigator.gpu : undefined;
if (!gpu) {
  console.error("probe_gpu: navigator.gpu is missing (this Deno has no WebGPU)");
  Deno.exit(1);
}

let adapter: GPUAdapter | null = null;
try {
  adapter = await gpu.requestAdapter();
} catch (err) {
  console.error(`probe_gpu: requestAdapter() threw: ${err}`);
}
if (!adapter) {
  console.error("probe_gpu: requestAdapter() found no adapter (no usable Vulkan/Metal/DX12/GL driver)");
  Deno.exit(1);
}

const { description, vendor, device, isFallbackAdapter } = adapter.info;
console.log(JSON.stringify({
  adapter: description || `vendor ${vendor}, device ${device}`,
  fallback: isFallbackAdapter ?? false,
}));
