// warden's JavaScript prelude, evaluated once when the runtime's snapshot is built, so every guest
// starts with it loaded. QuickJS-NG has only `print` and a bare `console.log`; agents expect
// Node-style console methods that format objects, and the timer globals. The working directory
// (/workspace) is set when a guest is claimed, since the snapshot is taken before any directory
// is open.
(function () {
  "use strict";
  const std = globalThis.std, os = globalThis.os;
  const MAX_DEPTH = 2, MAX_ITEMS = 100, MAX_STRING = 10000;

  function quote(s) {
    return "'" + s.replace(/\\/g, "\\\\").replace(/'/g, "\\'").replace(/\n/g, "\\n") + "'";
  }

  function inspect(v, depth, seen) {
    switch (typeof v) {
      case "string": return depth === 0 ? v : quote(v.length > MAX_STRING ? v.slice(0, MAX_STRING) + "..." : v);
      case "number": return Object.is(v, -0) ? "-0" : String(v);
      case "bigint": return v + "n";
      case "boolean": case "undefined": return String(v);
      case "symbol": return v.toString();
      case "function": return v.toString().startsWith("class") ? "[class " + (v.name || "(anonymous)") + "]" : "[Function: " + (v.name || "(anonymous)") + "]";
    }
    if (v === null) return "null";
    if (seen.has(v)) return "[Circular]";
    if (v instanceof Error) return v.stack ? String(v.name) + ": " + v.message + "\n" + v.stack.replace(/\n$/, "") : String(v);
    if (v instanceof Date) return isNaN(v) ? "Invalid Date" : v.toISOString();
    if (v instanceof RegExp) return String(v);
    if (v instanceof Promise) return "Promise { <pending> }";
    if (depth > MAX_DEPTH) return Array.isArray(v) ? "[Array]" : "[Object]";
    seen.add(v);
    try {
      const inner = (x) => inspect(x, depth + 1, seen);
      const wrap = (open, parts, close, more) => {
        if (more > 0) parts.push("... " + more + " more item" + (more > 1 ? "s" : ""));
        if (parts.length === 0) return open + close;
        const flat = open + " " + parts.join(", ") + " " + close;
        if (flat.length <= 72 && !flat.includes("\n")) return flat;
        const pad = "  ".repeat(depth + 1);
        return open + "\n" + pad + parts.join(",\n" + pad) + "\n" + "  ".repeat(depth) + close;
      };
      if (Array.isArray(v) || ArrayBuffer.isView(v)) {
        const parts = [];
        for (let i = 0; i < Math.min(v.length, MAX_ITEMS); i++) parts.push(inner(v[i]));
        const prefix = Array.isArray(v) ? "" : v.constructor.name + "(" + v.length + ") ";
        return prefix + wrap("[", parts, "]", v.length - MAX_ITEMS);
      }
      if (v instanceof Map) {
        const parts = [];
        for (const [k, x] of v) { if (parts.length >= MAX_ITEMS) break; parts.push(inner(k) + " => " + inner(x)); }
        return "Map(" + v.size + ") " + wrap("{", parts, "}", v.size - MAX_ITEMS);
      }
      if (v instanceof Set) {
        const parts = [];
        for (const x of v) { if (parts.length >= MAX_ITEMS) break; parts.push(inner(x)); }
        return "Set(" + v.size + ") " + wrap("{", parts, "}", v.size - MAX_ITEMS);
      }
      const keys = Object.keys(v);
      const parts = keys.slice(0, MAX_ITEMS).map((k) =>
        (/^[A-Za-z_$][\w$]*$/.test(k) ? k : quote(k)) + ": " + inner(v[k]));
      const proto = Object.getPrototypeOf(v);
      const name = proto === null ? "[Object: null prototype] " :
        proto !== Object.prototype && proto.constructor && proto.constructor.name ? proto.constructor.name + " " : "";
      return name + wrap("{", parts, "}", keys.length - MAX_ITEMS);
    } finally {
      seen.delete(v);
    }
  }

  const format = (args) => {
    if (typeof args[0] === "string" && /%[sdifjoO%]/.test(args[0]) && args.length > 1) {
      let i = 1;
      const head = args[0].replace(/%[sdifjoO%]/g, (m) => {
        if (m === "%%") return "%";
        if (i >= args.length) return m;
        const a = args[i++];
        if (m === "%d" || m === "%i") return String(parseInt(a));
        if (m === "%f") return String(parseFloat(a));
        if (m === "%j") return JSON.stringify(a);
        if (m === "%s") return typeof a === "string" ? a : inspect(a, 1, new Set());
        return inspect(a, 1, new Set());
      });
      return [head].concat(args.slice(i).map((a) => inspect(a, 0, new Set()))).join(" ");
    }
    return args.map((a) => inspect(a, 0, new Set())).join(" ");
  };

  let indent = "";
  const write = (stream) => (...args) => {
    const text = args.length === 1 && typeof args[0] === "string" ? args[0] : format(args);
    stream.puts((indent ? indent + text.replace(/\n/g, "\n" + indent) : text) + "\n");
    // Line by line, as on a terminal: a caller following the output while it runs sees each
    // line when it is written, not when libc's buffer fills or the program ends.
    stream.flush();
  };
  const out = write(std.out), err = write(std.err);
  const counts = new Map(), timers = new Map();
  globalThis.console = {
    log: out, info: out, debug: out, dir: (v) => out(v),
    error: err, warn: err, trace: (...a) => err("Trace:", ...a),
    assert: (ok, ...a) => { if (!ok) err("Assertion failed" + (a.length ? ":" : ""), ...a); },
    count: (l = "default") => { counts.set(l, (counts.get(l) || 0) + 1); out(l + ": " + counts.get(l)); },
    countReset: (l = "default") => { counts.delete(l); },
    time: (l = "default") => { timers.set(l, Date.now()); },
    timeEnd: (l = "default") => { if (timers.has(l)) { out(l + ": " + (Date.now() - timers.get(l)) + "ms"); timers.delete(l); } },
    timeLog: (l = "default", ...a) => { if (timers.has(l)) out(l + ": " + (Date.now() - timers.get(l)) + "ms", ...a); },
    group: (...a) => { if (a.length) out(...a); indent += "  "; },
    groupEnd: () => { indent = indent.slice(2); },
    table: (v) => out(v),
  };
  if (os) {
    globalThis.setTimeout = (fn, ms = 0, ...a) => os.setTimeout(() => fn(...a), ms);
    globalThis.clearTimeout = (t) => { if (t) os.clearTimeout(t); };
    const intervals = new Map();
    let next = 1;
    globalThis.setInterval = (fn, ms = 0, ...a) => {
      const id = next++;
      const tick = () => { intervals.set(id, os.setTimeout(tick, ms)); fn(...a); };
      intervals.set(id, os.setTimeout(tick, ms));
      return id;
    };
    globalThis.clearInterval = (id) => { const t = intervals.get(id); if (t) os.clearTimeout(t); intervals.delete(id); };
  }
})();
