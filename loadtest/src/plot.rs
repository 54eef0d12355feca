//! `--plot FILE.svg`: one self-contained SVG a person can put in a report.
//!
//! - A title naming the run: machines, profile, file and its size (or the scenario), server, the
//!   date (UTC), outcomes, throughput, seed.
//! - Panel 1: aggregate throughput over time as a step plot of 250 ms averages, from t = 0 (each
//!   step covers the interval it was measured over; the last, partial reading is merged, see
//!   [`crate::report::series`]), unit chosen from the peak (kbit/s, Mbit/s, Gbit/s); on a second
//!   axis the machines active at each instant.
//! - Panel 2: the completion-time CDF in percent of all machines (failed and vanished machines
//!   never arrive, so the curve stops short of 100 %), with the p50 and p99 marked.
//!
//! Plain SVG text, no script, no external fonts or styles.

use crate::report::Report;
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

const W: f64 = 960.0;
const H: f64 = 800.0;
/// Plot areas: left, top, width, height.
const RATE_PANEL: (f64, f64, f64, f64) = (90.0, 110.0, 770.0, 280.0);
const CDF_PANEL: (f64, f64, f64, f64) = (90.0, 490.0, 770.0, 240.0);
const RATE_COLOUR: &str = "#1f5fa8";
const ACTIVE_COLOUR: &str = "#d9711c";
const MARK_COLOUR: &str = "#7a7a7a";

impl Report {
    /// Write [`svg`](Self::svg) to `path` (`-`: standard output).
    pub fn write_plot(&self, path: &Path) -> Result<()> {
        crate::report::write_text(path, &self.svg())
    }

    /// The whole SVG document.
    pub fn svg(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, "<title>{}</title>", esc(&self.title()));
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text id="title" x="{}" y="30" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"#,
            W / 2.0,
            esc(&self.title())
        );
        let _ = writeln!(
            s,
            r##"<text id="subtitle" x="{}" y="52" text-anchor="middle" fill="#444">{}</text>"##,
            W / 2.0,
            esc(&self.subtitle())
        );
        self.rate_panel(&mut s);
        self.cdf_panel(&mut s);
        s.push_str("</svg>\n");
        s
    }

    /// "200 × uefi 'boot.wim' (64.0 MiB) → 10.0.0.1:69".
    fn title(&self) -> String {
        let size = match self.bytes_per_machine {
            Some(b) => binary_size(b),
            None => "size unknown: nothing completed".into(),
        };
        let what = self.run.what(Some(&size));
        format!("{} × {what} → {}", self.clients, self.run.server)
    }

    /// Date, outcomes, throughput, seed.
    fn subtitle(&self) -> String {
        let date = self.started_at.replacen('T', " ", 1).replace('Z', " UTC");
        format!(
            "{date} · {} completed, {} failed, {} vanished · {} over {:.2} s · seed {}, {} load-test thread{}",
            self.completed,
            self.failed,
            self.vanished,
            rate_text(self.throughput_bps),
            self.wall_seconds,
            self.seed,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }

    fn rate_panel(&self, s: &mut String) {
        let (x0, y0, pw, ph) = RATE_PANEL;
        let rate = &self.throughput_samples;
        let active = &self.active_samples;
        let tmax = rate
            .last()
            .map_or(0.0, |p| p[0])
            .max(active.last().map_or(0.0, |p| p[0]))
            .max(0.25);
        let peak = rate.iter().map(|p| p[1]).fold(0.0, f64::max);
        let (div, unit) = rate_unit(peak);
        let ymax = nice_max((peak / div).max(1e-9) * 1.08);
        let amax = nice_max(active.iter().map(|p| p[1]).fold(1.0, f64::max) * 1.08).max(1.0);
        let sx = |t: f64| x0 + t / tmax * pw;
        let sy = |v: f64| y0 + ph - v / div / ymax * ph;
        let sa = |n: f64| y0 + ph - n / amax * ph;

        frame(s, RATE_PANEL, "Aggregate throughput and active machines");
        x_axis(s, RATE_PANEL, tmax, "time since the start of the run (s)");
        y_axis(
            s,
            RATE_PANEL,
            ymax,
            &format!("throughput ({unit})"),
            Side::Left,
            RATE_COLOUR,
        );
        y_axis(
            s,
            RATE_PANEL,
            amax,
            "active machines",
            Side::Right,
            ACTIVE_COLOUR,
        );
        if rate.is_empty() {
            no_data(s, RATE_PANEL);
        } else {
            // Steps: each 250 ms average spans its own interval, the first from t = 0.
            let mut line = format!("M{:.1},{:.1}", sx(0.0), sy(0.0));
            let mut from = 0.0;
            for p in rate {
                let _ = write!(
                    line,
                    " L{:.1},{:.1} L{:.1},{:.1}",
                    sx(from),
                    sy(p[1]),
                    sx(p[0]),
                    sy(p[1])
                );
                from = p[0];
            }
            let _ = write!(line, " L{:.1},{:.1}", sx(from), sy(0.0));
            let _ = writeln!(
                s,
                r#"<path id="throughput" d="{line} Z" fill="{RATE_COLOUR}" fill-opacity="0.22" stroke="{RATE_COLOUR}" stroke-width="1.6" stroke-linejoin="round"/>"#
            );
        }
        if active.len() > 1 {
            let mut line = String::new();
            for (k, p) in active.iter().enumerate() {
                let _ = write!(
                    line,
                    "{}{:.1},{:.1}",
                    if k == 0 { "M" } else { " L" },
                    sx(p[0]),
                    sa(p[1])
                );
            }
            let _ = writeln!(
                s,
                r#"<path id="active-machines" d="{line}" fill="none" stroke="{ACTIVE_COLOUR}" stroke-width="2" stroke-linejoin="round"/>"#
            );
        }
        // Legend, top left inside the panel.
        let (lx, ly) = (x0 + 12.0, y0 + 14.0);
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="{}" width="252" height="40" fill="white" fill-opacity="0.85" stroke="#ccc"/>"##,
            ly - 8.0
        );
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="18" height="9" fill="{RATE_COLOUR}" fill-opacity="0.35" stroke="{RATE_COLOUR}"/>"#,
            lx + 8.0,
            ly - 2.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">throughput, 250 ms averages (left)</text>"#,
            lx + 32.0,
            ly + 7.0
        );
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{ACTIVE_COLOUR}" stroke-width="2"/>"#,
            lx + 8.0,
            ly + 19.0,
            lx + 26.0,
            ly + 19.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">machines active (right)</text>"#,
            lx + 32.0,
            ly + 23.0
        );
    }

    fn cdf_panel(&self, s: &mut String) {
        let (x0, y0, pw, ph) = CDF_PANEL;
        let done = &self.completion_s;
        let xmax = nice_max(done.last().copied().unwrap_or(1.0).max(1e-3) * 1.05);
        let sx = |t: f64| x0 + t / xmax * pw;
        let sy = |pct: f64| y0 + ph - pct / 100.0 * ph;
        frame(
            s,
            CDF_PANEL,
            "Completion time per machine (failed and vanished machines never arrive)",
        );
        x_axis(
            s,
            CDF_PANEL,
            xmax,
            "completion time: first packet to last step done (s)",
        );
        y_axis(s, CDF_PANEL, 100.0, "machines done (%)", Side::Left, "#222");
        if done.is_empty() {
            no_data(s, CDF_PANEL);
            return;
        }
        let n = self.clients.max(1) as f64;
        let mut line = format!("M{:.1},{:.1}", sx(done[0]), sy(0.0));
        for (i, &t) in done.iter().enumerate() {
            let _ = write!(
                line,
                " H{:.1} V{:.1}",
                sx(t),
                sy((i + 1) as f64 * 100.0 / n)
            );
        }
        let _ = writeln!(
            s,
            r#"<path id="completion-cdf" d="{line}" fill="none" stroke="{RATE_COLOUR}" stroke-width="1.8"/>"#
        );
        for (name, ms, dy) in [
            ("p50", self.duration_ms.p50, 14.0),
            ("p99", self.duration_ms.p99, 28.0),
        ] {
            let x = sx(ms / 1000.0);
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="{MARK_COLOUR}" stroke-dasharray="4 3"/>"#,
                y0 + ph
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" fill="{MARK_COLOUR}">{name} {}</text>"#,
                x + 4.0,
                y0 + dy,
                seconds_text(ms / 1000.0)
            );
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Left,
    Right,
}

/// Panel background, border and title.
fn frame(s: &mut String, (x0, y0, pw, ph): (f64, f64, f64, f64), title: &str) {
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"##,
        x0 + pw / 2.0,
        y0 - 12.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="#fbfbfb" stroke="#333"/>"##
    );
}

/// Ticks, grid lines and label of the x axis from 0 to `max`.
fn x_axis(s: &mut String, (x0, y0, pw, ph): (f64, f64, f64, f64), max: f64, label: &str) {
    let step = nice_step(max, 10.0);
    for v in ticks(max, step) {
        let x = x0 + v / max * pw;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#e2e2e2"/>"##,
            y0 + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            y0 + ph + 16.0,
            fmt_tick(v, step)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
        x0 + pw / 2.0,
        y0 + ph + 36.0,
        esc(label)
    );
}

/// Ticks, grid lines (left axis only) and label of a y axis from 0 to `max`.
fn y_axis(
    s: &mut String,
    (x0, y0, pw, ph): (f64, f64, f64, f64),
    max: f64,
    label: &str,
    side: Side,
    colour: &str,
) {
    let step = nice_step(max, 6.0);
    let step = if side == Side::Right {
        step.max(1.0)
    } else {
        step
    };
    let (tx, anchor, lx) = match side {
        Side::Left => (x0 - 6.0, "end", x0 - 58.0),
        Side::Right => (x0 + pw + 6.0, "start", x0 + pw + 58.0),
    };
    for v in ticks(max, step) {
        let y = y0 + ph - v / max * ph;
        if side == Side::Left {
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e2e2e2"/>"##,
                x0 + pw
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{tx}" y="{:.1}" text-anchor="{anchor}" fill="{colour}">{}</text>"#,
            y + 4.0,
            fmt_tick(v, step)
        );
    }
    let my = y0 + ph / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="{lx}" y="{my}" text-anchor="middle" font-size="13" fill="{colour}" transform="rotate(-90 {lx} {my})">{}</text>"#,
        esc(label)
    );
}

fn no_data(s: &mut String, (x0, y0, pw, ph): (f64, f64, f64, f64)) {
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#888" font-size="14">no data</text>"##,
        x0 + pw / 2.0,
        y0 + ph / 2.0
    );
}

/// 0, step, 2 step, ... up to `max`.
fn ticks(max: f64, step: f64) -> impl Iterator<Item = f64> {
    let n = (max / step + 1e-9).floor() as usize;
    (0..=n.min(100)).map(move |k| k as f64 * step)
}

/// The divisor and unit for rates up to `peak` bits per second.
fn rate_unit(peak: f64) -> (f64, &'static str) {
    if peak >= 1e9 {
        (1e9, "Gbit/s")
    } else if peak >= 1e6 {
        (1e6, "Mbit/s")
    } else {
        (1e3, "kbit/s")
    }
}

fn rate_text(bps: f64) -> String {
    let (div, unit) = rate_unit(bps);
    format!("{:.2} {unit}", bps / div)
}

fn seconds_text(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// Sizes as files are usually made: 64.0 MiB, 512 KiB.
fn binary_size(b: u64) -> String {
    let f = b as f64;
    if f >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", f / (1u64 << 30) as f64)
    } else if f >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", f / (1u64 << 20) as f64)
    } else if f >= 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{b} bytes")
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" tick step (1, 2 or 5 x 10^k) giving about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 + 1e-9 {
        1.0
    } else if f <= 2.0 + 1e-9 {
        2.0
    } else if f <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// `max` rounded up to a multiple of its tick step, so the top of an axis carries a label.
fn nice_max(max: f64) -> f64 {
    let step = nice_step(max, 6.0);
    (max / step - 1e-9).ceil().max(1.0) * step
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let d = (-step.log10()).ceil() as usize;
        format!("{v:.d$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks() {
        assert_eq!(nice_step(10.0, 10.0), 1.0);
        assert_eq!(nice_step(7.3, 6.0), 2.0);
        assert!((nice_step(0.3, 6.0) - 0.05).abs() < 1e-12);
        assert_eq!(fmt_tick(0.25, 0.05), "0.25");
        assert_eq!(nice_max(7.3), 8.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(
            ticks(1.0, 0.25).collect::<Vec<_>>(),
            [0.0, 0.25, 0.5, 0.75, 1.0]
        );
        assert_eq!(binary_size(64 << 20), "64.0 MiB");
        assert_eq!(rate_text(2.5e9), "2.50 Gbit/s");
    }

    #[test]
    fn svg_names_the_run_and_draws_both_series() {
        let r = crate::report::tests::sample_report();
        let svg = r.svg();
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        let title = "2 × uefi 'boot.wim' (size unknown: nothing completed) → 127.0.0.1:6969";
        assert!(svg.contains(&esc(title)), "{svg}");
        assert!(svg.contains("2026-12-31 23:59:59 UTC"), "{svg}");
        assert!(svg.contains(r#"id="active-machines""#), "{svg}");
        assert!(
            svg.contains(r#"id="throughput" d="M90.0,390.0 L90.0,"#),
            "starts at t = 0: {svg}"
        );
        assert!(svg.contains("active machines"));
        assert!(svg.contains("throughput (kbit/s)"));
        assert!(svg.contains("time since the start of the run (s)"));
        // Nothing completed: an empty CDF says so instead of drawing nothing.
        assert!(svg.contains("no data"));
    }
}
