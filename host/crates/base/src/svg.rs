//! Hand-written SVG charts: no plotting dependency, output is plain, valid XML.
//!
//! [`line_chart`] is generic (any x/y series, ticks, labels, legend): the evaluation report's
//! plots and the trainer's loss curves; [`bar_chart`] draws bars with optional error bars. Non-finite points are
//! treated as gaps, which is how missing values (e.g. a non-answering turn) are skipped.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 460.0;
const MARGIN_TOP: f64 = 56.0;
const MARGIN_LEFT: f64 = 72.0;
const MARGIN_RIGHT: f64 = 24.0;
const MARGIN_BOTTOM: f64 = 72.0;
const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";
/// Okabe-Ito's eight colours (distinguishable under the common colour-vision deficiencies),
/// then four of Paul Tol's muted scheme, so a dozen series (a report's chain systems) keep
/// distinct colours.
const PALETTE: [&str; 12] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
    "#882255", "#44AA99", "#999933", "#AA4499",
];
/// Vertical space of one legend entry.
const LEGEND_ROW: f64 = 20.0;

/// Escapes text for use in XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Evenly spaced "nice" tick values (steps of 1, 2 or 5 times a power of ten) covering
/// `[lo, hi]`, about `target` of them. The first and last ticks bound the axis.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
        (lo.min(hi), lo.max(hi))
    } else {
        (0.0, 1.0)
    };
    if hi - lo < f64::EPSILON * lo.abs().max(1.0) {
        // A flat series still needs a visible axis around its value.
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo -= pad;
        hi += pad;
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm <= 1.0 {
            1.0
        } else if norm <= 2.0 {
            2.0
        } else if norm <= 5.0 {
            5.0
        } else {
            10.0
        };
    let start = (lo / step).floor();
    let end = (hi / step).ceil();
    // Computing each tick from its integer index avoids accumulating rounding error.
    (start as i64..=end as i64)
        .map(|i| {
            let v = i as f64 * step;
            if v.abs() < step * 1e-9 {
                0.0
            } else {
                v
            }
        })
        .collect()
}

/// Formats a tick with as many decimals as its step needs.
fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 || step <= 0.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    if v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-4) {
        return format!("{v:.2e}");
    }
    format!("{v:.decimals$}")
}

fn fmt_num(v: f64) -> String {
    format!("{v:.1}")
}

/// A bar of [`bar_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// Half-length of the error bar (e.g. one std), drawn as value +- error.
    pub error: Option<f64>,
}

/// A series of [`line_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Palette index, to give related series (e.g. a system and its MV@k) one colour;
    /// `None` takes the series' position.
    pub colour: Option<usize>,
}

/// A generic line chart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Explicit x ticks `(position, label)`, e.g. agent names; `None` for numeric ticks.
    pub x_ticks: Option<Vec<(f64, String)>>,
    /// Forces the y range (e.g. `(0, 100)` for accuracy); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    /// Data range on the y axis.
    ylo: f64,
    yhi: f64,
}

impl Frame {
    fn y(&self, v: f64) -> f64 {
        self.y1 - (v - self.ylo) / (self.yhi - self.ylo) * (self.y1 - self.y0)
    }
}

fn open(out: &mut String, title: &str, width: f64) {
    open_sized(out, title, width, HEIGHT)
}

fn open_sized(out: &mut String, title: &str, width: f64, height: f64) {
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" {FONT}>\n\
         <title>{t}</title>\n\
         <rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n\
         <text x=\"{cx}\" y=\"30\" text-anchor=\"middle\" font-size=\"18\" font-weight=\"bold\">{t}</text>\n",
        t = escape(title),
        cx = width / 2.0,
    );
}

/// Horizontal grid lines, y tick labels, the axes and the y axis label.
fn y_axis(out: &mut String, f: &Frame, ticks: &[f64], y_label: &str) {
    let step = if ticks.len() > 1 {
        ticks[1] - ticks[0]
    } else {
        1.0
    };
    for &t in ticks {
        let y = f.y(t);
        let _ = writeln!(
            out,
            "<line x1=\"{x0}\" y1=\"{y:.2}\" x2=\"{x1}\" y2=\"{y:.2}\" stroke=\"#dddddd\" stroke-width=\"1\"/>\n\
             <text x=\"{tx}\" y=\"{ty:.2}\" text-anchor=\"end\" font-size=\"12\">{label}</text>",
            x0 = f.x0,
            x1 = f.x1,
            tx = f.x0 - 8.0,
            ty = y + 4.0,
            label = escape(&fmt_tick(t, step)),
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"black\" stroke-width=\"1\"/>\n\
         <line x1=\"{x0}\" y1=\"{y1}\" x2=\"{x1}\" y2=\"{y1}\" stroke=\"black\" stroke-width=\"1\"/>\n\
         <text transform=\"translate(18,{cy}) rotate(-90)\" text-anchor=\"middle\" font-size=\"14\">{l}</text>",
        x0 = f.x0,
        x1 = f.x1,
        y0 = f.y0,
        y1 = f.y1,
        cy = (f.y0 + f.y1) / 2.0,
        l = escape(y_label),
    );
}

fn x_label(out: &mut String, f: &Frame, label: &str) {
    let _ = writeln!(
        out,
        "<text x=\"{cx}\" y=\"{y}\" text-anchor=\"middle\" font-size=\"14\">{l}</text>",
        cx = (f.x0 + f.x1) / 2.0,
        y = HEIGHT - 14.0,
        l = escape(label),
    );
}

/// Greedy word wrap into lines of at most `width` characters (a longer word gets its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Bar chart starting at zero, one bar per entry, values printed above the bars.
pub fn bar_chart(title: &str, y_label: &str, bars: &[Bar]) -> String {
    let mut out = String::new();
    open(&mut out, title, WIDTH);
    let top = bars
        .iter()
        .map(|b| b.value + b.error.unwrap_or(0.0))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // Bars encode length, so the axis always starts at zero.
    let ticks = nice_ticks(0.0, if top > 0.0 { top * 1.05 } else { 1.0 }, 6);
    let f = Frame {
        x0: MARGIN_LEFT,
        x1: WIDTH - MARGIN_RIGHT,
        y0: MARGIN_TOP,
        y1: HEIGHT - MARGIN_BOTTOM,
        ylo: ticks.first().copied().unwrap_or(0.0),
        yhi: ticks.last().copied().unwrap_or(1.0),
    };
    y_axis(&mut out, &f, &ticks, y_label);
    let slot = (f.x1 - f.x0) / bars.len().max(1) as f64;
    let bw = slot * 0.6;
    // About 6.5 px per character at font-size 11.
    let chars = ((slot - 4.0) / 6.5).max(4.0) as usize;
    for (i, b) in bars.iter().enumerate() {
        let cx = f.x0 + slot * (i as f64 + 0.5);
        let colour = PALETTE[i % PALETTE.len()];
        if b.value.is_finite() {
            let y = f.y(b.value.max(0.0));
            let _ = writeln!(
                out,
                "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{bw:.2}\" height=\"{h:.2}\" fill=\"{colour}\"/>",
                x = cx - bw / 2.0,
                h = (f.y1 - y).max(0.0),
            );
            let mut label_y = y - 6.0;
            if let Some(e) = b.error.filter(|e| e.is_finite() && *e > 0.0) {
                let (ya, yb) = (f.y(b.value + e), f.y((b.value - e).max(f.ylo)));
                let cap = bw * 0.2;
                let _ = writeln!(
                    out,
                    "<path d=\"M{cx:.2} {ya:.2} V{yb:.2} M{l:.2} {ya:.2} H{r:.2} M{l:.2} {yb:.2} H{r:.2}\" \
                     stroke=\"black\" stroke-width=\"1.5\" fill=\"none\"/>",
                    l = cx - cap,
                    r = cx + cap,
                );
                label_y = ya - 6.0;
            }
            let _ = writeln!(
                out,
                "<text x=\"{cx:.2}\" y=\"{label_y:.2}\" text-anchor=\"middle\" font-size=\"12\">{v}</text>",
                v = escape(&fmt_num(b.value)),
            );
        }
        for (li, line) in wrap(&b.label, chars).iter().enumerate() {
            let _ = writeln!(
                out,
                "<text x=\"{cx:.2}\" y=\"{y:.2}\" text-anchor=\"middle\" font-size=\"11\">{t}</text>",
                y = f.y1 + 16.0 + 13.0 * li as f64,
                t = escape(line),
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Generic line chart: series of (x, y) points, numeric or labelled x ticks, legend on the
/// right. Non-finite points break the line.
pub fn line_chart(chart: &LineChart) -> String {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let pts = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(finite)
    };
    let (mut xlo, mut xhi, mut ylo, mut yhi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        xlo = xlo.min(x);
        xhi = xhi.max(x);
        ylo = ylo.min(y);
        yhi = yhi.max(y);
    }
    if let Some(ticks) = &chart.x_ticks {
        for &(x, _) in ticks.iter().filter(|t| t.0.is_finite()) {
            xlo = xlo.min(x);
            xhi = xhi.max(x);
        }
    }
    if xlo > xhi {
        (xlo, xhi) = (0.0, 1.0);
    }
    if xlo == xhi {
        (xlo, xhi) = (xlo - 0.5, xhi + 0.5);
    }
    let y_ticks = match chart.y_range {
        Some((a, b)) => nice_ticks(a, b, 6),
        None if ylo <= yhi => nice_ticks(ylo, yhi, 6),
        None => nice_ticks(0.0, 1.0, 6),
    };

    let legend_chars = chart
        .series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    // The legend keeps every name whole (about 7 px a character at 12 px) and grows the
    // picture downwards when it has more entries than the plot is tall.
    let legend_w = if chart.series.is_empty() {
        0.0
    } else {
        legend_chars as f64 * 7.0 + 48.0
    };
    let legend_h = MARGIN_TOP + 10.0 + LEGEND_ROW * chart.series.len() as f64 + 10.0;
    let mut out = String::new();
    open_sized(
        &mut out,
        &chart.title,
        WIDTH + legend_w,
        HEIGHT.max(legend_h),
    );
    let f = Frame {
        x0: MARGIN_LEFT,
        x1: WIDTH - MARGIN_RIGHT,
        y0: MARGIN_TOP,
        y1: HEIGHT - MARGIN_BOTTOM,
        ylo: y_ticks.first().copied().unwrap_or(0.0),
        yhi: y_ticks.last().copied().unwrap_or(1.0),
    };
    // Keep markers off the frame edges when x is categorical.
    let pad = if chart.x_ticks.is_some() {
        0.08 * (xhi - xlo)
    } else {
        0.0
    };
    let (xa, xb) = (xlo - pad, xhi + pad);
    let px = |x: f64| f.x0 + (x - xa) / (xb - xa) * (f.x1 - f.x0);
    y_axis(&mut out, &f, &y_ticks, &chart.y_label);

    let x_ticks: Vec<(f64, String)> = match &chart.x_ticks {
        Some(t) => t.clone(),
        None => {
            let t = nice_ticks(xlo, xhi, 8);
            let step = if t.len() > 1 { t[1] - t[0] } else { 1.0 };
            t.into_iter()
                .filter(|v| *v >= xlo - 1e-9 * step.abs() && *v <= xhi + 1e-9 * step.abs())
                .map(|v| (v, fmt_tick(v, step)))
                .collect()
        }
    };
    for (x, label) in x_ticks.iter().filter(|t| t.0.is_finite()) {
        let _ = writeln!(
            out,
            "<line x1=\"{p:.2}\" y1=\"{y1}\" x2=\"{p:.2}\" y2=\"{y2}\" stroke=\"black\" stroke-width=\"1\"/>\n\
             <text x=\"{p:.2}\" y=\"{ty}\" text-anchor=\"middle\" font-size=\"12\">{l}</text>",
            p = px(*x),
            y1 = f.y1,
            y2 = f.y1 + 5.0,
            ty = f.y1 + 20.0,
            l = escape(label),
        );
    }
    x_label(&mut out, &f, &chart.x_label);

    let many = pts().count() > 60 * chart.series.len().max(1);
    for (i, s) in chart.series.iter().enumerate() {
        let colour = PALETTE[s.colour.unwrap_or(i) % PALETTE.len()];
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let mut d = String::new();
        let mut pen_down = false;
        for &(x, y) in &s.points {
            if !(x.is_finite() && y.is_finite()) {
                pen_down = false;
                continue;
            }
            let _ = write!(
                d,
                "{}{:.2} {:.2} ",
                if pen_down { "L" } else { "M" },
                px(x),
                f.y(y)
            );
            pen_down = true;
        }
        if !d.is_empty() {
            let _ = writeln!(
                out,
                "<path d=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
                d.trim_end()
            );
        }
        // Markers make sparse series (a few turns) readable; dense curves do without.
        if !many {
            for &(x, y) in s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
            {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{:.2}\" cy=\"{:.2}\" r=\"3.5\" fill=\"{colour}\"/>",
                    px(x),
                    f.y(y)
                );
            }
        }
        let ly = f.y0 + 10.0 + LEGEND_ROW * i as f64;
        let lx = f.x1 + 16.0;
        let _ = writeln!(
            out,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{lx2}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\n\
             <text x=\"{tx}\" y=\"{ty}\" font-size=\"12\">{n}</text>",
            lx2 = lx + 24.0,
            tx = lx + 30.0,
            ty = ly + 4.0,
            n = escape(&s.name),
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Minimal well-formedness check: balanced tags and only the five predefined entities.
    pub(crate) fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(lt) = rest.find('<') {
            let text = &rest[..lt];
            assert_entities(text);
            let gt = rest[lt..].find('>').expect("unterminated tag") + lt;
            let tag = &rest[lt + 1..gt];
            assert!(!tag.contains('<'), "'<' inside tag: {tag}");
            if tag.starts_with('?') {
                // XML declaration
            } else if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched close"
                );
            } else {
                assert_entities(tag);
                let name: String = tag
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '/')
                    .collect();
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
            rest = &rest[gt + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(rest.trim().is_empty());
    }

    fn assert_entities(s: &str) {
        for (i, _) in s.match_indices('&') {
            let after = &s[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| after.starts_with(e)),
                "bare '&' in {s}"
            );
        }
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
    }

    #[test]
    fn nice_ticks_cover_range() {
        assert_eq!(
            nice_ticks(0.0, 95.0, 6),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        let t = nice_ticks(0.13, 0.71, 5);
        assert!(t[0] <= 0.13 && *t.last().expect("ticks") >= 0.71);
        let flat = nice_ticks(3.0, 3.0, 5);
        assert!(flat.len() >= 2 && flat[0] < 3.0 && *flat.last().expect("ticks") > 3.0);
    }

    #[test]
    fn bar_chart_is_well_formed() {
        let svg = bar_chart(
            "Accuracy <&> \"test\"",
            "accuracy (%)",
            &[
                Bar {
                    label: "Single agent".into(),
                    value: 84.25,
                    error: Some(0.96),
                },
                Bar {
                    label: "MALT (trained chain) + MV@3".into(),
                    value: 90.5,
                    error: None,
                },
            ],
        );
        assert_well_formed(&svg);
        assert!(svg.contains("Accuracy &lt;&amp;&gt; &quot;test&quot;"));
    }

    #[test]
    fn line_chart_is_well_formed_with_gaps_and_empty() {
        let chart = LineChart {
            title: "Loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![
                Series {
                    name: "train".into(),
                    points: (0..200)
                        .map(|i| (i as f64, 2.0 / (1.0 + i as f64)))
                        .collect(),
                    dashed: false,
                    colour: None,
                },
                Series {
                    name: "eval & <val>".into(),
                    points: vec![(0.0, 1.5), (f64::NAN, 1.0), (100.0, 0.4), (199.0, 0.3)],
                    dashed: true,
                    colour: Some(0),
                },
            ],
            x_ticks: None,
            y_range: None,
        };
        let svg = line_chart(&chart);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<path").count(), 2);
        assert_well_formed(&line_chart(&LineChart::default()));
    }
}
