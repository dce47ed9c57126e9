//! The comparison's results: rows of (workload, metric, this stack, the kernel, ratio),
//! printed as an aligned table, as markdown spliced into docs/benchmarks.md between two
//! markers, as JSON, and as a PNG bar chart.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::table::{Align, Table};

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput: more is better.
    Higher,
    /// Latency, CPU cost: less is better.
    Lower,
}

/// One measured quantity on both stacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The workload ("echo 64 B, 64 conns, closed loop, depth 1").
    pub workload: String,
    /// What is measured ("requests/s", "p99 µs").
    pub metric: String,
    /// The result on this stack; `None` if that run failed.
    pub stack: Option<f64>,
    /// The result on the kernel; `None` if that run failed.
    pub kernel: Option<f64>,
    /// Which direction is better.
    pub better: Better,
    /// What ran on the kernel side, if not the same program ("redis-server").
    pub kernel_label: Option<String>,
    /// Why the stack side has no result, when the program under test failed there (a
    /// program under the LD_PRELOAD shim that hung or errored): the row is then a recorded
    /// finding, shown as "failed: REASON", not a broken harness.
    pub failed: Option<String>,
}

impl Row {
    /// stack / kernel, when both exist and the kernel's is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (self.stack, self.kernel) {
            (Some(s), Some(k)) if k != 0.0 => Some(s / k),
            _ => None,
        }
    }

    /// True if the stack did better than the kernel on this row.
    pub fn stack_wins(&self) -> Option<bool> {
        let r = self.ratio()?;
        Some(match self.better {
            Better::Higher => r > 1.0,
            Better::Lower => r < 1.0,
        })
    }

    /// True if both results and the ratio are there.
    pub fn complete(&self) -> bool {
        self.ratio().is_some()
    }

    /// True if the row is complete, or says why the stack side failed.
    pub fn accounted(&self) -> bool {
        self.complete() || (self.stack.is_none() && self.kernel.is_some() && self.failed.is_some())
    }
}

/// A number as people read it: thousands separated, sensible decimals.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v.abs() >= 1000.0 {
        let n = v.round() as i64;
        let s = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "FAILED".to_string(), fmt_value)
}

fn stack_cell(r: &Row) -> String {
    match (&r.failed, r.stack) {
        (Some(why), None) => format!("failed: {}", why.replace('|', "/")),
        _ => cell(r.stack),
    }
}

fn ratio_cell(r: &Row) -> String {
    r.ratio().map_or_else(|| "-".to_string(), |x| format!("{x:.2}x"))
}

fn kernel_name(r: &Row) -> String {
    r.kernel_label.clone().unwrap_or_else(|| "same program".into())
}

/// The aligned text table.
pub fn text_table(rows: &[Row]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("WORKLOAD", Left),
        ("METRIC", Left),
        ("STACK", Right),
        ("KERNEL", Right),
        ("RATIO", Right),
        ("BETTER", Left),
        ("KERNEL SIDE", Left),
    ]);
    for r in rows {
        t.row([
            r.workload.clone(),
            r.metric.clone(),
            stack_cell(r),
            cell(r.kernel),
            ratio_cell(r),
            match r.stack_wins() {
                Some(true) => "stack".into(),
                Some(false) => "kernel".into(),
                None => "-".into(),
            },
            kernel_name(r),
        ]);
    }
    t.render()
}

/// The markdown table (GitHub flavour).
pub fn markdown_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| workload | metric | this stack | Linux kernel | ratio (stack / kernel) | kernel side |\n\
         | --- | --- | ---: | ---: | ---: | --- |\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.workload,
            r.metric,
            stack_cell(r),
            cell(r.kernel),
            ratio_cell(r),
            kernel_name(r)
        );
    }
    s
}

/// The rows as JSON.
pub fn json_rows(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "workload": r.workload,
                    "metric": r.metric,
                    "stack": r.stack,
                    "kernel": r.kernel,
                    "ratio": r.ratio(),
                    "better": match r.better { Better::Higher => "higher", Better::Lower => "lower" },
                    "kernel_side": kernel_name(r),
                    "failed": r.failed,
                })
            })
            .collect(),
    )
}

/// The marker lines the generated section sits between in a markdown file.
pub const BEGIN: &str = "<!-- tas-bench compare: begin (generated; edit tools/src/bench, not this) -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- tas-bench compare: end -->";

/// `doc` with the text between the markers replaced by `section` (markers kept); if the
/// markers are missing, the section and its markers are appended.
pub fn splice(doc: &str, section: &str) -> Result<String> {
    let section = section.trim_end_matches('\n');
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => {
            let head = &doc[..b + BEGIN.len()];
            let tail = &doc[e..];
            Ok(format!("{head}\n{section}\n{tail}"))
        }
        (None, None) => {
            let sep = if doc.ends_with('\n') || doc.is_empty() { "" } else { "\n" };
            Ok(format!("{doc}{sep}\n{BEGIN}\n{section}\n{END}\n"))
        }
        _ => bail!(
            "the markers in the output file are broken (need one `{BEGIN}` before one `{END}`): \
             fix them by hand, or delete both to have the section appended"
        ),
    }
}

/// Write `section` into the markdown file at `path` between the markers (created if missing).
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = splice(&doc, section)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Fonts tried for the chart's text, in order (Debian's fonts-dejavu-core first).
pub const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Draw the ratio of every complete row as a horizontal bar from 1.0 (= the kernel) on a
/// logarithmic axis, so 0.5x and 2x are equally long; green where the stack is better, red
/// where the kernel is. Needs a TTF font for the labels: the first
/// of [`FONTS`] that exists, or `$TAS_BENCH_FONT`.
pub fn chart(rows: &[Row], path: &Path, title: &str) -> Result<()> {
    use plotters::prelude::*;
    let font_path = std::env::var("TAS_BENCH_FONT")
        .ok()
        .or_else(|| FONTS.iter().find(|p| Path::new(p).exists()).map(|p| p.to_string()))
        .context(
            "no TTF font for the chart's labels: install Debian's fonts-dejavu-core \
             (deploy/install-deps.sh does) or set TAS_BENCH_FONT to a .ttf file",
        )?;
    let bytes = std::fs::read(&font_path).with_context(|| format!("reading font {font_path}"))?;
    // The font registry wants 'static bytes; one font per process, leaked once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{font_path} is not a usable TTF font"))?;

    let data: Vec<(String, f64, bool)> = rows
        .iter()
        .filter_map(|r| {
            let vs = r.kernel_label.as_ref().map_or(String::new(), |k| format!(" (vs {k})"));
            Some((
                format!("{}: {}{vs}", r.workload, r.metric),
                r.ratio()?,
                r.stack_wins()?,
            ))
        })
        .collect();
    if data.is_empty() {
        bail!("no complete row to draw");
    }
    // Symmetric around 1 on the log axis, at least 0.5x..2x.
    let span = data
        .iter()
        .map(|d| d.1.max(1e-6).ln().abs())
        .fold(2f64.ln(), f64::max)
        * 1.1;
    let (lo, hi) = ((-span).exp(), span.exp());
    let height = 120 + 34 * data.len() as u32;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let root = BitMapBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let n = data.len() as i32;
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(620)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let labels: Vec<String> = data.iter().map(|d| d.0.clone()).collect();
    ch.configure_mesh()
        .disable_y_mesh()
        .x_desc("stack / kernel, log scale (1 = same; right of 1: a larger value on the stack)")
        .x_label_formatter(&|v| format!("{v:.2}x"))
        .y_label_formatter(&|v| match v {
            // Bar i (from the top) is drawn at y = n - 1 - i; the mesh may ask beyond.
            SegmentValue::CenterOf(y) => (n - 1)
                .checked_sub(*y)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| labels.get(i))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_labels(data.len())
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    ch.draw_series(data.iter().enumerate().map(|(i, (_, r, win))| {
        let y = n - 1 - i as i32;
        let color = if *win { RGBColor(46, 139, 87) } else { RGBColor(200, 60, 50) };
        Rectangle::new(
            [(1.0, SegmentValue::Exact(y)), (r.clamp(lo, hi), SegmentValue::Exact(y + 1))],
            color.filled(),
        )
    }))
    .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    ch.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
        BLACK.stroke_width(2),
    )))
    .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stack: Option<f64>, kernel: Option<f64>, better: Better) -> Row {
        Row {
            workload: "echo".into(),
            metric: "requests/s".into(),
            stack,
            kernel,
            better,
            kernel_label: None,
            failed: None,
        }
    }

    #[test]
    fn ratio_and_winner() {
        let r = row(Some(200.0), Some(100.0), Better::Higher);
        assert_eq!(r.ratio(), Some(2.0));
        assert_eq!(r.stack_wins(), Some(true));
        let r = row(Some(200.0), Some(100.0), Better::Lower);
        assert_eq!(r.stack_wins(), Some(false));
        assert!(!row(None, Some(1.0), Better::Higher).complete());
        assert!(!row(Some(1.0), Some(0.0), Better::Higher).complete());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_value(1_234_567.4), "1,234,567");
        assert_eq!(fmt_value(-1234.0), "-1,234");
        assert_eq!(fmt_value(999.6), "1000");
        assert_eq!(fmt_value(12.345), "12.3");
        assert_eq!(fmt_value(1.2345), "1.23");
    }

    #[test]
    fn tables_have_every_cell() {
        let rows = [
            row(Some(200.0), Some(100.0), Better::Higher),
            row(None, Some(100.0), Better::Lower),
        ];
        let t = crate::table::parse(&text_table(&rows));
        assert_eq!(t[1][2..6], ["200", "100", "2.00x", "stack"]);
        assert_eq!(t[2][2..6], ["FAILED", "100", "-", "-"]);
        let md = markdown_table(&rows);
        assert_eq!(md.lines().count(), 4);
        assert!(md.lines().nth(2).unwrap().contains("| 200 | 100 | 2.00x |"));
    }

    #[test]
    fn a_failed_stack_side_says_why() {
        let mut r = row(None, Some(100.0), Better::Higher);
        assert!(!r.accounted());
        r.failed = Some("server hung | no reply".into());
        assert!(r.accounted() && !r.complete());
        let md = markdown_table(std::slice::from_ref(&r));
        assert!(md.contains("| failed: server hung / no reply | 100 | - |"), "{md}");
        let j = json_rows(std::slice::from_ref(&r));
        assert_eq!(j[0]["failed"], "server hung | no reply");
        assert!(j[0]["ratio"].is_null());
        // A kernel-side failure is never accounted for by a reason.
        let mut k = row(Some(1.0), None, Better::Higher);
        k.failed = Some("x".into());
        assert!(!k.accounted());
    }

    #[test]
    fn splice_replaces_between_markers_and_keeps_the_rest() {
        let doc = format!("# Title\n\nbefore\n{BEGIN}\nold\ntable\n{END}\nafter\n");
        let out = splice(&doc, "new\n").unwrap();
        assert_eq!(out, format!("# Title\n\nbefore\n{BEGIN}\nnew\n{END}\nafter\n"));
        // Idempotent.
        assert_eq!(splice(&out, "new").unwrap(), out);
        // No markers: appended.
        let out = splice("# T\n", "x").unwrap();
        assert_eq!(out, format!("# T\n\n{BEGIN}\nx\n{END}\n"));
        // One marker only: refused, not guessed.
        let e = splice(&format!("{END}\n{BEGIN}\n"), "x").unwrap_err().to_string();
        assert!(e.contains("markers"), "{e}");
    }

    #[test]
    fn chart_is_a_png() {
        if !FONTS.iter().any(|p| Path::new(p).exists()) {
            eprintln!("no font installed: chart not drawn (install fonts-dejavu-core)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tas-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.png");
        let rows = [
            row(Some(200.0), Some(100.0), Better::Higher),
            row(Some(50.0), Some(100.0), Better::Lower),
        ];
        chart(&rows, &p, "test").unwrap();
        let png = std::fs::read(&p).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
