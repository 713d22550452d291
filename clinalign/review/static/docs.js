// A small, offline renderer of /openapi.json (FastAPI's Swagger UI would load from a CDN).
"use strict";
(() => {
  const el = (tag, props, ...kids) => {
    const e = Object.assign(document.createElement(tag), props || {});
    e.append(...kids.filter((k) => k !== null && k !== undefined));
    return e;
  };

  function resolve(spec, schema) {
    if (schema && schema.$ref) return spec.components.schemas[schema.$ref.split("/").pop()];
    return schema;
  }

  // A readable one-level sketch of a schema: {field: type, ...}.
  function sketch(spec, schema, depth = 0) {
    schema = resolve(spec, schema) || {};
    if (depth > 3) return "…";
    if (schema.anyOf) return schema.anyOf.map((s) => sketch(spec, s, depth + 1)).join(" | ");
    if (schema.type === "array") return [sketch(spec, schema.items, depth + 1)];
    if (schema.properties) {
      const out = {};
      for (const [k, v] of Object.entries(schema.properties)) out[k] = sketch(spec, v, depth + 1);
      return out;
    }
    if (schema.enum) return schema.enum.join(" | ");
    if (schema.const !== undefined) return JSON.stringify(schema.const);
    return schema.format ? `${schema.type} (${schema.format})` : schema.type || "any";
  }

  function operation(spec, path, method, op) {
    const card = el("section", { className: "card op" });
    card.append(el("h3", null, el("span", { className: `method ${method}`, textContent: method.toUpperCase() }), path));
    if (op.summary) card.append(el("p", { textContent: op.summary }));
    if (op.description) card.append(el("p", { className: "desc", textContent: op.description }));
    const params = op.parameters || [];
    if (params.length) {
      const tb = el("tbody");
      params.forEach((p) => tb.append(el("tr", null, el("td", { textContent: p.name }), el("td", { textContent: p.in }),
        el("td", { textContent: p.required ? "required" : "optional" }),
        el("td", { textContent: JSON.stringify(sketch(spec, p.schema)) }))));
      card.append(el("table", null, el("thead", null, el("tr", null, ...["parameter", "in", "", "type"].map((t) => el("th", { textContent: t })))), tb));
    }
    const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
    if (body) card.append(el("p", { textContent: "Request body (JSON):" }), el("pre", { textContent: JSON.stringify(sketch(spec, body.schema), null, 2) }));
    for (const [code, r] of Object.entries(op.responses || {})) {
      const json = r.content && r.content["application/json"];
      card.append(el("p", { textContent: `${code}: ${r.description || ""}` }));
      if (json && code.startsWith("2")) card.append(el("pre", { textContent: JSON.stringify(sketch(spec, json.schema), null, 2) }));
    }
    return card;
  }

  fetch("/openapi.json").then((r) => r.json()).then((spec) => {
    const main = document.getElementById("docs");
    main.replaceChildren(
      el("h1", { textContent: `${spec.info.title} ${spec.info.version}` }),
      el("p", { className: "desc", textContent: (spec.info.description || "").trim() }),
      el("pre", { textContent: 'curl -H "Authorization: Bearer $TOKEN" http://HOST:PORT/api/next' }),
    );
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) main.append(operation(spec, path, method, op));
    }
  }).catch((e) => {
    document.getElementById("docs").textContent = `Could not load /openapi.json: ${e}`;
  });
})();
