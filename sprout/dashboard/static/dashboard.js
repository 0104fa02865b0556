/* Sprout ledger dashboard: draws dashboard/data.json as inline SVG charts.
 * No dependencies, no network but this origin. Errors are recorded on the page
 * (body[data-errors], #errors) so that a headless browser can see them. */
(function () {
  "use strict";

  // ------------------------------------------------------------------ errors
  const errors = [];
  function recordError(message) {
    errors.push(String(message));
    document.body.dataset.errors = String(errors.length);
    const list = document.getElementById("errors");
    if (list) {
      list.appendChild(h("li", { text: String(message) }));
      list.hidden = false;
    }
  }
  window.addEventListener("error", function (e) {
    const t = e.target;
    recordError(e.message || "failed to load " + ((t && (t.src || t.href)) || "a resource"));
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    recordError("unhandled rejection: " + ((e.reason && e.reason.message) || e.reason));
  });
  const consoleError = console.error.bind(console);
  console.error = function () {
    recordError(Array.prototype.join.call(arguments, " "));
    consoleError.apply(null, arguments);
  };
  window.sproutDashboardErrors = errors;

  // ------------------------------------------------------------------ DOM helpers
  const SVG_NS = "http://www.w3.org/2000/svg";
  function h(tag, attrs) {
    const n = document.createElement(tag);
    for (const k in attrs || {}) {
      if (k === "text") n.textContent = attrs[k];
      else if (k === "class") n.className = attrs[k];
      else if (attrs[k] != null) n.setAttribute(k, attrs[k]);
    }
    for (let i = 2; i < arguments.length; i++) {
      const c = arguments[i];
      if (c != null) n.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return n;
  }
  function s(tag, attrs, parent) {
    const n = document.createElementNS(SVG_NS, tag);
    for (const k in attrs) if (attrs[k] != null) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }
  function tip(node, text) {
    s("title", {}, node).textContent = text;
    return node;
  }

  // ------------------------------------------------------------------ formats
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const pad = (n) => String(n).padStart(2, "0");
  function num(v, digits) {
    if (v == null || !isFinite(v)) return "n/a";
    if (v === 0) return "0";
    if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en");
    return String(Number(v.toPrecision(digits || 3)));
  }
  const pct = (x, d) => (x == null ? "n/a" : (100 * x).toFixed(d == null ? 1 : d) + "%");
  function grams(g) {
    if (g == null) return "n/a";
    if (Math.abs(g) >= 1e6) return num(g / 1e6) + " tCO2e";
    if (Math.abs(g) >= 1e3) return num(g / 1e3) + " kgCO2e";
    return num(g) + " gCO2e";
  }
  function energy(kwh) {
    if (kwh == null) return "n/a";
    if (Math.abs(kwh) >= 1e3) return num(kwh / 1e3) + " MWh";
    if (Math.abs(kwh) >= 1) return num(kwh) + " kWh";
    return num(kwh * 1e3) + " Wh";
  }
  // Axis units: the largest unit whose values stay >= 1.
  function gramsUnit(max) {
    return max >= 1e6 ? ["tCO2e", 1e6] : max >= 1e3 ? ["kgCO2e", 1e3] : ["gCO2e", 1];
  }
  function energyUnit(maxKwh) {
    return maxKwh >= 1e3 ? ["MWh", 1e3] : maxKwh >= 1 ? ["kWh", 1] : ["Wh", 1e-3];
  }
  function when(iso, bucket) {
    const d = new Date(iso);
    const day = d.getUTCDate() + " " + MONTHS[d.getUTCMonth()] + " " + d.getUTCFullYear();
    return bucket === "day" ? day : day + " " + pad(d.getUTCHours()) + ":00 UTC";
  }

  // ------------------------------------------------------------------ charts
  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((v) => v >= raw) || 10 * mag;
    const ticks = [];
    for (let t = Math.floor(lo / step) * step; t <= Math.ceil(hi / step) * step + step / 2; t += step) {
      ticks.push(Math.abs(t) < step / 1e6 ? 0 : t);
    }
    return ticks;
  }

  function domain(o, axis) {
    let lo = 0;
    let hi = 0;
    const stacks = {};
    for (const se of o.series) {
      if ((se.axis || "y") !== axis) continue;
      se.values.forEach(function (v, i) {
        if (v == null) return;
        if (se.type === "bar") {
          const key = (se.stack || se.name) + ":" + i;
          stacks[key] = (stacks[key] || 0) + v;
          hi = Math.max(hi, stacks[key]);
        } else {
          hi = Math.max(hi, v);
          lo = Math.min(lo, v);
        }
      });
    }
    for (const r of o.refs || []) {
      if ((r.axis || "y") === axis) {
        hi = Math.max(hi, r.value);
        lo = Math.min(lo, r.value);
      }
    }
    const spec = o[axis] || {};
    if (spec.max != null) hi = spec.max;
    if (hi <= lo) hi = lo + 1;
    const ticks = niceTicks(lo, hi, 5);
    return { lo: ticks[0], hi: ticks[ticks.length - 1], ticks: ticks };
  }

  // An x tick every k buckets: whole hours of the day, or days.
  function tickEvery(n, bucket) {
    const steps = bucket === "day" ? [1, 2, 7, 14, 28, 56, 91] : [1, 2, 3, 4, 6, 12, 24, 48, 72, 168];
    return steps.find((k) => n / k <= 13) || Math.ceil(n / 12);
  }

  /** Draw one chart into ``fig``: bars (stacked by ``stack``), lines, steps and reference
   * lines on a left axis ``y`` and an optional right axis ``y2``; legend below. */
  function chart(fig, o) {
    fig.replaceChildren(
      h("figcaption", {}, h("h2", { text: o.title }), h("p", { class: "subtitle", text: o.subtitle }))
    );
    const n = o.starts.length;
    const W = 640;
    const H = 290;
    const m = { l: 64, r: o.y2 ? 64 : 20, t: 14, b: 46 };
    const pw = W - m.l - m.r;
    const ph = H - m.t - m.b;
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img", "aria-label": o.title });
    fig.appendChild(svg);
    if (!n) {
      s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent =
        "No receipts in this window";
      return 0;
    }
    const band = pw / n;
    const dom = { y: domain(o, "y") };
    if (o.y2) dom.y2 = domain(o, "y2");
    const x = (i) => m.l + i * band;
    const y = (v, axis) => {
      const d = dom[axis || "y"];
      return m.t + ph - ((v - d.lo) / (d.hi - d.lo)) * ph;
    };
    // Grid, axes and their titles.
    const fmt = o.y.format || num;
    for (const t of dom.y.ticks) {
      s("line", { x1: m.l, x2: m.l + pw, y1: y(t), y2: y(t), class: "grid" }, svg);
      s("text", { x: m.l - 6, y: y(t) + 4, "text-anchor": "end" }, svg).textContent = fmt(t);
    }
    if (o.y2) {
      const fmt2 = o.y2.format || num;
      for (const t of dom.y2.ticks) {
        s("text", { x: m.l + pw + 6, y: y(t, "y2") + 4 }, svg).textContent = fmt2(t);
      }
      s("text", {
        class: "axis-title", "text-anchor": "middle",
        transform: "translate(" + (W - 12) + "," + (m.t + ph / 2) + ") rotate(90)",
      }, svg).textContent = o.y2.label;
    }
    s("text", {
      class: "axis-title", "text-anchor": "middle",
      transform: "translate(14," + (m.t + ph / 2) + ") rotate(-90)",
    }, svg).textContent = o.y.label;
    s("line", { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph, class: "axis" }, svg);
    const every = tickEvery(n, o.bucket);
    o.starts.forEach(function (iso, i) {
      const d = new Date(iso);
      const hour = d.getUTCHours();
      const on = o.bucket === "day" ? i % every === 0 : (hour % every === 0 && every <= 24) || (every > 24 && i % every === 0);
      if (!on) return;
      const cx = x(i) + band / 2;
      s("line", { x1: cx, x2: cx, y1: m.t + ph, y2: m.t + ph + 4, class: "axis" }, svg);
      const label = s("text", { x: cx, y: m.t + ph + 16, "text-anchor": "middle" }, svg);
      const day = d.getUTCDate() + " " + MONTHS[d.getUTCMonth()];
      if (o.bucket === "day") {
        label.textContent = day;
      } else {
        label.textContent = pad(hour) + ":00";
        if (hour === 0 || i < every) s("tspan", { x: cx, dy: 14 }, label).textContent = day;
      }
    });
    s("text", { x: m.l + pw / 2, y: H - 2, "text-anchor": "middle", class: "axis-title" }, svg)
      .textContent = o.bucket === "day" ? "day (UTC)" : "hour (UTC)";

    // Data.
    let marks = 0;
    const base = {};
    const legend = h("ul", { class: "legend" });
    for (const se of o.series) {
      const axis = se.axis || "y";
      const g = s("g", { "data-series": se.name }, svg);
      const unit = se.tipFormat || (axis === "y" ? fmt : (o.y2 && o.y2.format) || num);
      let kind = "bar";
      if (se.type === "bar") {
        se.values.forEach(function (v, i) {
          if (v == null || v <= 0) return;
          const key = (se.stack || se.name) + ":" + i;
          const b0 = base[key] || 0;
          base[key] = b0 + v;
          const top = y(b0 + v, axis);
          const r = s("rect", {
            x: x(i) + band * 0.12, width: Math.max(band * 0.76, 1),
            y: top, height: Math.max(y(b0, axis) - top, 0.5),
            fill: se.color, class: "mark",
          }, g);
          tip(r, when(o.starts[i], o.bucket) + "\n" + se.name + ": " + unit(v) + (se.note ? se.note(i) : ""));
          marks++;
        });
      } else {
        kind = se.dash ? "dash" : "line";
        let d = "";
        let prev = false;
        se.values.forEach(function (v, i) {
          if (v == null) {
            prev = false;
            return;
          }
          if (se.type === "step") {
            d += (prev ? "L" : "M") + x(i).toFixed(1) + "," + y(v, axis).toFixed(1) + "H" + x(i + 1).toFixed(1);
          } else {
            d += (prev ? "L" : "M") + (x(i) + band / 2).toFixed(1) + "," + y(v, axis).toFixed(1);
          }
          prev = true;
        });
        if (d) {
          s("path", {
            d: d, fill: "none", stroke: se.color, "stroke-width": se.width || 2,
            "stroke-dasharray": se.dash || null, "stroke-linejoin": "round", class: "mark line",
          }, g);
          marks++;
        }
        if (se.type === "line" && n <= 72) {
          se.values.forEach(function (v, i) {
            if (v == null) return;
            const c = s("circle", { cx: x(i) + band / 2, cy: y(v, axis), r: 2.6, fill: se.color, class: "mark" }, g);
            tip(c, when(o.starts[i], o.bucket) + "\n" + se.name + ": " + unit(v));
            marks++;
          });
        } else if (se.type === "step") {
          se.values.forEach(function (v, i) {
            if (v == null) return;
            const hit = s("rect", {
              x: x(i), width: band, y: y(v, axis) - 4, height: 8, fill: "transparent", class: "mark",
            }, g);
            tip(hit, when(o.starts[i], o.bucket) + "\n" + se.name + ": " + unit(v));
            marks++;
          });
        }
      }
      const sw = h("span", { class: "swatch " + kind });
      if (kind === "bar") sw.style.background = se.color;
      else sw.style.borderColor = se.color;
      legend.appendChild(h("li", {}, sw, se.name + (axis === "y2" && o.y2 ? " (right axis)" : "")));
    }
    for (const r of o.refs || []) {
      const ry = y(r.value, r.axis);
      s("line", {
        x1: m.l, x2: m.l + pw, y1: ry, y2: ry, stroke: r.color, "stroke-width": 1.6,
        "stroke-dasharray": r.dash || "6 4", class: "ref",
      }, svg);
      if (r.inPlot !== false) {
        s("text", {
          x: m.l + pw - 4, y: r.below ? ry + 13 : ry - 5, "text-anchor": "end", class: "ref-label", fill: r.color,
        }, svg).textContent = r.label;
      }
      const sw = h("span", { class: "swatch dash" });
      sw.style.borderColor = r.color;
      legend.appendChild(h("li", {}, sw, r.label));
    }
    fig.appendChild(legend);
    fig.dataset.marks = String(marks);
    return marks;
  }

  // A small horizontal bar for table cells.
  function cellBar(value, max, color, label) {
    const svg = s("svg", { width: 90, height: 12, viewBox: "0 0 90 12", role: "img", "aria-label": label });
    s("rect", { x: 0, y: 1, width: 90, height: 10, fill: "#eef1ef" }, svg);
    const w = max > 0 && value > 0 ? Math.max((90 * value) / max, 1) : 0;
    if (w > 0) tip(s("rect", { x: 0, y: 1, width: w, height: 10, fill: color, class: "mark" }, svg), label);
    return svg;
  }

  // ------------------------------------------------------------------ sections
  function kpis(doc) {
    const t = doc.totals;
    const q = doc.quality;
    const box = document.getElementById("kpis");
    const above = q.normalized_preference == null ? null : q.normalized_preference >= q.floor;
    const cards = [
      ["Emitted", grams(t.total_g), "served " + grams(t.serve_g) + " + evaluation " + grams(t.eval_g)],
      ["Always-L0 counterfactual", grams(t.counterfactual_g),
        "for " + t.with_counterfactual + " of " + t.serve_requests + " served requests"],
      ["Saved vs always-L0", grams(t.saved_g), pct(t.saved_pct == null ? null : t.saved_pct / 100) + " of the counterfactual",
        t.saved_g == null ? "" : t.saved_g >= 0 ? "good" : "bad"],
      ["Net of quality-loop overhead", grams(t.net_saved_g), "after " + grams(t.eval_g) + " of evaluation",
        t.net_saved_g == null ? "" : t.net_saved_g >= 0 ? "good" : "bad"],
      ["Energy", energy(t.energy_kwh), "mean intensity " + num(t.ci_g_per_kwh, 4) + " gCO2e/kWh"],
      ["Requests", num(t.serve_requests), num(t.eval_requests) + " evaluation generations"],
      ["Normalized preference", pct(q.normalized_preference, 0),
        "floor " + pct(q.floor, 0) + " · " + q.judged + " verdicts", above == null ? "" : above ? "good" : "bad"],
    ];
    box.replaceChildren.apply(box, cards.map(function (c) {
      return h("div", { class: "kpi " + (c[3] || "") },
        h("div", { class: "k", text: c[0] }), h("div", { class: "v", text: c[1] }), h("div", { class: "d", text: c[2] }));
    }));
  }

  function charts(doc) {
    const b = doc.buckets;
    const bucket = doc.window.bucket;
    const per = bucket === "day" ? "per day" : "per hour";
    const starts = b.map((r) => r.start);
    const col = (k) => b.map((r) => r[k]);
    const marks = {};

    const gMax = Math.max(0, ...b.map((r) => Math.max(r.serve_g + r.eval_g, r.counterfactual_g || 0)));
    const [gu, gf] = gramsUnit(gMax);
    const scaled = (k) => b.map((r) => (r[k] == null ? null : r[k] / gf));
    const gfmt = (v) => num(v);
    const gtip = (v) => num(v) + " " + gu;
    const carbon = [
      { name: "served", type: "bar", stack: "g", color: "#2f6ea5", values: scaled("serve_with_counterfactual_g"), tipFormat: gtip },
    ];
    if (b.some((r) => r.serve_without_counterfactual_g > 0)) {
      carbon.push({ name: "served, no counterfactual", type: "bar", stack: "g", color: "#9dbedf",
        values: scaled("serve_without_counterfactual_g"), tipFormat: gtip });
    }
    carbon.push(
      { name: "evaluation overhead (quality loop)", type: "bar", stack: "g", color: "#e8913a", values: scaled("eval_g"), tipFormat: gtip },
      { name: "always-L0 counterfactual", type: "step", color: "#333", dash: "5 3", width: 2, values: scaled("counterfactual_g"), tipFormat: gtip }
    );
    marks.carbon = chart(document.getElementById("chart-carbon"), {
      title: "Carbon " + per + " vs the always-L0 counterfactual",
      subtitle: "Operational + embodied emissions of served requests, with the quality loop's own generations stacked on top; the dashed line is what the same requests would have emitted at L0.",
      starts: starts, bucket: bucket, y: { label: gu + " " + per, format: gfmt }, series: carbon,
    });

    const cMax = Math.max(1e-12, ...b.map((r) => Math.max(Math.abs(r.cumulative_saved_g), Math.abs(r.cumulative_net_saved_g))));
    const [cu, cf] = gramsUnit(cMax);
    const cscaled = (k) => b.map((r) => r[k] / cf);
    const ctip = (v) => num(v) + " " + cu;
    marks.savings = chart(document.getElementById("chart-savings"), {
      title: "Cumulative savings vs always-L0",
      subtitle: "Counterfactual minus actual emissions over requests with a counterfactual; net subtracts the evaluation overhead of the quality loop.",
      starts: starts, bucket: bucket, y: { label: cu + ", cumulative", format: num },
      series: [
        { name: "saved (gross)", type: "line", color: "#8cc48c", values: cscaled("cumulative_saved_g"), tipFormat: ctip },
        { name: "evaluation overhead", type: "line", color: "#e8913a", dash: "5 3", values: cscaled("cumulative_eval_g"), tipFormat: ctip },
        { name: "saved, net of overhead", type: "line", color: "#1b7f3b", width: 3, values: cscaled("cumulative_net_saved_g"), tipFormat: ctip },
      ],
      refs: [{ value: 0, color: "#999", dash: "2 3", label: "break-even", inPlot: false }],
    });

    const eMax = Math.max(0, ...b.map((r) => r.energy_kwh));
    const [eu, ef] = energyUnit(eMax);
    const etip = (v) => num(v) + " " + eu;
    const sources = Object.keys(doc.totals.energy_kwh_by_source).join(", ") || "none";
    marks.energy = chart(document.getElementById("chart-energy"), {
      title: "Energy " + per + " and carbon intensity",
      subtitle: "Energy of served requests and of the quality loop's evaluation generations (source: " + sources + "); the line is the energy-weighted grid carbon intensity.",
      starts: starts, bucket: bucket, y: { label: eu + " " + per, format: num },
      y2: { label: "gCO2e/kWh", format: num },
      series: [
        { name: "served", type: "bar", stack: "e", color: "#4f8f6f", values: b.map((r) => r.serve_kwh / ef), tipFormat: etip },
        { name: "evaluation overhead", type: "bar", stack: "e", color: "#e8913a", values: b.map((r) => r.eval_kwh / ef), tipFormat: etip },
        { name: "carbon intensity", type: "line", axis: "y2", color: "#8b5a2b", values: col("ci_g_per_kwh"),
          tipFormat: (v) => num(v, 4) + " gCO2e/kWh" },
      ],
    });

    const palette = ["#1f4e79", "#4a90c2", "#9cc9e8", "#8e7cc3", "#c9a0dc", "#f2c38b", "#a0a0a0"];
    const names = doc.directives.names;
    const mix = names.map(function (name, k) {
      return {
        name: name, type: "bar", stack: "mix", color: palette[k % palette.length],
        values: b.map((r) => (r.serve_requests ? (100 * (r.directives[name] || 0)) / r.serve_requests : null)),
        tipFormat: (v) => v.toFixed(0) + "%",
        note: (i) => " (" + (b[i].directives[name] || 0) + " of " + b[i].serve_requests + " requests)",
      };
    });
    mix.push({ name: "carbon intensity", type: "line", axis: "y2", color: "#8b5a2b", values: col("ci_g_per_kwh"),
      tipFormat: (v) => num(v, 4) + " gCO2e/kWh" });
    marks.mix = chart(document.getElementById("chart-mix"), {
      title: "Directive mix " + per,
      subtitle: "Share of served requests under each directive (L0 = the unshaped answer), beside the grid's carbon intensity that the policy decided on.",
      starts: starts, bucket: bucket, y: { label: "% of served requests", max: 100, format: (v) => v.toFixed(0) },
      y2: { label: "gCO2e/kWh", format: num }, series: mix,
    });

    const q = doc.quality;
    const judged = b.map((r) => r.judged);
    const qMax = Math.max(100, 100 * q.floor, ...b.map((r) => 100 * (r.cumulative_normalized_preference || 0)));
    marks.quality = chart(document.getElementById("chart-quality"), {
      title: "Judged quality vs its floor",
      subtitle: "Running normalized preference: requests served the answer the judge preferred, over those where it preferred " +
        q.baseline + " (Sprout's measure; can exceed 100%). Floor from the " + (q.floor_source === "estimate" ? "latest quality estimate" : "settings") + ".",
      starts: starts, bucket: bucket, y: { label: "normalized preference (%)", max: qMax, format: (v) => v.toFixed(0) },
      y2: { label: "verdicts " + per, format: num },
      series: [
        { name: "verdicts", type: "bar", axis: "y2", color: "#d5d9d6", values: judged, tipFormat: num },
        { name: "normalized preference, running", type: "line", color: "#6a3d9a", width: 2.5,
          values: b.map((r) => (r.cumulative_normalized_preference == null ? null : 100 * r.cumulative_normalized_preference)),
          tipFormat: (v) => v.toFixed(1) + "%" },
      ],
      refs: [
        { value: 100, color: "#777", dash: "2 3", label: "always-" + q.baseline + " (100%)" },
        { value: 100 * q.floor, color: "#b3261e", dash: "7 4", label: "floor " + pct(q.floor, 0), below: true },
      ],
    });
    return marks;
  }

  function integrity(doc) {
    const it = doc.integrity;
    const badge = document.getElementById("integrity-badge");
    const words = { ok: "OK", pending: "OK, receipts pending", problems: "PROBLEMS" };
    badge.dataset.status = it.status;
    badge.replaceChildren(
      "Integrity: " + (words[it.status] || it.status),
      h("small", { text: it.chains + " chain" + (it.chains === 1 ? "" : "s") + ", " + num(it.receipts) + " receipts verified" })
    );
    const box = document.getElementById("integrity");
    const facts = [
      ["Hash chains", num(it.chains)],
      ["Receipts verified", num(it.receipts)],
      ["Checked", "hashes, links, heads" + (it.rollups_checked ? ", hourly rollups" : "") + ", policy versions"],
      ["Problems", num(it.problem_count)],
      ["Pending outside the database", num(it.pending_receipts) + (it.in_flight ? " (" + it.in_flight + " in flight)" : "")],
      ["Heads digest", it.heads_digest],
      ["Checked at", it.checked_at.replace("T", " ").slice(0, 19) + " UTC (" + it.took_s + " s)"],
    ];
    const dl = h("dl", { class: "facts" });
    for (const f of facts) {
      dl.appendChild(h("dt", { text: f[0] }));
      dl.appendChild(h("dd", { text: f[1], class: f[0] === "Heads digest" ? "mono" : null }));
    }
    const headline = { ok: "✔ Intact", pending: "✔ Intact, receipts pending", problems: "✘ " + it.problem_count + " problem(s)" };
    box.replaceChildren(
      h("h2", { text: "Ledger integrity (whole ledger)" }),
      h("p", { class: "subtitle", text: "sprout ledger verify: every receipt's hash recomputed, chains and heads, rollups against receipts." }),
      h("div", { class: "status " + it.status, id: "integrity-status", text: headline[it.status] || it.status }),
      dl
    );
    if (it.problems.length) {
      box.appendChild(h("ul", { class: "problems" }, ...it.problems.map((p) => h("li", { text: p.kind + ": " + p.message }))));
    }
    if (it.pending_note) box.appendChild(h("p", { class: "subtitle", text: it.pending_note }));
  }

  function table(container, title, subtitle, headers, rows) {
    const thead = h("thead", {}, h("tr", {}, ...headers.map((x) => h("th", { text: x }))));
    const tbody = h("tbody", {}, ...rows.map((r) => h("tr", {}, ...r.map((c) => (c instanceof Node ? h("td", {}, c) : h("td", { text: c }))))));
    container.replaceChildren(h("h2", { text: title }), h("p", { class: "subtitle", text: subtitle }), h("table", {}, thead, tbody));
  }

  function tenants(doc) {
    const rows = doc.tenants;
    const max = Math.max(0, ...rows.map((r) => r.total_g));
    table(document.getElementById("tenants"), "Per tenant",
      "Every receipt of the window by tenant; (none) holds requests without a tenant and the quality loop's evaluation generations.",
      ["tenant", "served", "eval", "energy", "emitted", "", "always-L0", "saved", "net saved", "judge pref."],
      rows.map((r) => [r.tenant, num(r.serve_requests), num(r.eval_requests), energy(r.energy_kwh), grams(r.total_g),
        cellBar(r.total_g, max, "#2f6ea5", r.tenant + ": " + grams(r.total_g)),
        grams(r.counterfactual_g), r.saved_pct == null ? "n/a" : grams(r.saved_g) + " (" + r.saved_pct.toFixed(0) + "%)",
        grams(r.net_saved_g), pct(r.judge_share, 0)]));
    return document.querySelectorAll("#tenants .mark").length;
  }

  function outcomes(doc) {
    const rows = doc.outcomes;
    const total = rows.reduce((a, r) => a + r.requests, 0);
    table(document.getElementById("outcomes"), "Outcomes",
      "How each generation ended (completed, cut by a guard, client gone, upstream failed).",
      ["outcome", "requests", "", "energy", "emitted"],
      rows.map((r) => [r.outcome, num(r.requests), cellBar(r.requests, total, "#4f8f6f", r.outcome + ": " + pct(r.requests / total)),
        energy(r.energy_kwh), grams(r.total_g)]));
    return document.querySelectorAll("#outcomes .mark").length;
  }

  function verdicts(doc) {
    const q = doc.quality;
    const served = doc.directives.served;
    const rows = q.directives.map((d) => [
      d.directive, num(served[d.directive] || 0), num(d.served), num(d.preferred), pct(d.preferred_share, 0),
      d.served ? d.served_preferred + " of " + d.served : "–",
    ]);
    rows.push(["all", num(doc.totals.serve_requests), num(q.verdicts), "", "",
      q.served_preferred + " of " + q.judged + " (" + pct(q.preferred_share, 0) + ")"]);
    table(document.getElementById("verdicts"), "Verdicts per directive",
      "Served requests of the window; the judge's verdicts on the sampled ones (" + (q.judges.join(", ") || "no judge yet") +
        "); " + q.queued + " sampled requests await the judge.",
      ["directive", "served", "judged", "judge preferred it", "share", "served the preferred"], rows);
  }

  function header(doc) {
    const w = doc.window;
    document.getElementById("ledger").textContent = "Ledger " + doc.ledger + " · read-only";
    const end = w.last ? new Date(new Date(w.last).getTime() + (w.bucket === "day" ? 864e5 : 36e5)).toISOString() : null;
    const span = w.first ? when(w.first, w.bucket) + " – " + when(end, w.bucket) : "no receipts";
    document.getElementById("window").textContent =
      span + " · " + w.buckets + (w.bucket === "day" ? " daily" : " hourly") + " buckets" + (w.requested_bucket === "auto" ? " (auto)" : "");
    const notes = document.getElementById("notes");
    const link = h("a", { href: dataUrl(), text: "data.json" });
    notes.replaceChildren(
      h("ul", {}, ...doc.notes.map((n) => h("li", { text: n }))),
      h("p", {}, "Generated " + doc.generated_at.replace("T", " ").slice(0, 19) + " UTC from the ledger's report APIs; the figures as JSON: ", link, ".")
    );
  }

  // ------------------------------------------------------------------ load
  function dataUrl() {
    const params = new URLSearchParams(window.location.search);
    const out = new URLSearchParams();
    for (const k of ["since", "until", "bucket"]) if (params.get(k)) out.set(k, params.get(k));
    const q = out.toString();
    return "dashboard/data.json" + (q ? "?" + q : "");
  }

  function fillForm() {
    const params = new URLSearchParams(window.location.search);
    for (const k of ["since", "until", "bucket"]) {
      const el = document.getElementById(k);
      if (el && params.get(k)) el.value = params.get(k);
    }
  }

  async function load() {
    fillForm();
    const response = await fetch(dataUrl(), { headers: { accept: "application/json" } });
    const doc = await response.json();
    if (!response.ok) throw new Error(doc.error || "HTTP " + response.status);
    header(doc);
    kpis(doc);
    integrity(doc);
    const marks = charts(doc);
    marks.tenants = tenants(doc);
    marks.outcomes = outcomes(doc);
    verdicts(doc);
    document.body.dataset.marks = JSON.stringify(marks);
    document.body.dataset.state = "ready";
  }

  function start() {
    load().catch(function (e) {
      document.body.dataset.state = "error";
      const badge = document.getElementById("integrity-badge");
      badge.dataset.status = "error";
      badge.textContent = "Could not load the ledger";
      console.error("dashboard: " + (e && e.message ? e.message : e));
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
