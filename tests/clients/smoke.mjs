// Smoke test of `warden serve` with the official TypeScript SDK clients: the v1 line
// (@modelcontextprotocol/sdk) and the v2 line for MCP 2026-07-28 (@modelcontextprotocol/client),
// each over stdio and over streamable HTTP. Each checks tools/list (the SDK validates the output
// schemas), a Python run whose structured result the SDK validates against execute_code's output
// schema, and progress notifications that carry the run's output before it ends.
//
//   node tests/clients/smoke.mjs WARDEN_BIN HTTP_URL
//
// Run by tests/clients/run.sh, which installs the pinned clients and starts the HTTP server.
// Prints PASS/FAIL lines and "clients: N passed, M failed"; exits non-zero on any failure.
import * as v1 from "@modelcontextprotocol/sdk/client/index.js";
import * as v1stdio from "@modelcontextprotocol/sdk/client/stdio.js";
import * as v1http from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import * as v2 from "@modelcontextprotocol/client";
import * as v2stdio from "@modelcontextprotocol/client/stdio";

const [bin, url] = process.argv.slice(2);
let passed = 0, failed = 0;
const check = (name, ok, detail) => {
  if (ok) { passed++; console.log(`PASS ${name}`); } else { failed++; console.log(`FAIL ${name}: ${detail}`); }
};

const env = { WARDEN_HOME: process.env.WARDEN_HOME, WARDEN_AUDIT_LOG: process.env.WARDEN_AUDIT_LOG, PATH: process.env.PATH };
// The v2 line speaks 2026-07-28 (server/discover, no initialize) only when asked to.
const modern = { supportedProtocolVersions: ["2026-07-28", "2025-11-25"], versionNegotiation: { mode: "auto" } };
const lines = {
  v1: { Client: v1.Client, options: {}, stdio: () => new v1stdio.StdioClientTransport({ command: bin, args: ["serve"], env }), http: () => new v1http.StreamableHTTPClientTransport(new URL(url)) },
  v2: { Client: v2.Client, options: modern, stdio: () => new v2stdio.StdioClientTransport({ command: bin, args: ["serve"], env }), http: () => new v2.StreamableHTTPClientTransport(new URL(url)) },
};

for (const [line, sdk] of Object.entries(lines)) {
  for (const via of ["stdio", "http"]) {
    const tag = `[${line} ${via}]`;
    const client = new sdk.Client({ name: "warden-smoke", version: "1.0.0" }, sdk.options);
    try {
      await client.connect(sdk[via]());
      if (client.protocolVersion) console.log(`INFO ${tag} protocol ${client.protocolVersion}`);
      const tools = (await client.listTools()).tools.map((t) => t.name);
      check(`${tag} tools/list`, ["execute_code", "create_session", "fork_session", "snapshot_session", "restore_session", "list_snapshots", "delete_snapshot", "close_session"].every((t) => tools.includes(t)), JSON.stringify(tools));
      const r = await client.callTool({ name: "execute_code", arguments: { language: "python", code: "print(6*7)" } });
      check(`${tag} execute_code python print(6*7), output schema validated`, r.structuredContent?.stdout === "42\n" && !r.isError, JSON.stringify(r).slice(0, 400));
      const seen = [];
      const started = Date.now();
      const code = "import time\nprint('first')\ntime.sleep(1.5)\nprint('second')";
      const options = { onprogress: (p) => seen.push([Date.now() - started, p.message]), timeout: 60_000 };
      const params = { name: "execute_code", arguments: { language: "python", code } };
      // v1 takes a result schema before the options; v2 takes the options second.
      const s = line === "v1" ? await client.callTool(params, undefined, options) : await client.callTool(params, options);
      const finished = Date.now() - started;
      const first = seen.find(([, m]) => m && m.includes("first"));
      check(`${tag} progress carries output before the end`, s.structuredContent?.stdout === "first\nsecond\n" && first && finished - first[0] >= 1000,
        `progress ${JSON.stringify(seen)}, result at ${finished} ms`);
    } catch (e) {
      check(`${tag} session`, false, e?.stack ?? String(e));
    } finally {
      await client.close().catch(() => {});
    }
  }
}
console.log(`clients: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
