//! Prometheus exposition: lock-free histograms the runtime updates, and the text format
//! `GET /metrics` serves.
//!
//! The counters themselves live in [`crate::runtime::Metrics`], one set per run; this module
//! only knows how to bucket a duration and how to write families of samples.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// Bucket bounds, in seconds, of the latency histograms: 1 ms to 2 minutes, covering a
/// pipeline that commits every few seconds and one that writes records out as they come.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A histogram of durations with fixed buckets, updated with relaxed atomics (a reader may see
/// a sample in the count before it is in the sum; Prometheus tolerates that).
pub struct Histogram {
    /// Upper bounds in seconds.
    bounds: &'static [f64],
    /// Samples per bucket (not cumulative), one more for +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of all samples, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// An empty histogram with `bounds` (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records `n` samples of `ms` milliseconds each (negative ones, from a clock step, as 0).
    pub fn observe_ms(&self, ms: i64, n: u64) {
        let secs = ms.max(0) as f64 / 1000.0;
        let bucket = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(n, Relaxed);
        self.sum_us.fetch_add(ms.max(0) as u64 * 1000 * n, Relaxed);
    }
}

/// Writes Prometheus text: one `# HELP`/`# TYPE` header per family, then its samples.
#[derive(Default)]
pub struct Exposition {
    /// The text so far.
    out: String,
}

/// A sample's labels, as `(name, value)` pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// Starts family `name` of type `kind` (`counter`, `gauge`, `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A sample of the current family.
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// The samples of histogram `h` under family `name`.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &Histogram) {
        let mut cumulative = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| number(*b));
            self.out.push_str(name);
            self.out.push_str("_bucket");
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let sum = h.sum_us.load(Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: Labels<'_>, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// A sample value: whole numbers without a fraction, the rest as Rust prints them.
fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe_ms(5, 2);
        h.observe_ms(50, 1);
        h.observe_ms(5000, 1);
        let mut e = Exposition::default();
        e.family("x_seconds", "histogram", "test");
        e.histogram("x_seconds", &[("p", "a\"b")], &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{p=\"a\\\"b\",le=\"0.01\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{p=\"a\\\"b\",le=\"0.1\"} 3\n"));
        assert!(text.contains("x_seconds_bucket{p=\"a\\\"b\",le=\"+Inf\"} 4\n"));
        assert!(text.contains("x_seconds_sum{p=\"a\\\"b\"} 5.06\n"));
        assert!(text.contains("x_seconds_count{p=\"a\\\"b\"} 4\n"));
    }
}
