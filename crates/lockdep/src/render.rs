//! Pictures of a report: Graphviz DOT, and an SVG laid out here (no Graphviz needed).
//!
//! A [`Picture`] is plain data (a title, named nodes, labelled edges, one node or edge
//! highlighted), built by the report module; this module knows nothing of reports.
//!
//! # The SVG layout
//!
//! Text never overlaps other text, never sits under a node and never leaves the canvas,
//! because every text box has a place of its own by construction, measured with the
//! monospace advance of `0.6 em` per character (the picture names its font as monospace):
//!
//! - The nodes form one column, in the order they were first named (for a cycle, the cycle
//!   order), one row each, all boxes as wide as the widest name.
//! - An edge from a node to the next one down is a vertical arrow in the gap between the two
//!   rows; its label is written in that gap, to the right of the arrow. Each gap holds at most
//!   one label: a second edge between the same pair is drawn as a lane (below).
//! - Every other edge (the edge closing a cycle, an edge skipping rows, a repeated pair) leaves
//!   its node to the right and runs in a vertical *lane* of its own. Lanes stand right of every
//!   gap label; each lane's label is written right of its line and left of the next lane, so
//!   lanes and their labels never cross one another.
//! - The title is wrapped on word boundaries to the width of the drawing (at least 360 px), and
//!   the canvas is sized to what it holds, plus a margin.

use std::fmt::Write as _;

/// The monospace advance, in `em`: the width of one character is `ADVANCE * font size`.
pub(crate) const ADVANCE: f64 = 0.6;
const NODE_FONT: f64 = 12.0;
const LABEL_FONT: f64 = 10.0;
const TITLE_FONT: f64 = 13.0;
const MARGIN: f64 = 16.0;
const BOX_H: f64 = 28.0;
const GAP: f64 = 44.0;
const TITLE_LINE: f64 = 18.0;
const MIN_TITLE_WIDTH: f64 = 360.0;

/// A picture to draw: nodes, labelled edges, and what to highlight.
pub(crate) struct Picture {
    title: String,
    nodes: Vec<String>,
    /// (from, to, label, highlighted)
    edges: Vec<(usize, usize, String, bool)>,
    highlight_node: Option<usize>,
}

fn text_width(s: &str, font: f64) -> f64 {
    s.chars().count() as f64 * ADVANCE * font
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Splits `text` into lines of at most `max_chars` characters on spaces (a longer word gets
/// a line of its own and is cut).
fn wrap(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(8);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: String = word.to_owned();
        while word.chars().count() > max_chars {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let head: String = word.chars().take(max_chars).collect();
            word = word.chars().skip(max_chars).collect();
            lines.push(head);
        }
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if needed > max_chars && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

impl Picture {
    pub(crate) fn new(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            nodes: Vec::new(),
            edges: Vec::new(),
            highlight_node: None,
        }
    }

    /// The index of the node called `name`, added if new.
    pub(crate) fn node(&mut self, name: &str) -> usize {
        if let Some(i) = self.nodes.iter().position(|n| n == name) {
            return i;
        }
        self.nodes.push(name.to_owned());
        self.nodes.len() - 1
    }

    pub(crate) fn edge(&mut self, from: usize, to: usize, label: String, highlighted: bool) {
        self.edges.push((from, to, label, highlighted));
    }

    pub(crate) fn highlight(&mut self, node: usize) {
        self.highlight_node = Some(node);
    }

    /// The picture as a Graphviz DOT graph.
    pub(crate) fn dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph lockdep {{");
        let _ = writeln!(
            out,
            "  graph [label=\"{}\", labelloc=t, fontname=\"monospace\"];",
            dot_escape(&self.title)
        );
        let _ = writeln!(
            out,
            "  node [shape=box, style=rounded, fontname=\"monospace\"];"
        );
        let _ = writeln!(out, "  edge [fontname=\"monospace\", fontsize=10];");
        for (i, n) in self.nodes.iter().enumerate() {
            let color = if self.highlight_node == Some(i) {
                ", color=red"
            } else {
                ""
            };
            let _ = writeln!(out, "  n{i} [label=\"{}\"{color}];", dot_escape(n));
        }
        for (a, b, label, hot) in &self.edges {
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

    /// The picture as a standalone SVG document (see the module documentation for the layout).
    pub(crate) fn svg(&self) -> String {
        let widest = self
            .nodes
            .iter()
            .map(|s| text_width(s, NODE_FONT))
            .fold(40.0, f64::max);
        let box_w = widest + 20.0;
        let left = MARGIN;
        let cx = left + box_w / 2.0;
        // Which edges go in a gap (consecutive rows, first of their pair) and which in lanes.
        let mut gap_used = vec![false; self.nodes.len()];
        let mut in_gap = vec![false; self.edges.len()];
        for (k, (a, b, _, _)) in self.edges.iter().enumerate() {
            if *b == *a + 1 && !gap_used[*a] {
                gap_used[*a] = true;
                in_gap[k] = true;
            }
        }
        // Horizontal extent of the column: boxes and gap labels.
        let mut right = left + box_w;
        for (k, (_, _, label, _)) in self.edges.iter().enumerate() {
            if in_gap[k] {
                right = right.max(cx + 8.0 + text_width(label, LABEL_FONT));
            }
        }
        // Lanes, left to right, each right of everything before it.
        let mut lanes: Vec<(usize, f64)> = Vec::new();
        for (k, (_, _, label, _)) in self.edges.iter().enumerate() {
            if !in_gap[k] {
                let x = right + 24.0;
                lanes.push((k, x));
                right = x + 6.0 + text_width(label, LABEL_FONT);
            }
        }
        let drawing_w = right - left;
        // Title: wrapped to the drawing's width (or a readable minimum).
        let title_w = drawing_w.max(MIN_TITLE_WIDTH);
        let title_chars = (title_w / (ADVANCE * TITLE_FONT)).floor() as usize;
        let title_lines = wrap(&self.title, title_chars);
        let title_w = title_lines
            .iter()
            .map(|l| text_width(l, TITLE_FONT))
            .fold(0.0, f64::max);
        let w = (drawing_w.max(title_w) + 2.0 * MARGIN).ceil();
        let top = MARGIN + title_lines.len() as f64 * TITLE_LINE + 12.0;
        let row_y = |i: usize| top + i as f64 * (BOX_H + GAP);
        let rows = self.nodes.len().max(1);
        let h = (row_y(rows - 1) + BOX_H + MARGIN).ceil();

        let mut out = String::new();
        let _ = writeln!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" \
             viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"monospace\">"
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
        out.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        for (i, line) in title_lines.iter().enumerate() {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"{TITLE_FONT}\" \
                 font-weight=\"bold\">{}</text>",
                w / 2.0,
                MARGIN + (i + 1) as f64 * TITLE_LINE - 5.0,
                xml_escape(line)
            );
        }
        let style = |hot: bool| {
            if hot {
                ("#c00", "arrow-red")
            } else {
                ("#333", "arrow")
            }
        };
        let mut lane_of = lanes.iter().map(|&(_, x)| x);
        for (k, (a, b, label, hot)) in self.edges.iter().enumerate() {
            let (stroke, marker) = style(*hot);
            // The edge's outline, and the left end and vertical middle of its label.
            let (outline, label_x, label_y) = if in_gap[k] {
                let (y1, y2) = (row_y(*a) + BOX_H, row_y(*b));
                (
                    format!("<line x1=\"{cx:.1}\" y1=\"{y1:.1}\" x2=\"{cx:.1}\" y2=\"{y2:.1}\""),
                    cx + 8.0,
                    (y1 + y2) / 2.0,
                )
            } else {
                let Some(x) = lane_of.next() else {
                    continue;
                };
                // Out of the right side of `a`, along the lane, into the right side of `b`.
                let (ya, yb) = (row_y(*a) + BOX_H / 2.0 + 5.0, row_y(*b) + BOX_H / 2.0 - 5.0);
                let bx = left + box_w;
                (
                    format!(
                        "<path d=\"M {bx:.1} {ya:.1} H {x:.1} V {yb:.1} H {bx:.1}\" fill=\"none\""
                    ),
                    x + 6.0,
                    (ya + yb) / 2.0,
                )
            };
            let _ = writeln!(
                out,
                "{outline} stroke=\"{stroke}\" stroke-width=\"1.5\" \
                 marker-end=\"url(#{marker})\"/>\n<text x=\"{label_x:.1}\" y=\"{:.1}\" \
                 font-size=\"{LABEL_FONT}\" fill=\"{stroke}\">{}</text>",
                label_y + LABEL_FONT * 0.35,
                xml_escape(label)
            );
        }
        for (i, name) in self.nodes.iter().enumerate() {
            let y = row_y(i);
            let stroke = if self.highlight_node == Some(i) {
                "#c00"
            } else {
                "#333"
            };
            let _ = writeln!(
                out,
                "<rect x=\"{left:.1}\" y=\"{y:.1}\" width=\"{box_w:.1}\" height=\"{BOX_H:.1}\" \
                 rx=\"6\" fill=\"#f6f6f6\" stroke=\"{stroke}\"/>\n<text x=\"{cx:.1}\" \
                 y=\"{:.1}\" text-anchor=\"middle\" font-size=\"{NODE_FONT}\">{}</text>",
                y + BOX_H / 2.0 + NODE_FONT * 0.35,
                xml_escape(name)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_keeps_words_and_width() {
        let lines = wrap("WARNING: possible circular locking dependency detected", 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert_eq!(
            lines.join(" "),
            "WARNING: possible circular locking dependency detected"
        );
        assert_eq!(wrap("abcdefghijkl", 8), vec!["abcdefgh", "ijkl"]);
    }
}
