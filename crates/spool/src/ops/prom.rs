//! The Prometheus text exposition format (version 0.0.4), written by hand: a metric family is
//! `# HELP` and `# TYPE` once, then its samples; label values are escaped. A registry crate
//! (`prometheus`, `metrics-exporter-prometheus`) would own our counters; ours live where the
//! work happens (the engine's queue counters, the MQTT client's stats) and are only *read*
//! when `/metrics` is scraped, so a writer is all that is needed.

use std::fmt::Write as _;

/// A `/metrics` page being written.
#[derive(Debug, Default)]
pub struct PromText {
    out: String,
    families: Vec<String>,
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

impl PromText {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts family `name` (once; later calls with the same name add samples to it).
    fn family(&mut self, name: &str, help: &str, kind: Kind) {
        debug_assert!(valid_name(name), "metric name {name:?}");
        if self.families.iter().any(|f| f == name) {
            return;
        }
        self.families.push(name.to_string());
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        if value.is_nan() {
            self.out.push_str("NaN");
        } else if value.is_infinite() {
            self.out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.out, "{value}");
        }
        self.out.push('\n');
    }

    /// A counter sample (a total that only grows).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.family(name, help, Kind::Counter);
        self.sample(name, labels, value as f64);
    }

    /// A gauge sample (a value that goes up and down).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, help, Kind::Gauge);
        self.sample(name, labels, value);
    }

    /// A histogram: `buckets` are (upper bound, count of observations <= it), cumulative and
    /// in increasing order of bound; `+Inf` is added from `count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        self.family(name, help, Kind::Histogram);
        let bucket = format!("{name}_bucket");
        for &(le, n) in buckets {
            let le = format!("{le}");
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, n as f64);
        }
        let mut l: Vec<(&str, &str)> = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, count as f64);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_announced_once_and_labels_escaped() {
        let mut p = PromText::new();
        p.counter("spool_dropped_total", "Dropped.", &[("reason", "ttl")], 3);
        p.counter(
            "spool_dropped_total",
            "Dropped.",
            &[("reason", "a\"b\\c\nd")],
            1,
        );
        p.gauge("spool_connected", "1 when connected.", &[], 1.0);
        let t = p.finish();
        assert_eq!(
            t,
            "# HELP spool_dropped_total Dropped.\n# TYPE spool_dropped_total counter\n\
             spool_dropped_total{reason=\"ttl\"} 3\n\
             spool_dropped_total{reason=\"a\\\"b\\\\c\\nd\"} 1\n\
             # HELP spool_connected 1 when connected.\n# TYPE spool_connected gauge\n\
             spool_connected 1\n"
        );
    }

    #[test]
    fn histograms_end_with_inf_sum_and_count() {
        let mut p = PromText::new();
        p.histogram(
            "spool_ack_seconds",
            "Ack round trip.",
            &[("qos", "1")],
            &[(0.01, 2), (0.1, 5)],
            0.42,
            6,
        );
        let t = p.finish();
        assert!(
            t.contains("spool_ack_seconds_bucket{qos=\"1\",le=\"0.01\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("spool_ack_seconds_bucket{qos=\"1\",le=\"+Inf\"} 6\n"),
            "{t}"
        );
        assert!(t.contains("spool_ack_seconds_sum{qos=\"1\"} 0.42\n"), "{t}");
        assert!(t.contains("spool_ack_seconds_count{qos=\"1\"} 6\n"), "{t}");
        assert_eq!(t.matches("# TYPE").count(), 1);
    }

    #[test]
    fn special_values_and_names() {
        let mut p = PromText::new();
        p.gauge("g", "x", &[], f64::INFINITY);
        p.gauge("h", "x", &[], f64::NAN);
        let t = p.finish();
        assert!(t.contains("g +Inf\n") && t.contains("h NaN\n"), "{t}");
        assert!(valid_name("spool_x:y_1") && !valid_name("1x") && !valid_name("a-b"));
    }
}
