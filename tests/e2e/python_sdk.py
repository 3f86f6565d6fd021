#!/usr/bin/env python3
"""End-to-end check of `warden serve` with a client we did not write: the official MCP Python SDK.

Usage: python_sdk.py [WARDEN_BIN]   (or env WARDEN_BIN; default /work/main/target/release/warden)

Run it with tests/e2e/run_python_sdk.sh, which installs the pinned SDK into a venv first.

What it does, each step printed as a PASS or FAIL line:
  * stdio, the SDK's `stdio_client` + `ClientSession.initialize()` (the initialize handshake):
    tools/list, Python and JavaScript runs, progress messages that carry a run's output before
    it ends, a matplotlib chart and a text artifact read back with resources/read, a Python
    session, an invalid-params error and a call after it;
  * the same suite over stdio with the SDK's high-level `Client` in its default mode, which
    probes `server/discover` and speaks the newest protocol revision both sides support, then a
    call the client gives up on, whose guest must stop (the audit log says cancelled);
  * streamable HTTP (`warden serve --http 127.0.0.1:0`): a Python run with the SDK's
    `streamable_http_client` and with `Client(url)`, then SIGTERM, which must end the server
    with status 0 within 15 s;
  * a server with JWT authentication: 401 without a token, and the SDK's own discovery helpers
    find and parse the protected-resource metadata it points to.

MCP tasks are not checked here: SDK 2.3.0 has no client side for the tasks extension
(tests/mcp/tasks.rs drives them over HTTP).

Every server this script starts shares one audit log in a fresh temporary directory, so the test
never touches the installation's own log. The last line is "e2e: N passed, M failed"; the exit
status is non-zero when anything failed or nothing ran.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp.types as types
from mcp import Client, ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
    handle_protected_resource_response,
)
import httpx2

DEFAULT_BIN = "/work/main/target/release/warden"
INVALID_PARAMS = -32602
# Per request; the slowest call here (matplotlib) takes a few seconds.
REQUEST_TIMEOUT_S = 120.0
# For one whole suite (server start, every call, shutdown).
SUITE_TIMEOUT_S = 600.0
HTTP_STARTUP_TIMEOUT_S = 60.0
SIGTERM_EXIT_TIMEOUT_S = 15.0

PLOT_TEXT = "written by the e2e test\nsecond line\n"
PLOT_CODE = f"""\
import matplotlib.pyplot as plt
plt.plot([1, 2, 3])
plt.savefig('plot.png')
with open('out.txt', 'w') as f:
    f.write({PLOT_TEXT!r})
"""


# --------------------------------------------------------------------------------------------
# Reporting


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, name: str, info: str = "") -> None:
        self.passed += 1
        print(f"PASS {name}" + (f" ({info})" if info else ""), flush=True)

    def fail(self, name: str, detail: str) -> None:
        self.failed += 1
        detail = detail.strip().replace("\n", "\n     ")
        print(f"FAIL {name}: {detail}", flush=True)

    def check(self, name: str, cond: bool, detail: str = "", info: str = "") -> bool:
        if cond:
            self.ok(name, info)
        else:
            self.fail(name, detail or "condition not met")
        return cond

    def info(self, text: str) -> None:
        print(f"INFO {text}", flush=True)


def describe(exc: BaseException) -> str:
    """A readable one-exception summary, looking through anyio's exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        return f"MCPError {exc.code}: {exc.message}" + (f" (data: {exc.data!r})" if exc.data is not None else "")
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def short(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


# --------------------------------------------------------------------------------------------
# The checks, run against any connected SDK object offering list_tools / call_tool /
# read_resource (a `ClientSession` or a `Client`).

Conn = Any


async def call(conn: Conn, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
    return await conn.call_tool(tool, arguments, read_timeout_seconds=REQUEST_TIMEOUT_S)


def result_text(r: types.CallToolResult) -> str:
    return "\n".join(c.text for c in r.content if isinstance(c, types.TextContent))


async def run_hello(report: Report, conn: Conn, tag: str, name: str = "execute_code python print(6*7)") -> None:
    """execute_code python `print(6*7)`: outcome ok, stdout "42\\n", isError false."""
    name = f"[{tag}] {name}"
    try:
        r = await call(conn, "execute_code", {"language": "python", "code": "print(6*7)"})
    except Exception as e:
        report.fail(name, describe(e))
        return
    s = r.structured_content if isinstance(r.structured_content, dict) else {}
    problems = []
    if r.is_error is not False:
        problems.append(f"isError is {r.is_error!r}, expected false")
    if s.get("outcome") != "ok":
        problems.append(f"structuredContent.outcome is {s.get('outcome')!r}, expected 'ok'")
    if s.get("stdout") != "42\n":
        problems.append(f"structuredContent.stdout is {s.get('stdout')!r}, expected '42\\n'")
    report.check(name, not problems, "; ".join(problems) + f"; result: {short(r.model_dump(by_alias=True, exclude_none=True))}")


async def step(report: Report, name: str, body: Callable[[], Awaitable[None]]) -> None:
    """Runs one check whose body reports its own PASS; an exception is this check's FAIL."""
    try:
        await body()
    except Exception as e:
        report.fail(name, describe(e))


async def suite(report: Report, conn: Conn, tag: str) -> None:
    # tools/list
    async def tools() -> None:
        name = f"[{tag}] tools/list"
        listed = await conn.list_tools()
        by_name = {t.name: t for t in listed.tools}
        missing = [t for t in ("execute_code", "create_session", "fork_session", "snapshot_session", "restore_session", "list_snapshots", "delete_snapshot", "close_session") if t not in by_name]
        if not report.check(
            f"{name} offers execute_code, the session tools and the snapshot tools",
            not missing,
            f"missing {missing}; listed {sorted(by_name)}",
        ):
            return
        schema = by_name["execute_code"].input_schema or {}
        lang = (schema.get("properties") or {}).get("language")
        enum = _language_enum(schema, lang)
        report.check(
            f"{name} execute_code inputSchema.language has enum ['python', 'javascript']",
            enum == ["python", "javascript"],
            f"language property: {short(lang)}; resolved enum: {enum!r}; schema: {short(schema, 1500)}",
        )

    await step(report, f"[{tag}] tools/list", tools)

    await run_hello(report, conn, tag)

    # JavaScript
    async def javascript() -> None:
        name = f"[{tag}] execute_code javascript console.log([1,2].map(x => x*2))"
        r = await call(conn, "execute_code", {"language": "javascript", "code": "console.log([1,2].map(x => x*2))"})
        s = r.structured_content if isinstance(r.structured_content, dict) else {}
        report.check(
            name,
            s.get("stdout") == "[ 2, 4 ]\n" and s.get("outcome") == "ok" and r.is_error is False,
            f"stdout {s.get('stdout')!r} (expected '[ 2, 4 ]\\n'), outcome {s.get('outcome')!r}, isError {r.is_error!r}; "
            f"stderr {s.get('stderr')!r}",
        )

    await step(report, f"[{tag}] execute_code javascript", javascript)

    # Output while it runs: progress notifications carry the new output before the result.
    async def streamed() -> None:
        name = f"[{tag}] execute_code python progress messages carry output while it runs"
        seen: list[tuple[float, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((time.monotonic(), message))

        code = "import time\nprint('first')\ntime.sleep(1.5)\nprint('second')"
        r = await conn.call_tool(
            "execute_code",
            {"language": "python", "code": code},
            read_timeout_seconds=REQUEST_TIMEOUT_S,
            progress_callback=on_progress,
        )
        finished = time.monotonic()
        s = r.structured_content if isinstance(r.structured_content, dict) else {}
        firsts = [t for t, m in seen if m and "first" in m]
        report.check(
            name,
            s.get("stdout") == "first\nsecond\n" and bool(firsts) and finished - firsts[0] >= 1.0,
            f"stdout {s.get('stdout')!r}; progress messages {[m for _, m in seen]!r}; "
            f"result {finished - firsts[0] if firsts else None!r} s after the first chunk (expected >= 1.0)",
        )

    await step(report, f"[{tag}] execute_code python streamed output", streamed)

    # matplotlib chart + text file
    async def artifacts() -> None:
        name = f"[{tag}] execute_code python matplotlib + out.txt"
        r = await call(conn, "execute_code", {"language": "python", "code": PLOT_CODE})
        s = r.structured_content if isinstance(r.structured_content, dict) else {}
        if not report.check(
            f"{name}: outcome ok",
            s.get("outcome") == "ok" and r.is_error is False,
            f"outcome {s.get('outcome')!r}, isError {r.is_error!r}, message {s.get('message')!r}, "
            f"stderr {str(s.get('stderr'))[-1500:]!r}",
        ):
            return
        kinds = [c.type for c in r.content]
        images = [c for c in r.content if isinstance(c, types.ImageContent)]
        png = [c for c in images if c.mime_type == "image/png"]
        png_ok = False
        if png:
            try:
                png_ok = base64.b64decode(png[0].data, validate=True).startswith(b"\x89PNG\r\n\x1a\n")
            except ValueError:
                png_ok = False
        report.check(
            f"{name}: image content block with mimeType image/png holding a PNG",
            png_ok,
            f"content block types {kinds}; image mime types {[c.mime_type for c in images]}",
        )
        links = [c for c in r.content if isinstance(c, types.ResourceLink)]
        out_links = [c for c in links if c.name == "out.txt" or c.uri.rstrip("/").endswith("/out.txt")]
        if not report.check(
            f"{name}: resource_link for out.txt",
            bool(out_links),
            f"content block types {kinds}; resource links {[(c.name, c.uri) for c in links]}",
            info=out_links[0].uri if out_links else "",
        ):
            return
        link = out_links[0]
        read = await conn.read_resource(link.uri)
        texts = [c for c in read.contents if isinstance(c, types.TextResourceContents)]
        report.check(
            f"{name}: resources/read of the link returns the text written",
            len(texts) == 1 and texts[0].text == PLOT_TEXT,
            f"expected one text content {PLOT_TEXT!r}; got {short(read.model_dump(by_alias=True, exclude_none=True))}",
        )

    await step(report, f"[{tag}] execute_code python matplotlib + out.txt", artifacts)

    # Sessions
    async def sessions() -> None:
        name = f"[{tag}] python session"
        r = await call(conn, "create_session", {"language": "python"})
        s = r.structured_content if isinstance(r.structured_content, dict) else {}
        sid = s.get("session_id")
        if not report.check(
            f"{name}: create_session returns a session_id",
            isinstance(sid, str) and bool(sid) and r.is_error is False,
            f"result: {short(r.model_dump(by_alias=True, exclude_none=True))}",
        ):
            return
        r1 = await call(conn, "execute_code", {"language": "python", "code": "x = 41", "session_id": sid})
        s1 = r1.structured_content if isinstance(r1.structured_content, dict) else {}
        report.check(
            f"{name}: `x = 41` runs in the session",
            s1.get("outcome") == "ok" and r1.is_error is False,
            f"outcome {s1.get('outcome')!r}, stderr {s1.get('stderr')!r}, message {s1.get('message')!r}",
        )
        r2 = await call(conn, "execute_code", {"language": "python", "code": "print(x + 1)", "session_id": sid})
        s2 = r2.structured_content if isinstance(r2.structured_content, dict) else {}
        report.check(
            f"{name}: a second call sees x (`print(x + 1)` prints 42)",
            s2.get("stdout") == "42\n" and s2.get("outcome") == "ok",
            f"stdout {s2.get('stdout')!r}, outcome {s2.get('outcome')!r}, stderr {s2.get('stderr')!r}",
        )
        r3 = await call(conn, "close_session", {"session_id": sid})
        s3 = r3.structured_content if isinstance(r3.structured_content, dict) else {}
        report.check(
            f"{name}: close_session closes it",
            s3.get("closed") is True and s3.get("session_id") == sid and r3.is_error is False,
            f"result: {short(r3.model_dump(by_alias=True, exclude_none=True))}",
        )
        check = f"{name}: the closed session_id is refused as a tool error the model can read (SEP-1303)"
        try:
            r4 = await call(conn, "execute_code", {"language": "python", "code": "print(x)", "session_id": sid})
        except MCPError as e:
            report.fail(check, f"got a JSON-RPC error instead: {describe(e)}")
        else:
            text = " ".join(getattr(c, "text", "") for c in r4.content)
            report.check(
                check,
                r4.is_error is True and "unknown session_id" in text,
                f"result: {short(r4.model_dump(by_alias=True, exclude_none=True))}",
            )

    await step(report, f"[{tag}] python session", sessions)

    # Invalid params, then a normal call
    async def invalid() -> None:
        name = f"[{tag}] execute_code language ruby -> a tool error naming the fault (SEP-1303)"
        try:
            r = await call(conn, "execute_code", {"language": "ruby", "code": "x"})
        except MCPError as e:
            report.fail(name, f"got a JSON-RPC error instead: {describe(e)}")
        else:
            text = " ".join(getattr(c, "text", "") for c in r.content)
            report.check(name, r.is_error is True and "ruby" in text, f"result: {short(r.model_dump(by_alias=True, exclude_none=True))}", info=text)
        # An unknown tool is still a protocol error.
        name = f"[{tag}] an unknown tool -> JSON-RPC invalid params"
        try:
            r = await call(conn, "no_such_tool", {})
        except MCPError as e:
            report.check(name, e.code == INVALID_PARAMS, f"got {describe(e)}, expected code {INVALID_PARAMS}", info=e.message)
        else:
            report.fail(name, f"no MCP error; the call returned {short(r.model_dump(by_alias=True, exclude_none=True))}")

    await step(report, f"[{tag}] execute_code language ruby", invalid)
    await run_hello(report, conn, tag, "server still answers after the error")


def _language_enum(schema: dict[str, Any], lang: Any) -> Any:
    """The enum of the `language` property, inline or behind a local $ref / single-branch wrapper."""
    seen = 0
    while isinstance(lang, dict) and seen < 8:
        seen += 1
        if "enum" in lang:
            return lang["enum"]
        ref = lang.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node: Any = schema
            for part in ref[2:].split("/"):
                node = node.get(part) if isinstance(node, dict) else None
            lang = node
            continue
        branches = lang.get("allOf") or lang.get("anyOf") or lang.get("oneOf")
        if isinstance(branches, list) and len(branches) == 1:
            lang = branches[0]
            continue
        return None
    return None


# --------------------------------------------------------------------------------------------
# Transports


def server_env(audit_log: str) -> dict[str, str]:
    """Only what the server needs: no WARDEN_POLICY or other variables from the caller."""
    env = {"WARDEN_AUDIT_LOG": audit_log}
    if os.environ.get("WARDEN_HOME"):
        env["WARDEN_HOME"] = os.environ["WARDEN_HOME"]
    return env


def tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()[-lines:]
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text) or "(nothing on stderr)"


async def stdio_legacy(report: Report, binary: str, tmp: str) -> None:
    tag = "stdio initialize"
    params = StdioServerParameters(command=binary, args=["serve"], env=server_env(os.path.join(tmp, "audit.jsonl")))
    errlog = os.path.join(tmp, "stdio-initialize.stderr")
    started = time.monotonic()
    try:
        with anyio.fail_after(SUITE_TIMEOUT_S), open(errlog, "w") as err:
            async with stdio_client(params, errlog=err) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=REQUEST_TIMEOUT_S) as session:
                    init = await session.initialize()
                    report.check(
                        f"[{tag}] initialize",
                        init.server_info.name == "warden" and init.capabilities.tools is not None,
                        f"serverInfo {init.server_info!r}, capabilities {init.capabilities!r}",
                        info=f"protocol {init.protocol_version}, server {init.server_info.name} {init.server_info.version}",
                    )
                    await suite(report, session, tag)
    except Exception as e:
        report.fail(f"[{tag}] connection", f"{describe(e)}; server stderr:\n{tail(errlog)}")
    report.info(f"[{tag}] took {time.monotonic() - started:.1f} s")


async def stdio_auto(report: Report, binary: str, tmp: str) -> None:
    tag = "stdio Client"
    params = StdioServerParameters(command=binary, args=["serve"], env=server_env(os.path.join(tmp, "audit.jsonl")))
    errlog = os.path.join(tmp, "stdio-client.stderr")
    started = time.monotonic()
    try:
        with anyio.fail_after(SUITE_TIMEOUT_S), open(errlog, "w") as err:
            # Client(StdioServerParameters) has no errlog option; the same stdio_client it would
            # build, given as a transport, keeps the server's stderr for the report.
            async with Client(stdio_client(params, errlog=err), read_timeout_seconds=REQUEST_TIMEOUT_S) as client:
                info = client.server_info
                report.check(
                    f"[{tag}] connect (server/discover, falling back to initialize)",
                    info is None or info.name == "warden",
                    f"serverInfo {info!r}",
                    info=f"protocol {client.protocol_version}",
                )
                await suite(report, client, tag)
                await cancellation(report, client, tag, os.path.join(tmp, "audit.jsonl"))
    except Exception as e:
        report.fail(f"[{tag}] connection", f"{describe(e)}; server stderr:\n{tail(errlog)}")
    report.info(f"[{tag}] took {time.monotonic() - started:.1f} s")


async def cancellation(report: Report, conn: Conn, tag: str, audit_log: str) -> None:
    """A call the client gives up on (the SDK sends notifications/cancelled) stops its guest:
    the audit log records the run as cancelled, and the server goes on answering."""
    name = f"[{tag}] cancelling a call stops its guest"

    def ends() -> list[dict[str, Any]]:
        with open(audit_log) as f:
            return [e for e in (json.loads(line) for line in f if line.strip()) if e.get("kind") == "execution"]

    before = len(ends())
    with anyio.move_on_after(1.0):
        await call(conn, "execute_code", {"language": "python", "code": "import time\ntime.sleep(60)"})
    cancelled_at = time.monotonic()
    last = None
    while time.monotonic() - cancelled_at < 5:
        now = ends()
        if len(now) > before:
            last = now[-1]
            break
        await anyio.sleep(0.05)
    took = time.monotonic() - cancelled_at
    r = await call(conn, "execute_code", {"language": "python", "code": "print('alive')"})
    s = r.structured_content if isinstance(r.structured_content, dict) else {}
    report.check(
        name,
        last is not None and last.get("outcome") == "cancelled" and s.get("stdout") == "alive\n",
        f"audit end {last!r} {took:.2f} s after the cancel; next call stdout {s.get('stdout')!r}",
        info=f"ended {took:.2f} s after the cancel",
    )


class HttpServer:
    """`warden serve --http 127.0.0.1:0`, with its stderr collected by a thread."""

    LINE = re.compile(r"warden: serving MCP at (http://\S+/mcp) \(policy ([^)]*)\)")

    def __init__(self, binary: str, audit_log: str, extra: list[str] | None = None) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **server_env(audit_log)}
        if os.environ.get("HOME"):
            env["HOME"] = os.environ["HOME"]
        self.proc = subprocess.Popen(
            [binary, "serve", "--http", "127.0.0.1:0", *(extra or [])],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self.policy: str | None = None
        self.announced = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = self.LINE.search(line)
            if m and self.url is None:
                self.url, self.policy = m.group(1), m.group(2)
                self.announced.set()
        self.announced.set()  # EOF: the server is gone

    def stderr_text(self) -> str:
        self._reader.join(timeout=2)
        return "\n".join(self.lines[-40:]) or "(nothing on stderr)"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class CapturedLogs(logging.Handler):
    """Collects log messages while installed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name} {record.levelname} {record.getMessage()}")


async def end_session(report: Report, url: str, tag: str) -> None:
    """A stateful session (2025-06-18 handshake) that the SDK ends with DELETE when it closes:
    the SDK warns "Session termination failed" unless the server answers 200 or 204. The
    stateless 2026-07-28 `Client` sends no DELETE, so this one opts into the handshake."""
    logs = CapturedLogs()
    # The SDK's HTTP client logs each request at INFO; its warnings come from "mcp".
    loggers = [logging.getLogger(n) for n in ("mcp", "httpx", "httpx2")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(logs)
        lg.setLevel(logging.INFO)
    try:
        async with streamable_http_client(url) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=REQUEST_TIMEOUT_S) as session:
                await session.initialize()
    finally:
        for lg, level in saved:
            lg.removeHandler(logs)
            lg.setLevel(level)
    deletes = [m for m in logs.messages if "DELETE" in m]
    report.check(
        f"[{tag}] ending a session with DELETE answers 204 and the SDK logs no warning",
        len(deletes) == 1 and "204" in deletes[0] and not any(" WARNING " in m for m in logs.messages),
        f"log: {logs.messages!r}",
        info=deletes[0] if deletes else "",
    )


async def http(report: Report, binary: str, tmp: str) -> None:
    tag = "http"
    started = time.monotonic()
    server = HttpServer(binary, os.path.join(tmp, "audit.jsonl"))
    try:
        await anyio.to_thread.run_sync(server.announced.wait, HTTP_STARTUP_TIMEOUT_S)
        if not report.check(
            f"[{tag}] server announces its URL on stderr",
            server.url is not None,
            f"no 'warden: serving MCP at ...' line within {HTTP_STARTUP_TIMEOUT_S:.0f} s; "
            f"exit status {server.proc.poll()!r}; stderr:\n{server.stderr_text()}",
            info=f"{server.url}, policy {server.policy}",
        ):
            return
        assert server.url is not None
        try:
            with anyio.fail_after(SUITE_TIMEOUT_S):
                # The initialize handshake (a stateful session with its GET stream open), kept
                # connected while the server is asked to stop.
                async with streamable_http_client(server.url, terminate_on_close=False) as (read, write):
                    async with ClientSession(read, write, read_timeout_seconds=REQUEST_TIMEOUT_S) as session:
                        init = await session.initialize()
                        report.check(
                            f"[{tag}] streamable_http_client initialize",
                            init.server_info.name == "warden",
                            f"serverInfo {init.server_info!r}",
                            info=f"protocol {init.protocol_version}",
                        )
                        await run_hello(report, session, f"{tag} initialize")

                        async with Client(server.url, read_timeout_seconds=REQUEST_TIMEOUT_S) as client:
                            report.ok(f"[{tag}] Client(url) connects", f"protocol {client.protocol_version}")
                            await run_hello(report, client, f"{tag} Client")

                        await end_session(report, server.url, tag)

                        t0 = time.monotonic()
                        server.proc.send_signal(signal.SIGTERM)
                        try:
                            status = await anyio.to_thread.run_sync(server.proc.wait, SIGTERM_EXIT_TIMEOUT_S)
                        except subprocess.TimeoutExpired:
                            report.fail(
                                f"[{tag}] SIGTERM ends the server with status 0 within {SIGTERM_EXIT_TIMEOUT_S:.0f} s",
                                f"still running after {SIGTERM_EXIT_TIMEOUT_S:.0f} s; stderr:\n{server.stderr_text()}",
                            )
                        else:
                            report.check(
                                f"[{tag}] SIGTERM ends the server with status 0 within {SIGTERM_EXIT_TIMEOUT_S:.0f} s",
                                status == 0,
                                f"exit status {status}; stderr:\n{server.stderr_text()}",
                                info=f"exited in {time.monotonic() - t0:.2f} s",
                            )
        except Exception as e:
            report.fail(f"[{tag}] connection", f"{describe(e)}; server stderr:\n{server.stderr_text()}")
    finally:
        server.kill()
        report.info(f"[{tag}] took {time.monotonic() - started:.1f} s")


async def auth_discovery(report: Report, binary: str, tmp: str) -> None:
    """A server with JWT authentication: an unauthenticated request gets 401, and the SDK's own
    discovery helpers (SEP-985 / RFC 9728) find and parse the protected-resource metadata from
    the WWW-Authenticate header, naming the resource and its authorization server."""
    tag = "http auth"
    started = time.monotonic()
    issuer = "https://issuer.example"
    jwks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "jwt", "jwks.json")
    auth = os.path.join(tmp, "auth.toml")
    with open(auth, "w") as f:
        f.write(
            '[[roles]]\nname = "user"\nprofile = "default"\n\n'
            f'[jwt]\njwks = "{os.path.abspath(jwks)}"\nissuer = "{issuer}"\naudience = "warden-e2e"\n'
        )
    server = HttpServer(binary, os.path.join(tmp, "audit-auth.jsonl"), ["--auth", auth])
    try:
        await anyio.to_thread.run_sync(server.announced.wait, HTTP_STARTUP_TIMEOUT_S)
        if not report.check(f"[{tag}] server starts with --auth", server.url is not None, server.stderr_text()):
            return
        assert server.url is not None
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}
        async with httpx2.AsyncClient(timeout=30) as http:
            r = await http.post(server.url, json=body, headers={"accept": "application/json, text/event-stream"})
            meta_url = extract_resource_metadata_from_www_auth(r)
            if not report.check(
                f"[{tag}] no token -> 401 whose WWW-Authenticate names resource_metadata",
                r.status_code == 401 and meta_url is not None,
                f"status {r.status_code}, WWW-Authenticate {r.headers.get('WWW-Authenticate')!r}",
                info=str(meta_url),
            ):
                return
            found = None
            tried = []
            for url in build_protected_resource_metadata_discovery_urls(meta_url, server.url):
                tried.append(url)
                found = await handle_protected_resource_response(await http.get(url))
                if found is not None:
                    break
            servers = [str(a).rstrip("/") for a in (found.authorization_servers if found else [])]
            report.check(
                f"[{tag}] the SDK's discovery parses the protected-resource metadata",
                found is not None and str(found.resource).rstrip("/") == server.url and servers == [issuer],
                f"tried {tried}; got {found!r}",
                info=f"resource {found.resource if found else None}, authorization servers {servers}",
            )
    except Exception as e:
        report.fail(f"[{tag}] discovery", f"{describe(e)}; server stderr:\n{server.stderr_text()}")
    finally:
        server.kill()
        report.info(f"[{tag}] took {time.monotonic() - started:.1f} s")


# --------------------------------------------------------------------------------------------


async def main_async(report: Report, binary: str, tmp: str) -> None:
    await stdio_legacy(report, binary, tmp)
    await stdio_auto(report, binary, tmp)
    await http(report, binary, tmp)
    await auth_discovery(report, binary, tmp)


def main() -> int:
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("WARDEN_BIN") or DEFAULT_BIN
    report = Report()
    started = time.monotonic()
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        report.fail("warden binary", f"{binary!r} is not an executable file; build it (scripts/setup) or pass its path")
        print(f"e2e: {report.passed} passed, {report.failed} failed", flush=True)
        return 1
    from importlib.metadata import version

    report.info(f"warden {binary}, WARDEN_HOME={os.environ.get('WARDEN_HOME', '(unset)')}")
    report.info(f"mcp {version('mcp')}, Python {sys.version.split()[0]}")
    tmp = tempfile.mkdtemp(prefix="warden-e2e-")
    report.info(f"audit log and server stderr in {tmp}")
    try:
        anyio.run(main_async, report, binary, tmp)
    except BaseException as e:  # a bug in this script or an interrupt: never a silent pass
        report.fail("test run", f"{describe(e)}\n{traceback.format_exc()}")
    finally:
        if report.failed == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            report.info(f"kept {tmp} for inspection")
    report.info(f"took {time.monotonic() - started:.1f} s")
    print(f"e2e: {report.passed} passed, {report.failed} failed", flush=True)
    return 0 if report.failed == 0 and report.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
