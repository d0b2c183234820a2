// Pure computations on the samples of GET /v1/admin/dashboard/data (docs/metrics.md): no DOM, no fetch.
//
// A sample holds cumulative counters (since the service started) and gauges, taken every 10 s. Rates and
// quantiles come from the increase between a sample and the previous one of the same `instance` (whose
// counters it holds: one `nba serve` run). A sample of an instance not seen before in the window (the
// service restarted, or another replica took the slot) starts that instance's series and adds nothing:
// its counts go back to a start the page does not see. A counter that went down within an instance
// was reset: its later value is then the increase (as Prometheus's increase() has it).

/** The increase of a cumulative counter from `before` to `after`, allowing for a reset. */
export function increase(before, after) {
  const a = Number(before) || 0;
  const b = Number(after) || 0;
  return b >= a ? b - a : b;
}

/** Per-key increases of two maps of counters ({action: count}); keys only in `after` count from 0. */
export function increases(before, after) {
  const out = {};
  for (const [key, value] of Object.entries(after || {})) {
    out[key] = increase((before || {})[key], value);
  }
  return out;
}

/** The increase of a cumulative histogram ({le, counts, count}) between two samples. */
export function histogramIncrease(before, after) {
  if (!after) return null;
  const reset = !before || (after.count ?? 0) < (before.count ?? 0);
  const counts = after.counts.map((c, i) => (reset ? c : Math.max(0, c - (before.counts[i] ?? 0))));
  const count = reset ? after.count : after.count - before.count;
  return { le: after.le, counts, count };
}

/** Adds histogram increases of the same buckets. */
export function addHistograms(histograms) {
  let out = null;
  for (const h of histograms) {
    if (!h) continue;
    if (!out) {
      out = { le: h.le, counts: h.counts.slice(), count: h.count };
      continue;
    }
    h.counts.forEach((c, i) => { out.counts[i] += c; });
    out.count += h.count;
  }
  return out;
}

/**
 * The q-quantile of a histogram, as Prometheus's histogram_quantile computes it: find the bucket that
 * holds the rank q·count, and interpolate linearly within it (the first bucket starts at 0). A rank in
 * the +Inf bucket answers the highest finite bound. `le` are the finite upper bounds, `counts` the
 * cumulative counts at each, `count` the total (the +Inf bucket). No observations: null.
 */
export function histogramQuantile(q, { le, counts, count }) {
  if (!count || count <= 0) return null;
  if (q <= 0) return 0;
  if (q >= 1) return le[le.length - 1];
  const rank = q * count;
  for (let i = 0; i < le.length; i++) {
    if (counts[i] >= rank) {
      const lower = i === 0 ? 0 : le[i - 1];
      const below = i === 0 ? 0 : counts[i - 1];
      const inBucket = counts[i] - below;
      if (inBucket <= 0) return lower;
      return lower + (le[i] - lower) * ((rank - below) / inBucket);
    }
  }
  return le[le.length - 1];
}

function sumValues(map) {
  return Object.values(map || {}).reduce((a, b) => a + b, 0);
}

function addInto(into, map) {
  for (const [key, value] of Object.entries(map || {})) into[key] = (into[key] || 0) + value;
}

/**
 * Everything the charts draw, from the samples (oldest first). `lastS` is the span of the "last minute"
 * figures. Times are unix seconds.
 */
export function analyse(samples, { lastS = 60 } = {}) {
  const points = []; // one per interval between two samples, stamped with the later sample's time
  const window = { decisions: 0, fallback: 0, byAction: {}, byGroup: {}, dropouts: {}, deliveries: {} };
  const previous = new Map(); // instance -> its latest sample so far
  for (let i = 0; i < samples.length; i++) {
    const b = samples[i];
    const a = previous.get(b.instance);
    previous.set(b.instance, b);
    if (!a) continue;
    const dt = b.t - a.t;
    if (!(dt > 0)) continue;
    const da = a.decisions || {};
    const db = b.decisions || {};
    const decisions = increase(da.total, db.total);
    const fallback = increase(da.fallback, db.fallback);
    const histogram = histogramIncrease(a.decision_duration, b.decision_duration);
    const deliveries = increases(a.deliveries, b.deliveries);
    const quantile = (q) => (histogram && histogram.count > 0 ? histogramQuantile(q, histogram) : null);
    points.push({
      t: b.t,
      dt,
      decisions,
      fallback,
      histogram,
      p50: quantile(0.5),
      p95: quantile(0.95),
      p99: quantile(0.99),
      throughput: decisions / dt,
      fallbackPerS: fallback / dt,
      fallbackRate: decisions > 0 ? fallback / decisions : null,
      deliveries: Object.fromEntries(Object.entries(deliveries).map(([k, v]) => [k, (v / dt) * 60])),
    });
    window.decisions += decisions;
    window.fallback += fallback;
    addInto(window.byAction, increases(da.by_action, db.by_action));
    addInto(window.byGroup, increases(da.by_group, db.by_group));
    addInto(window.dropouts, increases(a.dropouts, b.dropouts));
    addInto(window.deliveries, deliveries);
  }
  const latest = samples.length ? samples[samples.length - 1] : null;
  const recentPoints = latest ? points.filter((p) => p.t > latest.t - lastS) : [];
  const recentHistogram = addHistograms(recentPoints.map((p) => p.histogram));
  const recentSeconds = recentPoints.reduce((s, p) => s + p.dt, 0);
  const recentDecisions = recentPoints.reduce((s, p) => s + p.decisions, 0);
  const recentQuantile = (q) =>
    recentHistogram && recentHistogram.count > 0 ? histogramQuantile(q, recentHistogram) : null;
  const gauges = samples.map((s) => ({
    t: s.t,
    pending: s.triggers ? s.triggers.pending : null,
    due: s.triggers ? s.triggers.due : null,
    deadLetters: s.dead_letters ?? null,
    outboxDue: s.outbox_due ?? null,
    learnerLag: s.learner_lag ? sumValues(s.learner_lag) : null,
  }));
  return {
    samples: samples.length,
    points,
    window,
    recent: {
      seconds: recentSeconds,
      decisions: recentDecisions,
      p50: recentQuantile(0.5),
      p95: recentQuantile(0.95),
      p99: recentQuantile(0.99),
      throughput: recentSeconds > 0 ? recentDecisions / recentSeconds : null,
    },
    fallbackRate: window.decisions > 0 ? window.fallback / window.decisions : null,
    gauges,
    latest,
  };
}

/**
 * The comparisons of an uplift report (GET /v1/reports/uplift) that the uplift chart draws, in order:
 * overall, each action against the control group, then each action's own holdout (its treatment
 * customers served it against those it was withheld from). Only those with a lift to show.
 */
export function upliftRows(report) {
  return [
    ...(report.overall ? [{ ...report.overall, label: "overall" }] : []),
    ...(report.actions || []).map((c) => ({ ...c, label: c.slice })),
    ...(report.holdouts || []).map((c) => ({ ...c, label: `${c.slice} · own holdout` })),
  ].filter((c) => c.conversion && c.conversion.absolute && c.conversion.absolute.value !== null);
}
