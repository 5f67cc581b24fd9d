//! Detection box ops against torchvision: golden fixtures written by
//! `scripts/golden/torchvision_boxes.py` (box_iou, generalized_box_iou, nms, batched_nms,
//! BoxCoder, roi_align aligned=True with sampling_ratio 0 and 2, boxes partly and fully outside,
//! and its gradient in the map), plus central finite differences of the RoIAlign backward.
//! Runs without Python: the fixtures are committed. A live test regenerates the cases with
//! another seed through torchvision (`/usr/bin/python3`, or `VASOMIM_TORCH_PYTHON`) and skips,
//! saying why, when it is missing.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use vasomim_core::detection::boxes::{batched_nms, giou_matrix, iou_matrix, nms, BoxCoder, BoxF};
use vasomim_core::detection::roi_align::{roi_align, roi_align_composite, roi_taps};

type Cases = HashMap<String, Tensor>;

fn read(p: &std::path::Path) -> Cases {
    Tensor::read_npz(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).into_iter().collect()
}

fn golden() -> Cases {
    read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/torchvision_boxes.npz"))
}

fn f32s(g: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    g[k].to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn ints(g: &HashMap<String, Tensor>, k: &str) -> Vec<usize> {
    g[k].to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect()
}

fn boxes(g: &HashMap<String, Tensor>, k: &str) -> Vec<BoxF> {
    f32s(g, k).chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

fn assert_close(ours: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(ours.len(), want.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: ours {a}, torchvision {b}");
    }
}

fn check_iou(g: &Cases) {
    let (a, b) = (boxes(g, "iou_a"), boxes(g, "iou_b"));
    assert_close(&iou_matrix(&a, &b), &f32s(g, "iou"), 1e-6, "box_iou");
    assert_close(&giou_matrix(&a, &boxes(g, "giou_b")), &f32s(g, "giou"), 1e-6, "generalized_box_iou");
    // The touching and nested pairs: exact values, not the old +1 convention.
    let m = iou_matrix(&a[..3], &b[..1]);
    assert_eq!(m, vec![1.0, 0.0, 0.36]);
}

#[test]
fn iou_and_giou_match_torchvision() {
    check_iou(&golden());
}

fn check_nms(g: &Cases) {
    let (b, s) = (boxes(g, "nms_boxes"), f32s(g, "nms_scores"));
    for t in [5, 7] {
        let keep = nms(&b, &s, t as f32 / 10.0);
        assert_eq!(keep, ints(g, &format!("nms_keep_{t}")), "nms at {}", t as f32 / 10.0);
        assert!(keep.len() < b.len() && keep.len() > 5);
    }
    let classes = ints(g, "nms_classes");
    assert_eq!(batched_nms(&b, &s, &classes, 0.5), ints(g, "nms_batched_keep_5"));
}

#[test]
fn nms_matches_torchvision() {
    check_nms(&golden());
}

fn check_coder(g: &Cases) {
    let (props, gts) = (boxes(g, "coder_props"), boxes(g, "coder_gts"));
    let deltas = boxes(g, "coder_deltas");
    for (name, w) in [("w1", [1.0, 1.0, 1.0, 1.0]), ("w10", [10.0, 10.0, 5.0, 5.0])] {
        let c = BoxCoder::new(w);
        let enc: Vec<f32> = props.iter().zip(&gts).flat_map(|(p, t)| c.encode(p, t)).collect();
        assert_close(&enc, &f32s(g, &format!("coder_enc_{name}")), 2e-5, "encode");
        let dec: Vec<f32> = props.iter().zip(&deltas).flat_map(|(p, d)| c.decode(p, d)).collect();
        assert_close(&dec, &f32s(g, &format!("coder_dec_{name}")), 2e-5, "decode");
        // Round trip.
        let back: Vec<f32> = props.iter().zip(&gts).flat_map(|(p, t)| c.decode(p, &c.encode(p, t))).collect();
        assert_close(&back, &gts.concat(), 1e-4, "decode(encode)");
    }
}

#[test]
fn box_coder_matches_torchvision() {
    check_coder(&golden());
}

fn rois(g: &HashMap<String, Tensor>, scale_one: bool) -> Vec<(usize, BoxF)> {
    let k = if scale_one { 0.25 } else { 1.0 };
    f32s(g, "roi_rois").chunks(5).map(|r| (r[0] as usize, [r[1] * k, r[2] * k, r[3] * k, r[4] * k])).collect()
}

fn check_roi_align(g: &Cases) {
    let feat = Var::from_tensor(&g["roi_feat"]).unwrap();
    for (sname, scale) in [("s4", 0.25f32), ("s1", 1.0)] {
        let r = rois(g, scale == 1.0);
        for (oh, ow) in [(7, 7), (3, 2)] {
            for sr in [0, 2] {
                let key = format!("roi_{sname}_{oh}x{ow}_sr{sr}");
                let y = roi_align(feat.as_tensor(), &r, scale, (oh, ow), sr).unwrap();
                assert_eq!(y.dims(), g[&key].dims(), "{key}");
                assert_close(&y.flatten_all().unwrap().to_vec1().unwrap(), &f32s(g, &key), 1e-5, &key);
                let grads = (y * &g[&format!("{key}_r")]).unwrap().sum_all().unwrap().backward().unwrap();
                let dx = grads.get(feat.as_tensor()).unwrap();
                assert_close(
                    &dx.flatten_all().unwrap().to_vec1().unwrap(),
                    &f32s(g, &format!("{key}_grad")),
                    1e-5,
                    "grad",
                );
            }
        }
    }
    // The fully-outside box pools zeros; boxes of images beyond the batch are an error.
    let y = roi_align(feat.as_tensor(), &[(0, [80.0, 80.0, 100.0, 120.0])], 0.25, (7, 7), 0).unwrap();
    assert_eq!(y.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let e = roi_align(feat.as_tensor(), &[(2, [0.0, 0.0, 4.0, 4.0])], 0.25, (7, 7), 0).unwrap_err();
    assert!(e.to_string().contains("box of image 2, but the batch has 2 images"), "{e}");
}

#[test]
fn roi_align_forward_and_backward_match_torchvision() {
    check_roi_align(&golden());
}

#[test]
fn live_parity_with_torchvision_on_other_cases() {
    let py = std::env::var("VASOMIM_TORCH_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let probe = std::process::Command::new(&py).args(["-c", "import torch, torchvision"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("detection_ops: live torchvision parity skipped: {py} cannot import torch and torchvision");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cases.npz");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/golden/torchvision_boxes.py");
    let r = std::process::Command::new(&py).arg(&script).args(["--seed", "7", "--out"]).arg(&out).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let g = read(&out);
    check_nms(&g);
    check_coder(&g);
    check_roi_align(&g);
    let (a, b) = (boxes(&g, "iou_a"), boxes(&g, "iou_b"));
    assert_close(&iou_matrix(&a, &b), &f32s(&g, "iou"), 1e-6, "box_iou");
}

#[test]
fn fused_cpu_roi_align_equals_the_composite() {
    let g = golden();
    let feat = Var::from_tensor(&g["roi_feat"]).unwrap();
    let r = rois(&g, false);
    for sr in [0, 2] {
        let a = roi_align(feat.as_tensor(), &r, 0.25, (7, 7), sr).unwrap();
        let b = roi_align_composite(feat.as_tensor(), &r, 0.25, (7, 7), sr).unwrap();
        let (va, vb): (Vec<f32>, Vec<f32>) =
            (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
        assert_close(&va, &vb, 1e-6, "forward");
        let w = &g["roi_s4_7x7_sr0_r"];
        let ga = (a * w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * w).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |s: &candle_core::backprop::GradStore| -> Vec<f32> {
            s.get(feat.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_close(&flat(&ga), &flat(&gb), 1e-6, "backward");
    }
}

#[test]
fn roi_align_backward_matches_finite_differences() {
    // f64 (the composite path), so central differences are exact to ~1e-9; sampling_ratio 0 and
    // 2, a box partly outside. The fused f32 path equals the composite (test above).
    let dev = Device::Cpu;
    let (n, c, h, w) = (1, 2, 6, 5);
    let vals: Vec<f64> = (0..n * c * h * w).map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0).collect();
    let x = Var::from_vec(vals.clone(), (n, c, h, w), &dev).unwrap();
    let b: Vec<(usize, BoxF)> = vec![(0, [1.3, 0.7, 15.9, 13.2]), (0, [-4.0, 10.0, 9.0, 30.0])];
    let r: Vec<f64> = (0..2 * c * 3 * 2).map(|i| ((i * 13 % 7) as f64 - 3.0) / 3.0).collect();
    let rt = Tensor::from_vec(r, (2, c, 3, 2), &dev).unwrap();
    for sr in [0, 2] {
        let f = |t: &Tensor| (roi_align(t, &b, 0.25, (3, 2), sr).unwrap() * &rt).unwrap().sum_all().unwrap();
        let grad = f(x.as_tensor()).backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let grad: Vec<f64> = grad.to_vec1().unwrap();
        let eps = 1e-4;
        let mut nonzero = 0;
        for i in 0..vals.len() {
            let at = |d: f64| {
                let mut v = vals.clone();
                v[i] += d;
                f(&Tensor::from_vec(v, (n, c, h, w), &dev).unwrap()).to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!((fd - grad[i]).abs() < 1e-8, "sr {sr}, element {i}: fd {fd}, autograd {}", grad[i]);
            nonzero += (grad[i].abs() > 1e-12) as usize;
        }
        assert!(nonzero > 10, "sr {sr}: only {nonzero} map cells get a gradient");
    }
    // The taps of a box partly outside skip the samples beyond [-1, size].
    let t = roi_taps(&[(0, [-40.0, -40.0, 8.0, 8.0])], (h, w), 0.25, (2, 2), 2);
    assert!(t.index.len() < 2 * 2 * 2 * 2 * 4);
}
