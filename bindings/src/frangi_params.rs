//! JS option objects -> `frangi` parameter types, with errors that name the field.

use frangi::{Cast, Filter, FrangiParams, MapParams, VesselnessParams};
use napi::Result;
use vasomim_core::vessels::Precision;

use crate::{invalid, FilterOptions, MapOptions};

pub fn filter_params(o: &FilterOptions) -> Result<VesselnessParams> {
    let frangi = |frangi1998| {
        Filter::Frangi(FrangiParams {
            alpha: o.alpha,
            beta: o.beta,
            gamma: o.gamma,
            frangi1998,
        })
    };
    let filter = match o.filter.as_str() {
        "sato" => Filter::Sato,
        "frangi" => frangi(false),
        "frangi1998" => frangi(true),
        other => {
            return Err(invalid(format!(
                "filter: unknown filter {other:?} (expected sato, frangi or frangi1998)"
            )))
        }
    };
    let p = VesselnessParams {
        filter,
        sigmas: o.sigmas.clone(),
        black_ridges: o.black_ridges,
    };
    p.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(p)
}

pub fn map_params(o: &MapOptions) -> Result<MapParams> {
    let cast = match o.cast.as_str() {
        "clamp" => Cast::Clamp,
        "wrap" => Cast::Wrap,
        other => {
            return Err(invalid(format!(
                "cast: unknown cast {other:?} (expected clamp or wrap)"
            )))
        }
    };
    if !(o.percentile.is_finite() && (0.0..=100.0).contains(&o.percentile)) {
        return Err(invalid(format!(
            "percentile: {} is not in [0, 100]",
            o.percentile
        )));
    }
    Ok(MapParams {
        border: o.border as usize,
        percentile: o.percentile,
        cast,
        scale: 1.0,
    })
}

pub fn precision(p: &str) -> Result<Precision> {
    match p {
        "f32" => Ok(Precision::F32),
        "f64" => Ok(Precision::F64),
        other => Err(invalid(format!(
            "precision: unknown precision {other:?} (expected f32 or f64)"
        ))),
    }
}
