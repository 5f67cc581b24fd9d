//! The loader's contract: identical batches whatever the worker count and prefetch depth and
//! after a resume; DistributedSampler sharding; bad files skipped, named and replaced the same
//! way every time; image and map cropped and flipped together.

mod common;

use std::sync::Arc;

use common::samples;
use vasomim_core::data::transforms::{IMAGENET_MEAN, IMAGENET_STD};
use vasomim_core::data::{augment_sample, Augment, Batch, Loader, LoaderConfig, Sample};
use vasomim_core::io::write_png_grey8;

fn xca(n: usize) -> Vec<Sample> {
    let dir = samples().join("fercer-xca80/Angios_40_training");
    (1..=n)
        .map(|i| Sample { image: dir.join(format!("{i}.png")), map: Some(dir.join(format!("{i}_gt.png"))), frame: 0 })
        .collect()
}

fn augment(size: usize) -> Augment {
    Augment {
        size,
        random_crop: true,
        scale: (0.2, 1.0),
        ratio: (0.75, 4.0 / 3.0),
        hflip: 0.5,
        mean: IMAGENET_MEAN.to_vec(),
        std: IMAGENET_STD.to_vec(),
    }
}

fn config(workers: usize, prefetch: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        seed: 7,
        shuffle: true,
        drop_last: true,
        rank: 0,
        world: 1,
        workers,
        prefetch,
        augment: augment(32),
    }
}

fn run(loader: &Arc<Loader>, epoch: u64, start: usize) -> Vec<Batch> {
    loader.epoch(epoch, start).map(|b| b.unwrap()).collect()
}

#[test]
fn batches_do_not_depend_on_workers_prefetch_or_resume() {
    let one = Arc::new(Loader::new(xca(18), config(1, 1)).unwrap());
    let two = Arc::new(Loader::new(xca(18), config(2, 3)).unwrap());
    assert_eq!(one.batches_per_epoch(), 4); // 18 / 4, short batch dropped
    for epoch in [0, 1] {
        let a = run(&one, epoch, 0);
        let b = run(&two, epoch, 0);
        assert_eq!(a.len(), 4);
        assert_eq!(a, b, "epoch {epoch}: 1 worker and 2 workers differ");
        // Resume at batch 2: the same remaining batches.
        assert_eq!(run(&two, epoch, 2), a[2..].to_vec());
        assert_eq!(one.batch(epoch, 3).unwrap(), a[3]);
        let m = a[0].maps.as_ref().unwrap();
        assert!(m.iter().all(|&v| (0.0..=1.0).contains(&v)) && m.contains(&1.0));
    }
    let (e0, e1) = (run(&one, 0, 0), run(&one, 1, 0));
    assert_ne!(e0[0].samples, e1[0].samples, "epochs must be shuffled differently");
    // A different seed gives different crops of the same images.
    let mut c = config(1, 1);
    c.shuffle = false;
    let s1 = Loader::new(xca(8), c.clone()).unwrap().batch(0, 0).unwrap();
    c.seed = 8;
    let s2 = Loader::new(xca(8), c).unwrap().batch(0, 0).unwrap();
    assert_eq!(s1.samples, s2.samples);
    assert_ne!(s1.images, s2.images);
}

#[test]
fn ranks_get_disjoint_shards_like_distributed_sampler() {
    for (n, world) in [(18, 2), (19, 3), (40, 4)] {
        let mut all = Vec::new();
        let full = Loader::new(xca(n), config(1, 1)).unwrap().shard(3);
        for rank in 0..world {
            let mut c = config(1, 1);
            c.rank = rank;
            c.world = world;
            let l = Loader::new(xca(n), c).unwrap();
            let s = l.shard(3);
            assert_eq!(s.len(), n / world);
            // DistributedSampler: rank r takes positions r, r + world, ... of the permutation.
            let want: Vec<usize> = full[..(n / world) * world].iter().skip(rank).step_by(world).copied().collect();
            assert_eq!(s, want);
            all.extend(s);
        }
        let len = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), len, "shards overlap");
        assert_eq!(len, (n / world) * world);
    }
    let mut c = config(1, 1);
    c.world = 30;
    assert!(Loader::new(xca(18), c).unwrap_err().contains("18 samples cannot be sharded over 30 ranks"));
    c = config(1, 1);
    c.rank = 2;
    c.world = 2;
    assert!(Loader::new(xca(18), c).unwrap_err().contains("rank must be in 0..world"));
}

#[test]
fn a_corrupt_file_mid_epoch_is_skipped_named_and_replaced_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = xca(12);
    let bad = tmp.path().join("truncated.png");
    let good = std::fs::read(&s[5].image).unwrap();
    std::fs::write(&bad, &good[..good.len() / 3]).unwrap();
    s[5].image = bad.clone();
    let mut c = config(1, 1);
    c.shuffle = false;
    let a: Vec<Batch> = run(&Arc::new(Loader::new(s.clone(), c.clone()).unwrap()), 0, 0);
    c.workers = 2;
    c.prefetch = 2;
    let b: Vec<Batch> = run(&Arc::new(Loader::new(s, c).unwrap()), 0, 0);
    assert_eq!(a, b);
    assert_eq!(a.len(), 3);
    let hit = &a[1]; // positions 4..8
    assert_eq!(hit.skipped.len(), 1);
    assert_eq!(hit.skipped[0].path, bad.display().to_string());
    assert!(hit.skipped[0].error.contains("truncated.png"), "{}", hit.skipped[0].error);
    assert_eq!(hit.samples, vec![4, 6, 6, 7], "sample 5 is replaced by the next one, 6");
    assert_eq!(hit.n, 4);
    assert!(a[0].skipped.is_empty() && a[2].skipped.is_empty());
}

#[test]
fn image_and_map_share_the_crop_and_the_flip() {
    // A bright right half, and the same picture as the map: after any crop / flip the bright
    // pixels of the image must sit where the map is 1.
    let tmp = tempfile::tempdir().unwrap();
    let (w, h) = (90usize, 60usize);
    let px: Vec<u8> = (0..w * h).map(|i| if i % w >= w * 2 / 3 { 255 } else { 0 }).collect();
    let p = tmp.path().join("step.png");
    write_png_grey8(&p, w, h, &px).unwrap();
    let sample = Sample { image: p.clone(), map: Some(p), frame: 0 };
    let aug = Augment { mean: vec![0.0], std: vec![1.0], ..augment(40) };
    let mut flips = [0, 0];
    for seed in 0..40u64 {
        let mut rng = vasomim_core::data::rng::SplitMix64::new(seed);
        let mut img = vec![0f32; 40 * 40];
        let mut map = vec![0f32; 40 * 40];
        let (_, _) = augment_sample(&sample, &aug, &mut rng, &mut img, Some(&mut map)).unwrap();
        for y in 0..40 {
            for x in 1..39 {
                let i = y * 40 + x;
                if map[i - 1] == map[i] && map[i] == map[i + 1] {
                    assert!((img[i] - map[i]).abs() < 0.02, "seed {seed} ({x},{y}): image {} map {}", img[i], map[i]);
                }
            }
        }
        let right = map[39] == 1.0 || map[0] == 0.0;
        flips[right as usize] += 1;
    }
    assert!(flips[0] > 5 && flips[1] > 5, "flip never or always applied: {flips:?}");
}

#[test]
fn channels_replicate_grey_or_stay_single_and_maps_must_match_images() {
    let mut c = config(1, 1);
    c.shuffle = false;
    let b = Loader::new(xca(4), c.clone()).unwrap().batch(0, 0).unwrap();
    assert_eq!((b.n, b.channels, b.size), (4, 3, 32));
    let plane = 32 * 32;
    // Grey replicated: channel c = (g - mean_c) / std_c with one g per pixel.
    for i in 0..plane {
        let g0 = b.images[i] * IMAGENET_STD[0] + IMAGENET_MEAN[0];
        let g2 = b.images[2 * plane + i] * IMAGENET_STD[2] + IMAGENET_MEAN[2];
        assert!((g0 - g2).abs() < 1e-5);
    }
    c.augment.mean = vec![0.5];
    c.augment.std = vec![0.25];
    let g = Loader::new(xca(4), c.clone()).unwrap().batch(0, 0).unwrap();
    assert_eq!((g.channels, g.images.len()), (1, 4 * plane));
    for i in 0..plane {
        let a = b.images[i] * IMAGENET_STD[0] + IMAGENET_MEAN[0];
        assert!((g.images[i] * 0.25 + 0.5 - a).abs() < 1e-5);
    }
    // A map of another size: named, skipped, replaced.
    let mut s = xca(4);
    s[0].map = Some(samples().join("cadica-samples/p10_v7_00031.png"));
    let e = Loader::new(s, c.clone()).unwrap().batch(0, 0).unwrap();
    assert!(e.skipped[0].error.contains("map is 512x512 but its image"), "{}", e.skipped[0].error);
    c.batch_size = 5;
    assert!(Loader::new(xca(4), c).unwrap_err().contains("fewer than one batch of 5"));
    assert!(Loader::new(vec![], config(1, 1)).unwrap_err().contains("no samples"));
}

#[test]
fn loader_config_reads_camel_case_json_and_names_bad_fields() {
    let json = |seed: serde_json::Value, extra: &str| {
        let augment = serde_json::json!({
            "size": 32, "randomCrop": true, "scale": [0.2, 1.0], "ratio": [0.75, 1.25],
            "hflip": 0.5, "mean": [0.5], "std": [0.25]
        });
        let mut o = serde_json::json!({
            "batchSize": 4, "seed": seed, "shuffle": true, "dropLast": false, "rank": 0,
            "world": 1, "workers": 2, "prefetch": 2, "augment": augment
        });
        if !extra.is_empty() {
            o[extra] = true.into();
        }
        serde_json::from_value::<LoaderConfig>(o)
    };
    // JS integers above 2^32 cross N-API as floats.
    let c = json(9007199254740991.0.into(), "").unwrap();
    assert_eq!((c.seed, c.batch_size, c.augment.scale), (9007199254740991, 4, (0.2, 1.0)));
    assert_eq!(c.augment.std, vec![0.25f32]);
    for bad in [1.5, -1.0, 9007199254740992.0] {
        let e = json(bad.into(), "").unwrap_err().to_string();
        assert!(e.contains("seed must be an integer in [0, 2^53)"), "{e}");
    }
    let e = json(7.into(), "randomCrop").unwrap_err().to_string();
    assert!(e.contains("unknown field `randomCrop`"), "{e}");
}
