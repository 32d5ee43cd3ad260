//! Pictures of a report: Graphviz DOT, and an SVG drawn here (no Graphviz needed).
//!
//! For a cycle, the nodes are its classes and the edges its dependencies, the new one in
//! red, each labelled with its kinds and where it was first recorded. For other reports the
//! picture is the held-lock stack, bottom to top, with the lock concerned in red.

use std::fmt::Write as _;

use crate::report::Report;

struct Picture {
    title: String,
    nodes: Vec<String>,
    /// (from, to, label, highlighted)
    edges: Vec<(usize, usize, String, bool)>,
    highlight_node: Option<usize>,
}

fn picture(r: &Report) -> Picture {
    let mut nodes: Vec<String> = Vec::new();
    let index = |name: &str, nodes: &mut Vec<String>| -> usize {
        nodes.iter().position(|n| n == name).unwrap_or_else(|| {
            nodes.push(name.to_owned());
            nodes.len() - 1
        })
    };
    let mut edges = Vec::new();
    let mut highlight_node = None;
    if !r.cycle.is_empty() {
        for d in &r.cycle {
            let a = index(&d.from.name, &mut nodes);
            let b = index(&d.to.name, &mut nodes);
            let label = format!(
                "{} at {}:{} ({})",
                d.kinds, d.to_acquired_at.file, d.to_acquired_at.line, d.thread
            );
            edges.push((a, b, label, d.new));
        }
    } else {
        let mut prev: Option<usize> = None;
        for h in &r.held {
            let i = index(&h.class.name, &mut nodes);
            if let Some(p) = prev {
                edges.push((p, i, h.mode.clone(), false));
            }
            prev = Some(i);
        }
        if let Some(l) = &r.lock {
            let i = index(&l.class.name, &mut nodes);
            highlight_node = Some(i);
            if let Some(p) = prev.filter(|&p| p != i) {
                edges.push((p, i, l.mode.clone(), true));
            }
        }
    }
    Picture {
        title: r.kind.title().to_owned(),
        nodes,
        edges,
        highlight_node,
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub(crate) fn dot(r: &Report) -> String {
    let p = picture(r);
    let mut out = String::new();
    let _ = writeln!(out, "digraph lockdep {{");
    let _ = writeln!(
        out,
        "  graph [label=\"{}\", labelloc=t, fontname=\"monospace\"];",
        dot_escape(&p.title)
    );
    let _ = writeln!(
        out,
        "  node [shape=box, style=rounded, fontname=\"monospace\"];"
    );
    let _ = writeln!(out, "  edge [fontname=\"monospace\", fontsize=10];");
    for (i, n) in p.nodes.iter().enumerate() {
        let color = if p.highlight_node == Some(i) {
            ", color=red"
        } else {
            ""
        };
        let _ = writeln!(out, "  n{i} [label=\"{}\"{color}];", dot_escape(n));
    }
    for (a, b, label, hot) in &p.edges {
        let color = if *hot {
            ", color=red, fontcolor=red"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  n{a} -> n{b} [label=\"{}\"{color}];",
            dot_escape(label)
        );
    }
    out.push_str("}\n");
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Nodes on a circle, edges as straight arrows between box borders, labels at midpoints.
pub(crate) fn svg(r: &Report) -> String {
    let p = picture(r);
    let n = p.nodes.len().max(1);
    let char_w = 7.0_f64;
    let box_h = 28.0_f64;
    let widest =
        p.nodes.iter().map(|s| s.chars().count()).max().unwrap_or(4) as f64 * char_w + 20.0;
    let radius = if n == 1 {
        0.0
    } else {
        (widest * 0.8).max(60.0 * n as f64 / std::f64::consts::PI)
    };
    let label_w = p
        .edges
        .iter()
        .map(|e| e.2.chars().count())
        .max()
        .unwrap_or(0) as f64
        * 6.0;
    let margin = widest / 2.0 + label_w / 2.0 + 20.0;
    let (w, h) = (2.0 * (radius + margin), 2.0 * (radius + box_h) + 80.0);
    let (cx, cy) = (w / 2.0, h / 2.0 + 15.0);
    let pos: Vec<(f64, f64)> = (0..n)
        .map(|i| {
            let a = -std::f64::consts::FRAC_PI_2 + 2.0 * std::f64::consts::PI * i as f64 / n as f64;
            (cx + radius * a.cos(), cy + radius * a.sin())
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" \
         viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"monospace\" font-size=\"12\">"
    );
    out.push_str(
        "<defs>\
         <marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" \
         markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" \
         fill=\"#333\"/></marker>\
         <marker id=\"arrow-red\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" \
         markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" \
         fill=\"#c00\"/></marker></defs>\n",
    );
    let _ = writeln!(
        out,
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{:.1}\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
        w / 2.0,
        xml_escape(&p.title)
    );
    // Where the segment from the centre of a box toward (dx, dy) leaves the box.
    let exit = |(x, y): (f64, f64), dx: f64, dy: f64| -> (f64, f64) {
        let (hw, hh) = (widest / 2.0 + 2.0, box_h / 2.0 + 2.0);
        let t = (hw / dx.abs().max(1e-9)).min(hh / dy.abs().max(1e-9));
        (x + dx * t, y + dy * t)
    };
    for (a, b, label, hot) in &p.edges {
        let (pa, pb) = (pos[*a], pos[*b]);
        let (dx, dy) = (pb.0 - pa.0, pb.1 - pa.1);
        let s = exit(pa, dx, dy);
        let e = exit(pb, -dx, -dy);
        let (stroke, marker) = if *hot {
            ("#c00", "arrow-red")
        } else {
            ("#333", "arrow")
        };
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{stroke}\" \
             stroke-width=\"1.5\" marker-end=\"url(#{marker})\"/>",
            s.0, s.1, e.0, e.1
        );
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" \
             fill=\"{stroke}\">{}</text>",
            (s.0 + e.0) / 2.0,
            (s.1 + e.1) / 2.0 - 4.0,
            xml_escape(label)
        );
    }
    for (i, name) in p.nodes.iter().enumerate() {
        let (x, y) = pos[i];
        let stroke = if p.highlight_node == Some(i) {
            "#c00"
        } else {
            "#333"
        };
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{widest:.1}\" height=\"{box_h:.1}\" rx=\"6\" \
             fill=\"#f6f6f6\" stroke=\"{stroke}\"/>\n<text x=\"{x:.1}\" y=\"{:.1}\" \
             text-anchor=\"middle\">{}</text>",
            x - widest / 2.0,
            y - box_h / 2.0,
            y + 4.0,
            xml_escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}
