/**
 * Dataset manifests for conditional training: a JSON list of volumes, each with the condition it is an
 * example of — a concept or prompt (cross-attention on learned tokens), a class label, and/or a condition
 * volume (concatenated as extra input channels).
 *
 * ```json
 * { "items": [
 *   { "file": "t1/a.nii.gz", "concept": "<t1>" },
 *   { "file": "t2/b.nii.gz", "prompt": "<t2syn> <lesion>", "class": 1, "condition": "b_mask.nii.gz" }
 * ] }
 * ```
 *
 * A bare array of items is accepted too. Paths are relative to the manifest's folder.
 *
 * @module
 */

import { parsePrompt } from "../models/prompt.ts";

/** One training volume and its condition. */
export interface ManifestItem {
  /** The volume (absolute, or relative to the working directory once read). */
  file: string;
  /** Its tokens (from `concept` or `prompt`); empty = the null prompt. */
  tokens: string[];
  /** Its class label, when the manifest has classes. */
  classLabel?: number;
  /** Its condition volume, when the manifest has them. */
  condition?: string;
}

/** A read manifest. */
export interface Manifest {
  /** The items, in file order. */
  items: ManifestItem[];
  /** Every concept used, in order of first use. */
  concepts: string[];
  /** Number of classes (highest label + 1), or 0 without classes. */
  classes: number;
  /** Whether the items have condition volumes. */
  hasConditions: boolean;
}

const ITEM_FIELDS = ["file", "concept", "prompt", "class", "condition"];

/** Whether a data spec names a manifest (a .json file) rather than NIfTI files. */
export function isManifestPath(spec: string): boolean {
  return spec.toLowerCase().endsWith(".json");
}

/** Reads and checks a manifest file; paths are resolved against its folder. */
export async function readManifest(path: string): Promise<Manifest> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new Error(`manifest ${path}: cannot read it (${(error as Error).message}).`);
  }
  const slash = path.lastIndexOf("/");
  return parseManifest(text, slash >= 0 ? path.slice(0, slash) : ".", path);
}

/** Parses manifest JSON `text` (paths relative to `baseDir`); `source` names it in errors. */
export function parseManifest(text: string, baseDir: string, source = "manifest"): Manifest {
  const fail = (why: string): never => {
    throw new Error(`${source}: ${why}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    fail(`not valid JSON (${(error as Error).message}).`);
  }
  const list = Array.isArray(json) ? json : (json as { items?: unknown })?.items;
  if (!Array.isArray(list) || list.length === 0) {
    fail(
      'expected a non-empty list of items, or { "items": [...] }; an item is { "file", "concept" | "prompt", "class", "condition" }.',
    );
  }
  const resolve = (p: string) => (p.startsWith("/") ? p : `${baseDir}/${p}`);
  const items: ManifestItem[] = [];
  const concepts: string[] = [];
  for (const [i, raw] of (list as unknown[]).entries()) {
    const where = `item ${i}`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail(`${where} is not an object.`);
    const item = raw as Record<string, unknown>;
    const unknown = Object.keys(item).filter((k) => !ITEM_FIELDS.includes(k));
    if (unknown.length) {
      fail(`${where} has unknown field(s) ${unknown.join(", ")}; accepted: ${ITEM_FIELDS.join(", ")}.`);
    }
    if (typeof item.file !== "string" || item.file === "") fail(`${where} needs "file" (a NIfTI path).`);
    if (item.concept !== undefined && item.prompt !== undefined) {
      fail(`${where} has both "concept" and "prompt"; give one.`);
    }
    const text = item.concept ?? item.prompt ?? "";
    if (typeof text !== "string") fail(`${where}: "concept"/"prompt" must be a string.`);
    let tokens: string[] = [];
    try {
      const parts = parsePrompt(text as string);
      if (parts.length > 1 || parts.some((p) => p.weight !== 1)) {
        fail(`${where}: a training prompt is a list of tokens, without AND or weights (got "${text}").`);
      }
      tokens = parts[0]?.tokens ?? [];
    } catch (error) {
      fail(`${where}: ${(error as Error).message}`);
    }
    for (const t of tokens) if (!concepts.includes(t)) concepts.push(t);
    const out: ManifestItem = { file: resolve(item.file as string), tokens };
    if (item.class !== undefined) {
      if (!Number.isInteger(item.class) || (item.class as number) < 0) {
        fail(`${where}: "class" must be an integer ≥ 0 (got ${JSON.stringify(item.class)}).`);
      }
      out.classLabel = item.class as number;
    }
    if (item.condition !== undefined) {
      if (typeof item.condition !== "string") fail(`${where}: "condition" must be a NIfTI path.`);
      out.condition = resolve(item.condition as string);
    }
    items.push(out);
  }
  const withClass = items.filter((i) => i.classLabel !== undefined).length;
  if (withClass !== 0 && withClass !== items.length) {
    fail(`${withClass} of ${items.length} items have a class; give every item one, or none.`);
  }
  const withCondition = items.filter((i) => i.condition !== undefined).length;
  if (withCondition !== 0 && withCondition !== items.length) {
    fail(`${withCondition} of ${items.length} items have a condition volume; give every item one, or none.`);
  }
  const classes = withClass ? Math.max(...items.map((i) => i.classLabel!)) + 1 : 0;
  return { items, concepts, classes, hasConditions: withCondition > 0 };
}
