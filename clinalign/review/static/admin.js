// clinalign admin dashboard: reads /api/admin/stats, adds concepts and people.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json", "X-Requested-With": "clinalign" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty */ }
    if (!res.ok) {
      let d = data && data.detail;
      if (Array.isArray(d)) d = d.map((x) => `${x.loc ? x.loc.slice(-1)[0] + ": " : ""}${x.msg}`).join("; ");
      const err = new Error(d || res.statusText);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
  const num = (x, d = 3) => (x === null || x === undefined ? "–" : x.toFixed(d));
  const when = (t) => (t ? new Date(t).toLocaleString() : "–");

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function bar(done, total) {
    const td = document.createElement("td");
    const b = document.createElement("span");
    b.className = "minibar";
    const i = document.createElement("i");
    i.style.width = `${total ? Math.min(100, (100 * done) / total) : 0}%`;
    b.append(i);
    td.append(b, `${done} / ${total}`);
    return td;
  }

  function thumb(url) {
    const td = document.createElement("td");
    const img = document.createElement("img");
    img.src = url;
    img.alt = "";
    img.className = "thumb";
    img.loading = "lazy";
    td.append(img);
    return td;
  }

  function rows(tbody, items, make, empty) {
    const el = $(tbody);
    el.replaceChildren();
    if (!items.length) {
      const tr = document.createElement("tr");
      const td = cell(empty);
      td.colSpan = 9;
      tr.append(td);
      el.append(tr);
      return;
    }
    items.forEach((x) => {
      const tr = document.createElement("tr");
      tr.append(...make(x));
      el.append(tr);
    });
  }

  let batchesLoaded = false;
  function fillBatches(batches) {
    if (batchesLoaded) return;
    batchesLoaded = true;
    const sel = $("batch");
    const csel = $("c-batch");
    batches.forEach((b) => {
      sel.append(new Option(`${b.name} (${b.samples} images, ${b.per_image}/image)`, b.name));
      csel.append(new Option(b.name, b.name));
    });
  }

  async function refresh() {
    const batch = $("batch").value;
    let s;
    try {
      s = await api("GET", `/api/admin/stats${batch ? `?batch=${encodeURIComponent(batch)}` : ""}`);
    } catch (e) {
      const b = $("banner");
      b.hidden = false;
      b.classList.add("error");
      b.textContent = e.status === 401 || e.status === 403
        ? "This dashboard needs an admin link (clinalign review add-admin NAME)."
        : `Cannot load statistics: ${e.message}`;
      return;
    }
    $("banner").hidden = true;
    fillBatches(s.batches);
    $("k-done").textContent = `${s.totals.done} / ${s.totals.required}`;
    $("k-images").textContent = String(s.totals.images);
    $("k-rate").textContent = pct(s.totals.plausibility_rate);
    const f = s.agreement.fleiss;
    $("k-fleiss").textContent = num(f.kappa);
    $("k-fleiss-note").textContent = f.images
      ? `Fleiss' κ over ${f.images} images with ${f.ratings_per_image} ratings each`
      : "Fleiss' κ (needs images with ≥ 2 ratings)";

    rows("t-rev", s.reviewers, (r) => [
      cell(r.name), cell(String(r.done), "num"), cell(String(r.samples_done), "num"), cell(String(r.claimed), "num"),
      cell(String(r.qc.n), "num"), cell(pct(r.qc.accuracy), "num"), cell(String(r.qc.unsure), "num"), cell(when(r.last_verdict_at)),
    ], "No reviewers yet: clinalign review add-reviewer NAME");
    rows("t-cls", s.classes, (c) => [
      cell(c.class), cell(String(c.images), "num"), bar(c.done, c.required), cell(String(c.plausible), "num"),
      cell(String(c.implausible), "num"), cell(String(c.unsure), "num"), cell(pct(c.plausibility_rate), "num"),
    ], "No batches yet: clinalign review add-batch --samples DIR");
    rows("t-kappa", s.agreement.cohen, (p) => [
      cell(p.a), cell(p.b), cell(String(p.n), "num"), cell(pct(p.agreement), "num"), cell(num(p.kappa), "num"),
    ], "No image has been judged by two reviewers yet.");

    rows("t-comments", s.comments, (c) => [
      thumb(c.image_url), cell(c.comment, "comment"), cell(c.verdict),
      cell(c.kind === "qc" ? `${c.class} (QC)` : c.class), cell(c.reviewer), cell(when(c.created_at)),
    ], "No comments yet.");

    const list = $("concept-list");
    list.replaceChildren();
    s.batches.forEach((b) => b.concepts.forEach((c) => {
      const li = document.createElement("li");
      li.textContent = `${b.name}: ${c.name} (under ${c.parent})`;
      list.append(li);
    }));
  }

  $("batch").addEventListener("change", refresh);

  $("f-concept").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const st = $("c-status");
    try {
      const c = await api("POST", "/api/admin/concepts", {
        batch: $("c-batch").value, name: $("c-name").value.trim(), parent: $("c-parent").value.trim(),
      });
      st.className = "status ok";
      st.textContent = `Added ${c.name} under ${c.parent}.`;
      $("c-name").value = "";
      refresh();
    } catch (e) {
      st.className = "status err";
      st.textContent = e.message;
    }
  });

  $("f-person").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const st = $("p-status");
    const box = $("p-link");
    try {
      const p = await api("POST", "/api/admin/people", {
        name: $("p-name").value.trim(), role: $("p-role").value, rotate: $("p-rotate").checked,
      });
      st.className = "status ok";
      st.textContent = `Link for ${p.name} (${p.role}); send it privately:`;
      box.hidden = false;
      box.textContent = p.link;
      refresh();
    } catch (e) {
      st.className = "status err";
      st.textContent = e.message;
      box.hidden = true;
    }
  });

  api("GET", "/api/me").then((me) => {
    // The server already redirects a reviewer; this covers a session that changed meanwhile.
    if (me.role !== "admin") { location.replace("/"); return; }
    $("who").textContent = `${me.role}: ${me.name}`;
  }).catch(() => {});
  refresh();
  setInterval(refresh, 15000);
})();
