// The console's only script: refreshes the figures of the camera list and a camera's page, swaps in the newest
// masked picture, draws the history charts, and asks before destructive buttons. Served from the package.
"use strict";
(function () {
  const every = Number(document.body.dataset.refreshMs || 1000);
  const fmt = (v, digits) => (v === null || v === undefined) ? "\u2013" :
    (typeof v === "number" ? v.toFixed(digits) : String(v));
  const getJson = async (url) => {
    const r = await fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } });
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  };

  document.querySelectorAll("button[data-confirm]").forEach((b) => {
    b.addEventListener("click", (ev) => { if (!window.confirm(b.dataset.confirm)) ev.preventDefault(); });
  });

  const list = document.querySelector("table#cameras[data-live]");
  if (list) {
    const digits = { fps_in: 1, fps_out: 1, lag_s: 2, end_to_end_p99_ms: 0, faces_per_frame: 2 };
    setInterval(async () => {
      try {
        const data = await getJson(list.dataset.live);
        let missing = false;
        for (const row of data.cameras) {
          const tr = document.getElementById("row-" + row.camera_id);
          if (!tr) { missing = true; continue; }
          tr.querySelectorAll("[data-key]").forEach((td) => {
            const key = td.dataset.key;
            td.textContent = key in digits ? fmt(row[key], digits[key]) : (row[key] || "");
            if (key === "state") td.className = "state state-" + String(row.state).replace(/ /g, "-");
          });
        }
        if (missing) window.location.reload();  // a camera appeared: render its row (and its buttons) anew
      } catch (e) { /* the next tick tries again */ }
    }, Math.max(every, 1000));
  }

  function chart(canvas, series, key) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const points = series.filter((p) => p[key] !== null && p[key] !== undefined);
    ctx.fillStyle = "#646970";
    ctx.font = "11px sans-serif";
    if (!points.length) { ctx.fillText("no frames yet", 8, 16); return; }
    const max = Math.max(...points.map((p) => p[key]), 1e-9);
    const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
    ctx.fillText(max.toFixed(1), 4, 12);
    ctx.strokeStyle = "#2271b1";
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = 30 + (canvas.width - 40) * (p.t - t0) / (t1 - t0);
      const y = canvas.height - 8 - (canvas.height - 24) * p[key] / max;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = "#2271b1";
    points.forEach((p) => {
      const x = 30 + (canvas.width - 40) * (p.t - t0) / (t1 - t0);
      ctx.fillRect(x - 2, canvas.height - 10 - (canvas.height - 24) * p[key] / max, 4, 4);
    });
  }

  const camera = document.querySelector(".camera[data-live]");
  if (camera) {
    const img = document.getElementById("preview");
    const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
    const tick = async () => {
      try {
        const d = await getJson(camera.dataset.live);
        const pic = d.picture;
        document.getElementById("no-frame").hidden = !!pic;
        document.getElementById("fail-closed").hidden = !(pic && pic.fail_closed);
        if (pic) {
          set("fail-reason", pic.fail_closed_reason || "");
          set("seq", pic.seq);
          set("faces", pic.faces);
          if (img.dataset.seq !== String(pic.seq)) {
            const next = new Image();
            next.onload = () => { img.src = next.src; img.dataset.seq = String(pic.seq); };
            next.src = img.dataset.src + "?seq=" + pic.seq;
          }
        }
        if (d.status) {
          set("state", d.status.state);
          set("fps", fmt(d.status.fps_in, 1) + " / " + fmt(d.status.fps_out, 1));
        }
        set("lag", fmt(d.figures.lag_s, 2));
        set("p99", fmt(d.figures.end_to_end_p99_ms, 0));
        set("fpf", fmt(d.figures.faces_per_frame, 2));
        set("fcr", fmt(d.figures.fail_closed_rate, 3));
        document.querySelectorAll("canvas[data-series]").forEach((c) => chart(c, d.series, c.dataset.series));
      } catch (e) { /* the next tick tries again */ }
    };
    tick();
    setInterval(tick, every);
  }
})();
