// Retries are the caller's choice: a 429 comes back as it is unless maxRetries asks the
// client to wait Retry-After and try again (a scripted fetch: no gateway needed).
import assert from "node:assert/strict";
import { it } from "node:test";
import { createClient } from "easymode-client";

function scripted(statuses) {
  const calls = [];
  const fetch = async (url) => {
    calls.push(url);
    const status = statuses[Math.min(calls.length - 1, statuses.length - 1)];
    const body = status === 200
      ? { data: [], error: null, count: 0, status }
      : { data: null, error: { code: "RATE_LIMIT_EXCEEDED", message: "slow down" }, status };
    return new Response(JSON.stringify(body), { status, headers: { "retry-after": "0", "x-request-id": `r${calls.length}` } });
  };
  return { fetch, calls };
}

it("does not retry a 429 by default", async () => {
  const { fetch, calls } = scripted([429, 200]);
  const em = createClient({ url: "http://gateway.invalid", apiKey: "sheen_sk_x", fetch });
  const r = await em.db.from("todos").select().execute();
  assert.equal(r.status, 429);
  assert.equal(r.error.retryAfter, 0);
  assert.equal(r.error.requestId, "r1");
  assert.equal(calls.length, 1);
});

it("retries up to maxRetries after Retry-After when asked", async () => {
  const { fetch, calls } = scripted([429, 429, 200]);
  const em = createClient({ url: "http://gateway.invalid", apiKey: "sheen_sk_x", fetch, maxRetries: 2 });
  const r = await em.db.from("todos").select().execute();
  assert.equal(r.error, null);
  assert.equal(calls.length, 3);
  const { fetch: f2, calls: c2 } = scripted([429]);
  const once = createClient({ url: "http://gateway.invalid", apiKey: "sheen_sk_x", fetch: f2, maxRetries: 1 });
  assert.equal((await once.db.from("todos").select().execute()).status, 429);
  assert.equal(c2.length, 2);
});
