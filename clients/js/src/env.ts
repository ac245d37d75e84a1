/** Where the client runs: a browser page (a `window` with a `document`) or not. A server
 * key in a browser would be readable by anyone who opens the page, so this decides what
 * the client refuses. */
export function isBrowser(): boolean {
  const g = globalThis as { window?: { document?: unknown } };
  return typeof g.window === "object" && g.window !== null && typeof g.window.document !== "undefined";
}

export type KeyType = "public" | "server" | "admin" | "unknown";

/** The key's type, from its prefix (`sheen_pk_`, `sheen_sk_`, `sheen_ak_`). */
export function keyType(apiKey: string): KeyType {
  if (apiKey.startsWith("sheen_pk_")) return "public";
  if (apiKey.startsWith("sheen_sk_")) return "server";
  if (apiKey.startsWith("sheen_ak_")) return "admin";
  return "unknown";
}

export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done);
  });
}
