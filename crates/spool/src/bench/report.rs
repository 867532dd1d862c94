//! Benchmark report: named figures with a unit, an optional ratio against another named figure
//! of the same report and optional targets, rendered as an aligned table for people and as JSON
//! (`--json`) for tools. Ratios and pass/miss are computed when the report is rendered, so a
//! figure may refer to a baseline that is added later, e.g.
//! `report.add(Figure::new("engine push", v, "msg/s").ratio_to(names::SQLITE_PUSH_BATCH)
//! .target(Target::AtLeastRatio(2.5)))`.

use std::fmt::{self, Write as _};

use serde::{Serialize, Serializer};

/// A goal for one figure. Absolute targets are in the figure's own unit; ratio targets apply to
/// `value / value of the figure named in ratio_to`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// value >= x
    AtLeast(f64),
    /// value <= x
    AtMost(f64),
    /// ratio >= x
    AtLeastRatio(f64),
    /// ratio <= x
    AtMostRatio(f64),
}

impl Target {
    /// `Some(met)`, or `None` when the value or the ratio it needs is not available.
    fn check(self, value: Option<f64>, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::AtLeast(x) => value.map(|v| v >= x),
            Target::AtMost(x) => value.map(|v| v <= x),
            Target::AtLeastRatio(x) => ratio.map(|r| r >= x),
            Target::AtMostRatio(x) => ratio.map(|r| r <= x),
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Target::AtLeast(x) => format!(">= {} {unit}", format_value(x)),
            Target::AtMost(x) => format!("<= {} {unit}", format_value(x)),
            Target::AtLeastRatio(x) => format!(">= {}", format_ratio(x)),
            Target::AtMostRatio(x) => format!("<= {}", format_ratio(x)),
        }
    }
}

/// Outcome of a figure's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every target is met.
    Pass,
    /// At least one target is not met.
    Miss,
    /// A target could not be evaluated (value or baseline not available).
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Miss => "MISS",
            Status::Unknown => "n/a",
        })
    }
}

/// One measured figure. Build it with [`Figure::new`] (or [`Figure::unavailable`]) and the
/// chained setters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub name: String,
    /// `None` when the figure could not be measured (shown as "n/a").
    pub value: Option<f64>,
    pub unit: String,
    /// Name of the figure this one is compared with (`ratio = value / that value`).
    pub ratio_to: Option<String>,
    pub targets: Vec<Target>,
    /// Free text shown in the last column: parameters, caveats.
    pub note: Option<String>,
}

impl Figure {
    /// A measured figure. A non-finite value is recorded as not available.
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Figure {
            name: name.into(),
            value: value.is_finite().then_some(value),
            unit: unit.into(),
            ratio_to: None,
            targets: Vec::new(),
            note: None,
        }
    }

    /// A figure that could not be measured; `reason` becomes its note.
    pub fn unavailable(
        name: impl Into<String>,
        unit: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Figure {
            value: None,
            ..Figure::new(name, f64::NAN, unit)
        }
        .note(reason)
    }

    /// Compare with the figure named `baseline` (of the same report).
    #[must_use]
    pub fn ratio_to(mut self, baseline: impl Into<String>) -> Self {
        self.ratio_to = Some(baseline.into());
        self
    }

    /// Add a target; a figure passes when all of its targets are met.
    #[must_use]
    pub fn target(mut self, target: Target) -> Self {
        self.targets.push(target);
        self
    }

    /// Set the note (parameters, caveats).
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// A figure as rendered: its ratio and status resolved against the rest of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    pub value: Option<f64>,
    pub unit: String,
    pub ratio_to: Option<String>,
    /// `value / value of ratio_to`; `None` when either is unavailable or the baseline is 0.
    pub ratio: Option<f64>,
    pub targets: Vec<Target>,
    /// Human form of `targets`, e.g. `>= 2,000,000 msg/s and >= 2.50x`.
    pub target: Option<String>,
    /// `None` when the figure has no target.
    pub status: Option<Status>,
    pub note: Option<String>,
}

/// An ordered collection of figures plus free-form context (where, on what) and notes.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub title: String,
    context: Vec<(String, String)>,
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(title: impl Into<String>) -> Self {
        Report {
            title: title.into(),
            ..Report::default()
        }
    }

    /// Add a figure; a figure with the same name is replaced in place.
    pub fn add(&mut self, figure: Figure) -> &mut Self {
        if let Some(existing) = self.figures.iter_mut().find(|f| f.name == figure.name) {
            *existing = figure;
        } else {
            self.figures.push(figure);
        }
        self
    }

    /// Add a `key: value` line of context (directory, file system, versions, parameters).
    pub fn context(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.context.push((key.into(), value.into()));
        self
    }

    /// Add a note printed under the table.
    pub fn note(&mut self, note: impl Into<String>) -> &mut Self {
        self.notes.push(note.into());
        self
    }

    /// Append everything of `other` (figures, context, notes).
    pub fn extend(&mut self, other: Report) {
        self.context.extend(other.context);
        self.notes.extend(other.notes);
        for figure in other.figures {
            self.add(figure);
        }
    }

    pub fn figures(&self) -> &[Figure] {
        &self.figures
    }

    pub fn context_entries(&self) -> &[(String, String)] {
        &self.context
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn get(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }

    /// The value of the figure called `name`, if present and measured.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(|f| f.value)
    }

    /// Figures with ratios and statuses resolved.
    pub fn rows(&self) -> Vec<Row> {
        self.figures.iter().map(|f| self.row(f)).collect()
    }

    fn row(&self, f: &Figure) -> Row {
        let ratio = match (f.value, f.ratio_to.as_deref().and_then(|b| self.value(b))) {
            (Some(v), Some(b)) if b != 0.0 => Some(v / b).filter(|r| r.is_finite()),
            _ => None,
        };
        let status = if f.targets.is_empty() {
            None
        } else {
            let checks: Vec<Option<bool>> =
                f.targets.iter().map(|t| t.check(f.value, ratio)).collect();
            Some(if checks.contains(&Some(false)) {
                Status::Miss
            } else if checks.contains(&None) {
                Status::Unknown
            } else {
                Status::Pass
            })
        };
        let target = (!f.targets.is_empty()).then(|| {
            f.targets
                .iter()
                .map(|t| t.describe(&f.unit))
                .collect::<Vec<_>>()
                .join(" and ")
        });
        Row {
            name: f.name.clone(),
            value: f.value,
            unit: f.unit.clone(),
            ratio_to: f.ratio_to.clone(),
            ratio,
            targets: f.targets.clone(),
            target,
            status,
            note: f.note.clone(),
        }
    }

    /// Names of the figures whose targets are missed.
    pub fn misses(&self) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter(|r| r.status == Some(Status::Miss))
            .map(|r| r.name)
            .collect()
    }

    /// The report as a JSON value: `{title, context: {k: v}, figures: [Row], notes: [..]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let context: serde_json::Map<String, serde_json::Value> = self
            .context
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "title": self.title,
            "context": context,
            "figures": self.rows(),
            "notes": self.notes,
        })
    }

    /// Pretty-printed JSON (see [`Report::to_json`]).
    pub fn to_json_string(&self) -> String {
        // Serializing a `Value` to a String cannot fail.
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_default()
    }

    /// The aligned human table (also what `Display` prints).
    pub fn render_table(&self) -> String {
        const HEADER: [&str; 8] = [
            "figure", "value", "unit", "ratio", "vs", "target", "result", "note",
        ];
        // Right-aligned columns: value, ratio.
        const RIGHT: [bool; 8] = [false, true, false, true, false, false, false, false];

        let mut cells: Vec<[String; 8]> = vec![HEADER.map(String::from)];
        for r in self.rows() {
            cells.push([
                r.name,
                r.value.map_or_else(|| "n/a".to_owned(), format_value),
                r.unit,
                r.ratio.map(format_ratio).unwrap_or_default(),
                r.ratio_to.unwrap_or_default(),
                r.target.unwrap_or_default(),
                r.status.map(|s| s.to_string()).unwrap_or_default(),
                r.note.unwrap_or_default(),
            ]);
        }
        let mut widths = [0usize; 8];
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }

        let mut out = String::new();
        if !self.title.is_empty() {
            out.push_str(&self.title);
            out.push('\n');
        }
        for (k, v) in &self.context {
            let _ = writeln!(out, "  {k}: {v}");
        }
        if !self.title.is_empty() || !self.context.is_empty() {
            out.push('\n');
        }
        for (i, row) in cells.iter().enumerate() {
            let mut line = String::new();
            for (col, cell) in row.iter().enumerate() {
                if col > 0 {
                    line.push_str("  ");
                }
                let pad = widths[col] - cell.chars().count();
                if RIGHT[col] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                // Under every column but the free-form note.
                let total = widths[..7].iter().sum::<usize>() + 2 * 7 + "note".len();
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "* {n}");
            }
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_table())
    }
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// Human form of a value: thousands separators from 1,000 up, a few significant digits below.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let digits = format!("{a:.0}");
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if v < 0.0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.3e}")
    }
}

/// Human form of a ratio, e.g. `0.85x`, `12.3x`, `250x`.
pub fn format_ratio(r: f64) -> String {
    if r.abs() >= 100.0 {
        format!("{r:.0}x")
    } else if r.abs() >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("t");
        r.context("dir", "/tmp/x");
        r.add(Figure::new("base", 1000.0, "msg/s"));
        r.add(
            Figure::new("fast", 3000.0, "msg/s")
                .ratio_to("base")
                .target(Target::AtLeastRatio(2.5))
                .target(Target::AtLeast(2000.0)),
        );
        r.add(
            Figure::new("slow", 500.0, "msg/s")
                .ratio_to("base")
                .target(Target::AtLeastRatio(0.8)),
        );
        r.add(
            Figure::new("orphan", 5.0, "x")
                .ratio_to("missing")
                .target(Target::AtLeastRatio(1.0)),
        );
        r.add(Figure::unavailable("gone", "B/B", "counter reads 0"));
        r.add(Figure::new("small", 0.5, "s").target(Target::AtMost(1.0)));
        r
    }

    #[test]
    fn ratios_and_statuses() {
        let rows = sample().rows();
        let by = |n: &str| rows.iter().find(|r| r.name == n).unwrap().clone();
        assert_eq!(by("base").status, None);
        assert_eq!(by("fast").ratio, Some(3.0));
        assert_eq!(by("fast").status, Some(Status::Pass));
        assert_eq!(by("slow").status, Some(Status::Miss));
        assert_eq!(by("orphan").ratio, None);
        assert_eq!(by("orphan").status, Some(Status::Unknown));
        assert_eq!(by("gone").value, None);
        assert_eq!(by("small").status, Some(Status::Pass));
        assert_eq!(sample().misses(), vec!["slow".to_owned()]);
    }

    #[test]
    fn add_replaces_same_name_and_late_baseline_resolves() {
        let mut r = Report::new("");
        r.add(Figure::new("a", 2.0, "x").ratio_to("b"));
        assert_eq!(r.rows()[0].ratio, None);
        r.add(Figure::new("b", 4.0, "x"));
        r.add(Figure::new("b", 1.0, "x"));
        assert_eq!(r.figures().len(), 2);
        assert_eq!(r.rows()[0].ratio, Some(2.0));
    }

    #[test]
    fn table_and_json() {
        let r = sample();
        let table = r.to_string();
        assert!(table.contains("fast"));
        assert!(table.contains("3.00x"));
        assert!(table.contains("MISS"));
        assert!(table.contains(">= 2.50x and >= 2,000 msg/s"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json_string()).unwrap();
        let fast = &json["figures"][1];
        assert_eq!(fast["name"], "fast");
        assert_eq!(fast["ratio_to"], "base");
        assert_eq!(fast["ratio"], 3.0);
        assert_eq!(fast["status"], "pass");
        assert_eq!(fast["targets"][0]["kind"], "at_least_ratio");
        assert_eq!(json["figures"][4]["value"], serde_json::Value::Null);
        assert_eq!(json["context"]["dir"], "/tmp/x");
        assert_eq!(serde_json::to_value(&r).unwrap(), json);
    }

    #[test]
    fn value_formatting() {
        assert_eq!(format_value(2_345_678.4), "2,345,678");
        assert_eq!(format_value(-1234.0), "-1,234");
        assert_eq!(format_value(512.34), "512.3");
        assert_eq!(format_value(12.345), "12.35");
        assert_eq!(format_value(1.5), "1.500");
        assert_eq!(format_value(0.0012), "1.200e-3");
        assert_eq!(format_ratio(0.854), "0.85x");
        assert_eq!(format_ratio(42.0), "42.0x");
    }
}
