/**
 * A server-sent events parser for a streaming `fetch` body, where `EventSource` is
 * missing (Node) — the WHATWG rules the gateway's streams need: `id`, `event`, `data`
 * (joined by newlines), comments ignored, a block dispatched at a blank line. An
 * id-only block still moves the id (the gateway sends one first and on idle heartbeats
 * so that a resume starts from there). Aborting `stop` cancels the body: the read ends
 * and the connection closes.
 */

export interface SseMessage {
  event: string;
  data: string;
  id: string | null;
}

export async function readEvents(
  body: ReadableStream<Uint8Array>,
  onMessage: (message: SseMessage) => void,
  onId: (id: string) => void,
  stop?: AbortSignal,
): Promise<void> {
  const reader = body.getReader();
  // stopping cancels the body, which ends the pending read and closes the connection
  const cancel = () => void reader.cancel().catch(() => undefined);
  if (stop?.aborted) cancel();
  else stop?.addEventListener("abort", cancel, { once: true });
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "";
  let data: string[] = [];
  let id: string | null = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let newline: number;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (id !== null) onId(id);
          if (data.length) onMessage({ event: event || "message", data: data.join("\n"), id });
          event = "";
          data = [];
          id = null;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
        else if (field === "id" && !value.includes("\0")) id = value;
      }
    }
  } finally {
    stop?.removeEventListener("abort", cancel);
    try {
      reader.releaseLock();
    } catch {
      /* a read still pending after an error: the stream is done either way */
    }
  }
}
