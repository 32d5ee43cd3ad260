//! The cycle pictures are readable: `mmnotify tour --svg-dir` draws every report the tour
//! finds, and in each picture no text leaves the canvas, no two texts overlap, and no text
//! lies on a node box other than its own name.
//!
//! Text boxes are measured as the picture lays them out: a monospace advance of 0.6 em per
//! character (the SVG names its font as monospace), one em high around the baseline (0.8 em
//! above, 0.2 em below).

use std::process::Command;

#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn overlaps(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }
    fn contains(&self, o: &Rect) -> bool {
        o.x0 >= self.x0 && o.x1 <= self.x1 && o.y0 >= self.y0 && o.y1 <= self.y1
    }
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')? + i;
    Some(tag[i..j].to_owned())
}

fn num(tag: &str, name: &str) -> f64 {
    attr(tag, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} in {tag}"))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// (canvas, texts with their content, node boxes)
fn parse(svg: &str) -> (Rect, Vec<(String, Rect)>, Vec<Rect>) {
    let root = &svg[svg.find("<svg").unwrap()..];
    let root = &root[..root.find('>').unwrap()];
    let canvas = Rect {
        x0: 0.0,
        y0: 0.0,
        x1: num(root, "width"),
        y1: num(root, "height"),
    };
    let mut texts = Vec::new();
    let mut boxes = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find('<') {
        rest = &rest[i..];
        let end = rest.find('>').unwrap();
        let tag = &rest[..end];
        if tag.starts_with("<text") {
            let close = rest.find("</text>").unwrap();
            let content = unescape(&rest[end + 1..close]);
            let size = num(tag, "font-size");
            let (x, y) = (num(tag, "x"), num(tag, "y"));
            let w = content.chars().count() as f64 * 0.6 * size;
            let x0 = match attr(tag, "text-anchor").as_deref() {
                Some("middle") => x - w / 2.0,
                Some("end") => x - w,
                _ => x,
            };
            texts.push((
                content,
                Rect {
                    x0,
                    y0: y - 0.8 * size,
                    x1: x0 + w,
                    y1: y + 0.2 * size,
                },
            ));
        } else if tag.starts_with("<rect") && attr(tag, "x").is_some() {
            let (x, y) = (num(tag, "x"), num(tag, "y"));
            boxes.push(Rect {
                x0: x,
                y0: y,
                x1: x + num(tag, "width"),
                y1: y + num(tag, "height"),
            });
        }
        rest = &rest[end..];
    }
    (canvas, texts, boxes)
}

fn check_picture(name: &str, svg: &str) -> Vec<String> {
    let (canvas, texts, boxes) = parse(svg);
    let mut problems = Vec::new();
    assert!(!texts.is_empty(), "{name}: no text at all");
    for (t, r) in &texts {
        if !canvas.contains(r) {
            problems.push(format!("{name}: '{t}' leaves the canvas {canvas:?}: {r:?}"));
        }
    }
    for (i, (a, ra)) in texts.iter().enumerate() {
        for (b, rb) in &texts[i + 1..] {
            if ra.overlaps(rb) {
                problems.push(format!("{name}: '{a}' overlaps '{b}'"));
            }
        }
        for bx in &boxes {
            // A node's own name lies inside its box; any other overlap hides text.
            if ra.overlaps(bx) && !bx.contains(ra) {
                problems.push(format!("{name}: '{a}' runs under a node box {bx:?}"));
            }
        }
    }
    problems
}

#[test]
fn the_tours_pictures_keep_every_text_on_the_canvas_and_apart() {
    let dir = std::env::temp_dir().join(format!(
        "mmnotify-pictures-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_mmnotify"))
        .args(["tour", "--rounds", "50", "--svg-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "the tour draws a picture per report: {files:?}"
    );
    let mut problems = Vec::new();
    for p in &files {
        let svg = std::fs::read_to_string(p).unwrap();
        problems.extend(check_picture(&p.display().to_string(), &svg));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_catches_an_overlap_and_a_text_off_the_canvas() {
    // The checker itself can fail: two labels at one spot, and a title wider than the canvas.
    let bad = "<svg width=\"100\" height=\"100\">\
               <text x=\"10\" y=\"20\" font-size=\"10\">label one</text>\
               <text x=\"12\" y=\"22\" font-size=\"10\">label two</text>\
               <text x=\"50\" y=\"60\" text-anchor=\"middle\" font-size=\"13\">a title much too wide</text>\
               </svg>";
    let problems = check_picture("bad", bad);
    assert!(
        problems.iter().any(|p| p.contains("overlaps")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("leaves the canvas")),
        "{problems:?}"
    );
}
