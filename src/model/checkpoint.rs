//! Checkpoint files on disk: the Hugging Face safetensors layout.
//!
//! This module owns reading and writing checkpoints in the layout that
//! Hugging Face transformers and vLLM use: a directory holding either one
//! `model.safetensors`, or shards `model-00001-of-0000N.safetensors` plus a
//! `model.safetensors.index.json` whose `weight_map` says which shard holds
//! which tensor. Reading is zero-copy through memory maps; tensors are
//! converted to host f32 [`Tensor`]s (from F32, BF16 or F16) on request.
//! Writing converts f32 to the chosen [`StorageDtype`] (round to nearest
//! even), shards by size, writes every file under a temporary name and
//! renames it into place, and then removes stale files of an earlier save.
//! It also writes the small single-file outputs of the `score` command.
//!
//! It does not know what the tensors mean: mapping names such as
//! `model.layers.0.self_attn.q_proj.weight` onto the model structure, checking
//! shapes against a config, tying embeddings and so on live in the model code.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::files::temp_path;
use crate::tensor::Tensor;

/// File name of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Loads and saves above this many bytes show a progress bar.
const PROGRESS_BYTES: u64 = 64 << 20;

/// Size of the little-endian u64 length prefix of a safetensors file.
const LEN_PREFIX: usize = 8;

/// Element type that tensors are stored as in a saved checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StorageDtype {
    #[serde(rename = "f32", alias = "float32", alias = "F32")]
    F32,
    #[serde(rename = "bf16", alias = "bfloat16", alias = "BF16")]
    BF16,
    #[serde(rename = "f16", alias = "float16", alias = "F16")]
    F16,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::BF16 | StorageDtype::F16 => 2,
        }
    }

    /// The safetensors dtype this is written as.
    pub fn safetensors_dtype(self) -> Dtype {
        match self {
            StorageDtype::F32 => Dtype::F32,
            StorageDtype::BF16 => Dtype::BF16,
            StorageDtype::F16 => Dtype::F16,
        }
    }

    /// Round `v` to this dtype and back (what a save + load gives).
    pub fn round_trip(self, v: f32) -> f32 {
        match self {
            StorageDtype::F32 => v,
            StorageDtype::BF16 => half::bf16::from_f32(v).to_f32(),
            StorageDtype::F16 => half::f16::from_f32(v).to_f32(),
        }
    }

    fn encode(self, data: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; data.len() * self.size_bytes()];
        const CHUNK: usize = 1 << 16;
        match self {
            StorageDtype::F32 => out
                .par_chunks_mut(CHUNK * 4)
                .zip(data.par_chunks(CHUNK))
                .for_each(|(o, d)| {
                    for (b, v) in o.chunks_exact_mut(4).zip(d) {
                        b.copy_from_slice(&v.to_le_bytes());
                    }
                }),
            StorageDtype::BF16 => out
                .par_chunks_mut(CHUNK * 2)
                .zip(data.par_chunks(CHUNK))
                .for_each(|(o, d)| {
                    for (b, v) in o.chunks_exact_mut(2).zip(d) {
                        b.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
                    }
                }),
            StorageDtype::F16 => out
                .par_chunks_mut(CHUNK * 2)
                .zip(data.par_chunks(CHUNK))
                .for_each(|(o, d)| {
                    for (b, v) in o.chunks_exact_mut(2).zip(d) {
                        b.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
                    }
                }),
        }
        out
    }
}

impl fmt::Display for StorageDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageDtype::F32 => "f32",
            StorageDtype::BF16 => "bf16",
            StorageDtype::F16 => "f16",
        })
    }
}

impl FromStr for StorageDtype {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(StorageDtype::F32),
            "bf16" | "bfloat16" => Ok(StorageDtype::BF16),
            "f16" | "float16" | "fp16" | "half" => Ok(StorageDtype::F16),
            _ => bail!("unknown storage dtype {s:?}: expected f32, bf16 or f16 (or float32, bfloat16, float16)"),
        }
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// One memory-mapped safetensors file.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

/// Where a tensor lives: which file and which bytes of its map.
#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// Read-only, memory-mapped view of a checkpoint (one file, or shards named
/// by an index). Tensors are only read and converted when asked for.
///
/// The files must not be modified by anyone while a `Checkpoint` maps them.
/// (Our own [`save`] replaces files by renaming, which leaves existing maps of
/// the old files intact.)
pub struct Checkpoint {
    /// The path `open` was given (for messages).
    source: PathBuf,
    files: Vec<MappedFile>,
    entries: BTreeMap<String, Entry>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("source", &self.source)
            .field("files", &self.files.iter().map(|m| &m.path).collect::<Vec<_>>())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct IndexJson {
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_json::Value>,
    weight_map: Option<BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct IndexOut<'a> {
    metadata: IndexMeta,
    weight_map: BTreeMap<&'a str, String>,
}

#[derive(Serialize)]
struct IndexMeta {
    total_size: u64,
}

/// Map a file and parse its safetensors header, returning the map and the
/// tensors it holds (offsets absolute within the map).
fn map_file(path: &Path) -> Result<(MappedFile, Vec<(String, Entry)>)> {
    let file = File::open(path).with_context(|| format!("file {}: cannot open", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("file {}: cannot stat", path.display()))?
        .len();
    if len < LEN_PREFIX as u64 {
        bail!(
            "file {}: not a safetensors file: {len} bytes, shorter than the 8-byte header length prefix",
            path.display()
        );
    }
    // SAFETY: the map is only read; the documented contract of `Checkpoint`
    // is that nobody modifies the files while they are mapped.
    let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("file {}: cannot memory-map", path.display()))?;
    let (header_len, meta) = SafeTensors::read_metadata(&mmap[..]).map_err(|e| {
        let hint = match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                " (the file is truncated or has trailing bytes: its header describes a different size)"
            }
            safetensors::SafeTensorError::InvalidHeaderLength | safetensors::SafeTensorError::HeaderTooLarge => {
                " (the header length prefix is corrupt, or the file is truncated)"
            }
            _ => "",
        };
        anyhow!("file {}: invalid safetensors data: {e}{hint}", path.display())
    })?;
    let base = LEN_PREFIX + header_len;
    let mut entries = Vec::new();
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        let (start, end) = (base + s, base + e);
        if start > end || end > mmap.len() {
            bail!(
                "file {}: tensor {name}: data offsets {s}..{e} lie outside the file",
                path.display()
            );
        }
        entries.push((
            name,
            Entry {
                file: 0,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
            },
        ));
    }
    Ok((
        MappedFile {
            path: path.to_path_buf(),
            mmap,
        },
        entries,
    ))
}

/// Reject shard names that would escape the checkpoint directory.
fn check_shard_name(index_path: &Path, shard: &str) -> Result<()> {
    let p = Path::new(shard);
    let ok = !shard.is_empty() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok {
        bail!(
            "index {}: shard name {shard:?} is not a plain relative file name",
            index_path.display()
        );
    }
    Ok(())
}

impl Checkpoint {
    /// Open a checkpoint. `path` is either a directory (using
    /// `model.safetensors.index.json` if present, else `model.safetensors`)
    /// or a single safetensors file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let meta = fs::metadata(path).with_context(|| format!("checkpoint {}: cannot access", path.display()))?;
        if meta.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.exists() {
                Self::open_index(path, &index)
            } else {
                let single = path.join(SINGLE_FILE);
                if !single.exists() {
                    bail!(
                        "checkpoint directory {}: has neither {INDEX_FILE} nor {SINGLE_FILE}",
                        path.display()
                    );
                }
                Self::open_file(path, &single)
            }
        } else {
            Self::open_file(path, path)
        }
    }

    fn open_file(source: &Path, file: &Path) -> Result<Checkpoint> {
        let (mapped, list) = map_file(file)?;
        let entries: BTreeMap<String, Entry> = list.into_iter().collect();
        tracing::debug!(file = %file.display(), tensors = entries.len(), "opened safetensors file");
        Ok(Checkpoint {
            source: source.to_path_buf(),
            files: vec![mapped],
            entries,
        })
    }

    fn open_index(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
        let text =
            fs::read_to_string(index_path).with_context(|| format!("index {}: cannot read", index_path.display()))?;
        let index: IndexJson = serde_json::from_str(&text)
            .with_context(|| format!("index {}: not valid index JSON", index_path.display()))?;
        let weight_map = index
            .weight_map
            .ok_or_else(|| anyhow!("index {}: has no \"weight_map\" object", index_path.display()))?;

        // Open each distinct shard once, in name order.
        let shard_names: BTreeSet<&str> = weight_map.values().map(String::as_str).collect();
        let mut files = Vec::with_capacity(shard_names.len());
        let mut shard_entries: HashMap<&str, (usize, HashMap<String, Entry>)> = HashMap::new();
        for shard in shard_names {
            check_shard_name(index_path, shard)?;
            let shard_path = dir.join(shard);
            if !shard_path.is_file() {
                bail!(
                    "index {}: shard {shard} is missing (expected at {})",
                    index_path.display(),
                    shard_path.display()
                );
            }
            let (mapped, list) =
                map_file(&shard_path).with_context(|| format!("shard {shard} of index {}", index_path.display()))?;
            let idx = files.len();
            files.push(mapped);
            shard_entries.insert(shard, (idx, list.into_iter().collect()));
        }

        let mut entries = BTreeMap::new();
        for (name, shard) in &weight_map {
            let (idx, list) = &shard_entries[shard.as_str()];
            let mut entry = list.get(name).cloned().ok_or_else(|| {
                anyhow!(
                    "index {}: tensor {name} is listed in shard {shard}, but that file does not contain it",
                    index_path.display()
                )
            })?;
            entry.file = *idx;
            entries.insert(name.clone(), entry);
        }
        tracing::debug!(
            index = %index_path.display(),
            shards = files.len(),
            tensors = entries.len(),
            "opened sharded checkpoint"
        );
        Ok(Checkpoint {
            source: dir.to_path_buf(),
            files,
            entries,
        })
    }

    /// The files this checkpoint maps.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Sum of the stored byte sizes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.entries.values().map(|e| (e.end - e.start) as u64).sum()
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| anyhow!("checkpoint {}: no tensor named {name}", self.source.display()))
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.files[e.file].mmap[e.start..e.end]
    }

    /// Which file holds `name`.
    pub fn file_of(&self, name: &str) -> Result<&Path> {
        Ok(&self.files[self.entry(name)?.file].path)
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.entry(name)?.shape.clone())
    }

    /// The stored element type of `name`.
    pub fn dtype(&self, name: &str) -> Result<Dtype> {
        Ok(self.entry(name)?.dtype)
    }

    /// Read `name` as an f32 tensor, converting from BF16 or F16.
    pub fn get_f32(&self, name: &str) -> Result<Tensor> {
        let e = self.entry(name)?;
        let bytes = self.bytes(e);
        let data = decode_f32(e.dtype, bytes)
            .map_err(|msg| anyhow!("file {}: tensor {name}: {msg}", self.files[e.file].path.display()))?;
        Tensor::from_vec(&e.shape, data)
            .with_context(|| format!("file {}: tensor {name}", self.files[e.file].path.display()))
    }

    /// Read `name` as i64 (stored as I64, or I32 widened), with its shape.
    pub fn get_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let e = self.entry(name)?;
        let bytes = self.bytes(e);
        let data: Vec<i64> = match e.dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            other => bail!(
                "file {}: tensor {name}: stored as {other}, expected an integer tensor (I64 or I32)",
                self.files[e.file].path.display()
            ),
        };
        Ok((e.shape.clone(), data))
    }

    /// Read every tensor as f32, in name order, with a progress bar for big
    /// checkpoints.
    pub fn load_all_f32(&self) -> Result<Vec<(String, Tensor)>> {
        let pb = progress(self.total_bytes(), "loading");
        let mut out = Vec::with_capacity(self.entries.len());
        for (name, e) in &self.entries {
            out.push((name.clone(), self.get_f32(name)?));
            pb.inc((e.end - e.start) as u64);
        }
        pb.finish_and_clear();
        Ok(out)
    }
}

fn decode_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    /// Convert little-endian elements of `W` bytes in parallel chunks.
    fn convert<const W: usize>(bytes: &[u8], one: impl Fn([u8; W]) -> f32 + Sync) -> Vec<f32> {
        const CHUNK: usize = 1 << 16;
        let mut out = vec![0f32; bytes.len() / W];
        out.par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * W)).for_each(|(o, b)| {
            for (v, c) in o.iter_mut().zip(b.chunks_exact(W)) {
                *v = one(c.try_into().expect("chunks_exact gives W bytes"));
            }
        });
        out
    }
    let out = match dtype {
        Dtype::F32 => convert::<4>(bytes, f32::from_le_bytes),
        Dtype::BF16 => convert::<2>(bytes, |c| half::bf16::from_bits(u16::from_le_bytes(c)).to_f32()),
        Dtype::F16 => convert::<2>(bytes, |c| half::f16::from_bits(u16::from_le_bytes(c)).to_f32()),
        other => {
            return Err(format!(
                "stored as {other}, which cannot be converted to f32 (supported: F32, BF16, F16)"
            ))
        }
    };
    Ok(out)
}

fn progress(total: u64, what: &str) -> ProgressBar {
    if total <= PROGRESS_BYTES {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// A tensor to write, converted lazily when the serializer asks for its bytes.
enum OutView<'a> {
    Float {
        t: &'a Tensor,
        dtype: StorageDtype,
        pb: &'a ProgressBar,
    },
    I64 {
        shape: &'a [usize],
        data: &'a [i64],
    },
}

impl View for OutView<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            OutView::Float { dtype, .. } => dtype.safetensors_dtype(),
            OutView::I64 { .. } => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            OutView::Float { t, .. } => &t.shape,
            OutView::I64 { shape, .. } => shape,
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            OutView::Float { t, dtype, pb } => {
                let bytes = dtype.encode(&t.data);
                pb.inc(bytes.len() as u64);
                Cow::Owned(bytes)
            }
            OutView::I64 { data, .. } => Cow::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            OutView::Float { t, dtype, .. } => t.data.len() * dtype.size_bytes(),
            OutView::I64 { data, .. } => data.len() * 8,
        }
    }
}

fn header_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// Temporary files written so far; removed on drop unless committed.
struct TempFiles {
    pending: Vec<(PathBuf, PathBuf)>, // (temp, final)
}

impl TempFiles {
    fn new() -> Self {
        TempFiles { pending: Vec::new() }
    }

    /// Rename every temp file into place, in order.
    fn commit(&mut self) -> Result<()> {
        while !self.pending.is_empty() {
            let (tmp, dst) = &self.pending[0];
            fs::rename(tmp, dst)
                .with_context(|| format!("file {}: cannot rename {} into place", dst.display(), tmp.display()))?;
            self.pending.remove(0);
        }
        Ok(())
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("file {}: cannot sync to disk", path.display()))
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the renames durable on filesystems that need it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Serialize `views` to a temp file next to `target` and register it.
fn write_views(target: &Path, views: Vec<(String, OutView<'_>)>, temps: &mut TempFiles) -> Result<()> {
    let tmp = temp_path(target);
    // Register first so a failed write is cleaned up.
    temps.pending.push((tmp.clone(), target.to_path_buf()));
    safetensors::serialize_to_file(views, header_metadata(), &tmp)
        .map_err(|e| anyhow!("file {}: cannot write: {e}", target.display()))?;
    sync_file(&tmp)?;
    tracing::debug!(file = %target.display(), "wrote safetensors file (temporary name)");
    Ok(())
}

fn write_text(target: &Path, text: &str, temps: &mut TempFiles) -> Result<()> {
    let tmp = temp_path(target);
    temps.pending.push((tmp.clone(), target.to_path_buf()));
    fs::write(&tmp, text).with_context(|| format!("file {}: cannot write", target.display()))?;
    sync_file(&tmp)
}

/// Whether `name` is a file a checkpoint save in this layout produces.
fn is_checkpoint_file(name: &str) -> bool {
    if name == SINGLE_FILE || name == INDEX_FILE {
        return true;
    }
    // model-NNNNN-of-NNNNN.safetensors
    let Some(mid) = name.strip_prefix("model-").and_then(|n| n.strip_suffix(".safetensors")) else {
        return false;
    };
    let Some((a, b)) = mid.split_once("-of-") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    digits(a) && digits(b)
}

fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

fn check_tensors(tensors: &[(String, &Tensor)]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for (name, t) in tensors {
        if name.is_empty() {
            bail!("cannot save a tensor with an empty name");
        }
        if name == "__metadata__" {
            bail!("cannot save a tensor named __metadata__ (reserved by safetensors)");
        }
        if !seen.insert(name.as_str()) {
            bail!("tensor {name} is given twice");
        }
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            bail!(
                "tensor {name}: shape {:?} needs {n} values, has {}",
                t.shape,
                t.data.len()
            );
        }
    }
    Ok(())
}

/// Save `tensors` as a Hugging Face checkpoint in `dir` (created if needed).
///
/// Writes `model.safetensors`, or, when the total size exceeds
/// `max_shard_bytes`, shards `model-0000i-of-0000N.safetensors` filled in
/// name order plus `model.safetensors.index.json`. Every file gets header
/// metadata `{"format": "pt"}`. All files are written under temporary names
/// first, then renamed into place; finally checkpoint files of an earlier save
/// in `dir` that this save did not produce are deleted.
pub fn save(
    dir: &Path,
    tensors: &[(String, &Tensor)],
    dtype: StorageDtype,
    max_shard_bytes: Option<usize>,
) -> Result<()> {
    check_tensors(tensors)?;
    fs::create_dir_all(dir).with_context(|| format!("checkpoint directory {}: cannot create", dir.display()))?;

    let mut sorted: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let size_of = |t: &Tensor| t.data.len() * dtype.size_bytes();
    let total: usize = sorted.iter().map(|(_, t)| size_of(t)).sum();

    // Group into shards, in name order.
    let mut groups: Vec<Vec<(&str, &Tensor)>> = Vec::new();
    match max_shard_bytes {
        Some(max) if total > max => {
            let mut cur: Vec<(&str, &Tensor)> = Vec::new();
            let mut cur_bytes = 0usize;
            for (name, t) in sorted {
                let sz = size_of(t);
                if !cur.is_empty() && cur_bytes + sz > max {
                    groups.push(std::mem::take(&mut cur));
                    cur_bytes = 0;
                }
                cur.push((name, t));
                cur_bytes += sz;
            }
            if !cur.is_empty() {
                groups.push(cur);
            }
        }
        _ => groups.push(sorted),
    }
    let sharded = groups.len() > 1;

    let pb = progress(total as u64, "saving");
    let mut temps = TempFiles::new();
    let mut produced: BTreeSet<String> = BTreeSet::new();
    let mut weight_map: BTreeMap<&str, String> = BTreeMap::new();
    for (i, group) in groups.iter().enumerate() {
        let file_name = if sharded {
            shard_name(i, groups.len())
        } else {
            SINGLE_FILE.to_string()
        };
        let views: Vec<(String, OutView<'_>)> = group
            .iter()
            .map(|(n, t)| (n.to_string(), OutView::Float { t, dtype, pb: &pb }))
            .collect();
        write_views(&dir.join(&file_name), views, &mut temps)?;
        if sharded {
            for (n, _) in group {
                weight_map.insert(n, file_name.clone());
            }
        }
        produced.insert(file_name);
    }
    if sharded {
        let index = IndexOut {
            metadata: IndexMeta {
                total_size: total as u64,
            },
            weight_map,
        };
        let text = serde_json::to_string_pretty(&index).context("cannot serialize the index")?;
        write_text(&dir.join(INDEX_FILE), &(text + "\n"), &mut temps)?;
        produced.insert(INDEX_FILE.to_string());
    }
    pb.finish_and_clear();

    // Shards are renamed before the index, so the index never points at a
    // shard that is not there yet.
    temps.commit()?;

    // Remove stale checkpoint files of an earlier save (index first, so a
    // stale index never outlives its shards).
    let mut stale: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("checkpoint directory {}: cannot list", dir.display()))? {
        let entry = entry.with_context(|| format!("checkpoint directory {}: cannot list", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_checkpoint_file(&name) && !produced.contains(&name) {
            stale.push(entry.path());
        }
    }
    stale.sort_by_key(|p| p.file_name().map(|n| n != INDEX_FILE));
    for p in stale {
        tracing::debug!(file = %p.display(), "removing stale checkpoint file");
        fs::remove_file(&p).with_context(|| format!("file {}: cannot remove stale file", p.display()))?;
    }
    sync_dir(dir);
    tracing::debug!(
        dir = %dir.display(),
        files = produced.len(),
        bytes = total,
        %dtype,
        "saved checkpoint"
    );
    Ok(())
}

/// Write one safetensors file at `path` (atomically) holding f32 tensors and
/// optionally one i64 tensor `(name, shape, data)`. Used for the outputs of
/// the `score` command. Header metadata is `{"format": "pt"}`.
pub fn save_file(
    path: &Path,
    f32_tensors: &[(String, &Tensor)],
    i64_tensor: Option<(&str, &[usize], &[i64])>,
) -> Result<()> {
    check_tensors(f32_tensors)?;
    let names: BTreeSet<&str> = f32_tensors.iter().map(|(n, _)| n.as_str()).collect();
    if let Some((name, shape, data)) = i64_tensor {
        if name.is_empty() || name == "__metadata__" {
            bail!("invalid tensor name {name:?}");
        }
        if names.contains(name) {
            bail!("tensor {name} is given twice");
        }
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("tensor {name}: shape {shape:?} needs {n} values, has {}", data.len());
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("directory {}: cannot create", parent.display()))?;
    }
    let total: usize = f32_tensors.iter().map(|(_, t)| t.data.len() * 4).sum();
    let pb = progress(total as u64, "saving");
    let mut views: Vec<(String, OutView<'_>)> = f32_tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                OutView::Float {
                    t,
                    dtype: StorageDtype::F32,
                    pb: &pb,
                },
            )
        })
        .collect();
    if let Some((name, shape, data)) = i64_tensor {
        views.push((name.to_string(), OutView::I64 { shape, data }));
    }
    let mut temps = TempFiles::new();
    write_views(path, views, &mut temps)?;
    pb.finish_and_clear();
    temps.commit()
}

/// Write a single safetensors file of f32 tensors at `path`, atomically.
pub fn save_f32_file(path: &Path, tensors: &[(String, &Tensor)]) -> Result<()> {
    save_file(path, tensors, None)
}

/// Write a single safetensors file at `path` holding one i64 tensor, atomically.
pub fn save_i64(path: &Path, name: &str, shape: &[usize], data: &[i64]) -> Result<()> {
    save_file(path, &[], Some((name, shape, data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_parse_and_display() {
        for (s, d) in [
            ("f32", StorageDtype::F32),
            ("float32", StorageDtype::F32),
            ("bf16", StorageDtype::BF16),
            ("BFloat16", StorageDtype::BF16),
            ("f16", StorageDtype::F16),
            ("float16", StorageDtype::F16),
        ] {
            assert_eq!(s.parse::<StorageDtype>().unwrap(), d);
            assert_eq!(d.to_string().parse::<StorageDtype>().unwrap(), d);
        }
        assert!("int8".parse::<StorageDtype>().unwrap_err().to_string().contains("int8"));
        let j = serde_json::to_string(&StorageDtype::BF16).unwrap();
        assert_eq!(j, "\"bf16\"");
        let d: StorageDtype = serde_json::from_str("\"bfloat16\"").unwrap();
        assert_eq!(d, StorageDtype::BF16);
    }

    #[test]
    fn checkpoint_file_names() {
        assert!(is_checkpoint_file("model.safetensors"));
        assert!(is_checkpoint_file("model.safetensors.index.json"));
        assert!(is_checkpoint_file("model-00001-of-00003.safetensors"));
        assert!(!is_checkpoint_file("model-foo.safetensors"));
        assert!(!is_checkpoint_file("reference.safetensors"));
        assert!(!is_checkpoint_file("optimizer.safetensors"));
        assert_eq!(shard_name(0, 3), "model-00001-of-00003.safetensors");
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly halfway between two bf16 values; ties go to even (1.0).
        let v = 1.0f32 + 2f32.powi(-8);
        let b = StorageDtype::BF16.encode(&[v]);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), half::bf16::from_f32(1.0).to_bits());
        assert_eq!(decode_f32(Dtype::BF16, &b).unwrap(), vec![1.0]);
    }
}
