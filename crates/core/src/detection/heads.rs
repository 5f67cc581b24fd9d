//! Faster R-CNN's heads on the pyramid (detectron2's RPN and StandardROIHeads, box branch only):
//!
//! - [`anchors`]: one size per level, ratios 0.5 / 1 / 2, offset 0, location-major order.
//! - [`match_boxes`]: IoU matcher (thresholds and labels, optional low-quality matches) and
//!   [`sample`]: a seeded draw of at most `batch` labels with at most `fraction` positive.
//! - [`RpnHead`]: 3×3 conv + ReLU, objectness and deltas per anchor; [`rpn_losses`] (BCE + L1,
//!   both ÷ batch·N), [`proposals`] (top-k per level → decode → clip → drop empty → NMS per level
//!   → top-k).
//! - [`BoxHead`]: multi-level RoIAlign (level = clamp(⌊4 + log2(√area / 224)⌋, 2, 5)), four
//!   3×3 conv + LN + ReLU, FC + ReLU, class logits (K + 1, background last) and class-specific
//!   deltas; [`BoxHead::losses`] (CE mean + L1 ÷ sampled RoIs) and [`BoxHead::detect`] (softmax,
//!   decode, clip, score threshold, NMS per class, top-k).
//!
//! Boxes, matching and sampling live on the host (plain data); tensors carry the gradients.

use candle_core::{DType, Result, Tensor, D};

use super::backbone::ChannelNorm;
use super::boxes::{batched_nms, clip, iou_matrix, BoxCoder, BoxF};
use super::roi_align::roi_align;
use crate::nn::layers::{Conv2d, Linear};
use crate::nn::{Init, InitRng, ParamBuilder};

/// Anchors of one level (`stride`, `size`) on an `h × w` map: for each location (row-major),
/// the three aspect ratios 0.5, 1, 2 (h / w), centred on (x·stride, y·stride).
pub fn anchors(h: usize, w: usize, stride: f32, size: f32) -> Vec<BoxF> {
    let cells: Vec<BoxF> = [0.5f32, 1.0, 2.0]
        .iter()
        .map(|&r| {
            let aw = (size * size / r).sqrt();
            let ah = r * aw;
            [-aw / 2.0, -ah / 2.0, aw / 2.0, ah / 2.0]
        })
        .collect();
    let mut out = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = (x as f32 * stride, y as f32 * stride);
            out.extend(cells.iter().map(|c| [c[0] + sx, c[1] + sy, c[2] + sx, c[3] + sy]));
        }
    }
    out
}

/// Anchors per location.
pub const ANCHORS_PER_CELL: usize = 3;

/// For each box in `boxes`: the index of its best ground truth (first of ties) and its label:
/// IoU < `lo` → 0, [lo, hi) → −1 (ignored), ≥ hi → 1; `low_quality`: each GT's best boxes
/// (all ties, IoU > 0) are positive too. Without GT every label is 0.
pub fn match_boxes(gt: &[BoxF], boxes: &[BoxF], lo: f32, hi: f32, low_quality: bool) -> (Vec<usize>, Vec<i8>) {
    if gt.is_empty() {
        return (vec![0; boxes.len()], vec![0; boxes.len()]);
    }
    let q = iou_matrix(gt, boxes); // [G, N]
    let n = boxes.len();
    let mut matched = vec![0usize; n];
    let mut labels = vec![0i8; n];
    for j in 0..n {
        let mut best = (0, q[j]);
        for g in 1..gt.len() {
            if q[g * n + j] > best.1 {
                best = (g, q[g * n + j]);
            }
        }
        matched[j] = best.0;
        labels[j] = if best.1 >= hi {
            1
        } else if best.1 >= lo {
            -1
        } else {
            0
        };
    }
    if low_quality {
        for g in 0..gt.len() {
            let row = &q[g * n..(g + 1) * n];
            let top = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            // A GT that overlaps nothing would otherwise make every box with IoU 0 positive.
            if top <= 0.0 {
                continue;
            }
            for (j, &v) in row.iter().enumerate() {
                if v == top {
                    labels[j] = 1;
                }
            }
        }
    }
    (matched, labels)
}

/// A seeded draw of positives (`is_pos`) and negatives (`is_neg`): at most `batch · fraction`
/// positives, the rest of `batch` negatives. Returns (positive, negative) indices.
pub fn sample(
    n: usize,
    is_pos: impl Fn(usize) -> bool,
    is_neg: impl Fn(usize) -> bool,
    batch: usize,
    fraction: f64,
    rng: &mut InitRng,
) -> (Vec<usize>, Vec<usize>) {
    let mut pos: Vec<usize> = (0..n).filter(|&i| is_pos(i)).collect();
    let mut neg: Vec<usize> = (0..n).filter(|&i| is_neg(i)).collect();
    let np = pos.len().min((batch as f64 * fraction) as usize);
    let nn = neg.len().min(batch - np);
    partial_shuffle(&mut pos, np, rng);
    partial_shuffle(&mut neg, nn, rng);
    pos.truncate(np);
    neg.truncate(nn);
    (pos, neg)
}

/// The first `k` entries become a uniform random draw without replacement (Fisher–Yates).
fn partial_shuffle(v: &mut [usize], k: usize, rng: &mut InitRng) {
    for i in 0..k.min(v.len()) {
        let j = i + (rng.uniform() * (v.len() - i) as f64) as usize;
        v.swap(i, j.min(v.len() - 1));
    }
}

/// Σ BCE-with-logits(x, t) (a composite candle can differentiate).
fn bce_sum(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let soft = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (x.relu()? - (x * t)?)?.add(&soft)?.sum_all()
}

fn normal_conv(pb: &ParamBuilder, cin: usize, cout: usize, k: usize, std: f64) -> Result<Conv2d> {
    Ok(Conv2d {
        weight: pb.var("weight", &[cout, cin, k, k], Init::Normal(std))?.as_tensor().clone(),
        bias: Some(pb.var("bias", &[cout], Init::Zeros)?.as_tensor().clone()),
        stride: 1,
        padding: k / 2,
    })
}

fn normal_linear(pb: &ParamBuilder, cin: usize, cout: usize, std: f64) -> Result<Linear> {
    Ok(Linear {
        weight: pb.var("weight", &[cout, cin], Init::Normal(std))?.as_tensor().clone(),
        bias: pb.var("bias", &[cout], Init::Zeros)?.as_tensor().clone(),
    })
}

/// RPN outputs of a batch: objectness logits (B, ΣA) and deltas (B, ΣA, 4), levels concatenated.
pub struct RpnOutput {
    pub logits: Tensor,
    pub deltas: Tensor,
    /// Anchors of every level, concatenated (the same for every image).
    pub anchors: Vec<BoxF>,
    /// Level of each anchor.
    pub levels: Vec<usize>,
}

/// Settings of the RPN (detectron2's defaults in ViTDet).
#[derive(Clone, Debug)]
pub struct RpnSettings {
    pub batch: usize,
    pub positive_fraction: f64,
    pub pre_nms: usize,
    pub post_nms: usize,
    pub nms: f32,
}

/// 3×3 conv + ReLU shared by the levels, then objectness and deltas per anchor.
#[derive(Clone, Debug)]
pub struct RpnHead {
    conv: Conv2d,
    objectness: Conv2d,
    deltas: Conv2d,
}

impl RpnHead {
    pub fn new(pb: &ParamBuilder, c: usize) -> Result<Self> {
        let a = ANCHORS_PER_CELL;
        Ok(RpnHead {
            conv: normal_conv(&pb.pp("conv"), c, c, 3, 0.01)?,
            objectness: normal_conv(&pb.pp("objectness_logits"), c, a, 1, 0.01)?,
            deltas: normal_conv(&pb.pp("anchor_deltas"), c, 4 * a, 1, 0.01)?,
        })
    }

    /// Logits and deltas of every anchor of every level (`sizes`: anchor size per level).
    pub fn forward(&self, levels: &[Tensor], strides: &[f32], sizes: &[f32]) -> Result<RpnOutput> {
        let (mut logits, mut deltas, mut all, mut lv) = (vec![], vec![], vec![], vec![]);
        let a = ANCHORS_PER_CELL;
        for (l, x) in levels.iter().enumerate() {
            let (b, _, h, w) = x.dims4()?;
            let t = self.conv.forward(x)?.relu()?;
            logits.push(self.objectness.forward(&t)?.permute((0, 2, 3, 1))?.reshape((b, h * w * a))?);
            let d = self.deltas.forward(&t)?.reshape((b, a, 4, h, w))?.permute((0, 3, 4, 1, 2))?;
            deltas.push(d.reshape((b, h * w * a, 4))?);
            let anc = anchors(h, w, strides[l], sizes[l]);
            lv.extend(std::iter::repeat_n(l, anc.len()));
            all.extend(anc);
        }
        Ok(RpnOutput { logits: Tensor::cat(&logits, 1)?, deltas: Tensor::cat(&deltas, 1)?, anchors: all, levels: lv })
    }
}

/// RPN losses (objectness BCE, box L1), each summed over the sampled anchors ÷ (batch · N).
pub fn rpn_losses(out: &RpnOutput, gt: &[Vec<BoxF>], s: &RpnSettings, rng: &mut InitRng) -> Result<(Tensor, Tensor)> {
    let coder = BoxCoder::new([1.0; 4]);
    let (b, n) = out.logits.dims2()?;
    let dev = out.logits.device();
    let (mut idx, mut tgt, mut pos_idx, mut pos_tgt) = (vec![], vec![], vec![], vec![]);
    for (i, g) in gt.iter().enumerate() {
        let (matched, labels) = match_boxes(g, &out.anchors, 0.3, 0.7, true);
        let (pos, neg) = sample(n, |j| labels[j] == 1, |j| labels[j] == 0, s.batch, s.positive_fraction, rng);
        for &j in &pos {
            idx.push((i * n + j) as u32);
            tgt.push(1f32);
            pos_idx.push((i * n + j) as u32);
            pos_tgt.extend(coder.encode(&out.anchors[j], &g[matched[j]]));
        }
        for &j in &neg {
            idx.push((i * n + j) as u32);
            tgt.push(0f32);
        }
    }
    let norm = (s.batch * b) as f64;
    let logits = out.logits.flatten_all()?;
    let cls = if idx.is_empty() {
        (logits.sum_all()? * 0.0)?
    } else {
        let k = idx.len();
        let x = logits.index_select(&Tensor::from_vec(idx, k, dev)?, 0)?;
        bce_sum(&x, &Tensor::from_vec(tgt, k, dev)?)?
    };
    let deltas = out.deltas.reshape((b * n, 4))?;
    let loc = if pos_idx.is_empty() {
        (deltas.sum_all()? * 0.0)?
    } else {
        let k = pos_idx.len();
        let d = deltas.index_select(&Tensor::from_vec(pos_idx, k, dev)?, 0)?;
        (d - Tensor::from_vec(pos_tgt, (k, 4), dev)?)?.abs()?.sum_all()?
    };
    Ok(((cls / norm)?, (loc / norm)?))
}

/// Proposals per image (no gradient): top `pre_nms` anchors by objectness per level, decoded,
/// clipped to the image's valid `(h, w)`, empty ones dropped, NMS per level, top `post_nms`.
pub fn proposals(out: &RpnOutput, sizes: &[(usize, usize)], s: &RpnSettings) -> Result<Vec<Vec<BoxF>>> {
    let coder = BoxCoder::new([1.0; 4]);
    let (b, n) = out.logits.dims2()?;
    let logits = out.logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let deltas = out.deltas.to_dtype(DType::F32)?.reshape((b, n * 4))?.to_vec2::<f32>()?;
    let nl = out.levels.last().map_or(0, |l| l + 1);
    let mut result = Vec::with_capacity(b);
    for i in 0..b {
        let (h, w) = (sizes[i].0 as f32, sizes[i].1 as f32);
        let (mut boxes, mut scores, mut lv) = (vec![], vec![], vec![]);
        for l in 0..nl {
            let mut ids: Vec<usize> = (0..n).filter(|&j| out.levels[j] == l).collect();
            ids.sort_by(|&a, &c| logits[i][c].total_cmp(&logits[i][a]));
            ids.truncate(s.pre_nms);
            for j in ids {
                let d = [deltas[i][4 * j], deltas[i][4 * j + 1], deltas[i][4 * j + 2], deltas[i][4 * j + 3]];
                let bx = clip(&coder.decode(&out.anchors[j], &d), w, h);
                if bx[2] > bx[0] && bx[3] > bx[1] && bx.iter().all(|v| v.is_finite()) && logits[i][j].is_finite() {
                    boxes.push(bx);
                    scores.push(logits[i][j]);
                    lv.push(l);
                }
            }
        }
        let mut keep = batched_nms(&boxes, &scores, &lv, s.nms);
        keep.truncate(s.post_nms);
        result.push(keep.into_iter().map(|k| boxes[k]).collect());
    }
    Ok(result)
}

/// Settings of the RoI heads.
#[derive(Clone, Debug)]
pub struct RoiSettings {
    pub batch: usize,
    pub positive_fraction: f64,
    pub score_threshold: f32,
    pub nms: f32,
    pub detections: usize,
    pub pooler: usize,
}

/// Detections of one image: boxes, scores and class indices, best first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detections {
    pub boxes: Vec<BoxF>,
    pub scores: Vec<f32>,
    pub classes: Vec<usize>,
}

/// The box branch: pooling, four conv + LN + ReLU, FC + ReLU, predictor.
#[derive(Clone, Debug)]
pub struct BoxHead {
    convs: Vec<(Conv2d, ChannelNorm)>,
    fc: Linear,
    cls_score: Linear,
    bbox_pred: Linear,
    num_classes: usize,
}

/// Pyramid level (0 = P2 … 3 = P5) that pools a box (canonical size 224 at P4).
pub fn roi_level(b: &BoxF) -> usize {
    let size = ((b[2] - b[0]) * (b[3] - b[1])).max(0.0).sqrt();
    let l = (4.0 + (size / 224.0 + 1e-8).log2()).floor();
    (l.clamp(2.0, 5.0) as usize) - 2
}

impl BoxHead {
    pub fn new(
        pb: &ParamBuilder,
        c: usize,
        conv_dim: usize,
        convs: usize,
        fc_dim: usize,
        k: usize,
        pooler: usize,
    ) -> Result<Self> {
        let convs = (0..convs)
            .map(|i| {
                let cin = if i == 0 { c } else { conv_dim };
                let p = pb.pp("box_head").pp(format!("conv{}", i + 1));
                let bound = (2.0 / (conv_dim * 9) as f64).sqrt() * 3f64.sqrt();
                let conv = Conv2d {
                    weight: p.var("weight", &[conv_dim, cin, 3, 3], Init::Uniform(bound))?.as_tensor().clone(),
                    bias: None,
                    stride: 1,
                    padding: 1,
                };
                Ok((conv, ChannelNorm::new(&p.pp("norm"), conv_dim)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let fc = Linear::new(&pb.pp("box_head").pp("fc1"), conv_dim * pooler * pooler, fc_dim)?;
        Ok(BoxHead {
            convs,
            fc,
            cls_score: normal_linear(&pb.pp("box_predictor").pp("cls_score"), fc_dim, k + 1, 0.01)?,
            bbox_pred: normal_linear(&pb.pp("box_predictor").pp("bbox_pred"), fc_dim, 4 * k, 0.001)?,
            num_classes: k,
        })
    }

    /// Class logits (R, K + 1) and deltas (R, 4K) of boxes (image, box) pooled from P2–P5.
    pub fn forward(&self, levels: &[Tensor], rois: &[(usize, BoxF)], pooler: usize) -> Result<(Tensor, Tensor)> {
        let mut parts = Vec::new();
        let mut order = Vec::new();
        for (l, feat) in levels.iter().take(4).enumerate() {
            let sel: Vec<usize> = (0..rois.len()).filter(|&r| roi_level(&rois[r].1) == l).collect();
            if sel.is_empty() {
                continue;
            }
            let boxes: Vec<(usize, BoxF)> = sel.iter().map(|&r| rois[r]).collect();
            parts.push(roi_align(feat, &boxes, 1.0 / (4 << l) as f32, (pooler, pooler), 0)?);
            order.extend(sel);
        }
        let pooled = Tensor::cat(&parts, 0)?;
        // Back to the order of `rois`: inverse permutation of the level grouping.
        let mut inv = vec![0u32; order.len()];
        for (k, &r) in order.iter().enumerate() {
            inv[r] = k as u32;
        }
        let n = inv.len();
        let mut x = pooled.index_select(&Tensor::from_vec(inv, n, pooled.device())?, 0)?;
        for (conv, norm) in &self.convs {
            x = norm.forward(&conv.forward(&x)?)?.relu()?;
        }
        let x = self.fc.forward(&x.flatten_from(1)?)?.relu()?;
        Ok((self.cls_score.forward(&x)?, self.bbox_pred.forward(&x)?))
    }

    /// Training losses: proposals + GT boxes per image, matched at IoU 0.5, sampled; CE over the
    /// sampled RoIs (mean) and L1 of the GT class's deltas of the positives ÷ sampled RoIs.
    pub fn losses(
        &self,
        levels: &[Tensor],
        props: &[Vec<BoxF>],
        gt: &[(Vec<BoxF>, Vec<usize>)],
        s: &RoiSettings,
        rng: &mut InitRng,
    ) -> Result<(Tensor, Tensor)> {
        let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
        let k = self.num_classes;
        let (mut rois, mut classes, mut targets, mut pos_rows) = (vec![], vec![], vec![], vec![]);
        for (i, ((gb, gc), p)) in gt.iter().zip(props).enumerate() {
            let cand: Vec<BoxF> = p.iter().chain(gb.iter()).cloned().collect();
            let (matched, labels) = match_boxes(gb, &cand, 0.5, 0.5, false);
            let cls: Vec<usize> = (0..cand.len()).map(|j| if labels[j] == 1 { gc[matched[j]] } else { k }).collect();
            let (pos, neg) = sample(cand.len(), |j| cls[j] < k, |j| cls[j] == k, s.batch, s.positive_fraction, rng);
            for &j in pos.iter().chain(&neg) {
                if cls[j] < k {
                    pos_rows.push((rois.len() * k + cls[j]) as u32);
                    targets.extend(coder.encode(&cand[j], &gb[matched[j]]));
                }
                rois.push((i, cand[j]));
                classes.push(cls[j] as u32);
            }
        }
        let (logits, deltas) = self.forward(levels, &rois, s.pooler)?;
        let dev = logits.device();
        let r = rois.len();
        let ce = candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(classes, r, dev)?)?;
        let per = deltas.reshape((r * k, 4))?;
        let l1 = if pos_rows.is_empty() {
            (per.sum_all()? * 0.0)?
        } else {
            let np = pos_rows.len();
            let d = per.index_select(&Tensor::from_vec(pos_rows, np, dev)?, 0)?;
            (d - Tensor::from_vec(targets, (np, 4), dev)?)?.abs()?.sum_all()?
        };
        Ok((ce, (l1 / r.max(1) as f64)?))
    }

    /// Inference: per class, decoded boxes clipped to the valid size, score > threshold, NMS per
    /// class, the best `detections`.
    pub fn detect(
        &self,
        levels: &[Tensor],
        props: &[Vec<BoxF>],
        sizes: &[(usize, usize)],
        s: &RoiSettings,
    ) -> Result<Vec<Detections>> {
        let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
        let k = self.num_classes;
        let rois: Vec<(usize, BoxF)> =
            props.iter().enumerate().flat_map(|(i, p)| p.iter().map(move |&b| (i, b))).collect();
        let mut out = vec![Detections::default(); props.len()];
        if rois.is_empty() {
            return Ok(out);
        }
        let (logits, deltas) = self.forward(levels, &rois, s.pooler)?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let deltas = deltas.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        for (i, det) in out.iter_mut().enumerate() {
            let (h, w) = (sizes[i].0 as f32, sizes[i].1 as f32);
            let (mut boxes, mut scores, mut cls) = (vec![], vec![], vec![]);
            for (r, &(img, p)) in rois.iter().enumerate() {
                if img != i {
                    continue;
                }
                for c in 0..k {
                    let sc = probs[r][c];
                    if sc <= s.score_threshold {
                        continue;
                    }
                    let d = &deltas[r][4 * c..4 * c + 4];
                    let bx = clip(&coder.decode(&p, &[d[0], d[1], d[2], d[3]]), w, h);
                    if bx[2] > bx[0] && bx[3] > bx[1] {
                        boxes.push(bx);
                        scores.push(sc);
                        cls.push(c);
                    }
                }
            }
            let mut keep = batched_nms(&boxes, &scores, &cls, s.nms);
            keep.truncate(s.detections);
            *det = Detections {
                boxes: keep.iter().map(|&j| boxes[j]).collect(),
                scores: keep.iter().map(|&j| scores[j]).collect(),
                classes: keep.iter().map(|&j| cls[j]).collect(),
            };
        }
        Ok(out)
    }
}
