//! Text boxes from a DB (differentiable binarisation) probability map, following PaddleOCR's
//! `DBPostProcess` as RapidOCR runs it: threshold, 2 × 2 dilation, contours (Suzuki–Abe, as
//! OpenCV's `findContours` with `RETR_LIST`), the minimum-area rectangle of each, its mean
//! probability, then the rectangle grown by `area · ratio / perimeter` (pyclipper's round-joined
//! offset, reproduced point for point so that the grown box matches to the pixel).

use rten_imageproc::{find_contours, RetrievalMode};
use rten_tensor::prelude::*;
use rten_tensor::NdTensor;

/// The post-processing settings, with RapidOCR's defaults.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Probability above which a pixel is text.
    pub thresh: f32,
    /// Mean probability inside a box below which it is dropped.
    pub box_thresh: f32,
    /// How far boxes grow, relative to area / perimeter.
    pub unclip_ratio: f32,
    /// Most contours examined per image.
    pub max_candidates: usize,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions { thresh: 0.3, box_thresh: 0.5, unclip_ratio: 1.6, max_candidates: 1000 }
    }
}

/// A quadrilateral: top-left, top-right, bottom-right, bottom-left, as (x, y).
pub type Quad = [[f32; 2]; 4];

/// Boxes found in `prob` (height × width, row-major), scaled to a `dest_w` × `dest_h` image,
/// ordered clockwise from the top-left, clipped to it, and without slivers 3 pixels or thinner.
pub fn boxes_from_probabilities(
    prob: &[f32],
    width: usize,
    height: usize,
    dest_w: usize,
    dest_h: usize,
    opts: &DbOptions,
) -> Vec<(Quad, f32)> {
    // Threshold, then dilate with a 2 × 2 kernel anchored at its bottom-right (OpenCV's anchor
    // for even kernels): a pixel is set when it or its up, left or up-left neighbour is.
    let on: Vec<bool> = prob.iter().map(|&p| p > opts.thresh).collect();
    let mut mask = NdTensor::<bool, 2>::zeros([height, width]);
    for y in 0..height {
        for x in 0..width {
            let at = |yy: usize, xx: usize| on[yy * width + xx];
            let v = at(y, x) || (x > 0 && at(y, x - 1)) || (y > 0 && at(y - 1, x)) || (x > 0 && y > 0 && at(y - 1, x - 1));
            mask[[y, x]] = v;
        }
    }
    let contours = find_contours(mask.view(), RetrievalMode::List);
    let mut out = Vec::new();
    for contour in contours.iter().take(opts.max_candidates) {
        let points: Vec<[f64; 2]> = contour.iter().map(|p| [p.x as f64, p.y as f64]).collect();
        let Some((quad, short_side)) = mini_box(&points) else { continue };
        if short_side < 3.0 {
            continue;
        }
        let score = mean_inside(prob, width, height, &quad);
        if score < opts.box_thresh {
            continue;
        }
        let grown = unclip(&quad, opts.unclip_ratio);
        let Some((quad, short_side)) = mini_box(&grown) else { continue };
        if short_side < 5.0 {
            continue;
        }
        let mut scaled = quad;
        for p in &mut scaled {
            p[0] = (p[0] / width as f32 * dest_w as f32).round_ties_even().clamp(0.0, dest_w as f32);
            p[1] = (p[1] / height as f32 * dest_h as f32).round_ties_even().clamp(0.0, dest_h as f32);
        }
        // RapidOCR's `filter_tag_det_res`: clockwise order, clipped inside the image, slivers out.
        let mut quad = order_clockwise(scaled);
        for p in &mut quad {
            p[0] = p[0].clamp(0.0, dest_w.saturating_sub(1) as f32).trunc();
            p[1] = p[1].clamp(0.0, dest_h.saturating_sub(1) as f32).trunc();
        }
        let w = dist(quad[0], quad[1]) as i64;
        let h = dist(quad[0], quad[3]) as i64;
        if w <= 3 || h <= 3 {
            continue;
        }
        out.push((quad, score));
    }
    out
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// The minimum-area rectangle around `points` as PaddleOCR's `get_mini_boxes` orders it
/// (left pair top then bottom, right pair top then bottom, as TL, TR, BR, BL), and its shorter side.
fn mini_box(points: &[[f64; 2]]) -> Option<(Quad, f32)> {
    let (rect, short_side) = min_area_rect(points)?;
    let mut corners: Vec<[f32; 2]> = rect.iter().map(|p| [p[0] as f32, p[1] as f32]).collect();
    corners.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (tl, bl) = if corners[1][1] > corners[0][1] { (corners[0], corners[1]) } else { (corners[1], corners[0]) };
    let (tr, br) = if corners[3][1] > corners[2][1] { (corners[2], corners[3]) } else { (corners[3], corners[2]) };
    Some(([tl, tr, br, bl], short_side as f32))
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in x-right, y-up terms, no
/// repeated or collinear points.
fn convex_hull(points: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let mut pts = points.to_vec();
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: [f64; 2], a: [f64; 2], b: [f64; 2]| (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
    let mut hull: Vec<[f64; 2]> = Vec::with_capacity(pts.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &[f64; 2]>> = if pass == 0 { Box::new(pts.iter()) } else { Box::new(pts.iter().rev()) };
        for &p in iter {
            while hull.len() >= start + 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0 {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop(); // the last point of each chain starts the other
    }
    hull
}

/// The smallest-area rectangle holding `points` (one of its sides lies along a hull edge, so
/// trying each edge finds it): its four corners and its shorter side. OpenCV's `minAreaRect`
/// plus `boxPoints`.
pub fn min_area_rect(points: &[[f64; 2]]) -> Option<([[f64; 2]; 4], f64)> {
    let hull = convex_hull(points);
    match hull.len() {
        0 => return None,
        1 => return Some(([hull[0]; 4], 0.0)),
        _ => {}
    }
    let mut best: Option<(f64, [[f64; 2]; 4], f64)> = None;
    for i in 0..hull.len() {
        let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
        let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
        if len == 0.0 {
            continue;
        }
        let u = [(b[0] - a[0]) / len, (b[1] - a[1]) / len];
        let v = [-u[1], u[0]];
        let (mut lo_u, mut hi_u, mut lo_v, mut hi_v) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for p in &hull {
            let (du, dv) = ((p[0] - a[0]) * u[0] + (p[1] - a[1]) * u[1], (p[0] - a[0]) * v[0] + (p[1] - a[1]) * v[1]);
            lo_u = lo_u.min(du);
            hi_u = hi_u.max(du);
            lo_v = lo_v.min(dv);
            hi_v = hi_v.max(dv);
        }
        let area = (hi_u - lo_u) * (hi_v - lo_v);
        if best.as_ref().is_none_or(|b| area < b.0) {
            let at = |su: f64, sv: f64| [a[0] + u[0] * su + v[0] * sv, a[1] + u[1] * su + v[1] * sv];
            let corners = [at(lo_u, lo_v), at(hi_u, lo_v), at(hi_u, hi_v), at(lo_u, hi_v)];
            best = Some((area, corners, (hi_u - lo_u).min(hi_v - lo_v)));
        }
    }
    best.map(|(_, c, s)| (c, s))
}

/// Corners sorted as top-left, top-right, bottom-right, bottom-left: the two leftmost by x, each
/// pair split by y (imutils' `order_points`, which RapidOCR uses).
pub fn order_clockwise(quad: Quad) -> Quad {
    let mut by_x = quad;
    by_x.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (mut left, mut right) = ([by_x[0], by_x[1]], [by_x[2], by_x[3]]);
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

/// Mean of `prob` over the pixels inside `quad` (its corners cut to whole pixels first, as
/// OpenCV's `fillPoly` receives them), edges included: PaddleOCR's `box_score_fast`.
fn mean_inside(prob: &[f32], width: usize, height: usize, quad: &Quad) -> f32 {
    let clampi = |v: f32, hi: usize| (v as i64).clamp(0, hi as i64 - 1);
    let xs = quad.iter().map(|p| p[0]);
    let ys = quad.iter().map(|p| p[1]);
    let xmin = clampi(xs.clone().fold(f32::INFINITY, f32::min).floor(), width);
    let xmax = clampi(xs.fold(f32::NEG_INFINITY, f32::max).ceil(), width);
    let ymin = clampi(ys.clone().fold(f32::INFINITY, f32::min).floor(), height);
    let ymax = clampi(ys.fold(f32::NEG_INFINITY, f32::max).ceil(), height);
    // Corners relative to the crop, truncated towards zero as numpy's astype(int32) does.
    let poly: Vec<[f64; 2]> = quad
        .iter()
        .map(|p| [(p[0] - xmin as f32).trunc() as f64, (p[1] - ymin as f32).trunc() as f64])
        .collect();
    let (mut sum, mut count) = (0f64, 0usize);
    for y in 0..=(ymax - ymin) {
        let Some((lo, hi)) = row_span(&poly, y as f64) else { continue };
        let lo = lo.round().max(0.0) as i64;
        let hi = (hi.round() as i64).min(xmax - xmin);
        for x in lo..=hi {
            sum += prob[(y + ymin) as usize * width + (x + xmin) as usize] as f64;
            count += 1;
        }
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

/// Where the horizontal line at `y` crosses a convex polygon: the leftmost and rightmost x.
fn row_span(poly: &[[f64; 2]], y: f64) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..poly.len() {
        let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
        if (a[1] - y) * (b[1] - y) > 0.0 {
            continue;
        }
        if a[1] == b[1] {
            lo = lo.min(a[0].min(b[0]));
            hi = hi.max(a[0].max(b[0]));
        } else {
            let x = a[0] + (y - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    (lo <= hi).then_some((lo, hi))
}

/// The box grown outwards by `area · ratio / perimeter` with round corners, as pyclipper's
/// `PyclipperOffset` (JT_ROUND, arc tolerance 0.25) computes it on the corners cut to integers:
/// each corner becomes an arc of points rounded to whole pixels.
fn unclip(quad: &Quad, ratio: f32) -> Vec<[f64; 2]> {
    let poly: Vec<[f64; 2]> = quad.iter().map(|p| [p[0] as f64, p[1] as f64]).collect();
    let area = shoelace(&poly).abs();
    let perimeter: f64 = (0..4).map(|i| (dist(quad[i], quad[(i + 1) % 4])) as f64).sum();
    let delta = if perimeter > 0.0 { area * ratio as f64 / perimeter } else { 0.0 };
    // pyclipper takes integer coordinates: Python floats are truncated on the way in.
    let mut pts: Vec<[f64; 2]> = Vec::new();
    for p in &poly {
        let q = [p[0].trunc(), p[1].trunc()];
        if pts.last() != Some(&q) {
            pts.push(q);
        }
    }
    while pts.len() > 1 && pts.first() == pts.last() {
        pts.pop();
    }
    if pts.len() < 3 || delta < 0.5 {
        return pts;
    }
    // Counter-clockwise in y-down coordinates has negative shoelace area; make outward normals
    // point away from the interior whichever way the points run.
    let sign = if shoelace(&pts) > 0.0 { 1.0 } else { -1.0 };
    let n = pts.len();
    let normals: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
            let len = (dx * dx + dy * dy).sqrt();
            [sign * dy / len, -sign * dx / len]
        })
        .collect();
    let arc_tolerance = 0.25f64;
    let mut steps = std::f64::consts::PI / (1.0 - arc_tolerance / delta).acos();
    if steps > delta * std::f64::consts::PI {
        steps = delta * std::f64::consts::PI;
    }
    let step_angle = 2.0 * std::f64::consts::PI / steps;
    let steps_per_rad = steps / (2.0 * std::f64::consts::PI);
    let round = |v: f64| if v < 0.0 { (v - 0.5).trunc() } else { (v + 0.5).trunc() };
    let mut out = Vec::new();
    for j in 0..n {
        let k = (j + n - 1) % n;
        let (nk, nj) = (normals[k], normals[j]);
        let cross = nk[0] * nj[1] - nk[1] * nj[0];
        let dot = nk[0] * nj[0] + nk[1] * nj[1];
        let angle = cross.atan2(dot);
        let count = ((steps_per_rad * angle.abs()).round() as usize).max(1);
        let (s, c) = ((step_angle * angle.signum()).sin(), (step_angle * angle.signum()).cos());
        let (mut x, mut y) = (nk[0], nk[1]);
        for _ in 0..count {
            out.push([round(pts[j][0] + x * delta), round(pts[j][1] + y * delta)]);
            let x2 = x;
            x = x * c - s * y;
            y = x2 * s + y * c;
        }
        out.push([round(pts[j][0] + nj[0] * delta), round(pts[j][1] + nj[1] * delta)]);
    }
    out
}

fn shoelace(poly: &[[f64; 2]]) -> f64 {
    let n = poly.len();
    (0..n).map(|i| poly[i][0] * poly[(i + 1) % n][1] - poly[(i + 1) % n][0] * poly[i][1]).sum::<f64>() / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bright_bar_gives_one_grown_box() {
        // A 20 x 60 map with a bar of probability 0.9 over rows 8..12, columns 10..50.
        let (w, h) = (60, 20);
        let mut prob = vec![0.0f32; w * h];
        for y in 8..12 {
            for x in 10..50 {
                prob[y * w + x] = 0.9;
            }
        }
        let boxes = boxes_from_probabilities(&prob, w, h, w * 2, h * 2, &DbOptions::default());
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let (quad, score) = boxes[0];
        // The box takes in the ring of dilated pixels around the bar, so its mean is under 0.9.
        assert!(score > 0.6, "{score}");
        // The bar (dilated by one pixel up and left) is 41 x 5; it grows by 41·5·1.6/92 ≈ 3.6 px
        // each way, then doubles with the destination scale.
        let (x0, y0, x1, y1) = (quad[0][0], quad[0][1], quad[2][0], quad[2][1]);
        assert!((x0 - 12.0).abs() <= 2.0 && (x1 - 106.0).abs() <= 2.0, "{quad:?}");
        assert!((y0 - 8.0).abs() <= 2.0 && (y1 - 30.0).abs() <= 2.0, "{quad:?}");
        assert!(x0 < x1 && y0 < y1);
    }

    #[test]
    fn faint_or_tiny_regions_are_dropped() {
        let (w, h) = (40, 20);
        let mut prob = vec![0.0f32; w * h];
        for y in 5..15 {
            for x in 5..35 {
                prob[y * w + x] = 0.35; // above `thresh` but under `box_thresh`
            }
        }
        prob[2 * w + 2] = 0.99; // a single hot pixel
        assert!(boxes_from_probabilities(&prob, w, h, w, h, &DbOptions::default()).is_empty());
        assert!(boxes_from_probabilities(&[], 0, 0, 0, 0, &DbOptions::default()).is_empty());
    }

    #[test]
    fn corners_are_put_in_clockwise_order() {
        let q = order_clockwise([[10.0, 5.0], [0.0, 5.0], [10.0, 0.0], [0.0, 0.0]]);
        assert_eq!(q, [[0.0, 0.0], [10.0, 0.0], [10.0, 5.0], [0.0, 5.0]]);
    }

    #[test]
    fn min_area_rect_finds_a_turned_rectangle() {
        // The corners of a 10 x 4 rectangle turned by 30°, plus points inside it.
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let mut pts: Vec<[f64; 2]> = [[0.0, 0.0], [10.0, 0.0], [10.0, 4.0], [0.0, 4.0], [5.0, 2.0], [1.0, 3.0]]
            .iter()
            .map(|p| [p[0] * c - p[1] * s + 20.0, p[0] * s + p[1] * c + 20.0])
            .collect();
        pts.reverse();
        let (corners, short) = min_area_rect(&pts).unwrap();
        assert!((short - 4.0).abs() < 1e-9, "{short}");
        let area = shoelace(&corners).abs();
        assert!((area - 40.0).abs() < 1e-9, "{area}");
        assert!(min_area_rect(&[]).is_none());
        assert_eq!(min_area_rect(&[[1.0, 2.0]; 3]).unwrap().1, 0.0);
    }

    #[test]
    fn unclip_grows_a_rectangle_by_the_db_distance() {
        let quad = [[0.0, 0.0], [40.0, 0.0], [40.0, 10.0], [0.0, 10.0]];
        let grown = unclip(&quad, 1.6);
        let (rect, short) = mini_box(&grown).unwrap();
        // distance = 400 · 1.6 / 100 = 6.4
        assert!((short - 22.8).abs() < 1.01, "{short} {rect:?}");
        assert!((rect[0][0] + 6.4).abs() < 1.01 && (rect[2][0] - 46.4).abs() < 1.01, "{rect:?}");
    }
}
