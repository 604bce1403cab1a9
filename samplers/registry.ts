/**
 * The sampler registry: the one place that knows sampler names, their aliases and how to build each
 * scheduler. The CLI, the server and every pipeline ask here, so a new sampler is added in one line.
 *
 * @module
 */

import {
  DDIMScheduler,
  DDPMScheduler,
  EulerAncestralScheduler,
  type Scheduler,
  type SchedulerOptions,
} from "./scheduler.ts";

/** A sampler the registry offers. */
export interface SamplerEntry {
  /** Canonical name. */
  name: string;
  /** Other names accepted for it (kept for compatibility). */
  aliases: readonly string[];
  /** One line for help texts. */
  description: string;
  /** Builds the scheduler from the model's schedule options. */
  create(opts: SchedulerOptions): Scheduler;
}

/** Every sampler, in the order help texts list them; the first is the default. */
export const SAMPLER_REGISTRY: readonly SamplerEntry[] = [
  {
    name: "ddim",
    aliases: [],
    description: "DDIM (deterministic with η = 0)",
    create: (o) => new DDIMScheduler(o),
  },
  { name: "ddpm", aliases: [], description: "DDPM ancestral sampling", create: (o) => new DDPMScheduler(o) },
  {
    name: "euler-a",
    // "euler" is the name the server API used first.
    aliases: ["euler"],
    description: "Euler ancestral (k-diffusion's Euler a)",
    create: (o) => new EulerAncestralScheduler(o),
  },
];

/** The canonical sampler names. */
export const SAMPLER_NAMES: readonly string[] = SAMPLER_REGISTRY.map((s) => s.name);

/** Every name a request may use: canonical names, then aliases. */
export const ACCEPTED_SAMPLER_NAMES: readonly string[] = [
  ...SAMPLER_NAMES,
  ...SAMPLER_REGISTRY.flatMap((s) => s.aliases),
];

/** The default sampler's name. */
export const DEFAULT_SAMPLER: string = SAMPLER_NAMES[0];

/** The entry a name or alias refers to, or undefined. */
export function findSampler(name: string): SamplerEntry | undefined {
  return SAMPLER_REGISTRY.find((s) => s.name === name || s.aliases.includes(name));
}

/** Why `name` is not a sampler, in words the CLI and the server both prefix with where it came from. */
export function unknownSamplerMessage(name: string): string {
  return `"${name}" is not one of ${SAMPLER_NAMES.join(", ")}.`;
}

/** Builds the scheduler `name` (or an alias of it) from the model's schedule; throws for an unknown name. */
export function makeScheduler(name: string, opts: SchedulerOptions): Scheduler {
  const entry = findSampler(name);
  if (!entry) throw new Error(`sampler ${unknownSamplerMessage(name)}`);
  // A copy: schedulers keep their options, and the model's must not change under them.
  return entry.create({ ...opts });
}
