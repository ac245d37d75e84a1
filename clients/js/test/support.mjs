// Real gateway processes for the client's tests: tests/support/js_launcher.py starts the
// embedded PostgreSQL, a project with keys and tables, and 2 `gateway serve` instances,
// and prints one JSON line; closing its stdin stops everything. Also: a job receiver, a
// proxy that can move a client to another instance and drop its connections, and
// polling with a deadline (no fixed sleeps).
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

function python() {
  if (process.env.GATEWAY_PYTHON) return process.env.GATEWAY_PYTHON;
  const venv = path.join(REPO, ".venv/bin/python");
  return existsSync(venv) ? venv : "python3";
}

/** Starts the gateway; resolves to the launcher's JSON plus `stop()`. */
export function startGateway({ receiver } = {}) {
  const args = ["-m", "tests.support.js_launcher"];
  if (receiver) args.push("--receiver", receiver);
  const child = spawn(python(), args, { cwd: REPO, stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    let stdout = "";
    const timer = setTimeout(() => fail(new Error("the gateway did not start in 120 s")), 120_000);
    const fail = (err) => {
      clearTimeout(timer);
      child.kill("SIGTERM");
      reject(new Error(`${err.message}\n${stderr}`));
    };
    child.on("exit", (code) => fail(new Error(`the launcher exited with ${code}`)));
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
      const newline = stdout.indexOf("\n");
      if (newline < 0) return;
      clearTimeout(timer);
      child.removeAllListeners("exit");
      const info = JSON.parse(stdout.slice(0, newline));
      info.stop = () =>
        new Promise((done) => {
          if (child.exitCode !== null) return done();
          child.on("exit", done);
          child.stdin.end();
        });
      info.output = () => stderr;
      resolve(info);
    });
  });
}

/** An HTTP server recording what arrives: jobs the gateway delivers. `respond(req)`
 * decides the status (default 200). */
export function startReceiver(respond = () => 200) {
  const deliveries = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const raw = Buffer.concat(chunks);
      const delivery = { headers: req.headers, raw, body: JSON.parse(raw.toString() || "null") };
      deliveries.push(delivery);
      res.writeHead(respond(delivery), { "content-type": "application/json" });
      res.end('{"ok":true}');
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}/jobs`,
        deliveries,
        close: () => new Promise((done) => server.close(done)),
      }),
    ),
  );
}

/** A reverse proxy in front of one instance; `moveTo(url)` sends new connections to
 * another and `dropAll()` cuts every open one (a load balancer losing a backend). */
export function startProxy(target) {
  const state = { target };
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    const upstream = http.request(state.target + req.url, { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        moveTo: (url) => (state.target = url),
        dropAll: () => sockets.forEach((s) => s.destroy()),
        close: () => {
          sockets.forEach((s) => s.destroy());
          return new Promise((done) => server.close(done));
        },
      }),
    ),
  );
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function until(check, timeoutMs = 15_000, what = "the condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export function email(prefix = "u") {
  return `${prefix}-${Math.random().toString(36).slice(2, 10)}@example.com`;
}
