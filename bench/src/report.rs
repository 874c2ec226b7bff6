//! The table every run prints and the JSON it writes.

use serde::Serialize;

/// One figure of the table, beside its baseline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) metric: String,
    /// The gateway's figure.
    pub(crate) ferry: Option<f64>,
    pub(crate) ferry_text: String,
    /// The baseline's figure, and what the baseline is.
    pub(crate) baseline: Option<f64>,
    pub(crate) baseline_text: String,
    /// ferry / baseline (for throughputs) or ferry − baseline (for
    /// latencies, in ms), as `ratio_text` says.
    pub(crate) ratio: Option<f64>,
    pub(crate) ratio_text: String,
    pub(crate) goal: String,
    /// Whether the goal is met; `None` when the row has no goal.
    pub(crate) met: Option<bool>,
}

impl Row {
    /// A row with the gateway's figure only.
    pub(crate) fn new(scenario: &str, metric: &str, ferry: Option<f64>, text: String) -> Self {
        Self {
            scenario: scenario.to_owned(),
            metric: metric.to_owned(),
            ferry,
            ferry_text: text,
            baseline: None,
            baseline_text: "—".to_owned(),
            ratio: None,
            ratio_text: "—".to_owned(),
            goal: "report".to_owned(),
            met: None,
        }
    }

    pub(crate) fn baseline(mut self, value: Option<f64>, text: String) -> Self {
        self.baseline = value;
        self.baseline_text = text;
        self
    }

    /// Ratio ferry / baseline.
    pub(crate) fn ratio(mut self) -> Self {
        if let (Some(f), Some(b)) = (self.ferry, self.baseline) {
            if b > 0.0 {
                self.ratio = Some(f / b);
                self.ratio_text = format!("{:.2}×", f / b);
            }
        }
        self
    }

    /// Difference ferry − baseline (ms).
    pub(crate) fn delta_ms(mut self) -> Self {
        if let (Some(f), Some(b)) = (self.ferry, self.baseline) {
            self.ratio = Some(f - b);
            self.ratio_text = format!("{:+.2} ms", f - b);
        }
        self
    }

    pub(crate) fn goal(mut self, goal: &str, met: bool) -> Self {
        self.goal = goal.to_owned();
        self.met = Some(met);
        self
    }

    /// A row saying the scenario failed to run.
    pub(crate) fn failed(scenario: &str, error: &str) -> Self {
        let mut row = Self::new(scenario, "did not complete", None, error.to_owned());
        row.met = Some(false);
        row.goal = "runs".to_owned();
        row
    }
}

/// The table as Markdown (readable in a terminal and pasteable into
/// `BENCHMARKS.md`).
pub(crate) fn table(rows: &[Row]) -> String {
    let header = ["scenario", "metric", "ferry", "baseline", "ratio", "goal", "met"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.metric.clone(),
                r.ferry_text.replace('|', "/"),
                r.baseline_text.clone(),
                r.ratio_text.clone(),
                r.goal.clone(),
                match r.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "**NO**".to_owned(),
                    None => "".to_owned(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |values: &[String]| {
        let padded: Vec<String> = values
            .iter()
            .zip(widths)
            .map(|(v, w)| format!("{v}{}", " ".repeat(w - v.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header.map(str::to_owned));
    out += &line(&widths.map(|w| "-".repeat(w)));
    for row in &cells {
        out += &line(row);
    }
    out
}
