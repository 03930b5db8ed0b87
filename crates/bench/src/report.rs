//! Formatting figures and printing aligned tables on stdout.

use std::time::Duration;

/// Decimal megabytes: the unit every MB/s figure in the report uses.
pub const MB: f64 = 1_000_000.0;
/// Decimal gigabytes, for CPU-seconds per GB.
pub const GB: f64 = 1_000_000_000.0;

/// `2.2 MB`, `5.1 kB`, `432 B`.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= GB {
        format!("{:.2} GB", n / GB)
    } else if n >= MB {
        format!("{:.1} MB", n / MB)
    } else if n >= 1000.0 {
        format!("{:.1} kB", n / 1000.0)
    } else {
        format!("{n} B")
    }
}

/// `85 ns`, `12.3 µs`, `4.56 ms`, `7.89 s`.
pub fn duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1.0 {
        format!("{} ns", d.as_nanos())
    } else if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Bytes per second in MB/s.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MB / elapsed.as_secs_f64().max(1e-9)
}

/// `1234 MB/s`, or with a decimal below 100.
pub fn rate(mb_per_s: f64) -> String {
    if mb_per_s >= 100.0 {
        format!("{mb_per_s:.0} MB/s")
    } else {
        format!("{mb_per_s:.1} MB/s")
    }
}

/// `1.62x`, `48.1x`, `5044x`.
pub fn ratio(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}x")
    } else if value >= 10.0 {
        format!("{value:.1}x")
    } else {
        format!("{value:.2}x")
    }
}

/// CPU seconds spent per GB of `bytes`.
pub fn cpu_per_gb(cpu: Duration, bytes: u64) -> String {
    format!("{:.2} CPU-s/GB", cpu.as_secs_f64() / (bytes as f64 / GB))
}

/// A table: the first column left-aligned, the others right-aligned (or all
/// left-aligned, for tables of text).
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    all_left: bool,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|cell| cell.to_string()).collect()],
            all_left: false,
        }
    }

    /// Aligns every column to the left.
    pub fn left_aligned(mut self) -> Self {
        self.all_left = true;
        self
    }

    /// True when only the header is there.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table indented by two spaces.
    pub fn print(&self) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::from(" ");
            for (column, cell) in row.iter().enumerate() {
                let pad = " ".repeat(widths[column] - cell.chars().count());
                if column == 0 {
                    line.push_str(&format!(" {cell}{pad}"));
                } else if self.all_left {
                    line.push_str(&format!("  {cell}{pad}"));
                } else {
                    line.push_str(&format!("  {pad}{cell}"));
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(2_189_372), "2.2 MB");
        assert_eq!(bytes(432), "432 B");
        assert_eq!(duration(Duration::from_micros(412)), "412.0 µs");
        assert_eq!(duration(Duration::from_millis(4)), "4.00 ms");
        assert_eq!(
            rate(mb_per_s(2_000_000, Duration::from_millis(1))),
            "2000 MB/s"
        );
        assert_eq!(
            cpu_per_gb(Duration::from_secs(1), 500_000_000),
            "2.00 CPU-s/GB"
        );
    }
}
