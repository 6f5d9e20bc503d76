// The station panel: renders the station's state (GET /api/state, then /ws) and sends scanned
// serials and unlocks over the REST interface. Everything the server sends is shown with
// textContent, never as HTML.
"use strict";

(function () {
  const READY_PHASES = new Set(["idle", "done"]);
  const VERDICT_DETAIL = new Set(["FAIL", "ERROR", "ABORTED"]);
  const cards = new Map();          // socket name -> {root, parts}
  const refusals = new Map();       // socket name -> {serial, text}: refusals this page was told of
  let state = null;
  let stoppedReason = null;
  let socket = null;
  let retryMs = 500;

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ connection
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/ws`);
    socket.onopen = () => {
      retryMs = 500;
      setConnected(true);
    };
    socket.onmessage = (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      if (data.type === "event" && data.event) handleEvent(data.event);
      if (data.state) render(data.state);
    };
    socket.onclose = () => {
      setConnected(false);
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 5000);
    };
    socket.onerror = () => { try { socket.close(); } catch (e) { /* closing anyway */ } };
  }

  function setConnected(ok) {
    const badge = $("connection");
    badge.textContent = ok ? "connected" : "DISCONNECTED \u2013 reconnecting\u2026";
    badge.className = "connection " + (ok ? "ok" : "bad");
    document.body.classList.toggle("offline", !ok);
    if (state) render(state);
  }

  function handleEvent(event) {
    if (event.kind === "serial_refused" && event.socket) {
      const data = event.data || {};
      const text = data.message || data.reason || data.text || data.detail;
      if (text) refusals.set(event.socket, { serial: data.serial || "", text: String(text) });
    } else if (event.kind === "unit_started" && event.socket) {
      refusals.delete(event.socket);
    } else if (event.kind === "stopped") {
      const data = event.data || {};
      stoppedReason = data.reason || data.message || "the station loop has ended";
    }
  }

  // ------------------------------------------------------------------ rendering
  function text(el, value) {
    const s = value === null || value === undefined ? "" : String(value);
    if (el.textContent !== s) el.textContent = s;
  }

  function render(next) {
    state = next;
    const online = document.body.classList.contains("offline") === false;
    text($("station-name"), state.station);
    document.title = `${state.station} \u2013 station panel`;
    text($("plan"), `plan ${state.plan} v${state.plan_version}`);
    text($("operator"), state.operator ? `operator ${state.operator}` : "");
    text($("units-done"), `${state.units_done} unit${state.units_done === 1 ? "" : "s"} done`);

    const lock = state.lock || {};
    $("lock").hidden = !lock.locked;
    text($("lock-reason"), lock.locked ? (lock.reason || "no reason given") : "");
    const op = $("unlock-operator");
    if (!op.value && document.activeElement !== op) op.value = state.operator || "";

    $("stopped").hidden = stoppedReason === null;
    text($("stopped"), stoppedReason === null ? "" : `STATION STOPPED: ${stoppedReason}`);

    const names = new Set();
    for (const s of state.sockets) {
      names.add(s.name);
      renderSocket(card(s.name), s, !online ? "disconnected" : lock.locked ? "station locked"
        : stoppedReason !== null ? "station stopped" : null);
    }
    for (const [name, c] of cards) {
      if (!names.has(name)) { c.root.remove(); cards.delete(name); }
    }
    autofocus();
  }

  function card(name) {
    let c = cards.get(name);
    if (c) return c;
    const root = $("socket-template").content.firstElementChild.cloneNode(true);
    root.dataset.socket = name;
    const q = (sel) => root.querySelector(sel);
    c = {
      root,
      name: q(".socket-name"), phase: q(".phase"), unit: q(".unit"),
      form: q(".entry"), input: q(".serial-input"), button: q(".entry button"),
      refusal: q(".refusal"), history: q(".history"), step: q(".step"), count: q(".count"),
      progress: q(".progress"), verdict: q(".verdict"), word: q(".verdict-word"),
      failedStep: q(".failed-step"), diagnosis: q(".diagnosis"), takt: q(".takt"),
      message: q(".message"), table: q(".measurements"), rows: q("tbody"), rowCount: -1,
    };
    text(c.name, name);
    c.input.setAttribute("aria-label", `serial for socket ${name}`);
    c.form.addEventListener("submit", (e) => { e.preventDefault(); submitSerial(name, c); });
    $("sockets").appendChild(root);
    cards.set(name, c);
    return c;
  }

  function verdictWord(s) {
    if (s.phase === "running") return "TESTING";
    if (s.phase === "checking") return "CHECKING";
    if (s.verdict) return s.verdict;
    return "READY";
  }

  // paused: why no serial can be scanned anywhere now (null: scanning is open)
  function renderSocket(c, s, paused) {
    const ready = READY_PHASES.has(s.phase);
    c.root.dataset.phase = s.phase;
    text(c.phase, s.phase);
    const unit = [];
    if (s.serial) unit.push(s.serial);
    if (s.attempt && s.attempts_allowed) unit.push(`attempt ${s.attempt} of ${s.attempts_allowed}`);
    text(c.unit, unit.join(" \u00b7 "));

    c.input.disabled = !ready || paused !== null;
    c.button.disabled = c.input.disabled;
    c.input.placeholder = !ready ? "unit under test" : paused !== null ? paused : "scan the label";

    const refusal = refusals.get(s.name);
    c.refusal.hidden = !refusal;
    text(c.refusal, refusal ? `REFUSED ${refusal.serial}: ${refusal.text}` : "");
    text(c.history, s.history ? `History: ${s.history}` : "");

    let step = s.current_step;
    if (!step && s.phase === "done") step = s.failed_step ? `stopped at ${s.failed_step}` : "finished";
    text(c.step, step || "\u2013");
    text(c.count, s.steps_total ? `${s.steps_done} / ${s.steps_total} steps done` : "");
    c.progress.max = Math.max(s.steps_total || 0, 1);
    c.progress.value = s.steps_done || 0;

    const word = verdictWord(s);
    c.verdict.dataset.verdict = word;
    text(c.word, word);
    const detail = VERDICT_DETAIL.has(s.verdict) && s.phase === "done";
    text(c.failedStep, detail && s.failed_step ? `at ${s.failed_step}:` : "");
    text(c.diagnosis, detail ? (s.diagnosis || "") : "");
    text(c.takt, s.takt_s === null || s.takt_s === undefined ? "" : `takt ${Number(s.takt_s).toFixed(1)} s`);

    const msg = s.message && !(refusal && refusal.text === s.message) ? s.message : "";
    text(c.message, msg);
    c.message.hidden = !msg;

    renderMeasurements(c, s.measurements || []);
  }

  function renderMeasurements(c, measurements) {
    const rows = c.rows;
    const key = JSON.stringify(measurements);
    if (key === c.rowKey) return;
    c.rowKey = key;
    const grew = measurements.length > c.rowCount;
    c.rowCount = measurements.length;
    rows.replaceChildren();
    for (const m of measurements) {
      const tr = document.createElement("tr");
      // the station stores a measurement's verdict in lower case ("pass", "recorded") and its
      // "shown" text as the console prints it: "module_ocv = 13.1 V [12.9 .. 13.3] PASS"; the
      // table has columns for the name and the verdict, so neither is repeated in the reading
      const verdict = String(m.verdict || "").toUpperCase();
      let shown = String(m.shown || "");
      const name = m.name === null || m.name === undefined ? "" : String(m.name);
      if (name && shown.startsWith(name + " = ")) shown = shown.slice(name.length + 3);
      if (verdict && shown.toUpperCase().endsWith(" " + verdict)) shown = shown.slice(0, -verdict.length - 1);
      for (const [value, cls] of [[m.step, "m-step"], [m.name, "m-name"], [shown, "m-shown"],
                                  [verdict, "m-verdict"]]) {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = value === null || value === undefined ? "" : String(value);
        tr.appendChild(td);
      }
      tr.dataset.verdict = verdict;
      rows.appendChild(tr);
    }
    c.table.hidden = measurements.length === 0;
    if (grew) c.table.scrollTop = c.table.scrollHeight;   // newest last, in view
  }

  // the scanner types into whatever has focus: keep it on an idle socket's entry, never taking it
  // from a field the operator is using
  function autofocus() {
    const active = document.activeElement;
    if (active && active.tagName === "INPUT" && !active.disabled) return;
    const ready = [...cards.values()].filter((c) => !c.input.disabled);
    const idle = ready.find((c) => c.root.dataset.phase === "idle") || ready[0];
    if (idle) idle.input.focus();
  }

  // ------------------------------------------------------------------ actions
  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* no body */ }
    return { ok: response.ok, status: response.status, data };
  }

  function detailText(data, fallback) {
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg || String(d)).join("; ");
    return fallback;
  }

  async function submitSerial(name, c) {
    const serial = c.input.value.trim();
    c.input.value = "";               // the next scan starts on an empty field
    if (!serial) return;
    try {
      const r = await post(`/api/sockets/${encodeURIComponent(name)}/serial`, { serial });
      if (r.ok) refusals.delete(name);
      else refusals.set(name, { serial, text: detailText(r.data, `refused (HTTP ${r.status})`) });
    } catch (e) {
      refusals.set(name, { serial, text: "not sent: the panel has lost the station" });
    }
    if (state) render(state);
  }

  async function submitUnlock(event) {
    event.preventDefault();
    const reason = $("unlock-reason").value.trim();
    const operator = $("unlock-operator").value.trim();
    const error = $("unlock-error");
    if (!reason || !operator) {
      text(error, "Give the reason and your name.");
      return;
    }
    try {
      const r = await post("/api/unlock", { reason, operator });
      if (r.ok) {
        text(error, "");
        $("unlock-reason").value = "";
        $("unlock-reason").blur();
        render(r.data);
      } else {
        text(error, detailText(r.data, `unlock refused (HTTP ${r.status})`));
      }
    } catch (e) {
      text(error, "not sent: the panel has lost the station");
    }
  }

  async function endShift() {
    if (!window.confirm("End the shift? Running units are interrupted and their benches made safe.")) return;
    try {
      await post("/api/stop", { reason: "shift ended from the panel" });
    } catch (e) { /* the stopped event, or the lost connection, tells the operator */ }
  }

  async function start() {
    $("unlock-form").addEventListener("submit", submitUnlock);
    $("end-shift").addEventListener("click", endShift);
    try {
      const response = await fetch("/api/state");
      if (response.ok) render(await response.json());
    } catch (e) { /* the websocket brings the state when it connects */ }
    connect();
  }

  start();
})();
