// clinalign reviewer page: one image, one verdict, next. Plain JS, no build step, no CDN.
// Every verdict carries a client-made request_id and is kept in localStorage until the server
// acknowledges it, so a dropped connection or a reload never loses (or doubles) a judgement.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const PENDING_KEY = "clinalign.pending";
  const LABEL = { plausible: "Plausible", implausible: "Implausible", unsure: "Unsure" };
  const state = { me: null, item: null, busy: false, ready: false, zoom: 0, compare: null };

  // ------------------------------------------------------------------ API
  function uuid4() {
    // crypto.randomUUID exists only in secure contexts; plain-http lab servers need the fallback.
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  async function api(method, path, body) {
    const init = {
      method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-Requested-With": "clinalign" },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init); // rejects when the server cannot be reached
    if (res.status === 204) return null;
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) {
      let detail = data && data.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
      throw new ApiError(res.status, detail || res.statusText);
    }
    return data;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Retry until the server answers: network errors and 5xx are transient, 4xx are answers.
  async function send(path, body) {
    let wait = 400;
    for (;;) {
      try {
        const r = await api("POST", path, body);
        banner(null);
        return r;
      } catch (e) {
        if (e instanceof ApiError && e.status < 500) throw e;
        banner("Connection lost. Your judgement is kept on this device and will be sent as soon as the server answers…");
        await sleep(wait);
        wait = Math.min(wait * 2, 8000);
      }
    }
  }

  function savePending(kind, body) {
    try { localStorage.setItem(PENDING_KEY, JSON.stringify({ reviewer: state.me, kind, body })); } catch (_) {}
  }
  function clearPending() {
    try { localStorage.removeItem(PENDING_KEY); } catch (_) {}
  }
  function loadPending() {
    try { return JSON.parse(localStorage.getItem(PENDING_KEY) || "null"); } catch (_) { return null; }
  }

  // ------------------------------------------------------------------ feedback
  function banner(text, isError) {
    const b = $("banner");
    b.hidden = !text;
    b.textContent = text || "";
    b.classList.toggle("error", !!isError);
  }

  let flashTimer = null;
  function flash(text, kind) {
    const s = $("status");
    s.textContent = text;
    s.className = `status ${kind || ""}`;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { s.textContent = ""; }, 4000);
  }

  function setProgress(p) {
    const bar = $("progressbar");
    const pct = p.total ? (100 * p.done) / p.total : 0;
    $("progressfill").style.width = `${pct}%`;
    $("progresscount").textContent = `${p.done} / ${p.total} judged`;
    bar.setAttribute("aria-valuemax", String(p.total));
    bar.setAttribute("aria-valuenow", String(p.done));
    bar.setAttribute("aria-valuetext", `${p.done} of ${p.total} images judged`);
    state.done = p.done;
  }

  function updateControls() {
    const canJudge = !!state.item && state.ready && !state.busy;
    document.querySelectorAll(".verdict").forEach((b) => { b.disabled = !canJudge; });
    $("undo").disabled = state.busy || !state.done;
  }

  // ------------------------------------------------------------------ rendering
  function chip(type, name, value, text, checked) {
    const label = document.createElement("label");
    label.className = "chip";
    const input = document.createElement("input");
    input.type = type;
    input.name = name;
    input.value = value;
    input.checked = !!checked;
    const span = document.createElement("span");
    span.textContent = text;
    label.append(input, span);
    return label;
  }

  function show(item, progress, prefill) {
    state.item = item;
    state.ready = false;
    setProgress(progress);
    closeCompare();
    const fig = $("samplefig");
    const ph = $("placeholder");
    if (!item) {
      fig.hidden = true;
      $("refs").hidden = true;
      $("declared").textContent = "–";
      ph.hidden = false;
      ph.replaceChildren();
      const h = document.createElement("h2");
      h.textContent = progress.done ? "All done, thank you!" : "Nothing to judge yet";
      const p = document.createElement("p");
      p.textContent = progress.done
        ? `${progress.done} judgements saved. You can close this page, or undo your last verdict.`
        : "No images are waiting for you. Check back later.";
      const wrap = document.createElement("div");
      wrap.className = "done";
      wrap.append(h, p);
      ph.append(wrap);
      $("reasonchips").replaceChildren();
      $("concepts").hidden = true;
      $("comment").value = "";
      updateControls();
      return;
    }
    const cls = item.declared_class;
    $("declared").textContent = cls;
    const q = $("question");
    q.replaceChildren("Is this a plausible ", Object.assign(document.createElement("strong"), { textContent: cls }), "?");

    const img = $("sample");
    img.onload = () => {
      if (state.item !== item) return;
      ph.hidden = true;
      fig.hidden = false;
      state.ready = true;
      applyZoom();
      updateControls();
    };
    img.onerror = () => {
      if (state.item !== item) return;
      ph.hidden = false;
      ph.textContent = "The image could not be loaded. Reload the page to try again.";
    };
    img.alt = `Synthetic image to judge, declared class ${cls}`;
    img.src = item.image_url;

    const reasons = new Set((prefill && prefill.reasons) || []);
    $("reasonchips").replaceChildren(...item.checklist.map((t) => chip("checkbox", "reason", t, t, reasons.has(t))));
    $("reasons").hidden = item.checklist.length === 0;

    const concepts = $("concepts");
    concepts.hidden = item.concepts.length === 0;
    const chosen = (prefill && prefill.concept) || "";
    $("conceptchips").replaceChildren(
      chip("radio", "concept", "", `just ${cls}`, !chosen),
      ...item.concepts.map((c) => chip("radio", "concept", c.name, c.name, c.name === chosen)),
    );
    $("comment").value = (prefill && prefill.comment) || "";

    const list = $("reflist");
    list.replaceChildren();
    item.references.forEach((url, i) => {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.setAttribute("aria-pressed", "false");
      btn.setAttribute("aria-label", `Compare with real ${cls} reference ${i + 1}`);
      const im = document.createElement("img");
      im.src = url;
      im.alt = `Real ${cls} reference ${i + 1}`;
      im.loading = "lazy";
      btn.append(im);
      btn.addEventListener("click", () => toggleCompare(url, btn));
      li.append(btn);
      list.append(li);
    });
    $("refs-title").textContent = `Real ${cls} references`;
    $("refs").hidden = item.references.length === 0;
    updateControls();
    // Keep the keyboard on the page, not on the button just clicked (Enter would re-judge).
    $("stage").focus({ preventScroll: true });
  }

  // ------------------------------------------------------------------ zoom + compare
  function fitScale(w, h) {
    const stage = $("stage");
    const panes = state.compare ? 2 : 1;
    const availW = (stage.clientWidth - 48 - (panes - 1) * 32) / panes;
    const availH = stage.clientHeight - 56;
    const s = Math.min(availW / w, availH / h);
    // Whole-number scaling keeps every source pixel the same size on screen.
    return s >= 1 ? Math.floor(s) : s;
  }

  function currentScale() {
    const img = $("sample");
    if (!img.naturalWidth) return 1;
    return state.zoom || fitScale(img.naturalWidth, img.naturalHeight);
  }

  function applyZoom() {
    const img = $("sample");
    if (!img.naturalWidth) return;
    const s = currentScale();
    const w = Math.round(img.naturalWidth * s);
    const h = Math.round(img.naturalHeight * s);
    img.style.width = `${w}px`;
    img.style.height = `${h}px`;
    const cmp = $("compare");
    if (state.compare && cmp.naturalWidth) {
      cmp.style.width = `${w}px`;
      cmp.style.height = `${Math.round((w * cmp.naturalHeight) / cmp.naturalWidth)}px`;
    }
    $("zoomlevel").textContent = state.zoom ? `${+s.toFixed(2)}×` : `fit ${+s.toFixed(2)}×`;
  }

  function zoomBy(dir) {
    const s = currentScale();
    let next;
    if (dir > 0) next = s < 1 ? Math.min(1, s * 2) : Math.floor(s) + 1;
    else next = s <= 1 ? s / 2 : Math.ceil(s) - 1;
    state.zoom = Math.min(64, Math.max(0.125, next));
    applyZoom();
  }

  function toggleCompare(url, btn) {
    const same = state.compare === url;
    closeCompare();
    if (same) { applyZoom(); return; }
    state.compare = url;
    btn.setAttribute("aria-pressed", "true");
    const cmp = $("compare");
    cmp.onload = () => { $("comparefig").hidden = false; $("samplecap").hidden = false; applyZoom(); };
    cmp.src = url;
  }

  function closeCompare() {
    state.compare = null;
    $("comparefig").hidden = true;
    $("samplecap").hidden = true;
    document.querySelectorAll("#reflist button").forEach((b) => b.setAttribute("aria-pressed", "false"));
  }

  // ------------------------------------------------------------------ actions
  function selected() {
    const reasons = Array.from(document.querySelectorAll('input[name="reason"]:checked'), (i) => i.value);
    const c = document.querySelector('input[name="concept"]:checked');
    return { reasons, concept: c && c.value ? c.value : null };
  }

  async function handleError(e, what) {
    if (e instanceof ApiError && e.status === 401) return signedOut();
    if (e instanceof ApiError && e.status === 409) {
      flash(`${e.message}`, "err");
      const r = await api("GET", "/api/next");
      show(r.item, r.progress);
      return;
    }
    flash(`Could not ${what}: ${e.message}`, "err");
  }

  async function judge(verdict) {
    if (state.busy || !state.item || !state.ready) return;
    const { reasons, concept } = selected();
    const body = {
      request_id: uuid4(),
      item: state.item.uid,
      verdict,
      reasons,
      comment: $("comment").value.trim(),
      concept,
    };
    savePending("verdict", body);
    state.busy = true;
    updateControls();
    try {
      const r = await send("/api/verdicts", body);
      clearPending();
      flash(`Saved: ${LABEL[verdict]}`, "ok");
      state.busy = false;
      show(r.next, r.progress);
    } catch (e) {
      clearPending();
      state.busy = false;
      await handleError(e, "save the verdict");
    } finally {
      state.busy = false;
      updateControls();
    }
  }

  async function undo() {
    if (state.busy || !state.done) return;
    const body = { request_id: uuid4() };
    state.busy = true;
    updateControls();
    try {
      const r = await send("/api/undo", body);
      state.busy = false;
      if (r.undone) {
        flash(`Undone: ${LABEL[r.undone.verdict]}. Judge this image again.`, "ok");
        show(r.next, r.progress, r.undone);
      } else {
        flash("Nothing to undo", "err");
        setProgress(r.progress);
      }
    } catch (e) {
      state.busy = false;
      await handleError(e, "undo");
    } finally {
      state.busy = false;
      updateControls();
    }
  }

  async function flushPending() {
    const p = loadPending();
    if (!p || p.reviewer !== state.me || p.kind !== "verdict") return;
    try {
      await send("/api/verdicts", p.body);
      flash("Your last judgement from before the reload was saved.", "ok");
    } catch (_) {
      // Already judged elsewhere, or no longer in the queue: nothing left to save.
    }
    clearPending();
  }

  function signedOut() {
    state.item = null;
    updateControls();
    $("who").textContent = "";
    const ph = $("placeholder");
    ph.hidden = false;
    ph.textContent = "You are not signed in. Open the private link you were given (it looks like https://…/r/…).";
    $("samplefig").hidden = true;
    $("refs").hidden = true;
  }

  async function start() {
    try {
      const me = await api("GET", "/api/me");
      if (me.role === "admin") {
        location.replace("/admin");
        return;
      }
      state.me = me.name;
      $("who").textContent = `Reviewer: ${me.name}`;
      await flushPending();
      const r = await api("GET", "/api/next");
      show(r.item, r.progress);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return signedOut();
      banner("Cannot reach the review server. Retrying…", true);
      setTimeout(start, 3000);
    }
  }

  // ------------------------------------------------------------------ wiring
  document.querySelectorAll(".verdict").forEach((b) => b.addEventListener("click", () => judge(b.dataset.verdict)));
  $("undo").addEventListener("click", undo);
  $("zoomin").addEventListener("click", () => zoomBy(1));
  $("zoomout").addEventListener("click", () => zoomBy(-1));
  $("zoomfit").addEventListener("click", () => { state.zoom = 0; applyZoom(); });
  window.addEventListener("resize", () => { if (!state.zoom) applyZoom(); });

  const KEYS = {
    1: () => judge("plausible"), p: () => judge("plausible"),
    2: () => judge("implausible"), i: () => judge("implausible"),
    3: () => judge("unsure"), u: () => judge("unsure"),
    z: undo, backspace: undo,
    "+": () => zoomBy(1), "=": () => zoomBy(1), "-": () => zoomBy(-1), "_": () => zoomBy(-1),
    0: () => { state.zoom = 0; applyZoom(); },
    c: () => $("comment").focus(),
  };
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type === "text"))) {
      if (ev.key === "Escape") { t.blur(); $("stage").focus({ preventScroll: true }); ev.preventDefault(); }
      return;
    }
    // A held-down key must not judge a run of images.
    if (ev.repeat) { if (KEYS[ev.key.toLowerCase()]) ev.preventDefault(); return; }
    const action = KEYS[ev.key.toLowerCase()];
    if (!action) return;
    ev.preventDefault();
    action();
  });

  start();
})();
