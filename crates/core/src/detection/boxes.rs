//! Boxes as `[x1, y1, x2, y2]` in continuous pixel coordinates (a pixel i spans [i, i + 1)), on
//! host data in f32 like torchvision's CPU ops:
//!
//! - [`area`], [`iou_matrix`], [`giou_matrix`]: `box_iou` / `generalized_box_iou`, without
//!   the +1 pixel convention of older code (candle-transformers' NMS uses it: not used here).
//! - [`BoxCoder`]: Faster R-CNN's (dx, dy, dw, dh) encoding with per-coordinate weights and the
//!   clamp of dw, dh before `exp` (torchvision `BoxCoder`, detectron2 `Box2BoxTransform`).
//! - [`clip`]: a box clipped to an image.
//! - [`nms`], [`batched_nms`]: greedy NMS in descending score order (stable: the first of tied
//!   scores wins), suppressing IoU > threshold; per class for the batched form.

/// One box, `[x1, y1, x2, y2]`.
pub type BoxF = [f32; 4];

/// Area (0 for an empty or inverted box's negative side is not clamped, as torchvision).
#[inline]
pub fn area(b: &BoxF) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// Intersection area of two boxes (0 when disjoint).
#[inline]
fn intersection(a: &BoxF, b: &BoxF) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

/// IoU of two boxes; 0/0 (two empty boxes) is NaN, as torchvision.
#[inline]
pub fn iou(a: &BoxF, b: &BoxF) -> f32 {
    let inter = intersection(a, b);
    inter / (area(a) + area(b) - inter)
}

/// `box_iou(a, b)`: row-major `a.len() × b.len()`.
pub fn iou_matrix(a: &[BoxF], b: &[BoxF]) -> Vec<f32> {
    a.iter().flat_map(|x| b.iter().map(move |y| iou(x, y))).collect()
}

/// `generalized_box_iou(a, b)`: IoU − (enclosing − union) / enclosing, row-major.
pub fn giou_matrix(a: &[BoxF], b: &[BoxF]) -> Vec<f32> {
    a.iter()
        .flat_map(|x| {
            b.iter().map(move |y| {
                let inter = intersection(x, y);
                let union = area(x) + area(y) - inter;
                let iou = inter / union;
                let w = (x[2].max(y[2]) - x[0].min(y[0])).max(0.0);
                let h = (x[3].max(y[3]) - x[1].min(y[1])).max(0.0);
                let enclosing = w * h;
                iou - (enclosing - union) / enclosing
            })
        })
        .collect()
}

/// `box` clipped to a `width × height` image.
#[inline]
pub fn clip(b: &BoxF, width: f32, height: f32) -> BoxF {
    [b[0].clamp(0.0, width), b[1].clamp(0.0, height), b[2].clamp(0.0, width), b[3].clamp(0.0, height)]
}

/// Faster R-CNN's box encoding: deltas of a target box relative to a reference box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxCoder {
    /// Weights of (dx, dy, dw, dh): (1, 1, 1, 1) in the RPN, (10, 10, 5, 5) in the box head.
    pub weights: [f32; 4],
    /// Upper clamp of dw, dh before `exp` when decoding (log(1000 / 16)).
    pub clamp: f32,
}

impl BoxCoder {
    /// A coder with `weights` and the standard clamp log(1000 / 16).
    pub fn new(weights: [f32; 4]) -> Self {
        BoxCoder { weights, clamp: (1000f32 / 16.0).ln() }
    }

    /// The deltas that take `src` to `target`.
    pub fn encode(&self, src: &BoxF, target: &BoxF) -> [f32; 4] {
        let [wx, wy, ww, wh] = self.weights;
        let (sw, sh) = (src[2] - src[0], src[3] - src[1]);
        let (sx, sy) = (src[0] + 0.5 * sw, src[1] + 0.5 * sh);
        let (tw, th) = (target[2] - target[0], target[3] - target[1]);
        let (tx, ty) = (target[0] + 0.5 * tw, target[1] + 0.5 * th);
        [wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * (tw / sw).ln(), wh * (th / sh).ln()]
    }

    /// The box `deltas` make of `src` (dw, dh clamped from above).
    pub fn decode(&self, src: &BoxF, deltas: &[f32; 4]) -> BoxF {
        let [wx, wy, ww, wh] = self.weights;
        let (sw, sh) = (src[2] - src[0], src[3] - src[1]);
        let (sx, sy) = (src[0] + 0.5 * sw, src[1] + 0.5 * sh);
        let (dx, dy) = (deltas[0] / wx, deltas[1] / wy);
        let (dw, dh) = ((deltas[2] / ww).min(self.clamp), (deltas[3] / wh).min(self.clamp));
        let (cx, cy) = (dx * sw + sx, dy * sh + sy);
        let (w, h) = (dw.exp() * sw, dh.exp() * sh);
        [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
    }
}

/// Indices of `scores` in descending order; ties keep their input order.
pub fn order_desc(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// Greedy NMS: the kept indices in descending score order; a box is dropped when its IoU with
/// a kept, higher-scored box exceeds `threshold`.
pub fn nms(boxes: &[BoxF], scores: &[f32], threshold: f32) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "nms: {} boxes, {} scores", boxes.len(), scores.len());
    let order = order_desc(scores);
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let (bi, ai) = (&boxes[i], area(&boxes[i]));
        for &j in &order[k + 1..] {
            if suppressed[j] {
                continue;
            }
            let inter = intersection(bi, &boxes[j]);
            if inter / (ai + area(&boxes[j]) - inter) > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// NMS within each class; the kept indices of all classes in descending score order (ties:
/// input order).
pub fn batched_nms(boxes: &[BoxF], scores: &[f32], classes: &[usize], threshold: f32) -> Vec<usize> {
    assert_eq!(boxes.len(), classes.len(), "batched_nms: {} boxes, {} classes", boxes.len(), classes.len());
    let mut keep = Vec::new();
    let mut ids: Vec<usize> = classes.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for c in ids {
        let idx: Vec<usize> = (0..boxes.len()).filter(|&i| classes[i] == c).collect();
        let b: Vec<BoxF> = idx.iter().map(|&i| boxes[i]).collect();
        let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
        keep.extend(nms(&b, &s, threshold).into_iter().map(|k| idx[k]));
    }
    keep.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    keep
}
