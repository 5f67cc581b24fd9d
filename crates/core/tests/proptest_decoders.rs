//! Property tests (proptest) for the decoders: for any byte string — arbitrary bytes behind a
//! PNG, JPEG, TIFF, BMP or DICOM signature, or a real file with arbitrary edits — every public
//! decoding entry point returns `Ok` or `Err` and never panics. Complements the seeded mutation
//! loop in `fuzz_decoders.rs` with shrinking: a failure is reduced to a minimal input.

mod common;

use common::{fixtures, samples};
use proptest::prelude::*;
use vasomim_core::dicom::DicomImage;
use vasomim_core::io::{decode_grey, decode_grey8, probe_bytes};

fn no_panic(bytes: &[u8]) -> bool {
    std::panic::catch_unwind(|| {
        let _ = decode_grey(bytes, 0);
        let _ = decode_grey8(bytes, 0);
        let _ = probe_bytes(bytes);
        if let Ok(d) = DicomImage::from_bytes(bytes) {
            for k in 0..d.info.frames.min(2) {
                let _ = d.grey_frame(k);
            }
        }
    })
    .is_ok()
}

const MAGICS: [&[u8]; 6] = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"", // DICOM: 128-byte preamble + "DICM" is built below
];

fn with_magic(kind: usize, body: Vec<u8>) -> Vec<u8> {
    if kind == 5 {
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        b.extend(body);
        b
    } else {
        let mut b = MAGICS[kind].to_vec();
        b.extend(body);
        b
    }
}

fn seed_files() -> Vec<Vec<u8>> {
    vec![
        std::fs::read(samples().join("fercer-xca80/Angios_40_training/1.png")).unwrap(),
        std::fs::read(fixtures().join("dicom/MR_small.dcm")).unwrap(),
        std::fs::read(fixtures().join("dicom/MR_small_RLE.dcm")).unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_behind_a_signature_never_panic(kind in 0usize..6, body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let bytes = with_magic(kind, body);
        prop_assert!(no_panic(&bytes), "panic on {} bytes", bytes.len());
    }

    #[test]
    fn edited_real_files_never_panic(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = seed_files().swap_remove(which);
        for (i, v) in edits {
            let at = i.index(bytes.len());
            bytes[at] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        prop_assert!(no_panic(&bytes), "panic on an edited seed {which}");
    }
}
