//! A hand-written SVG plot: two panels side by side, throughput vs clients
//! (linear y) and latency vs clients (p99 solid, p50 dashed; log y), both
//! with a log-scale x axis.

use std::fmt::Write as _;

pub struct Series {
    pub name: String,
    pub color: String,
    pub clients: Vec<f64>,
    pub ops_per_sec: Vec<f64>,
    pub p50_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
}

const W: f64 = 1000.0;
const H: f64 = 480.0;
const PLOT_W: f64 = 360.0;
const PLOT_TOP: f64 = 80.0;
const PLOT_H: f64 = 300.0;
const PANEL_X: [f64; 2] = [90.0, 590.0];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{}k", k.round())
        } else {
            format!("{k:.1}k")
        }
    } else if v >= 1.0 || v == 0.0 {
        let r = v.round();
        if (v - r).abs() < 1e-9 {
            format!("{r}")
        } else {
            format!("{v:.1}")
        }
    } else {
        // 0.5, 0.02, 0.001 ...
        let s = format!("{v:.6}");
        s.trim_end_matches('0').to_string()
    }
}

struct LogX {
    lo: f64,
    hi: f64,
    x0: f64,
}
impl LogX {
    fn px(&self, v: f64) -> f64 {
        self.x0 + (v.log10() - self.lo) / (self.hi - self.lo) * PLOT_W
    }
}

fn y_lin(v: f64, max: f64) -> f64 {
    PLOT_TOP + PLOT_H - v / max * PLOT_H
}

fn y_log(v: f64, lo: f64, hi: f64) -> f64 {
    PLOT_TOP + PLOT_H - (v.log10() - lo) / (hi - lo) * PLOT_H
}

fn polyline(out: &mut String, pts: &[(f64, f64)], color: &str, dashed: bool) {
    if pts.len() < 2 {
        return;
    }
    let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{}/>"#,
        d.join(" "),
        if dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        }
    );
}

fn markers(out: &mut String, pts: &[(f64, f64)], color: &str, hollow: bool) {
    for (x, y) in pts {
        let fill = if hollow { "white" } else { color };
        let _ = writeln!(
            out,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{fill}" stroke="{color}" stroke-width="2"/>"#
        );
    }
}

fn frame(out: &mut String, x0: f64, title: &str, xlabel: &str, ylabel: &str) {
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{PLOT_TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        x0 + PLOT_W / 2.0,
        PLOT_TOP - 12.0,
        esc(title)
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">{}</text>"#,
        x0 + PLOT_W / 2.0,
        PLOT_TOP + PLOT_H + 40.0,
        esc(xlabel)
    );
    let (lx, ly) = (x0 - 62.0, PLOT_TOP + PLOT_H / 2.0);
    let _ = writeln!(
        out,
        r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" font-size="13" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        esc(ylabel)
    );
}

fn y_tick(out: &mut String, x0: f64, y: f64, label: &str, major: bool) {
    let stroke = if major { "#ccc" } else { "#eee" };
    let _ = writeln!(
        out,
        r#"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/>"#,
        x0 + PLOT_W
    );
    if !label.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12">{label}</text>"#,
            x0 - 6.0,
            y + 4.0
        );
    }
}

pub fn render(title: &str, series: &[Series]) -> String {
    render_with(title, "throughput (puts/s)", series)
}

/// Legend room for one series name.
fn legend_step(name: &str) -> f64 {
    (50.0 + 8.0 * name.chars().count() as f64).max(90.0)
}

/// As [`render`], with the throughput axis labelled `ylabel`.
pub fn render_with(title: &str, ylabel: &str, series: &[Series]) -> String {
    render_xy(title, "concurrent clients (log scale)", ylabel, series)
}

/// As [`render_with`], with the x axis (log scale; `Series::clients`)
/// labelled `xlabel`: the open-loop plot puts the offered rate there.
pub fn render_xy(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="17">{}</text>"#,
        W / 2.0,
        esc(title)
    );

    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.clients.iter().copied())
        .filter(|c| *c > 0.0)
        .collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    if xs.is_empty() {
        xs.push(1.0);
    }
    let (lmin, lmax) = (xs[0].log10(), xs[xs.len() - 1].log10());
    let pad = ((lmax - lmin) * 0.08).max(0.15);
    let scale = |x0| LogX {
        lo: lmin - pad,
        hi: lmax + pad,
        x0,
    };

    // Panel 1: throughput.
    let x0 = PANEL_X[0];
    let sx = scale(x0);
    let tmax = series
        .iter()
        .flat_map(|s| s.ops_per_sec.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1.0);
    let step = nice_step(tmax * 1.1 / 5.0);
    let ymax = (tmax * 1.1 / step).ceil() * step;
    let mut v = 0.0;
    while v <= ymax + step * 1e-6 {
        y_tick(&mut out, x0, y_lin(v, ymax), &fmt_num(v), true);
        v += step;
    }
    x_ticks(&mut out, &sx, &xs);
    frame(&mut out, x0, "Throughput", xlabel, ylabel);
    for s in series {
        let pts: Vec<(f64, f64)> = s
            .clients
            .iter()
            .zip(&s.ops_per_sec)
            .filter(|(c, t)| **c > 0.0 && t.is_finite())
            .map(|(c, t)| (sx.px(*c), y_lin(*t, ymax)))
            .collect();
        polyline(&mut out, &pts, &s.color, false);
        markers(&mut out, &pts, &s.color, false);
    }

    // Panel 2: latency, log y.
    let x0 = PANEL_X[1];
    let sx = scale(x0);
    let lats: Vec<f64> = series
        .iter()
        .flat_map(|s| s.p50_ms.iter().chain(&s.p99_ms).copied())
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = lats.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = lats.iter().copied().fold(0.0, f64::max);
    let (mut dlo, mut dhi) = if lats.is_empty() {
        (0.0, 1.0)
    } else {
        (lo.log10().floor(), hi.log10().ceil())
    };
    if dhi <= dlo {
        dhi = dlo + 1.0;
    }
    if dhi - dlo > 8.0 {
        dlo = dhi - 8.0;
    }
    let mut d = dlo;
    while d <= dhi {
        let base = 10f64.powf(d);
        for m in [1.0, 2.0, 5.0] {
            let v = m * base;
            if v.log10() > dhi + 1e-9 {
                break;
            }
            let label = if m == 1.0 || dhi - dlo <= 2.0 {
                fmt_num(v)
            } else {
                String::new()
            };
            y_tick(&mut out, x0, y_log(v, dlo, dhi), &label, m == 1.0);
        }
        d += 1.0;
    }
    x_ticks(&mut out, &sx, &xs);
    frame(
        &mut out,
        x0,
        "Latency: p99 (solid), p50 (dashed)",
        xlabel,
        "latency (ms, log scale)",
    );
    for s in series {
        for (vals, dashed) in [(&s.p99_ms, false), (&s.p50_ms, true)] {
            let pts: Vec<(f64, f64)> = s
                .clients
                .iter()
                .zip(vals)
                .filter(|(c, v)| **c > 0.0 && v.is_finite() && **v > 0.0)
                .map(|(c, v)| (sx.px(*c), y_log(v.max(10f64.powf(dlo)), dlo, dhi)))
                .collect();
            polyline(&mut out, &pts, &s.color, dashed);
            markers(&mut out, &pts, &s.color, dashed);
        }
    }

    // Legend.
    let ly = H - 30.0;
    let width: f64 = series.iter().map(|s| legend_step(&s.name)).sum::<f64>() + 180.0;
    let mut lx = (W / 2.0 - width / 2.0).max(10.0);
    for s in series {
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><circle cx="{:.1}" cy="{ly:.1}" r="4" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="14">{}</text>"#,
            lx + 30.0,
            s.color,
            lx + 15.0,
            s.color,
            lx + 38.0,
            ly + 5.0,
            esc(&s.name)
        );
        lx += legend_step(&s.name);
    }
    let _ = writeln!(
        out,
        r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="#555" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="13">p99</text><line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="#555" stroke-width="2" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" font-size="13">p50</text>"##,
        lx + 30.0,
        lx + 36.0,
        ly + 5.0,
        lx + 80.0,
        lx + 110.0,
        lx + 116.0,
        ly + 5.0,
    );
    let _ = writeln!(out, "</svg>");
    out
}

fn x_ticks(out: &mut String, sx: &LogX, xs: &[f64]) {
    for &c in xs {
        let x = sx.px(c);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{PLOT_TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e4e4e4"/>"##,
            PLOT_TOP + PLOT_H
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="12">{}</text>"#,
            PLOT_TOP + PLOT_H + 18.0,
            fmt_num(c)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(1100.0), 2000.0);
        assert_eq!(fmt_num(20000.0), "20k");
        assert_eq!(fmt_num(0.5), "0.5");
        assert_eq!(fmt_num(100.0), "100");
    }

    #[test]
    fn renders_one_series() {
        let s = Series {
            name: "etcd".into(),
            color: "#d62728".into(),
            clients: vec![1.0, 16.0, 64.0, 256.0],
            ops_per_sec: vec![300.0, 3000.0, 8000.0, 12000.0],
            p50_ms: vec![3.0, 5.0, 8.0, 20.0],
            p99_ms: vec![6.0, 12.0, 25.0, 60.0],
        };
        let svg = render("t", &[s]);
        assert!(svg.contains("<polyline"));
        assert!(svg.contains(">256<"));
    }
}
