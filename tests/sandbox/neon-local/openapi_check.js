#!/usr/bin/env node
// Checks recorded Neon API exchanges against Neon's published OpenAPI description, the contract:
// public-v2-for-users.gen.yaml from the npm package @neondatabase/api-client (tests/sandbox).
//
//   node openapi_check.js [--spec FILE] [--project ID] [--json] EXCHANGES.jsonl
//
// EXCHANGES.jsonl is what neon-local writes with --record (one exchange a line: method, path,
// query, request, status, response; see neon_local.py). Every exchange is checked:
//   request:  the path matches a path template of the spec and the method is one it has; every
//             query parameter is declared, has its type/enum, and required ones are there; the
//             body is allowed (the operation takes one), present when required, and matches the
//             schema: types, enums, formats, required properties, and no undeclared properties
//             (a field the service does not know is silently ignored there: a bug here).
//   response: the status is one the operation declares (or its `default`), and the body matches
//             that status's schema, required properties included.
// --project ID checks only the exchanges under /projects/ID (a test's own project). Prints one
// line per violation and a summary; --json prints {checked, violations, operations} instead.
// Exit status: 0 no violation, 1 violations, 2 usage or unreadable input.
"use strict";
const fs = require("fs");
const path = require("path");

function usage(msg) {
  process.stderr.write(`openapi_check: ${msg}\nusage: node openapi_check.js [--spec FILE] [--project ID] [--json] EXCHANGES.jsonl\n`);
  process.exit(2);
}

const DEFAULT_SPEC = path.join(__dirname, "..", "node_modules", "@neondatabase", "api-client",
  "public-v2-for-users.gen.yaml");

function loadSpec(file) {
  let YAML;
  try {
    YAML = require(path.join(__dirname, "..", "node_modules", "yaml"));
  } catch (e) {
    usage("the npm package yaml is missing: run npm ci in tests/sandbox (tools/setup.sh)");
  }
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    usage(`cannot read the spec ${file}: ${e.message} (run npm ci in tests/sandbox)`);
  }
  return YAML.parse(text, { maxAliasCount: -1 });
}

class Checker {
  constructor(spec) {
    this.spec = spec;
    this.base = "";
    const server = (spec.servers || [])[0];
    if (server && server.url) this.base = new URL(server.url).pathname.replace(/\/$/, ""); // /api/v2
    this.paths = Object.keys(spec.paths).map((t) => ({
      template: t,
      segs: t.split("/").slice(1),
      literal: t.split("/").slice(1).filter((s) => !s.startsWith("{")).length,
    }));
  }

  ref(r) {
    if (!r.startsWith("#/")) throw new Error(`external $ref ${r}`);
    let node = this.spec;
    for (const part of r.slice(2).split("/")) node = node[part.replace(/~1/g, "/").replace(/~0/g, "~")];
    if (node === undefined) throw new Error(`unresolved $ref ${r}`);
    return node;
  }

  deref(s) {
    let n = 0;
    while (s && s.$ref) {
      s = this.ref(s.$ref);
      if (++n > 50) throw new Error("$ref loop");
    }
    return s;
  }

  // The path template a concrete path matches; literal segments beat parameters
  // (/projects/shared is not /projects/{project_id}).
  match(p) {
    const segs = p.split("/").slice(1).map((s) => decodeURIComponent(s));
    let best = null;
    for (const c of this.paths) {
      if (c.segs.length !== segs.length) continue;
      const params = {};
      let ok = true;
      for (let i = 0; i < segs.length && ok; i++) {
        const t = c.segs[i];
        if (t.startsWith("{")) {
          if (segs[i] === "") ok = false;
          else params[t.slice(1, -1)] = segs[i];
        } else if (t !== segs[i]) ok = false;
      }
      if (ok && (!best || c.literal > best.literal)) best = { ...c, params };
    }
    return best;
  }

  // Validates `v` against schema `s`; pushes "where: problem" strings into `out`. strict: no
  // undeclared properties (requests).
  check(v, s, where, out, strict) {
    s = this.deref(s);
    if (!s || Object.keys(s).length === 0) return;
    if (v === null) {
      if (!s.nullable && !(s.type === undefined && !s.properties && !s.allOf && !s.oneOf && !s.anyOf))
        out.push(`${where}: null where the schema does not allow it`);
      return;
    }
    if (s.allOf) {
      for (const sub of s.allOf) this.check(v, sub, where, out, false);
      if (strict) this.strictProps(v, s, where, out);
    }
    if (s.oneOf || s.anyOf) {
      const alts = s.oneOf || s.anyOf;
      const fits = alts.filter((sub) => {
        const o = [];
        this.check(v, sub, where, o, strict);
        return o.length === 0;
      });
      if (fits.length === 0) {
        const o = [];
        this.check(v, alts[0], where, o, strict);
        out.push(`${where}: matches none of the ${alts.length} alternatives (first: ${o[0] || "?"})`);
      }
    }
    const type = s.type;
    if (type) {
      const actual = Array.isArray(v) ? "array" : typeof v === "number"
        ? (Number.isInteger(v) ? "integer" : "number") : typeof v;
      const okType = type === actual || (type === "number" && actual === "integer");
      if (!okType) {
        out.push(`${where}: ${JSON.stringify(v).slice(0, 60)} is ${actual}, the spec says ${type}`);
        return;
      }
    }
    if (s.enum && !s.enum.includes(v)) out.push(`${where}: ${JSON.stringify(v)} is not one of ${s.enum.join(", ")}`);
    if (typeof v === "string") {
      if (s.format === "date-time" && !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(v))
        out.push(`${where}: ${JSON.stringify(v)} is not an RFC 3339 date-time`);
      if (s.format === "uuid" && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(v))
        out.push(`${where}: ${JSON.stringify(v)} is not a uuid`);
      if (s.minLength !== undefined && v.length < s.minLength) out.push(`${where}: shorter than ${s.minLength}`);
      if (s.maxLength !== undefined && v.length > s.maxLength) out.push(`${where}: longer than ${s.maxLength}`);
      if (s.pattern && !new RegExp(s.pattern, "u").test(v)) out.push(`${where}: does not match ${s.pattern}`);
    }
    if (typeof v === "number") {
      if (s.minimum !== undefined && v < s.minimum) out.push(`${where}: ${v} < minimum ${s.minimum}`);
      if (s.maximum !== undefined && v > s.maximum) out.push(`${where}: ${v} > maximum ${s.maximum}`);
    }
    if (Array.isArray(v)) {
      if (s.items) v.forEach((x, i) => this.check(x, s.items, `${where}[${i}]`, out, strict));
      if (s.minItems !== undefined && v.length < s.minItems) out.push(`${where}: fewer than ${s.minItems} items`);
      if (s.maxItems !== undefined && v.length > s.maxItems) out.push(`${where}: more than ${s.maxItems} items`);
    } else if (typeof v === "object") {
      for (const r of s.required || []) if (!(r in v)) out.push(`${where}: required property ${r} is missing`);
      const props = s.properties || {};
      for (const [k, x] of Object.entries(v)) {
        if (props[k]) this.check(x, props[k], `${where}.${k}`, out, strict);
        else if (s.additionalProperties && typeof s.additionalProperties === "object")
          this.check(x, s.additionalProperties, `${where}.${k}`, out, strict);
      }
      if (strict && !s.allOf) this.strictProps(v, s, where, out);
    }
  }

  // every property of `v` is declared by `s` (its own properties or those of its allOf parts)
  strictProps(v, s, where, out) {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return;
    const known = new Set();
    let open = false;
    const collect = (x) => {
      x = this.deref(x);
      if (!x) return;
      if (x.additionalProperties) open = true;
      Object.keys(x.properties || {}).forEach((k) => known.add(k));
      (x.allOf || []).forEach(collect);
      if (x.oneOf || x.anyOf) open = true; // the alternatives were checked on their own
    };
    collect(s);
    if (open || (known.size === 0 && s.type !== "object")) return;
    for (const k of Object.keys(v))
      if (!known.has(k)) out.push(`${where}.${k}: not a property the API knows (it would be ignored)`);
  }

  scalar(value, schema, where, out) {
    schema = this.deref(schema) || {};
    let v = value;
    if (schema.type === "integer") {
      if (!/^-?\d+$/.test(value)) return out.push(`${where}: ${JSON.stringify(value)} is not an integer`);
      v = Number(value);
    } else if (schema.type === "number") {
      if (!/^-?\d+(\.\d+)?$/.test(value)) return out.push(`${where}: ${JSON.stringify(value)} is not a number`);
      v = Number(value);
    } else if (schema.type === "boolean") {
      if (value !== "true" && value !== "false") return out.push(`${where}: ${JSON.stringify(value)} is not true/false`);
      v = value === "true";
    } else if (schema.type === "array") {
      return value.split(",").forEach((x) => this.scalar(x, schema.items, where, out));
    }
    this.check(v, { ...schema, nullable: false }, where, out, false);
  }

  exchange(x) {
    const out = [];
    const where = `${x.method} ${x.path}${x.query ? "?" + x.query : ""}`;
    let p = x.path;
    if (this.base && p.startsWith(this.base)) p = p.slice(this.base.length);
    const m = this.match(p);
    if (!m) return { where, op: null, problems: [`request: no path of the API matches ${p}`] };
    const item = this.spec.paths[m.template];
    const op = item[x.method.toLowerCase()];
    const opName = `${x.method} ${m.template}`;
    if (!op) return { where, op: opName, problems: [`request: the API has no ${x.method} on ${m.template}`] };
    const params = [...(item.parameters || []), ...(op.parameters || [])].map((q) => this.deref(q));
    // query parameters
    const query = new URLSearchParams(x.query || "");
    const seen = new Set();
    for (const [k, val] of query) {
      seen.add(k);
      const decl = params.find((q) => q.in === "query" && q.name === k);
      if (!decl) out.push(`request: query parameter ${k} is not one the API takes`);
      else this.scalar(val, decl.schema, `request: query ${k}`, out);
    }
    for (const q of params) {
      if (q.in === "query" && q.required && !seen.has(q.name)) out.push(`request: required query parameter ${q.name} is missing`);
      if (q.in === "path" && m.params[q.name] !== undefined) this.scalar(m.params[q.name], q.schema, `request: path ${q.name}`, out);
    }
    // request body
    const rb = op.requestBody ? this.deref(op.requestBody) : null;
    const hasBody = x.request !== null && x.request !== undefined && !(typeof x.request === "object" && !Array.isArray(x.request) && Object.keys(x.request).length === 0 && !rb);
    if (!rb && hasBody) out.push(`request: ${opName} takes no body, got ${JSON.stringify(x.request).slice(0, 80)}`);
    if (rb) {
      const schema = rb.content && rb.content["application/json"] && rb.content["application/json"].schema;
      if (x.request === null || x.request === undefined) {
        if (rb.required) out.push("request: the body is required");
      } else if (schema) this.check(x.request, schema, "request: body", out, true);
    }
    // response
    if (x.status !== undefined) {
      const rs = op.responses || {};
      const key = rs[String(x.status)] ? String(x.status) : rs[`${String(x.status)[0]}XX`] ? `${String(x.status)[0]}XX` : rs.default ? "default" : null;
      if (!key) out.push(`response: status ${x.status} is not one ${opName} answers (${Object.keys(rs).join(", ")})`);
      else {
        const r = this.deref(rs[key]);
        const c = r.content && (r.content["application/json"] || Object.values(r.content)[0]);
        if (c && c.schema) {
          if (x.response === null || x.response === undefined) out.push(`response: status ${x.status} must have a body`);
          else this.check(x.response, c.schema, `response ${x.status}: body`, out, false);
        }
      }
    }
    return { where, op: opName, problems: out };
  }
}

function main() {
  const argv = process.argv.slice(2);
  let specFile = DEFAULT_SPEC, project = null, json = false, file = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--spec") specFile = argv[++i];
    else if (a === "--project") project = argv[++i];
    else if (a === "--json") json = true;
    else if (a.startsWith("-")) usage(`unknown option ${a}`);
    else if (file) usage("one exchanges file only");
    else file = a;
  }
  if (!file) usage("no exchanges file given");
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    usage(`cannot read ${file}: ${e.message}`);
  }
  const checker = new Checker(loadSpec(specFile));
  const lines = text.split("\n");
  if (!text.endsWith("\n")) lines.pop(); // a line being written right now
  const violations = [], operations = {};
  let checked = 0;
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    let x;
    try {
      x = JSON.parse(line);
    } catch (e) {
      violations.push({ line: i + 1, where: "?", problem: "not a JSON line" });
      return;
    }
    if (project !== null && !x.path.includes(`/projects/${encodeURIComponent(project)}/`) &&
        !x.path.endsWith(`/projects/${encodeURIComponent(project)}`)) return;
    checked++;
    const r = checker.exchange(x);
    if (r.op) operations[r.op] = (operations[r.op] || 0) + 1;
    for (const problem of r.problems) violations.push({ line: i + 1, where: r.where, status: x.status, problem });
  });
  if (json) process.stdout.write(JSON.stringify({ checked, violations, operations }) + "\n");
  else {
    for (const v of violations) process.stdout.write(`${file}:${v.line}: ${v.where} (${v.status}): ${v.problem}\n`);
    process.stdout.write(`${checked} exchanges checked against ${path.basename(specFile)}: ${violations.length} violations\n`);
  }
  process.exit(violations.length ? 1 : 0);
}

if (require.main === module) main();
module.exports = { Checker, loadSpec, DEFAULT_SPEC };
