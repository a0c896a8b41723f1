//! Integration tests for the on-disk checkpoint layout (src/model/checkpoint.rs).

use std::fs;
use std::path::{Path, PathBuf};

use appliance::model::checkpoint::{save, save_f32_file, save_file, save_i64, Checkpoint, StorageDtype};
use appliance::tensor::Tensor;
use safetensors::Dtype;

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/qwen2-tiny");

fn fixture_dir() -> PathBuf {
    let p = PathBuf::from(FIXTURE_DIR);
    assert!(
        p.join("model.safetensors").is_file(),
        "fixture missing: expected {}/model.safetensors (the shared fixtures directory ../shared next to the crate)",
        p.display()
    );
    p
}

/// Deterministic pseudo-random values with a wide range of magnitudes and a
/// few special values, so rounding is actually exercised.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32) / ((1u64 << 24) as f32) - 0.5;
            let scale = [1e-3f32, 0.1, 1.0, 37.0, 1e4][i % 5];
            match i % 97 {
                0 => 0.0,
                1 => -0.0,
                2 => 1.0 + 2f32.powi(-8), // bf16 tie
                3 => 65504.0,             // f16 max
                _ => u * scale,
            }
        })
        .collect()
}

fn sample_tensors() -> Vec<(String, Tensor)> {
    vec![
        (
            "model.embed_tokens.weight".into(),
            Tensor::from_vec(&[40, 16], values(640, 1)).unwrap(),
        ),
        (
            "model.layers.0.mlp.up_proj.weight".into(),
            Tensor::from_vec(&[32, 16], values(512, 2)).unwrap(),
        ),
        (
            "model.layers.0.input_layernorm.weight".into(),
            Tensor::from_vec(&[16], values(16, 3)).unwrap(),
        ),
        (
            "model.layers.1.mlp.up_proj.weight".into(),
            Tensor::from_vec(&[32, 16], values(512, 4)).unwrap(),
        ),
        (
            "model.norm.weight".into(),
            Tensor::from_vec(&[16], values(16, 5)).unwrap(),
        ),
        (
            "lm_head.weight".into(),
            Tensor::from_vec(&[40, 16], values(640, 6)).unwrap(),
        ),
        ("scalar".into(), Tensor::from_vec(&[], vec![3.5]).unwrap()),
    ]
}

fn refs(ts: &[(String, Tensor)]) -> Vec<(String, &Tensor)> {
    ts.iter().map(|(n, t)| (n.clone(), t)).collect()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}[{i}]: {x} vs {y}");
    }
}

fn err_string<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn loads_fixture_by_dir() {
    let ck = Checkpoint::open(&fixture_dir()).unwrap();
    let names = ck.names();
    assert!(
        names.contains(&"model.embed_tokens.weight".to_string()),
        "names: {names:?}"
    );
    assert!(names.iter().any(|n| n == "model.layers.0.self_attn.q_proj.weight"));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "names() is sorted");
    assert_eq!(ck.shape("model.embed_tokens.weight").unwrap(), vec![512, 64]);
    assert_eq!(ck.dtype("model.embed_tokens.weight").unwrap(), Dtype::F32);
    assert!(ck.contains("model.embed_tokens.weight"));
    assert!(!ck.contains("no.such.tensor"));
    let t = ck.get_f32("model.embed_tokens.weight").unwrap();
    assert_eq!(t.shape, vec![512, 64]);
    assert_eq!(t.data.len(), 512 * 64);
    assert!(t.data.iter().all(|v| v.is_finite()) && t.max_abs() > 0.0);

    let e = err_string(ck.get_f32("no.such.tensor"));
    assert!(e.contains("no.such.tensor"), "{e}");

    // Opening the file directly gives the same thing.
    let ck2 = Checkpoint::open(&fixture_dir().join("model.safetensors")).unwrap();
    assert_eq!(ck2.names(), names);
    assert_eq!(ck2.get_f32("model.embed_tokens.weight").unwrap(), t);
}

#[test]
fn fixture_round_trips_through_save() {
    let ck = Checkpoint::open(&fixture_dir()).unwrap();
    let all = ck.load_all_f32().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save(tmp.path(), &refs(&all), StorageDtype::F32, None).unwrap();
    let back = Checkpoint::open(tmp.path()).unwrap();
    assert_eq!(back.names(), ck.names());
    for (n, t) in &all {
        let b = back.get_f32(n).unwrap();
        assert_eq!(b.shape, t.shape, "{n}");
        assert_bits_eq(&b.data, &t.data, n);
    }
}

#[test]
fn reference_input_ids_are_i64() {
    let ck = Checkpoint::open(&fixture_dir().join("reference.safetensors")).unwrap();
    assert_eq!(ck.dtype("input_ids").unwrap(), Dtype::I64);
    let (shape, ids) = ck.get_i64("input_ids").unwrap();
    assert_eq!(shape, vec![2, 24]);
    assert_eq!(ids.len(), 48);
    // An i64 tensor is not convertible to f32: a clear error naming the tensor.
    let e = err_string(ck.get_f32("input_ids"));
    assert!(e.contains("input_ids") && e.contains("I64"), "{e}");
    assert!(e.contains("reference.safetensors"), "{e}");
}

#[test]
fn f32_round_trip_is_bit_identical() {
    let ts = sample_tensors();
    let tmp = tempfile::tempdir().unwrap();
    save(tmp.path(), &refs(&ts), StorageDtype::F32, None).unwrap();
    assert_eq!(dir_names(tmp.path()), vec!["model.safetensors"]);
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let mut expect: Vec<String> = ts.iter().map(|(n, _)| n.clone()).collect();
    expect.sort();
    assert_eq!(ck.names(), expect);
    for (n, t) in &ts {
        assert_eq!(ck.dtype(n).unwrap(), Dtype::F32);
        let b = ck.get_f32(n).unwrap();
        assert_eq!(b.shape, t.shape, "{n}");
        assert_bits_eq(&b.data, &t.data, n);
    }
}

#[test]
fn half_round_trips_equal_half_conversion() {
    let ts = sample_tensors();
    for (dtype, st) in [(StorageDtype::BF16, Dtype::BF16), (StorageDtype::F16, Dtype::F16)] {
        let tmp = tempfile::tempdir().unwrap();
        save(tmp.path(), &refs(&ts), dtype, None).unwrap();
        let ck = Checkpoint::open(tmp.path()).unwrap();
        for (n, t) in &ts {
            assert_eq!(ck.dtype(n).unwrap(), st, "{n}");
            let b = ck.get_f32(n).unwrap();
            let expect: Vec<f32> = t
                .data
                .iter()
                .map(|&v| match dtype {
                    StorageDtype::BF16 => half::bf16::from_f32(v).to_f32(),
                    StorageDtype::F16 => half::f16::from_f32(v).to_f32(),
                    StorageDtype::F32 => unreachable!(),
                })
                .collect();
            assert_bits_eq(&b.data, &expect, &format!("{dtype} {n}"));
        }
        // The bf16 tie value 1 + 2^-8 rounds to even (1.0).
        if dtype == StorageDtype::BF16 {
            let e = ck.get_f32("model.embed_tokens.weight").unwrap();
            assert_eq!(e.data[2], 1.0);
        }
    }
}

#[test]
fn header_metadata_is_format_pt() {
    let ts = sample_tensors();
    let tmp = tempfile::tempdir().unwrap();
    save(tmp.path(), &refs(&ts), StorageDtype::BF16, None).unwrap();
    let bytes = fs::read(tmp.path().join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let m = meta.metadata().as_ref().expect("header metadata");
    assert_eq!(m.get("format").map(String::as_str), Some("pt"));
}

#[test]
fn sharded_save_and_resave_unsharded() {
    let ts = sample_tensors();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Total f32 size: (640*2 + 512*2 + 16*2 + 1) * 4 = 9348 bytes.
    let total: usize = ts.iter().map(|(_, t)| t.data.len() * 4).sum();
    save(dir, &refs(&ts), StorageDtype::F32, Some(3000)).unwrap();
    let names = dir_names(dir);
    let shards: Vec<&String> = names.iter().filter(|n| n.starts_with("model-")).collect();
    assert!(shards.len() >= 3, "files: {names:?}");
    let n = shards.len();
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(**s, format!("model-{:05}-of-{:05}.safetensors", i + 1, n));
    }
    assert!(names.contains(&"model.safetensors.index.json".to_string()));
    assert!(!names.contains(&"model.safetensors".to_string()));
    assert_eq!(names.len(), n + 1, "no temp or extra files: {names:?}");

    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"].as_u64().unwrap(), total as u64);
    let wm = index["weight_map"].as_object().unwrap();
    assert_eq!(wm.len(), ts.len());
    // Shards are filled in name order: the shard number never decreases.
    let mut sorted: Vec<&String> = wm.keys().collect();
    sorted.sort();
    let order: Vec<&str> = sorted.iter().map(|k| wm[k.as_str()].as_str().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    // Every shard file is within the limit unless it holds a single tensor.
    let ck = Checkpoint::open(dir).unwrap();
    assert_eq!(ck.files().len(), n);
    assert_eq!(ck.total_bytes(), total as u64);
    for (name, t) in &ts {
        let b = ck.get_f32(name).unwrap();
        assert_eq!(b.shape, t.shape);
        assert_bits_eq(&b.data, &t.data, name);
        assert!(ck.file_of(name).unwrap().ends_with(wm[name.as_str()].as_str().unwrap()));
    }
    drop(ck);

    // Re-save unsharded: old shards and index disappear.
    save(dir, &refs(&ts), StorageDtype::BF16, None).unwrap();
    assert_eq!(dir_names(dir), vec!["model.safetensors"]);
    let ck = Checkpoint::open(dir).unwrap();
    assert_eq!(ck.dtype("lm_head.weight").unwrap(), Dtype::BF16);

    // And sharded again (a different shard count), leaving no single file.
    save(dir, &refs(&ts), StorageDtype::F32, Some(5000)).unwrap();
    let names = dir_names(dir);
    assert!(!names.contains(&"model.safetensors".to_string()), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("model-") || n == "model.safetensors.index.json"),
        "{names:?}"
    );
    let ck = Checkpoint::open(dir).unwrap();
    assert_eq!(ck.len(), ts.len());
}

#[test]
fn resave_leaves_unrelated_files_alone() {
    let ts = sample_tensors();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("config.json"), "{}").unwrap();
    fs::write(dir.join("optimizer.safetensors"), "x").unwrap();
    save(dir, &refs(&ts), StorageDtype::F32, Some(3000)).unwrap();
    save(dir, &refs(&ts), StorageDtype::F32, None).unwrap();
    assert_eq!(
        dir_names(dir),
        vec!["config.json", "model.safetensors", "optimizer.safetensors"]
    );
}

#[test]
fn handwritten_index_pointing_to_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
    let b = Tensor::from_vec(&[4], vec![-1., 0.5, 0.25, 8.]).unwrap();
    let c = Tensor::from_vec(&[1, 1], vec![42.]).unwrap();
    save_f32_file(&dir.join("part-a.safetensors"), &[("a".into(), &a), ("c".into(), &c)]).unwrap();
    save_f32_file(&dir.join("part-b.safetensors"), &[("b".into(), &b)]).unwrap();
    fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"metadata": {"total_size": 44},
            "weight_map": {"a": "part-a.safetensors", "b": "part-b.safetensors", "c": "part-a.safetensors"}}"#,
    )
    .unwrap();
    let ck = Checkpoint::open(dir).unwrap();
    assert_eq!(ck.names(), vec!["a", "b", "c"]);
    assert_eq!(ck.get_f32("a").unwrap(), a);
    assert_eq!(ck.get_f32("b").unwrap(), b);
    assert_eq!(ck.get_f32("c").unwrap(), c);
    assert!(ck.file_of("b").unwrap().ends_with("part-b.safetensors"));
}

#[test]
fn no_temp_files_after_save() {
    let ts = sample_tensors();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    save(dir, &refs(&ts), StorageDtype::F16, Some(2000)).unwrap();
    save(dir, &refs(&ts), StorageDtype::F16, None).unwrap();
    save_i64(&dir.join("ids.safetensors"), "input_ids", &[2, 3], &[1, 2, 3, 4, 5, -6]).unwrap();
    save_f32_file(&dir.join("scores.safetensors"), &refs(&ts[..2])).unwrap();
    for n in dir_names(dir) {
        assert!(!n.starts_with('.') && !n.contains("tmp"), "leftover file {n}");
    }
    assert_eq!(
        dir_names(dir),
        vec!["ids.safetensors", "model.safetensors", "scores.safetensors"]
    );
}

#[test]
fn score_output_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("out/scores.safetensors");
    let lp = Tensor::from_vec(&[2, 3], vec![-0.5, -1.5, -2.5, -0.1, -0.2, -0.3]).unwrap();
    // The same call shape the `score` command uses.
    let shape: Vec<usize> = vec![2, 4];
    let ids: Vec<i64> = vec![1, 2, 3, 4, 5, 6, 7, i64::MAX];
    let refs: Vec<(String, &Tensor)> = vec![("logprobs".to_string(), &lp)];
    save_file(&p, &refs, Some(("input_ids", &shape, &ids))).unwrap();
    let e = err_string(save_file(&p, &refs, Some(("logprobs", &shape, &ids))));
    assert!(e.contains("twice"), "{e}");
    let ck = Checkpoint::open(&p).unwrap();
    assert_eq!(ck.names(), vec!["input_ids", "logprobs"]);
    assert_eq!(ck.get_f32("logprobs").unwrap(), lp);
    assert_eq!(ck.get_i64("input_ids").unwrap(), (vec![2, 4], ids));
    let e = err_string(ck.get_i64("logprobs"));
    assert!(e.contains("logprobs") && e.contains("F32"), "{e}");

    let p2 = tmp.path().join("ids.safetensors");
    save_i64(&p2, "input_ids", &[3], &[7, 8, 9]).unwrap();
    assert_eq!(
        Checkpoint::open(&p2).unwrap().get_i64("input_ids").unwrap(),
        (vec![3], vec![7, 8, 9])
    );
}

#[test]
fn save_rejects_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = Tensor {
        shape: vec![2, 2],
        data: vec![1.0; 3],
    };
    let e = err_string(save(tmp.path(), &[("w".into(), &bad)], StorageDtype::F32, None));
    assert!(e.contains("w") && e.contains("[2, 2]"), "{e}");
    let ok = Tensor::zeros(&[2]);
    let e = err_string(save(
        tmp.path(),
        &[("w".into(), &ok), ("w".into(), &ok)],
        StorageDtype::F32,
        None,
    ));
    assert!(e.contains("twice"), "{e}");
    assert!(dir_names(tmp.path()).is_empty());
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn write_valid(dir: &Path) {
    let ts = sample_tensors();
    save(dir, &refs(&ts), StorageDtype::F32, None).unwrap();
}

#[test]
fn truncated_file_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_valid(tmp.path());
    let path = tmp.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_string(Checkpoint::open(tmp.path()));
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(e.contains("truncated"), "{e}");

    // Cut inside the header and inside the length prefix too.
    for cut in [20usize, 5, 0] {
        fs::write(&path, &bytes[..cut]).unwrap();
        let e = err_string(Checkpoint::open(&path));
        assert!(e.contains("model.safetensors"), "cut {cut}: {e}");
    }
}

#[test]
fn corrupt_header_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    // Garbage bytes: a nonsense length prefix.
    fs::write(
        &path,
        b"\xde\xad\xbe\xef garbage that is not safetensors at all \x00\x01\x02",
    )
    .unwrap();
    let e = err_string(Checkpoint::open(tmp.path()));
    assert!(e.contains("model.safetensors"), "{e}");

    // A plausible length prefix but a header that is not JSON.
    let mut bad = 16u64.to_le_bytes().to_vec();
    bad.extend_from_slice(b"{not json at all");
    fs::write(&path, &bad).unwrap();
    let e = err_string(Checkpoint::open(tmp.path()));
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(e.to_lowercase().contains("header") || e.contains("JSON"), "{e}");
}

#[test]
fn unsupported_dtype_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    let data: Vec<u8> = vec![1, 2, 3, 4];
    let view = safetensors::tensor::TensorView::new(Dtype::U8, vec![4], &data).unwrap();
    safetensors::serialize_to_file([("bytes", view)], None, &path).unwrap();
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let e = err_string(ck.get_f32("bytes"));
    assert!(
        e.contains("bytes") && e.contains("U8") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn index_naming_a_missing_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = Tensor::zeros(&[3]);
    save_f32_file(&dir.join("model-00001-of-00002.safetensors"), &[("a".into(), &a)]).unwrap();
    fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"metadata": {"total_size": 24}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let e = err_string(Checkpoint::open(dir));
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn tensor_in_index_absent_from_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = Tensor::zeros(&[3]);
    save_f32_file(&dir.join("model-00001-of-00001.safetensors"), &[("a".into(), &a)]).unwrap();
    fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-00001-of-00001.safetensors", "model.ghost.weight": "model-00001-of-00001.safetensors"}}"#,
    )
    .unwrap();
    let e = err_string(Checkpoint::open(dir));
    assert!(
        e.contains("model.ghost.weight") && e.contains("model-00001-of-00001.safetensors"),
        "{e}"
    );
}

#[test]
fn bad_index_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let idx = dir.join("model.safetensors.index.json");
    fs::write(&idx, "{ this is not json").unwrap();
    let e = err_string(Checkpoint::open(dir));
    assert!(e.contains("model.safetensors.index.json"), "{e}");

    fs::write(&idx, r#"{"metadata": {"total_size": 0}}"#).unwrap();
    let e = err_string(Checkpoint::open(dir));
    assert!(
        e.contains("model.safetensors.index.json") && e.contains("weight_map"),
        "{e}"
    );

    fs::write(&idx, r#"{"weight_map": {"a": "../escape.safetensors"}}"#).unwrap();
    let e = err_string(Checkpoint::open(dir));
    assert!(e.contains("../escape.safetensors"), "{e}");
}

#[test]
fn missing_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("does-not-exist");
    let e = err_string(Checkpoint::open(&missing));
    assert!(e.contains("does-not-exist"), "{e}");

    // An existing but empty directory.
    let e = err_string(Checkpoint::open(tmp.path()));
    assert!(e.contains("model.safetensors"), "{e}");
}
