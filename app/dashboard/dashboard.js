// The live operations dashboard (GET /dashboard). It fetches, with the admin key this tab holds:
//   /v1/admin/dashboard/data  every REFRESH_MS: the samples of the last 15 minutes (compute.js)
//   /v1/models                every REFRESH_MS: maturity now, and the latest point of the learning curves
//   /v1/reports/uplift        every UPLIFT_MS (it reads the rewards stream), or UPLIFT_EMPTY_MS while it
//                             has nothing to compare yet: treatment against control
// and draws them (charts.js). docs/dashboard.md says what each chart computes.

import { analyse, upliftRows } from "./compute.js";
import { PALETTE, barChart, emptyState, errorState, intervalChart, lineChart } from "./charts.js";

const REFRESH_MS = 5000;
const UPLIFT_MS = 60000;
const UPLIFT_EMPTY_MS = 10000;
const WINDOW_S = 15 * 60;
const KEY_ITEM = "nba.dashboard.key";
const LEARNING_KEEP = 360; // polls of /v1/models kept for the learning curves: 30 minutes

const state = {
  data: null,
  models: null,
  uplift: null,
  upliftError: null,
  upliftAt: 0,
  learning: [], // [{t, actions: {id: {observations, positives}}}]
  open: null, // the service answered without a key
  timer: null,
  running: false,
};
let memoryKey = null; // the key, when this browser refuses sessionStorage

class AuthNeeded extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// --- the key ----------------------------------------------------------------------------------------------

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM);
  } catch {
    return null; // storage disabled: the key is asked for again on each load
  }
}

function askForKey(reason) {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-reason").textContent = reason;
  setStatus("waiting for an admin key", "warn");
  stop();
  if (!dialog.open) dialog.showModal();
  document.getElementById("key").focus();
}

function onKeySubmit(event) {
  event.preventDefault();
  const input = document.getElementById("key");
  const key = input.value.trim();
  if (!key) return;
  try {
    sessionStorage.setItem(KEY_ITEM, key);
  } catch {
    memoryKey = key;
  }
  input.value = "";
  document.getElementById("key-dialog").close();
  start();
}

function forgetKey() {
  try {
    sessionStorage.removeItem(KEY_ITEM);
  } catch {
    /* nothing kept */
  }
  memoryKey = null;
  location.reload(); // and with it every figure on the page: it starts again from nothing
}

async function api(path) {
  const key = storedKey() || memoryKey;
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  // No cookies are sent (credentials: omit): the key goes only where this page puts it.
  const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401 || response.status === 403) {
    throw new AuthNeeded(response.status, (body && body.detail) || response.statusText);
  }
  if (!response.ok) {
    const error = new Error((body && body.detail) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return { body, keyed: Boolean(key) };
}

// --- formatting -------------------------------------------------------------------------------------------

const fmt = {
  ms(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const ms = seconds * 1000;
    return ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 10 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(2)} ms`;
  },
  axisMs(ms) {
    return ms >= 10 ? ms.toFixed(0) : ms >= 1 ? ms.toFixed(1) : ms.toFixed(2);
  },
  rate(value) {
    if (value === null || value === undefined) return "–";
    return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
  },
  count(value) {
    if (value === null || value === undefined) return "–";
    return Math.round(value).toLocaleString("en");
  },
  percent(value, digits = 1) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return `${(value * 100).toFixed(digits)}%`;
  },
  points(value) {
    // A difference of rates, in percentage points.
    if (value === null || value === undefined) return "–";
    const pp = value * 100;
    if (Math.abs(pp) < 0.05) return "0 pp";
    return `${pp > 0 ? "+" : ""}${pp.toFixed(Math.abs(pp) >= 10 ? 0 : 1)} pp`;
  },
  age(seconds) {
    if (seconds === null || seconds === undefined) return "never published";
    if (seconds < 90) return `${seconds.toFixed(0)} s old`;
    if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min old`;
    return `${(seconds / 3600).toFixed(1)} h old`;
  },
};

function setStatus(message, tone = "") {
  const node = document.getElementById("status");
  node.textContent = message;
  node.dataset.tone = tone;
}

function setStat(id, value) {
  document.getElementById(id).textContent = value;
}

function chart(name) {
  return document.querySelector(`[data-chart="${name}"] .chart`);
}

// --- drawing ----------------------------------------------------------------------------------------------

// One colour per action on every chart: by its place among the catalogue's actions (from /v1/models),
// grey for "none".
function actionColour(name) {
  if (name === "none") return "#9ca3af";
  const known = Object.keys((state.models && state.models.actions) || {}).sort();
  let index = known.indexOf(name);
  if (index < 0) index = [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7);
  return PALETTE[index % PALETTE.length];
}

function drawOperations(data) {
  const samples = data.samples || [];
  const view = analyse(samples);
  const latest = view.latest;
  const now = latest ? latest.t : Date.now() / 1000;
  // The last 15 minutes, or less when the service has been sampling for less (so a new service's first
  // minute is not a few pixels at the right edge).
  const interval = data.interval_s || 10;
  const since = samples.length ? Math.max(now - WINDOW_S, samples[0].t - interval) : now - WINDOW_S;
  const xDomain = [Math.min(since, now - 6 * interval), now];

  // Tiles.
  setStat("stat-p50", fmt.ms(view.recent.p50));
  setStat("stat-p95", fmt.ms(view.recent.p95));
  setStat("stat-p99", fmt.ms(view.recent.p99));
  setStat("stat-throughput", view.recent.throughput === null ? "–" : fmt.rate(view.recent.throughput));
  setStat("stat-fallback", fmt.percent(view.fallbackRate, 2));
  setStat("stat-due", latest && latest.triggers ? fmt.count(latest.triggers.due) : "–");
  setStat("stat-dead", latest && latest.dead_letters !== null && latest.dead_letters !== undefined
    ? fmt.count(latest.dead_letters) : "–");

  const collecting =
    samples.length === 0
      ? "No samples yet: the service takes one every 10 s."
      : view.points.length === 0
        ? "Collecting: rates need two samples of the same service run, 10 s apart."
        : null;
  const noDecisions = view.window.decisions === 0 ? "No decisions in the last 15 minutes." : null;

  // Latency and throughput.
  if (collecting || noDecisions) {
    emptyState(chart("latency"), collecting || noDecisions);
  } else {
    const ms = (key) => view.points.map((p) => ({ t: p.t, v: p[key] === null ? null : p[key] * 1000 }));
    lineChart(chart("latency"), {
      series: [
        { name: "p50", color: "#2563eb", values: ms("p50") },
        { name: "p95", color: "#ea580c", values: ms("p95") },
        { name: "p99", color: "#dc2626", values: ms("p99") },
      ],
      xDomain,
      format: fmt.axisMs,
    });
  }
  if (collecting) {
    emptyState(chart("throughput"), collecting);
  } else {
    lineChart(chart("throughput"), {
      series: [
        { name: "decisions/s", color: "#2563eb", values: view.points.map((p) => ({ t: p.t, v: p.throughput })) },
        { name: "fallbacks/s", color: "#dc2626", values: view.points.map((p) => ({ t: p.t, v: p.fallbackPerS })) },
      ],
      xDomain,
      format: fmt.rate,
    });
  }

  // Mixes over the window.
  const share = (n) => (view.window.decisions > 0 ? fmt.percent(n / view.window.decisions) : "");
  if (collecting || noDecisions) {
    emptyState(chart("mix-action"), collecting || noDecisions);
    emptyState(chart("mix-group"), collecting || noDecisions);
  } else {
    const actions = Object.entries(view.window.byAction).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    barChart(chart("mix-action"), {
      rows: actions.map(([name, n]) => ({
        label: name === "none" ? "none (nothing chosen)" : name, value: n, color: actionColour(name), note: share(n),
      })),
      format: fmt.count,
    });
    // A fallback is made without the profile, so without a group: metrics count it in group "none".
    const groupColour = { treatment: "#2563eb", control: "#9ca3af", none: "#dc2626" };
    const groups = { treatment: 0, control: 0, none: 0, ...view.window.byGroup };
    barChart(chart("mix-group"), {
      rows: Object.entries(groups).map(([name, n]) => ({
        label: name === "none" ? "fallback (no group)" : name, value: n, color: groupColour[name] || "#4b5563",
        note: share(n),
      })),
      format: fmt.count,
    });
  }

  // Funnel drop-outs.
  const dropouts = Object.entries(view.window.dropouts).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  if (collecting) {
    emptyState(chart("dropouts"), collecting);
  } else if (!dropouts.length) {
    emptyState(chart("dropouts"), noDecisions || "No action was dropped by the funnel in the last 15 minutes.");
  } else {
    const total = dropouts.reduce((s, [, n]) => s + n, 0);
    barChart(chart("dropouts"), {
      rows: dropouts.map(([reason, n]) => ({ label: reason, value: n, note: fmt.percent(n / total) })),
      format: fmt.count,
      color: "#ca8a04",
    });
  }

  // Trigger backlog (gauges at each sample).
  const withTriggers = view.gauges.filter((g) => g.pending !== null);
  if (!withTriggers.length) {
    emptyState(chart("triggers"), collecting || "The trigger backlog could not be read (store unavailable).");
  } else {
    lineChart(chart("triggers"), {
      series: [
        { name: "pending", color: "#2563eb", values: view.gauges.map((g) => ({ t: g.t, v: g.pending })) },
        { name: "due", color: "#dc2626", values: view.gauges.map((g) => ({ t: g.t, v: g.due })) },
      ],
      xDomain,
      format: fmt.count,
      integer: true,
    });
  }

  // Webhook health: attempts per minute by result, and the dead letters waiting.
  if (collecting) {
    emptyState(chart("webhooks"), collecting);
  } else {
    const results = [...new Set(view.points.flatMap((p) => Object.keys(p.deliveries)))];
    const tone = { delivered: "#16a34a", retry: "#ca8a04", dead: "#dc2626" };
    lineChart(chart("webhooks"), {
      series: [
        ...results.map((r) => ({
          name: `${r}/min`, color: tone[r] || "#4b5563",
          values: view.points.map((p) => ({ t: p.t, v: p.deliveries[r] ?? 0 })),
        })),
        { name: "dead letters", color: "#7c3aed", values: view.gauges.map((g) => ({ t: g.t, v: g.deadLetters })) },
      ],
      xDomain,
      format: fmt.rate,
    });
  }
  return view;
}

function drawModels(report) {
  // The model now (from /v1/models, fresher than the last sample's).
  setStat("stat-model", report.model_version || "–");
  setStat("stat-model-age", report.model_version === "prior" ? "the catalogue's priors" : fmt.age(report.age_s));
  const entries = Object.entries(report.actions || {});
  if (!entries.length) {
    emptyState(chart("maturity"), "The catalogue has no actions.");
  } else {
    const tone = { cold: "#9ca3af", learning: "#ca8a04", mature: "#16a34a" };
    entries.sort((a, b) => b[1].observations - a[1].observations || a[0].localeCompare(b[0]));
    barChart(chart("maturity"), {
      rows: entries.map(([id, m]) => ({
        label: id, value: m.observations, color: tone[m.maturity] || "#4b5563",
        note: `${m.maturity} · ${fmt.count(m.positives)} positives`,
      })),
      format: fmt.count,
    });
  }

  const learned = entries.filter(([, m]) => m.observations > 0).map(([id]) => id);
  if (!learned.length) {
    emptyState(chart("learning"), "No action has been learned from yet: models learn from outcomes and purchases.");
    return;
  }
  if (state.learning.length < 2) {
    emptyState(chart("learning"), "Collecting: the curves start with the second poll, 5 s after the page opened.");
    return;
  }
  const top = learned.slice(0, 8); // the most observed: a legend of 20 lines helps nobody
  const first = state.learning[0].t;
  const last = state.learning[state.learning.length - 1].t;
  lineChart(chart("learning"), {
    series: top.map((id) => ({
      name: id,
      color: actionColour(id),
      values: state.learning.map((poll) => {
        const m = poll.actions[id];
        return { t: poll.t, v: m && m.observations > 0 ? m.positives / m.observations : null };
      }),
    })),
    xDomain: [Math.min(first, last - 60), last],
    format: (v) => fmt.percent(v, v >= 0.1 ? 0 : 1),
  });
}

function drawUplift() {
  const container = chart("uplift");
  if (state.upliftError) {
    if (state.upliftError.status === 404) {
      emptyState(container, "This service has no uplift report (GET /v1/reports/uplift answered 404).");
    } else {
      errorState(container, `The uplift report failed: ${state.upliftError.message}`);
    }
    return;
  }
  const report = state.uplift;
  if (!report) {
    emptyState(container, "Loading the uplift report…");
    return;
  }
  const comparisons = upliftRows(report);
  if (!comparisons.length) {
    // The report's own first warning says why (no rewards joined yet, windows still open, ...).
    const why = (report.warnings || [])[0];
    emptyState(container, why || "No decision's attribution window has closed with both groups yet: nothing to compare.");
    return;
  }
  intervalChart(container, {
    rows: comparisons.map((c) => {
      const lift = c.conversion.absolute;
      const p = c.conversion.p_value;
      const n = `n ${c.treatment.customers}/${c.control.customers}`;
      const pText = p === null || p === undefined ? "p –" : `p ${p < 0.001 ? "<0.001" : p.toFixed(3)}`;
      return {
        label: c.label,
        value: lift.value,
        lo: lift.low,
        hi: lift.high,
        note: `${pText} · ${n}${c.enough_data ? "" : " · too small"}`,
      };
    }),
    format: fmt.points,
  });
}

// --- the loop ---------------------------------------------------------------------------------------------

async function refresh() {
  const nowMs = Date.now();
  try {
    const [data, models] = await Promise.all([api("/v1/admin/dashboard/data"), api("/v1/models")]);
    state.open = !data.keyed;
    state.data = data.body;
    state.models = models.body;
    // The curves: the samples' history (15 minutes, whoever opened the page when), then this poll.
    const history = (data.body.samples || [])
      .filter((sample) => sample.model && sample.model.actions)
      .map((sample) => ({
        t: sample.t,
        actions: Object.fromEntries(
          Object.entries(sample.model.actions).map(([id, [o, p]]) => [id, { observations: o, positives: p }]),
        ),
      }));
    const since = history.length ? history[history.length - 1].t : -Infinity;
    state.learning = history.concat(state.learning.filter((poll) => poll.t > since));
    state.learning.push({
      t: nowMs / 1000,
      actions: Object.fromEntries(
        Object.entries(models.body.actions || {}).map(([id, m]) => [id, { observations: m.observations, positives: m.positives }]),
      ),
    });
    while (state.learning.length > LEARNING_KEEP) state.learning.shift();
    const upliftEvery = state.uplift && state.uplift.overall ? UPLIFT_MS : UPLIFT_EMPTY_MS;
    if (nowMs - state.upliftAt >= upliftEvery) {
      state.upliftAt = nowMs;
      try {
        state.uplift = (await api("/v1/reports/uplift")).body;
        state.upliftError = null;
      } catch (error) {
        if (error instanceof AuthNeeded) throw error;
        state.upliftError = error;
      }
    }
    drawOperations(state.data);
    drawModels(state.models);
    drawUplift();
    document.getElementById("forget-key").hidden = state.open;
    const when = new Date(nowMs).toLocaleTimeString();
    setStatus(
      `${state.open ? "open service (no keys configured)" : "admin key"} · ${state.data.samples.length} samples · updated ${when}`,
      "ok",
    );
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (error instanceof AuthNeeded) {
      const reason = error.status === 403
        ? `This key cannot read the dashboard (${error.message}). Enter a key with the admin scope.`
        : storedKey() || memoryKey
          ? `The service did not accept the key (${error.message}). Enter an admin key.`
          : "This service needs an API key with the admin scope.";
      try {
        sessionStorage.removeItem(KEY_ITEM);
      } catch {
        /* nothing kept */
      }
      memoryKey = null;
      askForKey(reason);
      return;
    }
    setStatus(`could not refresh: ${error.message}; trying again in ${REFRESH_MS / 1000} s`, "error");
  }
}

function stop() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
  state.running = false;
}

function start({ fresh = true } = {}) {
  stop();
  state.running = true;
  if (fresh) state.upliftAt = 0; // a new key: fetch everything now
  const loop = async () => {
    if (!state.running) return;
    if (!document.hidden) await refresh();
    if (state.running) state.timer = setTimeout(loop, REFRESH_MS);
  };
  loop();
}

document.getElementById("key-form").addEventListener("submit", onKeySubmit);
document.getElementById("forget-key").addEventListener("click", forgetKey);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.running) start({ fresh: false }); // catch up at once on coming back
});
// The dialog stays until a key is given: without one there is nothing to show.
document.getElementById("key-dialog").addEventListener("cancel", (event) => event.preventDefault());
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (state.data) drawOperations(state.data);
    if (state.models) drawModels(state.models);
    drawUplift();
  }, 150);
});
start();
