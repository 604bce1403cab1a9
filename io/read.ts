/**
 * Reading a whole file given as a path or a URL, so that files shipped with the code (the default model,
 * the viewer page) are found next to `import.meta.url` whether the code runs from a checkout
 * (`file:`) or from a web server (`http:`, `https:`).
 *
 * @module
 */

/** Whether `source` is a URL voxgen reads (`file:`, `http:`, `https:`) rather than a path. */
export function isUrl(source: string | URL): boolean {
  return source instanceof URL || /^(file|https?):\/\//i.test(source);
}

/**
 * A path for a `file:` URL (spaces and other escapes decoded, unlike `URL.pathname`), or the URL itself for
 * any other scheme: what to show people and pass to path-based code when the file is local.
 */
export function pathOrUrl(url: URL): string {
  return url.protocol === "file:" ? filePath(url) : url.href;
}

/** The path of a `file:` URL: escapes decoded, and `/C:/x` read as `C:\x` on Windows. */
function filePath(url: URL): string {
  const path = decodeURIComponent(url.pathname);
  return /^\/[A-Za-z]:\//.test(path) ? path.slice(1).replaceAll("/", "\\") : path;
}

/** Reads all bytes of a file path or URL; errors name the source and what went wrong. */
export async function readBytes(source: string | URL): Promise<Uint8Array> {
  const url = isUrl(source) ? new URL(source) : null;
  if (url && url.protocol !== "file:") {
    let response: Response;
    try {
      response = await fetch(url);
    } catch (error) {
      throw new Error(`Could not fetch ${url.href}: ${(error as Error).message}`);
    }
    if (!response.ok) {
      await response.body?.cancel();
      throw new Error(`Could not fetch ${url.href}: HTTP ${response.status} ${response.statusText}`);
    }
    return new Uint8Array(await response.arrayBuffer());
  }
  // Deno's own errors name the path and keep their class (Deno.errors.NotFound, …).
  return await Deno.readFile(url ?? source);
}

/** Reads a UTF-8 text file given as a path or URL (see {@linkcode readBytes}). */
export async function readText(source: string | URL): Promise<string> {
  return new TextDecoder().decode(await readBytes(source));
}
