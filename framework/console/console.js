// The operator console's page (framework.console): polls GET /ui/state, draws it, and sends the
// call form to POST / as JSON-RPC 2.0. Everything shown comes from the network - service names,
// labels, results - so the page is built with DOM calls and text nodes only, never innerHTML.
"use strict";

(() => {
  const POLL_MS = 500;            // how often the state is read (a node's change shows within ~1 s)
  const STATE_TIMEOUT_MS = 5000;  // a hung poll must not stop the next ones
  const CALL_TIMEOUT_MS = 65000;  // the gateway's own cap on a call is 60 s
  const RATE_WINDOW_S = 3;        // calls/s and errors/s are averaged over this many seconds
  const OPENRPC_RETRY_MS = 3000;  // re-read /openrpc.json at most this often, when methods change

  const $ = (id) => document.getElementById(id);
  const samples = new Map();      // "pid/service" -> [{t, calls, errors}], the rate window: the
                                  // counters are one gateway worker's (the pid that answered)
  let openrpc = new Map();        // "Service.method" -> OpenRPC method object
  let openrpcAt = -Infinity;
  let methodsShown = "";          // the dropdown's options, to rebuild it only when they change
  let fieldsFor = "";             // the method (and schema) the parameter fields were built for
  let stateMethods = [];
  let callId = 0;

  // el("td", {class: "x", "data-node": a}, child, "text", ...): attributes via setAttribute and
  // children via append, which turns strings into text nodes
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== undefined && child !== null) node.append(child);
    }
    return node;
  }

  function timeoutSignal(ms) {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), ms);
    return controller.signal;
  }

  // ---- the live view ------------------------------------------------------------------------

  function rates(name, svc, t) {
    let window = samples.get(name) || [];
    const last = window[window.length - 1];
    if (last && (svc.calls < last.calls || t < last.t)) window = [];   // the gateway restarted
    if (!last || t > last.t) window.push({t, calls: svc.calls, errors: svc.errors});
    while (window.length > 2 && t - window[1].t >= RATE_WINDOW_S) window.shift();
    samples.set(name, window);
    const first = window[0], dt = t - first.t;
    if (dt <= 0) return null;
    return {calls: (svc.calls - first.calls) / dt, errors: (svc.errors - first.errors) / dt};
  }

  function fmtRate(value) {
    if (value === undefined) return "\u2013";
    return value >= 100 ? value.toFixed(0) : value.toFixed(1);
  }

  function fmtUptime(seconds) {
    if (typeof seconds !== "number") return "\u2013";
    const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  function metric(label, value, role, bad) {
    return el("span", {class: bad ? "metric bad" : "metric", "data-role": role},
      el("span", {class: "v"}, String(value)), el("span", {class: "k"}, label));
  }

  function nodeRow(node) {
    const labels = el("td", {class: "labels"});
    for (const [key, value] of Object.entries(node.labels || {})) {
      labels.append(el("span", {class: "label"}, `${key}=${value}`));
    }
    const where = [node.pid, node.hostname].filter((v) => v !== undefined).join(" @ ");
    return el("tr", {"data-node": node.address, "data-health": node.health},
      el("td", {class: "addr"}, node.address),
      el("td", null, el("span", {class: `health ${node.health}`}, node.health)),
      el("td", {class: "num", "data-role": "uptime"}, fmtUptime(node.uptime_s)),
      el("td", {"data-role": "version"},
        node.version === undefined ? "\u2013" : String(node.version)),
      labels,
      el("td", {class: "num"}, where || "\u2013"),
      el("td", {class: "num"}, node.workers === undefined ? "1" : String(node.workers)));
  }

  function serviceCard(svc, t, pid) {
    const r = rates(`${pid}/${svc.name}`, svc, t);
    const plural = svc.node_count === 1 ? "node" : "nodes";
    const head = el("div", {class: "svc-head"},
      el("h2", null, svc.name),
      el("span", {class: "count", "data-role": "node-count"}, `${svc.node_count} ${plural}`),
      metric("calls/s", fmtRate(r ? r.calls : undefined), "calls-rate"),
      metric("errors/s", fmtRate(r ? r.errors : undefined), "errors-rate", r && r.errors > 0),
      metric("calls", svc.calls, "calls-total"),
      metric("errors", svc.errors, "errors-total", svc.errors > 0));
    const card = el("article", {class: "service", "data-service": svc.name}, head);
    if (!svc.ready) {
      card.append(el("p", {class: "empty"}, "listing\u2026"));
    } else if (!svc.node_count) {
      card.append(el("p", {class: "empty"}, "no live node"));
    } else {
      const header = el("tr", null, ...["node", "health", "uptime", "version", "labels",
        "pid @ host", "workers"].map((name) => el("th", null, name)));
      card.append(el("table", null, el("thead", null, header),
        el("tbody", null, ...svc.nodes.map(nodeRow))));
      if (svc.node_count > svc.nodes.length) {
        card.append(el("p", {class: "more"}, `and ${svc.node_count - svc.nodes.length} more`));
      }
    }
    return card;
  }

  function drawSummary(state) {
    // a node serving several services is one node (the rows listed: the counts are per service)
    const nodes = new Set(state.services.flatMap((svc) => svc.nodes.map((n) => n.address))).size;
    const registry = state.registry.ok ? "ok" : `unreachable (${state.registry.error})`;
    const shown = state.service_count > state.services.length
      ? ` (first ${state.services.length} shown)` : "";
    const item = (label, value) => el("span", null, `${label} `, el("b", null, value));
    $("summary").replaceChildren(
      item("services", `${state.service_count}${shown}`), item("nodes", String(nodes)),
      item("gateway", `${state.gateway.version} ${state.gateway.status}`),
      item("worker pid", String(state.gateway.pid)), item("registry", registry),
      item("calls to unknown methods", String(state.gateway.unknown_calls)));
  }

  function setStatus(live, text) {
    const status = $("status");
    status.dataset.state = live ? "live" : "down";
    status.textContent = text;
  }

  function draw(state) {
    drawSummary(state);
    $("services").replaceChildren(
      ...state.services.map((svc) => serviceCard(svc, state.time, state.gateway.pid)));
    $("token-row").hidden = !state.gateway.token_required;
    stateMethods = state.services.flatMap((svc) => svc.methods.map((m) => `${svc.name}.${m}`));
    setStatus(true, `live \u00b7 ${new Date(state.time * 1000).toLocaleTimeString()}`);
    refreshMethods();
  }

  async function poll() {
    try {
      const answer = await fetch("/ui/state",
        {cache: "no-store", signal: timeoutSignal(STATE_TIMEOUT_MS)});
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      draw(await answer.json());
    } catch (err) {
      setStatus(false, `disconnected (${err.message || err}); retrying`);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // ---- the call form ------------------------------------------------------------------------

  async function loadOpenrpc() {
    openrpcAt = performance.now();
    try {
      const answer = await fetch("/openrpc.json",
        {cache: "no-store", signal: timeoutSignal(STATE_TIMEOUT_MS)});
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);   // not served: free-form params
      const doc = await answer.json();
      const methods = new Map();
      for (const method of Array.isArray(doc.methods) ? doc.methods : []) {
        if (method && typeof method.name === "string") methods.set(method.name, method);
      }
      openrpc = methods;
      $("call-form").dataset.schema = "openrpc";
    } catch (err) {
      $("call-form").dataset.schema = "none";
    }
    refreshMethods();
  }

  function refreshMethods() {
    const names = [...new Set([...openrpc.keys(), ...stateMethods])].sort();
    const missing = stateMethods.some((m) => !openrpc.has(m));
    if (missing && performance.now() - openrpcAt > OPENRPC_RETRY_MS) {
      loadOpenrpc();   // a method the document does not have yet: read it again (rate-limited)
    }
    const key = names.join("\n");
    if (key !== methodsShown) {
      methodsShown = key;
      const select = $("method"), selected = select.value;
      const groups = new Map();
      for (const name of names) {
        const service = name.slice(0, name.lastIndexOf("."));
        if (!groups.has(service)) groups.set(service, el("optgroup", {label: service}));
        groups.get(service).append(el("option", {value: name}, name));
      }
      select.replaceChildren(...groups.values());
      if (names.includes(selected)) select.value = selected;
    }
    buildFields();
  }

  function schemaType(schema) {
    const type = schema && schema.type;
    const types = Array.isArray(type) ? type : [type];
    return types.find((t) => typeof t === "string" && t !== "null") || "json";
  }

  function paramInput(param, index) {
    const type = schemaType(param.schema);
    const attrs = {id: `param-${index}`, "data-param": param.name, "data-type": type};
    if (type === "boolean") {
      return el("select", attrs, el("option", {value: ""}, ""),
        el("option", {value: "true"}, "true"), el("option", {value: "false"}, "false"));
    }
    const schema = param.schema || {};
    const hint = param.description
      || ("default" in schema ? `default: ${JSON.stringify(schema.default)}` : "");
    if (type === "string") return el("input", {...attrs, type: "text", placeholder: hint});
    if (type === "integer" || type === "number") {
      return el("input", {...attrs, type: "number", step: type === "integer" ? "1" : "any",
        placeholder: hint});
    }
    // any value: JSON where it is valid JSON, else the text as a string (as `framework call` reads
    // its arguments); a typed object or array: JSON
    return el("textarea", {...attrs, rows: 1,
      placeholder: hint || (type === "json" ? "JSON, or text for a string" : `JSON ${type}`)});
  }

  function buildFields() {
    const name = $("method").value;
    const spec = formSpec(name);
    const key = `${name}\n${spec ? JSON.stringify(spec.params || []) : "-"}`;
    if (key === fieldsFor) return;
    fieldsFor = key;
    const fields = [];
    if (spec) {
      (spec.params || []).forEach((param, index) => {
        const type = schemaType(param.schema);
        const label = el("label", {class: "row", for: `param-${index}`}, param.name,
          param.required ? el("span", {class: "req"}, " *") : null,
          ` \u00b7 ${type === "json" ? "any" : type}`);
        fields.push(label, paramInput(param, index));
      });
      $("method-doc").textContent = spec.summary || spec.description || "";
    } else {
      $("method-doc").textContent = !name ? "" : openrpc.has(name)
        ? "takes any number of params: give them as JSON"
        : "no schema for this method: params as JSON";
      fields.push(el("label", {class: "row", for: "params-json"}, "params (JSON array or object)"),
        el("textarea", {id: "params-json", class: "free", "data-param-json": true,
          placeholder: '["world"] or {"name": "world"}'}));
    }
    $("params").replaceChildren(...fields);
  }

  function fieldValue(input) {
    const text = input.value.trim(), type = input.dataset.type;
    if (type === "string") return input.value;
    if (type === "boolean") return text === "true";
    if (type === "integer" || type === "number") {
      const value = Number(text);
      if (!Number.isFinite(value) || (type === "integer" && !Number.isInteger(value))) {
        const kind = type === "integer" ? "an integer" : "a number";
        throw new Error(`${input.dataset.param}: not ${kind}`);
      }
      return value;
    }
    try {
      return JSON.parse(text);
    } catch (err) {
      if (type === "json") return input.value;
      throw new Error(`${input.dataset.param}: not valid JSON`);
    }
  }

  // the method's OpenRPC entry when the form can be built from it: not for *args / **kwargs
  // methods, whose extra params only the free-form field can give
  function formSpec(name) {
    const spec = openrpc.get(name);
    if (!spec || spec["x-var-positional"] || spec["x-var-keyword"]) return undefined;
    return spec;
  }

  // -> the request's params (undefined: none), or throws an Error saying what is wrong
  function readParams(spec) {
    if (!spec) {
      const text = $("params-json").value.trim();
      if (!text) return undefined;
      let value;
      try { value = JSON.parse(text); } catch (err) { throw new Error("params: not valid JSON"); }
      if (typeof value !== "object" || value === null) {
        throw new Error("params: an array or an object");
      }
      return value;
    }
    const byName = {}, byPosition = [];   // an omitted optional parameter: undefined
    (spec.params || []).forEach((param, index) => {
      const input = $(`param-${index}`);
      let value;
      if (input.value !== "" || (input.dataset.type === "string" && param.required)) {
        value = fieldValue(input);
        byName[param.name] = value;
      } else if (param.required) {
        throw new Error(`${param.name} is required`);
      }
      byPosition.push(value);
    });
    if (spec.paramStructure !== "by-position") return byName;
    while (byPosition.length && byPosition[byPosition.length - 1] === undefined) byPosition.pop();
    const gap = byPosition.indexOf(undefined);
    if (gap >= 0) throw new Error(`${spec.params[gap].name}: give it too (a later one is given)`);
    return byPosition;
  }

  function show(outcome, title, body) {
    const status = $("call-status");
    status.dataset.outcome = outcome;
    status.textContent = title;
    $("call-result").textContent = body === undefined ? "" : JSON.stringify(body, null, 2);
  }

  async function submit(event) {
    event.preventDefault();
    const method = $("method").value;
    const request = {jsonrpc: "2.0", id: ++callId, method};
    try {
      const params = readParams(formSpec(method));
      if (params !== undefined) request.params = params;
    } catch (err) {
      show("error", err.message);
      return;
    }
    const headers = {"Content-Type": "application/json"};
    const token = $("token").value;
    if (token) headers.Authorization = `Bearer ${token}`;
    show("pending", `calling ${method}\u2026`);
    try {
      const answer = await fetch("/", {method: "POST", headers, body: JSON.stringify(request),
        signal: timeoutSignal(CALL_TIMEOUT_MS)});
      const reply = await answer.json();
      if (request.id !== callId) return;   // a later call was sent meanwhile: its answer counts
      if (reply && "result" in reply) {
        show("ok", `${answer.status} \u00b7 result`, reply.result);
      } else {
        const error = (reply && reply.error) || {};
        show("error", `${answer.status} \u00b7 error ${error.code}: ${error.message}`, error);
      }
    } catch (err) {
      if (request.id === callId) show("error", `no answer: ${err.message || err}`);
    }
  }

  $("call-form").addEventListener("submit", submit);
  $("method").addEventListener("change", buildFields);
  loadOpenrpc();
  poll();
})();
