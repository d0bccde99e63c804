//! `emonav eval --plot`: UAR against seconds of speech heard, as a PNG.
//!
//! Drawn by hand onto an RGB buffer and written with the `png` crate: the
//! plot is two polylines, a grid and a few labels, and a plotting library
//! would bring a font stack (fontconfig or an embedded TTF) for that. The
//! labels use a 3×5 pixel font of just the characters needed.

use std::path::Path;

use crate::learn::EvalReport;

const W: usize = 640;
const H: usize = 400;
const LEFT: usize = 70;
const RIGHT: usize = 610;
const TOP: usize = 50;
const BOTTOM: usize = 340;
/// Seconds on the x axis.
const X_MAX: f32 = 3.25;
/// UAR on the y axis, from chance up.
const Y_MIN: f32 = 0.5;

const BLUE: [u8; 3] = [31, 90, 200];
const RED: [u8; 3] = [200, 40, 40];
const GREY: [u8; 3] = [215, 215, 215];
const BLACK: [u8; 3] = [20, 20, 20];

/// 3×5 glyphs, rows top to bottom, three bits each (MSB left).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' | 'O' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' | 'S' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'A' => [2, 5, 7, 5, 5],
        'C' => [7, 4, 4, 4, 7],
        'E' => [7, 4, 7, 4, 7],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'N' => [6, 5, 5, 5, 5],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'U' => [5, 5, 5, 5, 7],
        'D' => [6, 5, 5, 5, 6],
        'I' => [7, 2, 2, 2, 7],
        'M' => [5, 7, 7, 5, 5],
        'T' => [7, 2, 2, 2, 2],
        'Y' => [5, 5, 2, 2, 2],
        'F' => [7, 4, 6, 4, 4],
        _ => [0; 5],
    }
}

struct Canvas(Vec<u8>);

impl Canvas {
    fn put(&mut self, x: i32, y: i32, c: [u8; 3]) {
        if (0..W as i32).contains(&x) && (0..H as i32).contains(&y) {
            let i = (y as usize * W + x as usize) * 3;
            self.0[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x: i32, y: i32, w: i32, h: i32, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c);
            }
        }
    }

    /// A line `thick` pixels wide (Bresenham with a square pen).
    fn line(&mut self, (x0, y0): (i32, i32), (x1, y1): (i32, i32), thick: i32, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.rect(x - thick / 2, y - thick / 2, thick, thick, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in the 3×5 font at `scale` pixels per dot, top-left at (x, y).
    fn text(&mut self, x: i32, y: i32, s: &str, scale: i32, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_uppercase());
            let ox = x + k as i32 * 4 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        self.rect(ox + col * scale, y + row as i32 * scale, scale, scale, c);
                    }
                }
            }
        }
    }
}

fn px(seconds: f32, uar: f32) -> (i32, i32) {
    let x = LEFT as f32 + seconds / X_MAX * (RIGHT - LEFT) as f32;
    let y = BOTTOM as f32 - (uar.clamp(Y_MIN, 1.0) - Y_MIN) / (1.0 - Y_MIN) * (BOTTOM - TOP) as f32;
    (x.round() as i32, y.round() as i32)
}

/// Render the arousal and anger UAR curves of `report` into a PNG at `path`.
pub fn uar_by_speech(report: &EvalReport, path: &Path) -> std::io::Result<()> {
    let mut c = Canvas(vec![255; W * H * 3]);
    for k in 0..=5 {
        let uar = Y_MIN + k as f32 * 0.1;
        let (x0, y) = px(0.0, uar);
        c.line((x0, y), (RIGHT as i32, y), 1, GREY);
        c.text(x0 - 40, y - 5, &format!("{uar:.1}"), 2, BLACK);
    }
    for s in [0.5f32, 1.0, 2.0, 3.0] {
        let (x, y) = px(s, Y_MIN);
        c.line((x, TOP as i32), (x, y), 1, GREY);
        c.text(x - 12, y + 10, &format!("{s:.1}"), 2, BLACK);
    }
    c.line(
        (LEFT as i32, TOP as i32),
        (LEFT as i32, BOTTOM as i32),
        2,
        BLACK,
    );
    c.line(
        (LEFT as i32, BOTTOM as i32),
        (RIGHT as i32, BOTTOM as i32),
        2,
        BLACK,
    );
    c.text(
        LEFT as i32 + 150,
        BOTTOM as i32 + 35,
        "SECONDS OF SPEECH HEARD",
        2,
        BLACK,
    );
    c.text(10, 15, "UAR", 3, BLACK);
    let mode = format!("{} {}", report.mode, report.clips).to_uppercase();
    c.text(
        RIGHT as i32 - 4 * 2 * mode.len() as i32,
        15,
        &mode,
        2,
        BLACK,
    );
    for (k, (name, task, colour)) in [
        ("AROUSAL", &report.arousal, BLUE),
        ("ANGER", &report.anger, RED),
    ]
    .into_iter()
    .enumerate()
    {
        let points: Vec<(i32, i32)> = task
            .uar_by_speech_s
            .iter()
            .filter_map(|(s, u)| Some(px(s.parse().ok()?, *u as f32)))
            .collect();
        let mut sorted = points.clone();
        sorted.sort();
        for w in sorted.windows(2) {
            c.line(w[0], w[1], 3, colour);
        }
        for &(x, y) in &sorted {
            c.rect(x - 4, y - 4, 9, 9, colour);
        }
        let lx = LEFT as i32 + 90 + 170 * k as i32;
        c.rect(lx, 18, 20, 8, colour);
        c.text(lx + 28, 15, name, 2, colour);
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(std::io::Error::other)?;
    w.write_image_data(&c.0).map_err(std::io::Error::other)?;
    w.finish().map_err(std::io::Error::other)
}
