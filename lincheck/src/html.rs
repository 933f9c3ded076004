//! A self-contained HTML page (inline CSS and SVG, no scripts, no external
//! resources) that draws a [`Violation`]'s partition as a timeline: one row
//! per client, each operation a bar from call to return. The longest
//! linearizable prefix is green and numbered in linearization order, the
//! operations that cannot follow it are red, the rest grey; an operation
//! with an unknown outcome runs to the right edge with a dashed outline.
//! The horizontal axis is the order of events, not to scale.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::checker::Violation;
use super::model::Model;

/// Width of one step of the event axis, in pixels.
const STEP: usize = 40;
/// Height of one lane (one bar plus its gap), in pixels.
const LANE: usize = 26;
/// Width of the client-name column.
const LEFT: usize = 90;

/// Renders the page for `violation`.
pub fn render_violation_html<M: Model>(model: &M, violation: &Violation<M>) -> String {
    let ops = &violation.ops;
    let n = ops.len();
    let mut order = vec![None; n];
    for (k, &i) in violation.longest_prefix.iter().enumerate() {
        order[i] = Some(k + 1);
    }
    let mut rejected = vec![false; n];
    for &i in &violation.rejected {
        rejected[i] = true;
    }

    // The event axis: every distinct finite time gets one step.
    let mut times: Vec<u64> = ops
        .iter()
        .flat_map(|o| [o.call, o.ret])
        .filter(|&t| t != super::UNKNOWN_RETURN)
        .collect();
    times.sort_unstable();
    times.dedup();
    let x_of = |t: u64| -> usize {
        let rank = if t == super::UNKNOWN_RETURN {
            times.len() + 1
        } else {
            times.partition_point(|&u| u < t)
        };
        LEFT + STEP / 2 + rank * STEP
    };
    let width = x_of(super::UNKNOWN_RETURN) + STEP;

    // Rows: clients in increasing order; within a client, lanes so that
    // overlapping operations (possible when one is open) do not overlap.
    let mut clients: Vec<u64> = ops.iter().map(|o| o.client).collect();
    clients.sort_unstable();
    clients.dedup();
    let mut by_call: Vec<usize> = (0..n).collect();
    by_call.sort_by_key(|&i| (ops[i].call, i));
    // lane_ends[client row] = end x of the last bar in each lane
    let mut lane_ends: Vec<Vec<usize>> = vec![Vec::new(); clients.len()];
    let mut placement = vec![(0usize, 0usize); n]; // (row, lane)
    for &i in &by_call {
        let row = clients
            .binary_search(&ops[i].client)
            .expect("client listed");
        let (start, end) = (x_of(ops[i].call), x_of(ops[i].ret));
        let lanes = &mut lane_ends[row];
        let lane = match lanes.iter().position(|&e| e < start) {
            Some(l) => l,
            None => {
                lanes.push(0);
                lanes.len() - 1
            }
        };
        lanes[lane] = end.max(start + 8);
        placement[i] = (row, lane);
    }
    let mut row_top = Vec::with_capacity(clients.len());
    let mut y = 30;
    for lanes in &lane_ends {
        row_top.push(y);
        y += lanes.len().max(1) * LANE + 6;
    }
    let height = y + 10;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="16" fill="#666">event order &#8594; (not to scale)</text>"##
    );
    for (row, client) in clients.iter().enumerate() {
        let top = row_top[row];
        let rows = lane_ends[row].len().max(1) * LANE;
        let _ = writeln!(
            svg,
            r##"<g class="client-row" data-client="{client}"><rect x="0" y="{}" width="{width}" height="{rows}" fill="{}"/><text x="6" y="{}" fill="#333">client {client}</text></g>"##,
            top - 2,
            if row % 2 == 0 { "#f7f7f7" } else { "#ffffff" },
            top + LANE / 2 + 2,
        );
    }
    for &i in &by_call {
        let op = &ops[i];
        let (row, lane) = placement[i];
        let x = x_of(op.call);
        let w = (x_of(op.ret) - x).max(8);
        let y = row_top[row] + lane * LANE;
        let h = LANE - 6;
        let class = if order[i].is_some() {
            "prefix"
        } else if rejected[i] {
            "rejected"
        } else {
            "other"
        };
        let description = model.describe_operation(&op.input, &op.output);
        let label = match order[i] {
            Some(k) => format!("{k}. {description}"),
            None => description.clone(),
        };
        let ret = if op.is_open() {
            "unknown".to_string()
        } else {
            op.ret.to_string()
        };
        let status = match (order[i], rejected[i]) {
            (Some(k), _) => format!("linearized #{k} of the prefix"),
            (None, true) => "cannot follow the prefix".to_string(),
            (None, false) => "not reached".to_string(),
        };
        let _ = writeln!(
            svg,
            r#"<g class="op {class}{open}"><title>{title}</title><svg x="{x}" y="{y}" width="{w}" height="{h}"><rect x="0.5" y="0.5" width="{rw}" height="{rh}" rx="3"/><text x="4" y="{ty}">{label}</text></svg></g>"#,
            open = if op.is_open() { " open" } else { "" },
            title = escape(&format!(
                "{description}\nclient {}, call {}, return {ret}\n{status}",
                op.client, op.call
            )),
            rw = w - 1,
            rh = h - 1,
            ty = h / 2 + 4,
            label = escape(&label),
        );
    }
    svg.push_str("</svg>\n");

    let mut page = String::new();
    let title = format!(
        "Linearizability violation (partition {})",
        violation.partition
    );
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.timeline {{ overflow-x: auto; border: 1px solid #ccc; }}
.op rect {{ stroke: #555; stroke-width: 1; }}
.op.prefix rect {{ fill: #a6e3a1; }}
.op.rejected rect {{ fill: #f5a3a3; stroke: #b00; stroke-width: 2; }}
.op.other rect {{ fill: #dddddd; }}
.op.open rect {{ stroke-dasharray: 4 3; }}
.op:hover rect {{ fill-opacity: 0.6; }}
.legend span {{ display: inline-block; padding: 0.1em 0.6em; margin-right: 0.6em; border: 1px solid #555; border-radius: 3px; }}
table {{ border-collapse: collapse; margin-top: 0.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; font-family: monospace; text-align: left; vertical-align: top; }}
pre {{ background: #f4f4f4; padding: 0.5em; white-space: pre-wrap; word-break: break-all; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{n} operations by {clients} clients. The longest linearizable prefix found has {prefix} operations;
no operation that could come next is possible in the state after it.</p>
<p class="legend"><span style="background:#a6e3a1">linearized prefix (numbered in order)</span><span style="background:#f5a3a3">cannot be linearized next</span><span style="background:#dddddd">not reached</span><span style="border-style:dashed">outcome unknown</span></p>
<div class="timeline">
{svg}</div>
<h2>State after the prefix</h2>
<pre class="state">{state}</pre>
"#,
        title = escape(&title),
        clients = clients.len(),
        prefix = violation.longest_prefix.len(),
        state = escape(&model.describe_state(&violation.state_after_prefix)),
    );

    page.push_str("<h2>Operations that cannot come next</h2>\n<table><tr><th>client</th><th>operation</th><th>call</th><th>return</th></tr>\n");
    for &i in &violation.rejected {
        let op = &ops[i];
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            op.client,
            escape(&model.describe_operation(&op.input, &op.output)),
            op.call,
            if op.is_open() {
                "unknown".to_string()
            } else {
                op.ret.to_string()
            }
        );
    }
    page.push_str("</table>\n");

    page.push_str("<h2>The prefix, step by step</h2>\n<table><tr><th>#</th><th>client</th><th>operation</th><th>state after</th></tr>\n");
    let mut state = model.init();
    for (k, &i) in violation.longest_prefix.iter().enumerate() {
        let op = &ops[i];
        // The prefix replays by construction; stop quietly if a model's
        // step is not deterministic.
        let Some(next) = model.step(&state, &op.input, &op.output) else {
            break;
        };
        state = next;
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            k + 1,
            op.client,
            escape(&model.describe_operation(&op.input, &op.output)),
            escape(&model.describe_state(&state)),
        );
    }
    page.push_str("</table>\n</body></html>\n");
    page
}

/// Writes the page for `violation` to `path`.
pub fn write_violation_html<M: Model>(
    path: &Path,
    model: &M,
    violation: &Violation<M>,
) -> io::Result<()> {
    std::fs::write(path, render_violation_html(model, violation))
}

/// Writes the page for `violation` to `name` (made to end in `.html`, with
/// path separators replaced) in [`std::env::temp_dir`], and returns the
/// path.
pub fn write_violation_html_to_temp<M: Model>(
    name: &str,
    model: &M,
    violation: &Violation<M>,
) -> io::Result<PathBuf> {
    let mut file: String = name
        .chars()
        .map(|c| if c == '/' || c == '\\' { '_' } else { c })
        .collect();
    if !file.ends_with(".html") {
        file.push_str(".html");
    }
    let path = std::env::temp_dir().join(file);
    write_violation_html(&path, model, violation)?;
    Ok(path)
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
