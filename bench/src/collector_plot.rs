//! The plot of the collector benchmark (`bench/collector/run.sh`): reads the table it wrote
//! (`bench/results/collector.md`) and draws, per flow count, each collector's top receive rate
//! as a share of the rate with no collector, the total CPU per received packet (softirq and
//! collector process) and the collector's process CPU.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::{draw_legend, register_font, PALETTE};

/// One row of the table: a collector at one flow count.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub flows: String,
    pub collector: String,
    /// Receive rate relative to no collector, in %.
    pub rate_kept: f64,
    /// Collector process CPU, % of one core (0 when not measured).
    pub cpu: f64,
    /// Softirq and collector CPU per received packet, ns (0 when not measured).
    pub total_ns: f64,
}

/// The rows of the results table (columns found by their header: flows, collector, vs none,
/// collector CPU, total CPU ns/pkt), "none" rows left out.
pub fn parse(markdown: &str) -> anyhow::Result<Vec<Row>> {
    let number = |cell: &str| -> Option<f64> {
        cell.trim()
            .trim_end_matches('%')
            .trim()
            .replace(',', "")
            .parse()
            .ok()
    };
    let cells = |line: &str| -> Vec<String> {
        line.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let mut lines = markdown.lines().filter(|l| l.starts_with("| "));
    let header = cells(lines.next().context("no table")?);
    let column = |name: &str| header.iter().position(|h| h == name);
    let (rate, cpu, total) = (
        column("vs none").context("no 'vs none' column")?,
        column("collector CPU"),
        column("total CPU ns/pkt"),
    );
    let mut rows = Vec::new();
    for line in lines {
        let cells = cells(line);
        if cells.len() < header.len() || cells[1] == "none" || cells[0].starts_with("---") {
            continue;
        }
        let value = |at: Option<usize>| at.and_then(|i| number(&cells[i])).unwrap_or(0.0);
        rows.push(Row {
            flows: cells[0].clone(),
            collector: cells[1].clone(),
            rate_kept: number(&cells[rate])
                .with_context(|| format!("no 'vs none' percentage in {line:?}"))?,
            cpu: value(cpu),
            total_ns: value(total),
        });
    }
    anyhow::ensure!(!rows.is_empty(), "no result rows in the table");
    Ok(rows)
}

/// A panel: title, y axis label, the value drawn.
type Panel = (&'static str, &'static str, fn(&Row) -> f64);

/// Draws the two panels (rate kept, collector CPU) as grouped bars into a PNG at `path`.
pub fn draw(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let mut flows: Vec<&str> = Vec::new();
    let mut collectors: Vec<&str> = Vec::new();
    for r in rows {
        if !flows.contains(&r.flows.as_str()) {
            flows.push(&r.flows);
        }
        if !collectors.contains(&r.collector.as_str()) {
            collectors.push(&r.collector);
        }
    }
    let root = BitMapBackend::new(path, (1500, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let groups = flows.len() as f64;
    let width = 0.8 / collectors.len() as f64;
    let metrics: [Panel; 3] = [
        (
            "top receive rate kept",
            "% of the rate with no collector",
            |r| r.rate_kept,
        ),
        (
            "total CPU per received packet",
            "ns (softirq + collector process)",
            |r| r.total_ns,
        ),
        ("collector process CPU", "% of one core", |r| r.cpu),
    ];
    for (panel, (title, y_label, value)) in panels.iter().zip(metrics) {
        let y_max = rows.iter().map(value).fold(1.0, f64::max).max(100.0) * 1.3;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..groups, 0.0..y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(flows.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (*x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < flows.len() {
                    format!("{} flows", flows[i as usize])
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .draw()?;
        for (c, collector) in collectors.iter().enumerate() {
            let color = PALETTE[c % PALETTE.len()];
            let bars = rows.iter().filter(|r| r.collector == *collector).map(|r| {
                let g = flows.iter().position(|f| *f == r.flows).unwrap_or(0) as f64;
                let x0 = g + 0.1 + c as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, value(r))], color.filled())
            });
            chart
                .draw_series(bars)?
                .label(*collector)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        draw_legend(&mut chart)?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_results_table() {
        let table = "| flows | collector | rx packets/s | vs none | accounted | collector CPU | softirq CPU |\n\
                     |---|---|---|---|---|---|---|\n\
                     | 16 | none | 735,232 | 100 % | - | - | 30 % |\n\
                     | 16 | flowlens | 556,326 | 76 % | 100.0 % | 0.1 % | 42 % |\n\
                     | 1,000,000 | pmacctd | 405,517 | 60 % | 72.0 % | 29.1 % | 34 % |\n";
        let rows = parse(table).unwrap();
        assert_eq!(
            rows,
            vec![
                Row {
                    flows: "16".into(),
                    collector: "flowlens".into(),
                    rate_kept: 76.0,
                    cpu: 0.1,
                    total_ns: 0.0,
                },
                Row {
                    flows: "1,000,000".into(),
                    collector: "pmacctd".into(),
                    rate_kept: 60.0,
                    cpu: 29.1,
                    total_ns: 0.0,
                },
            ]
        );
        assert!(parse("| flows | collector |\n").is_err());
    }

    #[test]
    fn reads_the_columns_by_their_header() {
        let table = "| flows | collector | rx packets/s | vs none | vs empty | accounted | collector CPU | softirq CPU | total CPU ns/pkt |\n\
                     |---|---|---|---|---|---|---|---|---|\n\
                     | 16 | empty | 600,000 | 88 % | 100 % | - | - | 30 % | 1,010 |\n\
                     | 16 | flowlens | 580,000 | 85 % | 97 % | 100.0 % | 0.1 % | 42 % | 1,450 |\n";
        let rows = parse(table).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].rate_kept, rows[1].cpu, rows[1].total_ns),
            (85.0, 0.1, 1450.0)
        );
        assert_eq!((rows[0].collector.as_str(), rows[0].cpu), ("empty", 0.0));
    }
}
