"""OpenTelemetry traces of a real `warden serve --http`, read with the official OTLP definitions.

The server writes OTLP-JSON lines to a file and sends OTLP/HTTP to a collector this script runs
on loopback, both under its own Landlock and seccomp confinement. What arrives is parsed with
PyPI `opentelemetry-proto` (strictly: an unknown field fails), then checked: the span tree of a
tool call under the caller's `_meta` traceparent (the HTTP traceparent as a link), the
semantic-convention attributes, the executor's phases inside the run, a JSON-RPC error's span,
no code in spans unless the profile records code, and the same trace id in the audit records.

    otel.py WARDEN_BIN
"""

import asyncio
import base64
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

BIN = sys.argv[1]
META_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
META_SPAN = "00f067aa0ba902b7"
HTTP_TRACE = "0af7651916cd43dd8448eb211c80319c"
HTTP_SPAN = "b7ad6b7169203331"
MARKER = "code-marker-7f3a"


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"  ok: {what}")


class Collector(http.server.BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector: keeps every export request it gets."""

    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf":
            Collector.received.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            out = ExportTraceServiceResponse().SerializeToString()
        else:
            print(f"  collector: refused {self.path} {self.headers['content-type']}", file=sys.stderr)
            self.send_response(400)
            out = b""
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def serve(tmp, name, extra, log=None):
    audit = os.path.join(tmp, f"{name}-audit.jsonl")
    proc = subprocess.Popen(
        [BIN, "serve", "--http", "127.0.0.1:0", "--audit-log", audit, "--executors", "1", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        m = re.search(r"serving MCP at (http://\S+)", line)
        if m:
            # The rest of its log goes to ours, for a failure's reader.
            def drain():
                for l in proc.stderr:
                    sys.stderr.write(f"  [{name}] {l}")
                    if log is not None:
                        log.append(l)

            threading.Thread(target=drain, daemon=True).start()
            return proc, m.group(1), audit
    raise AssertionError(f"{name}: the server did not start (exit {proc.wait()})")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    check(proc.wait(timeout=30) == 0, "the server stops cleanly on SIGTERM (flushing its spans)")


def rpc(url, method, params, headers=None, name=None, rid=1):
    params = dict(params)
    meta = params.setdefault("_meta", {})
    meta["io.modelcontextprotocol/protocolVersion"] = "2026-07-28"
    meta["io.modelcontextprotocol/clientCapabilities"] = {}
    body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode()
    h = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
    }
    if name:
        h["mcp-name"] = name
    h.update(headers or {})
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=h), timeout=60) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("data: ") and '"id"' in line:
            return json.loads(line[6:])
    return json.loads(text)


def spans_of(requests):
    """Every span in `requests`, with its resource's attributes."""
    out = []
    for req in requests:
        for rs in req.resource_spans:
            resource = {a.key: a.value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append((resource, s))
    return out


ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def ids_to_base64(v):
    """OTLP/JSON writes trace and span ids as hex where protobuf's JSON mapping has base64 (the
    one documented difference): convert them so the standard parser reads them."""
    if isinstance(v, dict):
        return {k: base64.b64encode(bytes.fromhex(x)).decode() if k in ID_FIELDS and isinstance(x, str) else ids_to_base64(x)
                for k, x in v.items()}
    if isinstance(v, list):
        return [ids_to_base64(x) for x in v]
    return v


def read_file(path):
    requests = []
    with open(path) as f:
        for line in f:
            # Strict: a field the official definitions do not know fails the parse.
            requests.append(json_format.ParseDict(ids_to_base64(json.loads(line)), ExportTraceServiceRequest()))
    return requests


def attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value if v.HasField("int_value") else v
    return out


def audit_lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
        threading.Thread(target=collector.serve_forever, daemon=True).start()
        port = collector.server_address[1]
        trace_file = os.path.join(tmp, "traces.jsonl")

        print("a tool call under the caller's trace, to a file and a collector:")
        proc, url, audit = serve(tmp, "a", ["--otlp-file", trace_file, "--otlp-endpoint", f"http://127.0.0.1:{port}"])
        code = f"open('out.txt', 'w').write('x')\nprint('{MARKER}')"
        http_parent = {"traceparent": f"00-{HTTP_TRACE}-{HTTP_SPAN}-01"}
        r = rpc(
            url,
            "tools/call",
            {"name": "execute_code", "arguments": {"language": "python", "code": code},
             "_meta": {"traceparent": f"00-{META_TRACE}-{META_SPAN}-01", "tracestate": "vendor=abc"}},
            headers=http_parent,
            name="execute_code",
        )
        check(MARKER in json.dumps(r["result"]) and not r["result"].get("isError"), "the call ran")
        r = rpc(url, "tools/list", {}, headers=http_parent, rid=2)
        check(len(r["result"]["tools"]) > 0, "tools/list answered")
        r = rpc(url, "tools/call", {"name": "no_such_tool", "arguments": {}}, name="no_such_tool", rid=3)
        check("error" in r, "an unknown tool is a JSON-RPC error")
        stop(proc)

        from_file = spans_of(read_file(trace_file))
        from_collector = spans_of(Collector.received)
        check(len(from_file) >= 12, f"the file holds the spans ({len(from_file)})")
        ids = lambda spans: sorted(s.span_id.hex() for _, s in spans)
        check(ids(from_file) == ids(from_collector), "the collector got the same spans over OTLP/HTTP, through the confinement")
        resource = from_file[0][0]
        check(resource["service.name"].string_value == "warden", "resource service.name is warden")

        spans = [s for _, s in from_file]
        by_id = {s.span_id.hex(): s for s in spans}
        call = [s for s in spans if s.name == "tools/call execute_code"]
        check(len(call) == 1, "one span for the tools/call, named after the tool")
        call = call[0]
        a = attrs(call)
        check(call.kind == Span.SPAN_KIND_SERVER, "it is a SERVER span")
        check(call.trace_id.hex() == META_TRACE and call.parent_span_id.hex() == META_SPAN, "its parent is the _meta traceparent")
        check(call.trace_state == "vendor=abc", "the caller's tracestate is kept")
        check([l.trace_id.hex() for l in call.links] == [HTTP_TRACE], "the HTTP traceparent is a link")
        check(a["mcp.method.name"] == "tools/call" and a["gen_ai.tool.name"] == "execute_code", "mcp.method.name, gen_ai.tool.name")
        check(a["gen_ai.operation.name"] == "execute_tool" and a["jsonrpc.request.id"] == "1", "gen_ai.operation.name, jsonrpc.request.id")
        check(a["network.transport"] == "tcp" and a["mcp.protocol.version"] == "2026-07-28", "network.transport, mcp.protocol.version")
        check(a["warden.outcome"] == "ok" and a["warden.language"] == "python", "warden.outcome, warden.language")
        check("error.type" not in a and call.status.code != 2, "a call that succeeded has no error")

        children = [s for s in spans if s.parent_span_id == call.span_id]
        names = sorted(s.name for s in children)
        check(
            names == ["warden.admission", "warden.artifacts.retain", "warden.audit.write", "warden.audit.write", "warden.execute"],
            f"the call's stages: {names}",
        )
        check(
            sorted(attrs(s)["warden.audit.event"] for s in children if s.name == "warden.audit.write") == ["execution", "execution.start"],
            "both audit writes",
        )
        run = next(s for s in children if s.name == "warden.execute")
        phases = sorted((s.start_time_unix_nano, s.name) for s in spans if s.parent_span_id == run.span_id)
        # A guest prepared ahead is claimed (warden.guest.claim) where a new one is started.
        check(
            [n for _, n in phases] in (
                ["warden.inputs", "warden.guest.start", "warden.guest.run", "warden.artifacts.collect"],
                ["warden.inputs", "warden.guest.claim", "warden.guest.run", "warden.artifacts.collect"],
            ),
            f"the executor's phases, in order, inside the run: {[n for _, n in phases]}",
        )
        for s in children + [by_id[p] for p in by_id if by_id[p].parent_span_id == run.span_id]:
            parent = by_id[s.parent_span_id.hex()]
            check(
                s.trace_id == call.trace_id and parent.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano,
                f"{s.name} lies in its trace and starts within its parent",
            )
        guest_run = next(s for s in spans if s.name == "warden.guest.run")
        check(guest_run.end_time_unix_nano > guest_run.start_time_unix_nano, "the guest's run took time")
        check(all(MARKER not in str(s) for s in spans), "no span holds the code (the profile does not record code)")

        listing = next(s for s in spans if s.name == "tools/list")
        check(
            listing.trace_id.hex() == HTTP_TRACE and listing.parent_span_id.hex() == HTTP_SPAN,
            "without _meta context, the HTTP traceparent is the parent",
        )
        unknown = next(s for s in spans if s.name == "tools/call no_such_tool")
        check(attrs(unknown)["error.type"] == "-32602" and unknown.status.code == 2, "a JSON-RPC error sets error.type and ERROR status")

        lines = audit_lines(audit)
        start = next(l for l in lines if l.get("kind") == "execution.start")
        end = next(l for l in lines if l.get("kind") == "execution")
        check(start["trace_id"] == META_TRACE and end["trace_id"] == META_TRACE, "the audit records carry the trace id")
        check(start["call_id"] == a["warden.call.id"], "the span names the audited call")
        server_start = next(l for l in lines if l.get("kind") == "server.start")
        landlock = server_start["hardening"]["landlock"]
        if landlock["status"] == "full":
            check(landlock.get("connect_tcp") == [port], "Landlock lets the front connect to the collector's port only")
        else:
            print(f"  SKIPPED: Landlock is {landlock['status']} here; the collector port rule is not checked")
        seccomp = server_start["hardening"]["seccomp"]["status"]
        if seccomp == "enforced":
            check(True, "seccomp was enforced while the spans went out")
        else:
            print(f"  SKIPPED: seccomp is {seccomp} here; export under the filter is not checked")

        print("a profile that records code puts it in the span; a caller without context gets a new trace;")
        print("a tool called from code is a span of its own:")
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        profile = os.path.join(tmp, "recording.toml")
        with open(os.path.join(root, "policies", "default.toml")) as f:
            text = f.read()
        text = re.sub(r'(?m)^name = "default"', 'name = "recording"', text)
        text = re.sub(r"(?m)^record_code = false", "record_code = true", text)
        text = text.replace("[hardening]", '[tools]\nallowed = ["json_query"]\ncalls_per_execution = 1\n\n[hardening]')
        with open(profile, "w") as f:
            f.write(text)
        trace_file_b = os.path.join(tmp, "b-traces.jsonl")
        tools = os.path.join(root, "examples", "json_query", "package")
        proc, url, audit = serve(tmp, "b", ["--policy", profile, "--otlp-file", trace_file_b, "--tools", tools])
        code = f"from host import tools\nprint('{MARKER}', tools.json_query(document={{'a': [1, 2]}}, query='$.a[1]')['count'])"
        r = rpc(url, "tools/call", {"name": "execute_code", "arguments": {"language": "python", "code": code}}, name="execute_code")
        check(f"{MARKER} 1" in json.dumps(r["result"]), "the call ran, calling a tool from code")
        stop(proc)
        spans = [s for _, s in spans_of(read_file(trace_file_b))]
        call = next(s for s in spans if s.name == "tools/call execute_code")
        check(MARKER in attrs(call)["gen_ai.tool.call.arguments"], "gen_ai.tool.call.arguments holds the code")
        check(call.parent_span_id == b"" and len(call.trace_id) == 16, "a root span of a new trace")
        lines = audit_lines(audit)
        start = next(l for l in lines if l.get("kind") == "execution.start")
        check(start["trace_id"] == call.trace_id.hex(), "the audit record carries the server's trace id")
        run = next(s for s in spans if s.name == "warden.execute" and s.parent_span_id == call.span_id)
        guest = next(s for s in spans if s.name == "warden.guest.run" and s.parent_span_id == run.span_id)
        nested = [s for s in spans if s.name == "execute_tool json_query"]
        check(len(nested) == 1 and nested[0].parent_span_id == call.span_id, "the nested call is an execute_tool span of the call")
        check(guest.start_time_unix_nano <= nested[0].start_time_unix_nano <= guest.end_time_unix_nano, "it happened while the guest ran")
        check(any(s.name == "warden.guest.run" and s.trace_id == call.trace_id and s.parent_span_id != run.span_id for s in spans),
              "the tool's own run is traced under it")
        nested_audit = next(l for l in lines if l.get("kind") == "tool.call.start")
        check(nested_audit["trace_id"] == call.trace_id.hex() and nested_audit["call_id"] == attrs(nested[0])["warden.call.id"],
              "the nested call's audit record carries the trace id and the span's call id")

        print("a collector that is down: the call is served, the failure counted and logged:")
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
        closed.close()
        log = []
        proc, url, _ = serve(tmp, "d", ["--otlp-endpoint", f"http://127.0.0.1:{dead_port}"], log)
        r = rpc(url, "tools/call", {"name": "execute_code", "arguments": {"language": "python", "code": "print(1)"}}, name="execute_code")
        check(not r["result"].get("isError"), "the call ran")
        deadline = time.monotonic() + 15
        while True:
            metrics = urllib.request.urlopen(url.replace("/mcp", "/metrics"), timeout=10).read().decode()
            failed = re.search(r"(?m)^warden_trace_export_failures_total (\d+)", metrics)
            if (failed and int(failed.group(1)) >= 1) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        check(failed and int(failed.group(1)) >= 1, "warden_trace_export_failures_total counts the failed export")
        stop(proc)
        check(sum("exporting trace spans failed" in l for l in log) == 1, "one warning in the log (at most once a minute)")

        print("over stdio, with the official MCP Python SDK passing the context in _meta:")
        trace_file_c = os.path.join(tmp, "c-traces.jsonl")
        asyncio.run(stdio_call(tmp, trace_file_c))
        # The SDK may return before the server has finished exiting: wait for its last export.
        deadline = time.monotonic() + 15
        while True:
            spans = [s for _, s in spans_of(read_file(trace_file_c))]
            if any(s.name == "tools/call execute_code" for s in spans) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        call = next(s for s in spans if s.name == "tools/call execute_code")
        a = attrs(call)
        check(call.trace_id.hex() == META_TRACE and call.parent_span_id.hex() == META_SPAN, "its parent is the _meta traceparent")
        check(a["network.transport"] == "pipe" and a["warden.principal"] == "operator", "network.transport pipe, the operator")
        check(any(s.name == "warden.guest.run" and s.trace_id == call.trace_id for s in spans), "the guest's run is in the trace")
        collector.shutdown()
    print("otel: all checks passed")


async def stdio_call(tmp, trace_file):
    from mcp import ClientSession, StdioServerParameters, stdio_client

    env = {"WARDEN_AUDIT_LOG": os.path.join(tmp, "c-audit.jsonl"), "WARDEN_OTLP_FILE": trace_file}
    if os.environ.get("WARDEN_HOME"):
        env["WARDEN_HOME"] = os.environ["WARDEN_HOME"]
    params = StdioServerParameters(command=BIN, args=["serve", "--executors", "1"], env=env)
    with open(os.path.join(tmp, "c.stderr"), "w") as err:
        async with stdio_client(params, errlog=err) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                r = await session.call_tool(
                    "execute_code",
                    {"language": "python", "code": "print(6*7)"},
                    meta={"traceparent": f"00-{META_TRACE}-{META_SPAN}-01"},
                )
                check(not r.is_error and "42" in str(r.content), "the call ran over stdio")
    # The client closed stdin: the server drained and flushed its spans on the way out.


if __name__ == "__main__":
    main()
