//! The Prometheus text exposition format (version 0.0.4): metric families with HELP and TYPE
//! lines, samples with escaped label values. Owns the formatting only; what is measured is
//! the caller's.

use std::fmt::{Display, Write};

use manifold_core::store::latency::{BOUNDS_US, HistogramSnapshot};

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"");
                escape_into(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A histogram family in seconds from microsecond buckets: cumulative `_bucket` samples
    /// with `le`, then `_sum` and `_count`.
    pub fn histogram_seconds(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, bound) in BOUNDS_US.iter().enumerate() {
            cumulative += h.counts.get(i).copied().unwrap_or(0);
            let le = format!("{}", *bound as f64 / 1e6);
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], h.count);
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_histograms_are_cumulative() {
        let mut t = Text::default();
        t.family("m", "gauge", "A gauge.");
        t.sample("m", &[("stream", "a\"b\\c\nd"), ("db", "0")], 3);
        let mut counts = vec![0; BOUNDS_US.len() + 1];
        counts[0] = 1;
        counts[2] = 2;
        counts[BOUNDS_US.len()] = 1;
        let h = HistogramSnapshot {
            counts,
            sum_us: 2_500_000,
            count: 4,
        };
        t.histogram_seconds("h_seconds", "Times.", &h);
        let text = t.finish();
        assert!(text.contains("# TYPE m gauge\n"));
        assert!(
            text.contains("m{stream=\"a\\\"b\\\\c\\nd\",db=\"0\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("h_seconds_bucket{le=\"0.000016\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("h_seconds_bucket{le=\"0.000032\"} 1\n"));
        assert!(text.contains("h_seconds_bucket{le=\"0.000064\"} 3\n"));
        assert!(text.contains("h_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("h_seconds_sum 2.5\n"));
        assert!(text.contains("h_seconds_count 4\n"));
    }
}
