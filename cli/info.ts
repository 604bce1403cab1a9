/**
 * `deno task info`: print the WebGPU adapter Deno sees, its key limits and features, then run a
 * tiny compute self-check (doubles four numbers on the GPU). Exits 1 if either fails.
 *
 * Placeholder until the engine's `deviceInfo()` is wired in.
 *
 * @module
 */

const adapter = "gpu" in navigator ? await navigator.gpu.requestAdapter() : null;
if (!adapter) {
  console.error("info: no WebGPU adapter (run via `bash scripts/voxgen info` to set one up)");
  Deno.exit(1);
}

const { info, limits } = adapter;
const keyLimits = {
  maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
  maxBufferSize: limits.maxBufferSize,
  maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
  maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
};
console.log(`adapter:   ${info.description || `vendor ${info.vendor}, device ${info.device}`}`);
console.log(`fallback:  ${info.isFallbackAdapter ?? false}${info.isFallbackAdapter ? " (software)" : ""}`);
console.log("limits:");
for (const [name, value] of Object.entries(keyLimits)) console.log(`  ${name.padEnd(34)} ${value}`);
console.log(`features:  ${[...adapter.features].sort().join(", ") || "(none)"}`);

/** Double `[1, 2, 3, 4]` in a compute shader and read it back. */
async function selfCheck(device: GPUDevice): Promise<number[]> {
  const input = new Float32Array([1, 2, 3, 4]);
  const data = device.createBuffer({
    size: input.byteLength,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  });
  const readback = device.createBuffer({
    size: input.byteLength,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(data, 0, input);
  const module = device.createShaderModule({
    code: `@group(0) @binding(0) var<storage, read_write> v: array<f32>;
      @compute @workgroup_size(4) fn main(@builtin(global_invocation_id) id: vec3u) { v[id.x] *= 2.0; }`,
  });
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const bindGroup = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: data } }],
  });
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(1);
  pass.end();
  encoder.copyBufferToBuffer(data, 0, readback, 0, input.byteLength);
  device.queue.submit([encoder.finish()]);
  await readback.mapAsync(GPUMapMode.READ);
  const out = [...new Float32Array(readback.getMappedRange())];
  readback.unmap();
  return out;
}

try {
  const device = await adapter.requestDevice();
  const out = await selfCheck(device);
  device.destroy();
  if (out.join() !== "2,4,6,8") throw new Error(`expected [2,4,6,8], got [${out}]`);
  console.log("self-check: ok (compute shader doubled [1,2,3,4] -> [2,4,6,8])");
} catch (err) {
  console.error(`self-check: FAILED: ${err instanceof Error ? err.message : err}`);
  Deno.exit(1);
}
