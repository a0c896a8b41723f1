//! TEMPORARY stub, replaced by the real safetensors layer.
use crate::tensor::Tensor;
use anyhow::{Context, Result};
use std::path::Path;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype { F32, BF16, F16 }
pub struct Checkpoint { data: Vec<u8> }
impl Checkpoint {
    pub fn open(p: &Path) -> Result<Self> {
        let f = if p.is_dir() { p.join("model.safetensors") } else { p.to_path_buf() };
        Ok(Checkpoint { data: std::fs::read(&f).with_context(|| format!("{}", f.display()))? })
    }
    fn st(&self) -> safetensors::SafeTensors<'_> { safetensors::SafeTensors::deserialize(&self.data).unwrap() }
    pub fn names(&self) -> Vec<String> { let mut v: Vec<String> = self.st().names().into_iter().map(|s| s.to_string()).collect(); v.sort(); v }
    pub fn contains(&self, n: &str) -> bool { self.st().tensor(n).is_ok() }
    pub fn get_f32(&self, n: &str) -> Result<Tensor> {
        let st = self.st(); let t = st.tensor(n)?;
        let data = t.data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok(Tensor { shape: t.shape().to_vec(), data })
    }
    pub fn get_i64(&self, n: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let st = self.st(); let t = st.tensor(n)?;
        Ok((t.shape().to_vec(), t.data().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()))
    }
}
pub fn save(_dir: &Path, _t: &[(String, &Tensor)], _d: StorageDtype, _m: Option<usize>) -> Result<()> { anyhow::bail!("stub") }
