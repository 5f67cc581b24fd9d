//! Stenosis detection (ViTDet with Faster R-CNN heads, docs/DETECTION.md), built up in pieces:
//!
//! - [`boxes`]: box maths on host data (xyxy, area and IoU without the old +1, GIoU, the box
//!   coder's encode/decode with its clamp, clipping) and greedy NMS (per class too), as torchvision.
//! - [`roi_align`]: RoIAlign with torchvision's `aligned=True` semantics: the sampling taps are
//!   computed on the host from the (non-differentiable) boxes, the gather is differentiable in the
//!   feature map on any device.
//!
//! - [`backbone`]: the ViT run as ViTDet's backbone (windows, relative positions) and the simple
//!   feature pyramid P2–P6.
//! - [`heads`]: anchors, matcher, sampler, RPN (losses, proposals), the box head (losses,
//!   inference).
//! - [`input`]: frames and boxes to the square input (LSJ placements, test-time fit) and back.
//! - [`model`]: [`model::DetectionConfig`] and the whole detector [`model::ViTDet`].
//!
//! Golden fixtures from torchvision: `tests/golden/torchvision_boxes.npz`
//! (`scripts/golden/torchvision_boxes.py`), checked by `tests/detection_ops.rs`.

pub mod backbone;
pub mod boxes;
pub mod heads;
pub mod input;
pub mod model;
pub mod roi_align;
