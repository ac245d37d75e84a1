// The server-sent events parser of the fetch transport (no gateway needed).
import assert from "node:assert/strict";
import { it } from "node:test";
import { readEvents } from "../dist/sse.js";

function streamOf(chunks) {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

it("parses events split anywhere across chunks, CRLF, comments and id-only blocks", async () => {
  const text = "retry: 2000\nid: 7-0\n\n: ping\n\nid: 9-1\nevent: insert\ndata: {\"a\":\ndata: 1}\r\n\r\nevent: reset\ndata: {}\n\n";
  for (const size of [1, 3, 7, text.length]) {
    const chunks = [];
    for (let i = 0; i < text.length; i += size) chunks.push(text.slice(i, i + size));
    const messages = [];
    const ids = [];
    await readEvents(streamOf(chunks), (m) => messages.push(m), (id) => ids.push(id));
    assert.deepEqual(ids, ["7-0", "9-1"], `chunk size ${size}`);
    assert.deepEqual(messages, [
      { event: "insert", data: '{"a":\n1}', id: "9-1" },
      { event: "reset", data: "{}", id: null },
    ]);
  }
});

it("splits UTF-8 characters across chunks correctly", async () => {
  const bytes = new TextEncoder().encode('event: insert\ndata: {"t":"wörld ✓"}\n\n');
  const body = new ReadableStream({
    start(controller) {
      for (const b of bytes) controller.enqueue(new Uint8Array([b]));
      controller.close();
    },
  });
  const messages = [];
  await readEvents(body, (m) => messages.push(m), () => {});
  assert.equal(JSON.parse(messages[0].data).t, "wörld ✓");
});

it("stops reading, and cancels the body, when its signal aborts", async () => {
  let cancelled = false;
  const body = new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode("id: 1-0\n\n"));
    },
    cancel() {
      cancelled = true;
    },
  });
  const stop = new AbortController();
  const ids = [];
  const reading = readEvents(body, () => {}, (id) => (ids.push(id), stop.abort()), stop.signal);
  await reading;
  assert.deepEqual(ids, ["1-0"]);
  assert.equal(cancelled, true);
});
